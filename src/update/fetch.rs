//! The updater's network side: the manifest and its signature by conditional GET, the artifact
//! streamed to disk with its size bounded and its SHA-256 computed as it arrives, and a probe
//! that names why the release server is out of reach (DNS, TCP, TLS or an HTTP status).

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::UpdateError;
use super::journal::Cached;
use super::manifest::{MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES};

/// The updater's HTTP client: bounded connect and request times, at most five redirects and
/// never from `https` to `http`, our own user agent.
///
/// # Errors
/// When the client cannot be built.
pub fn client(timeout: Duration) -> Result<reqwest::Client, UpdateError> {
    reqwest::Client::builder()
        .user_agent(format!(
            "poziserver/{} updater ({})",
            crate::version::current().version,
            crate::version::platform()
        ))
        .connect_timeout(Duration::from_secs(15).min(timeout))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let downgrade = attempt.url().scheme() != "https"
                && attempt.previous().iter().any(|u| u.scheme() == "https");
            if downgrade {
                attempt.error("refused a redirect from https to http")
            } else if attempt.previous().len() > 5 {
                attempt.error("more than five redirects")
            } else {
                attempt.follow()
            }
        }))
        .build()
        .map_err(|e| UpdateError::Unreachable(format!("cannot make an HTTP client: {e}")))
}

/// A manifest fetched, or found unchanged.
#[derive(Debug)]
pub struct Fetched {
    /// Its bytes, signature and validators.
    pub cached: Cached,
    /// The server answered 304 Not Modified (the cached copy is used, and verified again).
    pub unchanged: bool,
}

/// A body read whole, refused past `limit` bytes.
async fn body_within(
    response: reqwest::Response,
    limit: usize,
    what: &str,
) -> Result<Vec<u8>, UpdateError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(UpdateError::Refused(format!(
            "the {what} is larger than {limit} bytes"
        )));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| UpdateError::Unreachable(format!("reading the {what}: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(UpdateError::Refused(format!(
                "the {what} is larger than {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// GETs the manifest at `url` (conditionally on `cached`) and its `.minisig` beside it.
///
/// # Errors
/// [`UpdateError::Unreachable`] for a network error or an error status (named by
/// [`probe`]), [`UpdateError::Refused`] for an oversized answer.
pub async fn manifest(
    client: &reqwest::Client,
    url: &reqwest::Url,
    cached: Option<&Cached>,
) -> Result<Fetched, UpdateError> {
    let mut request = client.get(url.clone());
    if let Some(cached) = cached {
        if let Some(etag) = &cached.etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        if let Some(modified) = &cached.last_modified {
            request = request.header(reqwest::header::IF_MODIFIED_SINCE, modified);
        }
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return Err(UpdateError::Unreachable(probe(url, &e).await)),
    };
    let status = response.status();
    if status == reqwest::StatusCode::NOT_MODIFIED
        && let Some(cached) = cached
    {
        return Ok(Fetched {
            cached: cached.clone(),
            unchanged: true,
        });
    }
    if !status.is_success() {
        return Err(UpdateError::Unreachable(format!(
            "HTTP status {status} for {url}"
        )));
    }
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let etag = header(reqwest::header::ETAG);
    let last_modified = header(reqwest::header::LAST_MODIFIED);
    let body = body_within(response, MAX_MANIFEST_BYTES, "manifest").await?;
    let mut signature_url = url.clone();
    signature_url.set_path(&format!("{}.minisig", url.path()));
    let signature = match client.get(signature_url.clone()).send().await {
        Err(e) => return Err(UpdateError::Unreachable(probe(&signature_url, &e).await)),
        Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => None,
        Ok(r) if !r.status().is_success() => {
            return Err(UpdateError::Unreachable(format!(
                "HTTP status {} for {signature_url}",
                r.status()
            )));
        }
        Ok(r) => {
            let bytes = body_within(r, MAX_SIGNATURE_BYTES, "signature").await?;
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
    };
    Ok(Fetched {
        cached: Cached {
            etag,
            last_modified,
            body,
            signature,
        },
        unchanged: false,
    })
}

/// Downloads `url` into `file`, refusing more than `size` bytes (the manifest's) or fewer, or a
/// SHA-256 other than `sha256` (lowercase or uppercase hex). The file is removed on refusal.
///
/// # Errors
/// [`UpdateError::Refused`] for a size or digest that differs, [`UpdateError::Unreachable`]
/// for a network error, [`UpdateError::Io`] when the file cannot be written.
pub async fn artifact(
    client: &reqwest::Client,
    url: &reqwest::Url,
    size: u64,
    sha256: &str,
    file: &Path,
) -> Result<(), UpdateError> {
    let result = download(client, url, size, sha256, file).await;
    if result.is_err() {
        let _ = std::fs::remove_file(file);
    }
    result
}

async fn download(
    client: &reqwest::Client,
    url: &reqwest::Url,
    size: u64,
    sha256: &str,
    file: &Path,
) -> Result<(), UpdateError> {
    let response = match client.get(url.clone()).send().await {
        Ok(r) => r,
        Err(e) => return Err(UpdateError::Unreachable(probe(url, &e).await)),
    };
    if !response.status().is_success() {
        return Err(UpdateError::Unreachable(format!(
            "HTTP status {} for {url}",
            response.status()
        )));
    }
    if let Some(length) = response.content_length()
        && length != size
    {
        return Err(UpdateError::Refused(format!(
            "the artifact is {length} bytes by its Content-Length; the manifest says {size}"
        )));
    }
    let mut out = tokio::fs::File::create(file)
        .await
        .map_err(UpdateError::io("cannot create", file))?;
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut received: u64 = 0;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            UpdateError::Refused(format!(
                "the download broke off after {received} of {size} bytes: {e}"
            ))
        })?;
        received += chunk.len() as u64;
        if received > size {
            return Err(UpdateError::Refused(format!(
                "the download is larger than the {size} bytes the manifest says (stopped at {received})"
            )));
        }
        digest.update(&chunk);
        out.write_all(&chunk)
            .await
            .map_err(UpdateError::io("cannot write", file))?;
    }
    if received < size {
        return Err(UpdateError::Refused(format!(
            "the download is truncated: {received} of the {size} bytes the manifest says"
        )));
    }
    out.sync_all()
        .await
        .map_err(UpdateError::io("cannot flush", file))?;
    let got = crate::config::admin::to_hex(digest.finish().as_ref());
    if !got.eq_ignore_ascii_case(sha256) {
        return Err(UpdateError::Refused(format!(
            "the artifact's SHA-256 is {got}; the manifest says {}",
            sha256.to_ascii_lowercase()
        )));
    }
    Ok(())
}

/// Names why `url` could not be fetched, after `error`: which step fails, DNS, TCP or TLS.
pub async fn probe(url: &reqwest::Url, error: &reqwest::Error) -> String {
    let Some(host) = url.host_str() else {
        return format!("{url}: {error}");
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let step = Duration::from_secs(10);
    let addresses = match tokio::time::timeout(step, tokio::net::lookup_host((host, port))).await {
        Err(_) => return format!("DNS: looking up {host} timed out"),
        Ok(Err(e)) => return format!("DNS: cannot resolve {host}: {e}"),
        Ok(Ok(a)) => a.collect::<Vec<_>>(),
    };
    let Some(address) = addresses.first() else {
        return format!("DNS: {host} has no addresses");
    };
    match tokio::time::timeout(step, tokio::net::TcpStream::connect(address)).await {
        Err(_) => return format!("TCP: connecting to {address} ({host}) timed out"),
        Ok(Err(e)) => return format!("TCP: cannot connect to {address} ({host}): {e}"),
        Ok(Ok(_)) => {}
    }
    if error.is_timeout() {
        return format!("HTTP: {host} accepted a connection but did not answer in time");
    }
    if url.scheme() == "https" && error.is_connect() {
        return format!(
            "TLS: cannot make a secure connection to {host}: {}",
            chain(error)
        );
    }
    format!("HTTP: {}", chain(error))
}

/// An error and its sources, on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
