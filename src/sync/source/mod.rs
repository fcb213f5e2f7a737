//! Sources: each reads its data into the stage, a GeoPackage beside the target holding the
//! target's layer in spatial order (WGS 84 unless the job keeps the source's system).

mod arcgis;
pub mod catalogue;
mod file;
pub(crate) mod http;
mod ogr;
mod wfs;

use std::time::Duration;

use crate::config::sync::{SyncJob, SyncSource};
use crate::sync::{JobPaths, Progress, SyncError, Validators};

pub use file::stage_file;

/// The formats an `http` source's `format` may name.
pub const DOWNLOAD_FORMATS: &[&str] = &["geojson", "ndjson", "csv", "zip", "gpkg"];

/// What staging found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staged {
    /// The source has not changed since the last run (a 304); nothing was staged.
    Unchanged(Option<Validators>),
    /// The stage holds the source's rows.
    Rows {
        /// Rows read.
        rows: u64,
        /// Bytes downloaded or read.
        bytes: u64,
        /// Validators to keep for the next conditional GET.
        validators: Option<Validators>,
    },
}

/// The layer name a job publishes.
#[must_use]
pub fn layer_name(job: &SyncJob, paths: &JobPaths) -> String {
    job.target.layer.clone().unwrap_or_else(|| {
        paths
            .target
            .file_stem()
            .map_or_else(|| job.name.clone(), |s| s.to_string_lossy().into_owned())
    })
}

/// Reads `job`'s source into `paths.beside("stage")`.
///
/// # Errors
/// [`SyncError::Source`] naming what failed; others from writing the stage.
pub fn stage(
    job: &SyncJob,
    paths: &JobPaths,
    previous: Option<&Validators>,
    progress: &Progress,
) -> Result<Staged, SyncError> {
    std::fs::create_dir_all(&paths.state)
        .map_err(|e| SyncError::Publish(format!("{}: {e}", paths.state.display())))?;
    let layer = layer_name(job, paths);
    let keep_crs = job.transform.keep_crs;
    match &job.source {
        SyncSource::File {
            path,
            layer: source_layer,
            open_options,
        } => {
            let file = paths.root.join(path);
            let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            progress
                .total_bytes
                .store(bytes, std::sync::atomic::Ordering::Relaxed);
            let rows = stage_file(
                &file,
                source_layer.as_deref(),
                open_options,
                keep_crs,
                &paths.beside("stage"),
                &layer,
                progress,
            )?;
            progress
                .bytes
                .store(bytes, std::sync::atomic::Ordering::Relaxed);
            Ok(Staged::Rows {
                rows,
                bytes,
                validators: None,
            })
        }
        SyncSource::Sqlite { path, query } => {
            let file = paths.root.join(path);
            let connection = file::open_read_only(&file)?;
            let geometry = crate::sync::write::GeometryColumn {
                name: "geom".to_owned(),
                srs: file::srs_of_query(&connection),
            };
            let rows = crate::sync::write::query_to_gpkg(
                &connection,
                query,
                &geometry,
                keep_crs,
                &paths.beside("stage"),
                &layer,
                progress,
            )?;
            Ok(Staged::Rows {
                rows,
                bytes: std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0),
                validators: None,
            })
        }
        SyncSource::Ogr {
            source,
            layer: source_layer,
        } => ogr::stage(
            source,
            source_layer.as_deref(),
            job,
            paths,
            &layer,
            progress,
        ),
        SyncSource::Http { .. } => http::stage(job, paths, previous, &layer, progress),
        SyncSource::Arcgis { .. } => arcgis::stage(job, paths, &layer, progress),
        SyncSource::Wfs { .. } => wfs::stage(job, paths, &layer, progress),
        SyncSource::Catalogue { .. } => Err(SyncError::Source(
            "a catalogue is not staged as a dataset".to_owned(),
        )),
    }
}

/// Stages features fetched as newline-delimited GeoJSON into `lines` (`written`: the bytes
/// fetched, or why fetching failed), then removes the lines.
///
/// # Errors
/// The fetch's error, or staging's.
pub(crate) fn stage_lines(
    written: Result<u64, SyncError>,
    lines: &std::path::Path,
    paths: &JobPaths,
    layer: &str,
    progress: &Progress,
) -> Result<Staged, SyncError> {
    let result = written.and_then(|bytes| {
        // Rows are counted again as the stage is written.
        progress.rows.store(0, std::sync::atomic::Ordering::Relaxed);
        let rows = stage_file(
            lines,
            None,
            &std::collections::BTreeMap::new(),
            false,
            &paths.beside("stage"),
            layer,
            progress,
        )?;
        Ok(Staged::Rows {
            rows,
            bytes,
            validators: None,
        })
    });
    let _ = std::fs::remove_file(lines);
    result
}

/// The HTTP client sources use: bounded connect and read times, our own user agent.
///
/// # Errors
/// [`SyncError::Source`] when the client cannot be built.
pub fn client() -> Result<reqwest::Client, SyncError> {
    reqwest::Client::builder()
        .user_agent(concat!("poziserver/", env!("CARGO_PKG_VERSION"), " sync"))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(300))
        .build()
        .map_err(|e| SyncError::Source(format!("cannot make an HTTP client: {e}")))
}

/// A runtime for a source's network requests (runs are blocking code, in a worker process or
/// the command line, never on the server's runtime).
///
/// # Errors
/// [`SyncError::Source`] when it cannot be started.
pub fn runtime() -> Result<tokio::runtime::Runtime, SyncError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SyncError::Source(format!("cannot start a runtime for downloads: {e}")))
}

/// Largest answer a source reads into memory (an ArcGIS or WFS page, a capabilities
/// document is bounded by its own `max_bytes`).
pub(crate) const MAX_PAGE_BYTES: usize = 512 * 1024 * 1024;

/// An answer's body, refused past `limit` bytes.
///
/// # Errors
/// [`SyncError::Source`] for a network error or a body over the limit.
pub(crate) async fn body_within(
    response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, SyncError> {
    use futures::StreamExt;
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(request_error)?;
        if body.len() + chunk.len() > limit {
            return Err(SyncError::Source(format!("an answer passed {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Request headers whose values come from the environment variables named
/// (`{"X-Api-Key": "PARCELS_KEY"}`), marked sensitive so that no debug output shows them.
///
/// # Errors
/// [`SyncError::Source`] naming a variable that is not set, or a bad name or value (never the
/// value itself).
pub(crate) fn headers_from(
    names: &std::collections::BTreeMap<String, String>,
) -> Result<reqwest::header::HeaderMap, SyncError> {
    use reqwest::header::{HeaderName, HeaderValue};
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, variable) in names {
        let value = secret(variable)?;
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| SyncError::Source(format!("{name:?} is not a header name")))?;
        let mut value = HeaderValue::from_str(&value).map_err(|_| {
            SyncError::Source(format!(
                "environment variable {variable} is not a header value"
            ))
        })?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(headers)
}

/// A request error without its URL (which may carry a token).
pub(crate) fn request_error(e: reqwest::Error) -> SyncError {
    SyncError::Source(e.without_url().to_string())
}

/// The value of environment variable `name`, for a header or token.
///
/// # Errors
/// [`SyncError::Source`] naming the variable (never its value) when it is not set.
pub(crate) fn secret(name: &str) -> Result<String, SyncError> {
    std::env::var(name)
        .map_err(|_| SyncError::Source(format!("environment variable {name} is not set")))
}
