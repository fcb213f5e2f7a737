//! Datasets on disk: GeoPackage and SQLite files opened read-only behind an SQLite authorizer,
//! their layers, a pool of connections per file version, and the catalog of open versions.

pub mod catalog;
pub mod dataset;

pub use catalog::Catalog;
pub use dataset::{Dataset, DatasetError, Layer, Storage};
