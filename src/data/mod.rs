//! Datasets and the GeoJSON APIs over them.
//!
//! - `gpkg`: GeoPackage (and plain SQLite) files opened read-only behind an SQLite authorizer,
//!   their layers, and a small pool of connections per file version.
//! - `ogr2ogr`: the `/ogr2ogr?source=…&options=…` API the web app already uses, parsed into a
//!   query and answered natively with streamed RFC 7946 GeoJSON.
//! - `geojson`: the streaming FeatureCollection writer.

pub mod geojson;
pub mod gpkg;
pub mod ogr2ogr;
pub mod query;
