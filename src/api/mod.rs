//! The APIs browsers call, over the data layer in `crate::gis`: each handler parses its request,
//! asks the data layer, and returns a typed result.
//!
//! - `ogr2ogr`: `/ogr2ogr?source=…&options=…` as the web app already uses it: its options
//!   parser, the handler, and the GDAL delegate (the `ogr2ogr` program for sources not read
//!   natively, with checked arguments and process limits).
//! - `features`: OGC API Features (Parts 1 and 3) under `/features/`.
//! - `search`: `/search?q=…` over the unified search index.
//! - `health`: `/health` from the health registry.
//! - `admin`: `/admin/` for operators (sync jobs, the updater).
//! - `access`: who may use the operators' endpoints (address ranges, a bearer token).
//! - `reply`: the response and body types every route answers with.
//! - `error`: [`error::ApiError`], the one place an error becomes a JSON response.

pub mod access;
pub mod admin;
pub mod error;
pub mod features;
pub mod health;
pub mod ogr2ogr;
pub mod reply;
pub mod search;
