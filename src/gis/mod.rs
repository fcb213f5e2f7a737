//! The GIS data layer: everything about datasets and queries, and nothing about HTTP. It
//! returns typed errors naming the dataset or layer, never a response; the APIs in
//! `crate::api` turn them into answers.
//!
//! - `source`: readers of the formats converted to GeoPackages, and the GeoPackage writer.
//! - `store`: datasets opened read-only, their layers, connection pools, the catalog.
//! - `query`: plans, running them under limits, the GeoJSON writer, reprojection.
//! - `cache`: answers and rendered features kept in memory.
//! - `search`: the unified search index.
//! - `wkb`: a structural check of geometry blobs before they are decoded.

pub mod cache;
pub mod query;
pub mod search;
pub mod source;
pub mod store;
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
