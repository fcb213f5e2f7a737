//! Datasets and the GeoJSON APIs over them.
//!
//! - `gpkg`: GeoPackage (and plain SQLite) files opened read-only behind an SQLite authorizer,
//!   their layers, and a small pool of connections per file version.
//! - `ogr2ogr`: the `/ogr2ogr?source=…&options=…` API the web app already uses, parsed into a
//!   query and answered natively with streamed RFC 7946 GeoJSON.
//! - `features`: OGC API Features (Part 1: Core, GeoJSON) under `/features/`.
//! - `query`: running a layer query and streaming its features, shared by both APIs.
//! - `reproject`: to WGS 84 from the layer's EPSG system.
//! - `geojson`: the streaming FeatureCollection writer.

pub mod cache;
pub mod dbf;
pub mod features;
pub mod gdal;
pub mod geojson;
pub mod gpkg;
pub mod gpkg_write;
pub mod ogr2ogr;
pub mod prj;
pub mod query;
pub mod readers;
pub mod reproject;
