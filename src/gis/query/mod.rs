//! Queries on layers: the plan (what to select, filter and write), running it on a query
//! thread under limits, and writing its features as GeoJSON in WGS 84.
//!
//! - `admission`: bounded concurrency with a bounded queue (GDAL processes), and its `Busy`.
//! - `pool`: the query threads, which take queued work themselves, with a bounded queue.
//! - `limits`: a query's deadline, interruption and memory budget, and the sink its answer
//!   goes through.
//! - `run`: running a plan and streaming its features.
//! - `filter`: `-where` and CQL2 text parsed and written again as SQL by this server.
//! - `reproject`: to WGS 84 from the layer's EPSG system.
//! - `geojson`: the streaming FeatureCollection writer.

pub mod admission;
pub mod filter;
pub mod geojson;
pub mod limits;
pub mod plan;
pub mod pool;
pub mod reproject;
pub mod run;
pub mod threads;
