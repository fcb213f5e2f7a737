//! `http` sources: a file downloaded with a conditional GET, streamed to the job's state folder
//! within a size limit, then staged like a local file.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use reqwest::header::{
    ETAG, HeaderMap, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
};

use super::Staged;
use crate::config::sync::{SyncJob, SyncSource};
use crate::sync::{JobPaths, Progress, SyncError, Validators};

/// The answer to a conditional download.
pub(super) enum Download {
    /// 304: the source is as it was.
    NotModified,
    /// The body is in the file; its size and the new validators.
    Saved(u64, Validators),
}

/// Downloads `url` into `file`: a conditional GET with `previous`'s validators when they are
/// for the same URL, the body streamed to disk, refused past `max_bytes`.
///
/// # Errors
/// [`SyncError::Source`] for a network error, a status other than 200 or 304, or a body too
/// large or cut short.
pub(super) async fn download(
    client: &reqwest::Client,
    url: &str,
    headers: HeaderMap,
    previous: Option<&Validators>,
    max_bytes: u64,
    file: &Path,
    progress: &Progress,
) -> Result<Download, SyncError> {
    let mut request = client.get(url).headers(headers);
    if let Some(v) = previous.filter(|v| v.url == url) {
        if let Some(etag) = &v.etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        if let Some(modified) = &v.last_modified {
            request = request.header(IF_MODIFIED_SINCE, modified);
        }
    }
    let response = request.send().await.map_err(super::request_error)?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(Download::NotModified);
    }
    if !status.is_success() {
        return Err(SyncError::Source(format!("the server answered {status}")));
    }
    let expected = response.content_length();
    if let Some(length) = expected
        && length > max_bytes
    {
        return Err(SyncError::Source(format!(
            "the download is {length} bytes, over the job's max_bytes ({max_bytes})"
        )));
    }
    progress
        .total_bytes
        .store(expected.unwrap_or(0), Ordering::Relaxed);
    let text = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let validators = Validators {
        url: url.to_owned(),
        etag: text(ETAG),
        last_modified: text(LAST_MODIFIED),
    };
    let fail = |e: std::io::Error| SyncError::Source(format!("{}: {e}", file.display()));
    let mut out =
        std::io::BufWriter::with_capacity(256 * 1024, std::fs::File::create(file).map_err(fail)?);
    let mut total = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(super::request_error)?;
        total += chunk.len() as u64;
        if total > max_bytes {
            return Err(SyncError::Source(format!(
                "the download passed the job's max_bytes ({max_bytes}); stopped"
            )));
        }
        progress.bytes.store(total, Ordering::Relaxed);
        out.write_all(&chunk).map_err(fail)?;
    }
    out.flush().map_err(fail)?;
    if let Some(length) = expected
        && total != length
    {
        return Err(SyncError::Source(format!(
            "the download was cut short: {total} of {length} bytes"
        )));
    }
    Ok(Download::Saved(total, validators))
}

/// The extension the readers need for a download's format.
fn extension(format: Option<&str>, url: &str) -> Result<&'static str, SyncError> {
    let path = reqwest::Url::parse(url)
        .map(|u| u.path().to_ascii_lowercase())
        .unwrap_or_default();
    let format = format.map_or_else(
        || {
            path.rsplit_once('.')
                .map(|(_, e)| e.to_owned())
                .unwrap_or_default()
        },
        str::to_owned,
    );
    Ok(match format.as_str() {
        "geojson" | "json" => "geojson",
        "ndjson" | "geojsonl" | "geojsons" | "jsonl" => "ndjson",
        "csv" => "csv",
        "zip" | "shz" => "zip",
        "gpkg" => "gpkg",
        other => {
            return Err(SyncError::Source(format!(
                "cannot tell the download's format from {other:?}; set the source's `format` to one of {}",
                super::DOWNLOAD_FORMATS.join(", ")
            )));
        }
    })
}

/// Downloads and stages an `http` source.
pub(super) fn stage(
    job: &SyncJob,
    paths: &JobPaths,
    previous: Option<&Validators>,
    layer: &str,
    progress: &Progress,
) -> Result<Staged, SyncError> {
    let SyncSource::Http {
        url,
        format,
        headers_from_env,
        max_bytes,
        open_options,
    } = &job.source
    else {
        return Err(SyncError::Source("not an http source".to_owned()));
    };
    let headers = super::headers_from(headers_from_env)?;
    let extension = extension(format.as_deref(), url)?;
    let file = paths.state.join(format!("download.{extension}"));
    let client = super::client()?;
    let result = super::runtime()?.block_on(download(
        &client, url, headers, previous, *max_bytes, &file, progress,
    ));
    let (bytes, validators) = match result {
        Ok(Download::NotModified) => return Ok(Staged::Unchanged(previous.cloned())),
        Ok(Download::Saved(bytes, validators)) => (bytes, validators),
        Err(e) => {
            let _ = std::fs::remove_file(&file);
            return Err(e);
        }
    };
    // A downloaded GeoPackage is staged like any file: by its extension.
    let rows = super::stage_file(
        &file,
        None,
        open_options,
        job.transform.keep_crs,
        &paths.beside("stage"),
        layer,
        progress,
    );
    let _ = std::fs::remove_file(&file);
    Ok(Staged::Rows {
        rows: rows?,
        bytes,
        validators: Some(validators),
    })
}
