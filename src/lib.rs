//! Pozi Server: the on-premise server that lets staff browsers running the Pozi web app read an
//! organisation's internal GIS data without that data leaving the network.
//!
//! This crate is the server itself: configuration, the installation root, logging, the
//! components under the root supervisor, and the command line. The supervision runtime lives
//! in the `actors` crate and cron schedules in `schedules`.

pub mod api;
pub mod cli;
pub mod config;
pub mod encoding;
pub mod gis;
pub mod http;
pub mod logging;
pub mod memory;
pub mod ops;
pub mod root;
pub mod runtime;
pub mod safe_path;
pub mod scheduler;
pub mod sync;
pub mod update;
pub mod version;
