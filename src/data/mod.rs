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
//! - `admission`: bounded concurrency with a bounded queue (query threads, GDAL processes).
//! - `limits`: a query's deadline, interruption and memory budget, and the sink its answer
//!   goes through.
//! - `wkb`: a structural check of geometry blobs before they are decoded.
//! - `filter`: a `-where` for GDAL, parsed and written again by this server.
//! - `gdal`: `ogr2ogr` for sources not read natively, with checked arguments and process limits.

pub mod admission;
pub mod cache;
pub mod dbf;
pub mod feature_cache;
pub mod features;
pub mod filter;
pub mod gdal;
pub mod geojson;
pub mod gpkg;
pub mod gpkg_write;
pub mod limits;
pub mod ogr2ogr;
pub mod prj;
pub mod query;
pub mod readers;
pub mod reproject;
pub mod wkb;

/// An SQL identifier in double quotes, with any double quote inside it doubled.
pub(crate) fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// FNV-1a: a hash that is the same in every run and build, for cache file names and ETags.
pub(crate) fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
