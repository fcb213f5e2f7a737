//! Static files from the host folders: content types, validators (ETag, Last-Modified) and
//! conditional requests, byte ranges, HEAD, gzip/brotli (precompressed siblings or on the fly),
//! `Cache-Control` by path pattern, and bounded-memory streaming of large files.
//!
//! Small files are kept in memory with their compressed forms and re-checked against the disk
//! at most once a second (as nginx's `open_file_cache_valid 1s`), so a replaced file is served
//! within a second and a hot file costs no system call.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::api::error::ApiError;
use crate::api::reply::{Body, Response};
use bytes::Bytes;
use globset::{Glob, GlobMatcher};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt, BufReader};
use tokio_util::io::ReaderStream;

use crate::config::CacheRule;

/// Files up to this size are cached in memory (with their compressed forms).
const MAX_CACHED_FILE: u64 = 1024 * 1024;
/// Bytes the cache holds at most, counted by [`EntryWeight`].
const MAX_CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// What an entry costs beyond its contents: the entry, its headers, the path and the slot.
const ENTRY_OVERHEAD: u64 = 512;
/// How long a cached file is trusted before the disk is checked again.
const REVALIDATE_AFTER: Duration = Duration::from_secs(1);
/// Chunk size when streaming large files.
const CHUNK: usize = 64 * 1024;

pub use crate::encoding::Encoding;

/// What of the request the static handler needs.
#[derive(Debug)]
pub struct FileRequest<'a> {
    /// GET or HEAD.
    pub method: &'a Method,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// A precompressed sibling (`x.json.gz`) on disk.
#[derive(Debug, Clone)]
struct Sibling {
    path: PathBuf,
    len: u64,
    body: Option<Bytes>,
}

#[derive(Debug)]
struct Entry {
    path: PathBuf,
    len: u64,
    modified: SystemTime,
    checked: RwLock<Instant>,
    /// Set while one request checks the file again; the others serve this entry meanwhile.
    revalidating: AtomicBool,
    content_type: HeaderValue,
    etag: String,
    /// The `ETag` header for identity, gzip and brotli.
    etags: [HeaderValue; 3],
    /// The `Cache-Control` rule matching this file's path, found on first use.
    cache_control: OnceLock<Option<HeaderValue>>,
    last_modified: HeaderValue,
    compressible: bool,
    body: Option<Bytes>,
    siblings: [Option<Sibling>; 2],
    /// On-the-fly compressed bodies of small files, made on first demand.
    compressed: [OnceLock<Bytes>; 2],
}

/// The memory cache of small files, with shards large enough for the heaviest entry: a file
/// of [`MAX_CACHED_FILE`] with its compressed forms (and a long path).
fn file_cache() -> quick_cache::sync::Cache<PathBuf, Arc<Entry>, EntryWeight> {
    let heaviest = 3 * MAX_CACHED_FILE + ENTRY_OVERHEAD + 4096;
    crate::gis::cache::weighted(MAX_CACHE_BYTES, heaviest, 4096, EntryWeight)
}

/// What a cached file costs: its contents, room for its two compressed forms when it is
/// compressible (each smaller than the contents), its path and [`ENTRY_OVERHEAD`].
#[derive(Debug, Clone, Copy)]
struct EntryWeight;

impl quick_cache::Weighter<PathBuf, Arc<Entry>> for EntryWeight {
    fn weight(&self, path: &PathBuf, entry: &Arc<Entry>) -> u64 {
        let body = entry.body.as_ref().map_or(0, |b| b.len() as u64);
        let forms = if entry.compressible { 3 } else { 1 };
        body * forms + path.as_os_str().len() as u64 + ENTRY_OVERHEAD
    }
}

/// The static file service.
#[derive(Debug)]
pub struct StaticFiles {
    /// Entries by path, within [`MAX_CACHE_BYTES`] (quick_cache: scan-resistant, sharded).
    cache: quick_cache::sync::Cache<PathBuf, Arc<Entry>, EntryWeight>,
    rules: Vec<(GlobMatcher, HeaderValue)>,
}

fn is_compressible(content_type: &str) -> bool {
    content_type.starts_with("text/")
        || [
            "json",
            "javascript",
            "xml",
            "svg",
            "csv",
            "geo+json",
            "wasm",
        ]
        .iter()
        .any(|t| content_type.contains(t))
}

fn content_type(path: &Path) -> HeaderValue {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mime = match ext.as_str() {
        "geojson" => "application/geo+json".to_owned(),
        "topojson" => "application/json".to_owned(),
        "gpkg" => "application/geopackage+sqlite3".to_owned(),
        _ => mime_guess::from_ext(&ext)
            .first_or_octet_stream()
            .essence_str()
            .to_owned(),
    };
    let value =
        if mime.starts_with("text/") || mime.ends_with("json") || mime.ends_with("javascript") {
            format!("{mime}; charset=utf-8")
        } else {
            mime
        };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

impl StaticFiles {
    /// A service with `Cache-Control` rules (already validated by the config).
    #[must_use]
    pub fn new(rules: &[CacheRule]) -> Self {
        let rules = rules
            .iter()
            .filter_map(|r| {
                let glob = Glob::new(&r.pattern).ok()?.compile_matcher();
                let value = HeaderValue::from_str(&r.value).ok()?;
                Some((glob, value))
            })
            .collect();
        Self {
            cache: file_cache(),
            rules,
        }
    }

    /// Serves `segments` from the first folder that has the file, or `None` when none has it.
    pub async fn serve(
        &self,
        folders: &[PathBuf],
        segments: &[String],
        request: &FileRequest<'_>,
    ) -> Option<Response> {
        if segments.is_empty() {
            return None;
        }
        let relative = segments.join("/");
        for folder in folders {
            let path = segments.iter().fold(folder.clone(), |p, s| p.join(s));
            if let Some(entry) = self.entry(&path).await {
                return Some(self.respond(&entry, &relative, request).await);
            }
        }
        None
    }

    async fn entry(&self, path: &Path) -> Option<Arc<Entry>> {
        let cached = self.cache.get(path);
        if let Some(entry) = &cached {
            let fresh = entry
                .checked
                .read()
                .is_ok_and(|t| t.elapsed() < REVALIDATE_AFTER);
            // One request at a time checks a stale entry; the rest are served it meanwhile
            // rather than all queueing a check on the blocking pool.
            if fresh || entry.revalidating.swap(true, Ordering::AcqRel) {
                return cached;
            }
        }
        let key = path.to_owned();
        let previous = cached.clone();
        let loaded = tokio::task::spawn_blocking(move || load(&key, previous))
            .await
            .ok()
            .flatten();
        if let Some(entry) = &cached {
            entry.revalidating.store(false, Ordering::Release);
        }
        match &loaded {
            // Unchanged on disk: the same entry, already kept.
            Some(entry) if cached.as_ref().is_some_and(|c| Arc::ptr_eq(c, entry)) => {}
            Some(entry) => self.cache.insert(path.to_owned(), entry.clone()),
            None => {
                self.cache.remove(path);
            }
        }
        loaded
    }

    fn cache_control(&self, relative: &str) -> Option<&HeaderValue> {
        self.rules
            .iter()
            .find(|(glob, _)| glob.is_match(relative))
            .map(|(_, v)| v)
    }

    async fn respond(&self, entry: &Entry, relative: &str, request: &FileRequest<'_>) -> Response {
        let headers = request.headers;
        let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
        let encoding = if entry.compressible && range.is_none() {
            negotiate(headers, entry)
        } else {
            Encoding::Identity
        };
        let etag = &entry.etags[encoding as usize];

        let mut common = HeaderMap::with_capacity(12);
        common.insert(header::ETAG, etag.clone());
        common.insert(header::LAST_MODIFIED, entry.last_modified.clone());
        if let Some(value) = entry
            .cache_control
            .get_or_init(|| self.cache_control(relative).cloned())
        {
            common.insert(header::CACHE_CONTROL, value.clone());
        }
        if entry.compressible {
            common.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }

        if not_modified(headers, entry, etag.to_str().unwrap_or_default()) {
            return with_headers(StatusCode::NOT_MODIFIED, common, Response::default());
        }
        common.insert(header::CONTENT_TYPE, entry.content_type.clone());
        common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        let head = request.method == Method::HEAD;

        if encoding != Encoding::Identity {
            common.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(encoding.token()),
            );
            return self.compressed(entry, encoding, common, head).await;
        }

        let (status, start, len) = match range.map(|r| parse_range(r, entry.len)) {
            Some(Ok(Some((start, end)))) if if_range_matches(headers, entry) => {
                let value = format!("bytes {start}-{end}/{}", entry.len);
                if let Ok(v) = HeaderValue::from_str(&value) {
                    common.insert(header::CONTENT_RANGE, v);
                }
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
            Some(Err(())) => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", entry.len)) {
                    common.insert(header::CONTENT_RANGE, v);
                }
                common.remove(header::CONTENT_TYPE);
                return with_headers(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    common,
                    ApiError::new(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        "range not satisfiable",
                        None,
                    )
                    .into_response(),
                );
            }
            _ => (StatusCode::OK, 0, entry.len),
        };
        common.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if head {
            return with_headers(status, common, Response::default());
        }
        let body = match &entry.body {
            Some(bytes) => {
                let (s, l) = (
                    usize::try_from(start).unwrap_or(0),
                    usize::try_from(len).unwrap_or(0),
                );
                Response::new(bytes.slice(s..s + l).into())
            }
            None => match stream_file(&entry.path, start, len).await {
                Ok(response) => response,
                Err(e) => {
                    tracing::warn!(path = %entry.path.display(), error = %e, "cannot read file");
                    return ApiError::new(StatusCode::NOT_FOUND, "not found", None).into_response();
                }
            },
        };
        with_headers(status, common, body)
    }

    async fn compressed(
        &self,
        entry: &Entry,
        encoding: Encoding,
        mut headers: HeaderMap,
        head: bool,
    ) -> Response {
        let slot = usize::from(encoding == Encoding::Brotli);
        // A precompressed sibling first, then a cached compression of a small file, then a stream.
        let body: Option<Bytes> = match (&entry.siblings[slot], &entry.body) {
            (Some(Sibling { body: Some(b), .. }), _) => Some(b.clone()),
            (Some(_), _) => None,
            (None, Some(original)) => {
                if let Some(done) = entry.compressed[slot].get() {
                    Some(done.clone())
                } else {
                    let original = original.clone();
                    let made = tokio::task::spawn_blocking(move || compress(&original, encoding))
                        .await
                        .ok();
                    made.map(|m| entry.compressed[slot].get_or_init(|| m).clone())
                }
            }
            (None, None) => None,
        };
        if let Some(body) = body {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            let body = if head { Bytes::new() } else { body };
            return with_headers(StatusCode::OK, headers, Response::new(body.into()));
        }
        if let Some(sibling) = &entry.siblings[slot] {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(sibling.len));
            if head {
                return with_headers(StatusCode::OK, headers, Response::default());
            }
            return match stream_file(&sibling.path, 0, sibling.len).await {
                Ok(r) => with_headers(StatusCode::OK, headers, r),
                Err(_) => ApiError::new(StatusCode::NOT_FOUND, "not found", None).into_response(),
            };
        }
        if head {
            return with_headers(StatusCode::OK, headers, Response::default());
        }
        match tokio::fs::File::open(&entry.path).await {
            Ok(file) => {
                let reader = BufReader::with_capacity(CHUNK, file);
                let response = match encoding {
                    Encoding::Brotli => Response::new(Body::stream(ReaderStream::with_capacity(
                        async_compression::tokio::bufread::BrotliEncoder::with_quality(
                            reader,
                            async_compression::Level::Precise(4),
                        ),
                        CHUNK,
                    ))),
                    _ => Response::new(Body::stream(ReaderStream::with_capacity(
                        async_compression::tokio::bufread::GzipEncoder::new(reader),
                        CHUNK,
                    ))),
                };
                with_headers(StatusCode::OK, headers, response)
            }
            Err(_) => ApiError::new(StatusCode::NOT_FOUND, "not found", None).into_response(),
        }
    }
}

fn with_headers(status: StatusCode, headers: HeaderMap, mut response: Response) -> Response {
    *response.status_mut() = status;
    if response.headers().is_empty() {
        // The usual case: the map moves in whole instead of being copied entry by entry.
        *response.headers_mut() = headers;
    } else {
        response.headers_mut().extend(headers);
    }
    response
}

async fn stream_file(path: &Path, start: u64, len: u64) -> std::io::Result<Response> {
    let mut file = tokio::fs::File::open(path).await?;
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start)).await?;
    }
    Ok(Response::new(Body::stream(ReaderStream::with_capacity(
        file.take(len),
        CHUNK,
    ))))
}

/// Reads a file's metadata (and small contents), reusing `previous` when unchanged.
fn load(path: &Path, previous: Option<Arc<Entry>>) -> Option<Arc<Entry>> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let siblings_now = [
        sibling_stamp(path, Encoding::Gzip),
        sibling_stamp(path, Encoding::Brotli),
    ];
    if let Some(previous) = previous
        && previous.len == meta.len()
        && previous.modified == modified
        && previous
            .siblings
            .iter()
            .map(|s| s.as_ref().map(|s| s.len))
            .eq(siblings_now.iter().map(|s| s.as_ref().map(|s| s.0)))
    {
        if let Ok(mut checked) = previous.checked.write() {
            *checked = Instant::now();
        }
        return Some(previous);
    }
    let small = meta.len() <= MAX_CACHED_FILE;
    let body = if small {
        std::fs::read(path).ok().map(Bytes::from)
    } else {
        None
    };
    let content_type = content_type(path);
    let compressible = content_type.to_str().is_ok_and(is_compressible);
    let siblings = siblings_now.map(|s| {
        s.map(|(len, sibling)| Sibling {
            body: if small && len <= MAX_CACHED_FILE {
                std::fs::read(&sibling).ok().map(Bytes::from)
            } else {
                None
            },
            path: sibling,
            len,
        })
    });
    let nanos = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    Some(Arc::new(Entry {
        path: path.to_owned(),
        len: meta.len(),
        modified,
        checked: RwLock::new(Instant::now()),
        revalidating: AtomicBool::new(false),
        content_type,
        etag: format!("{:x}-{nanos:x}", meta.len()),
        etags: ["", "-gz", "-br"].map(|suffix| {
            HeaderValue::from_str(&format!("\"{:x}-{nanos:x}{suffix}\"", meta.len()))
                .unwrap_or(HeaderValue::from_static("\"\""))
        }),
        cache_control: OnceLock::new(),
        last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(modified))
            .unwrap_or(HeaderValue::from_static("")),
        compressible,
        body: if small { body } else { None },
        siblings,
        compressed: [OnceLock::new(), OnceLock::new()],
    }))
}

fn sibling_stamp(path: &Path, encoding: Encoding) -> Option<(u64, PathBuf)> {
    let mut name = path.as_os_str().to_owned();
    name.push(encoding.suffix());
    let sibling = PathBuf::from(name);
    let meta = std::fs::metadata(&sibling)
        .ok()
        .filter(std::fs::Metadata::is_file)?;
    Some((meta.len(), sibling))
}

fn compress(data: &[u8], encoding: Encoding) -> Bytes {
    let mut out = Vec::with_capacity(data.len() / 3 + 64);
    match encoding {
        Encoding::Brotli => {
            let mut writer = brotli::CompressorWriter::new(&mut out, 4096, 9, 22);
            let _ = writer.write_all(data);
            drop(writer);
        }
        _ => {
            let mut writer = flate2::write::GzEncoder::new(&mut out, flate2::Compression::new(6));
            let _ = writer.write_all(data);
            let _ = writer.finish();
        }
    }
    Bytes::from(out)
}

/// Picks the best encoding the client accepts (brotli over gzip at equal weight).
fn negotiate(headers: &HeaderMap, entry: &Entry) -> Encoding {
    let best = crate::encoding::accepted(headers);
    // Big files are compressed on the fly only with gzip (cheap); brotli needs a sibling.
    if best == Encoding::Brotli && entry.body.is_none() && entry.siblings[1].is_none() {
        return if crate::encoding::accepts_gzip(headers) {
            Encoding::Gzip
        } else {
            Encoding::Identity
        };
    }
    best
}

fn not_modified(headers: &HeaderMap, entry: &Entry, etag: &str) -> bool {
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        let identity = format!("\"{}\"", entry.etag);
        return inm.split(',').map(str::trim).any(|t| {
            let t = t.trim_start_matches("W/");
            t == "*" || t == etag || t == identity
        });
    }
    headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .is_some_and(|since| {
            let modified = entry
                .modified
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let since = since
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            modified <= since
        })
}

fn if_range_matches(headers: &HeaderMap, entry: &Entry) -> bool {
    match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) if v.starts_with('"') => v == format!("\"{}\"", entry.etag),
        Some(v) => httpdate::parse_http_date(v).is_ok_and(|d| {
            d.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                >= entry
                    .modified
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs()
        }),
    }
}

/// Parses a single `bytes=` range: `Ok(Some((start, end)))` inclusive, `Ok(None)` when the
/// header is not one we honour (multiple ranges, other units: the whole file is sent), `Err`
/// when unsatisfiable.
fn parse_range(value: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        (Some(start), Some(end)) if start <= end => (start, end.min(len.saturating_sub(1))),
        (Some(start), None) if b.is_empty() => (start, len.saturating_sub(1)),
        (None, Some(suffix)) if a.is_empty() && suffix > 0 => {
            (len.saturating_sub(suffix), len.saturating_sub(1))
        }
        (None, Some(0)) if a.is_empty() => return Err(()),
        _ => return Ok(None),
    };
    if range.0 >= len {
        return Err(());
    }
    Ok(Some(range))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=95-200", 100), Ok(Some((95, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
    }
}
