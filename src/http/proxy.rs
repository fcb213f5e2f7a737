//! Reverse proxy routes to QGIS Server, MapServer or IIS: method, path, query, headers and
//! bodies forwarded and streamed both ways, with X-Forwarded-* added; 502 when the upstream is
//! down, 504 when it is too slow.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use crate::api::error::ApiError;
use crate::api::reply::{Body, Response};
use crate::config::ProxyRoute;

/// Hop-by-hop headers, never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The configured routes and one shared client.
#[derive(Debug, Clone)]
pub struct Proxy {
    routes: Vec<ProxyRoute>,
    client: reqwest::Client,
    body_limit: u64,
    /// This server's names: only under one of them is a public URL told to or written for
    /// an upstream (a client's own `Host` must not end up in a map server's cache).
    names: Vec<String>,
    /// Bytes of upstream answers held for rewriting, over all requests.
    rewriting: std::sync::Arc<tokio::sync::Semaphore>,
}

/// One request to forward.
#[derive(Debug)]
pub struct Forward {
    /// Method.
    pub method: Method,
    /// Raw path (percent-encoded as received).
    pub path: String,
    /// Raw query, if any.
    pub query: Option<String>,
    /// Request headers.
    pub headers: HeaderMap,
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// Whether the client came over TLS.
    pub tls: bool,
    /// The trusted proxy in front of this server, when the request came through one.
    pub proxy: Option<std::net::IpAddr>,
    /// The path prefix that proxy serves this server under (`X-Forwarded-Prefix`).
    pub prefix: Option<String>,
}

/// Largest upstream answer whose URLs are rewritten.
const MAX_REWRITE_BYTES: usize = 16 * 1024 * 1024;

/// Whether an answer is text whose URLs can be rewritten (XML, JSON, HTML, plain text).
fn is_text(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            let t = t.to_ascii_lowercase();
            t.starts_with("text/") || t.contains("xml") || t.contains("json")
        })
}

/// Bytes of upstream answers held for rewriting at once, over all requests.
const REWRITE_BUDGET: usize = 64 * 1024 * 1024;

/// An upstream's text answer with its base URL replaced by the route's public one (the bytes
/// are replaced as they are: the text's encoding is kept).
async fn rewrite(
    upstream: reqwest::Response,
    status: StatusCode,
    mut headers: HeaderMap,
    route: &ProxyRoute,
    public: &str,
    budget: &std::sync::Arc<tokio::sync::Semaphore>,
) -> Result<Response, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream answer too large",
            Some(format!(
                "answers rewritten for {} may be at most {MAX_REWRITE_BYTES} bytes",
                route.prefix
            )),
        )
    };
    // Held for the whole answer, whatever its size turns out to be.
    let Ok(_held) = budget
        .clone()
        .try_acquire_many_owned(u32::try_from(MAX_REWRITE_BYTES).unwrap_or(u32::MAX))
    else {
        return Err(ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                Some("too many answers are being rewritten at once".to_owned()),
            )
        });
    };
    let mut body = Vec::new();
    let mut stream = upstream.bytes_stream();
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        let chunk = chunk.map_err(|e| {
            tracing::warn!(upstream = %route.upstream, error = %e, "upstream answer broke off");
            ApiError::new(StatusCode::BAD_GATEWAY, "upstream failed", None)
        })?;
        if body.len() + chunk.len() > MAX_REWRITE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let base = route.upstream.trim_end_matches('/').as_bytes();
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body.as_slice();
    while let Some(at) = memchr::memmem::find(rest, base) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(public.as_bytes());
        rest = &rest[at + base.len()..];
    }
    out.extend_from_slice(rest);
    for stale in [header::CONTENT_LENGTH, header::ETAG, header::CONTENT_RANGE] {
        headers.remove(stale);
    }
    headers.remove("content-md5");
    let mut response = Response::new(Body::from(out));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// Headers a client may claim that only this server sets for its upstreams.
fn is_forwarding(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.starts_with("x-forwarded-")
        || name.starts_with("x-qgis-")
        || matches!(
            name,
            "forwarded" | "x-real-ip" | "x-original-url" | "x-rewrite-url"
        )
}

impl Proxy {
    /// Whether `host` (a `Host` value) is one of this server's names (any port).
    fn is_own_name(&self, host: &str) -> bool {
        crate::api::access::host_name(host).is_some_and(|name| self.names.contains(&name))
    }
}

/// The headers QGIS Server takes the URLs it advertises from. It matches them case-sensitively
/// (`X-Qgis-Service-Url`): the client writes HTTP/1 header names in that conventional case.
const QGIS_SERVICE_URLS: [HeaderName; 5] = [
    HeaderName::from_static("x-qgis-service-url"),
    HeaderName::from_static("x-qgis-wms-service-url"),
    HeaderName::from_static("x-qgis-wfs-service-url"),
    HeaderName::from_static("x-qgis-wcs-service-url"),
    HeaderName::from_static("x-qgis-wmts-service-url"),
];

impl Proxy {
    /// A proxy for `routes`, refusing request bodies over `body_limit` bytes.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        routes: &[ProxyRoute],
        body_limit: u64,
        names: &[String],
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            // Conventional header case on HTTP/1: some upstreams (qgis_mapserver) match names
            // case-sensitively.
            .http1_title_case_headers()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            routes: routes.to_vec(),
            client,
            body_limit,
            names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
            rewriting: std::sync::Arc::new(tokio::sync::Semaphore::new(REWRITE_BUDGET)),
        })
    }

    /// The route whose prefix the path falls under (`/iis` matches `/iis` and `/iis/...`).
    #[must_use]
    pub fn route_for(&self, path: &str) -> Option<&ProxyRoute> {
        self.routes.iter().find(|r| {
            path.strip_prefix(r.prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    /// Forwards a request along `route`, streaming the body both ways.
    ///
    /// # Errors
    /// A path climbing above the upstream's base, a body over the limit, or an upstream that
    /// is down or too slow.
    pub async fn forward<S>(
        &self,
        route: &ProxyRoute,
        request: Forward,
        body: S,
    ) -> Result<Response, ApiError>
    where
        S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static,
    {
        let rest = request
            .path
            .strip_prefix(route.prefix.as_str())
            .unwrap_or_default();
        let rest = match upstream_path(rest) {
            Ok(rest) => rest,
            Err(reason) => return Err(ApiError::bad_request("bad path", reason)),
        };
        let mut url = format!("{}{rest}", route.upstream.trim_end_matches('/'));
        if let Some(query) = &request.query {
            url.push('?');
            url.push_str(query);
        }
        if let Some(length) = request
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            && length > self.body_limit
        {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
                Some(format!("limit is {} bytes", self.body_limit)),
            ));
        }

        let mut headers = HeaderMap::new();
        let named = connection_named(&request.headers);
        for (name, value) in &request.headers {
            if !is_hop_by_hop(name, &named) && name != header::HOST && !is_forwarding(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        // The chain is passed on only as a trusted proxy gave it (with that proxy added); from
        // anyone else, what the client claims is dropped and the client is the chain.
        let chain = match (request.proxy, request.peer) {
            (Some(proxy), _) => {
                let prior: Vec<&str> = request
                    .headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                Some(if prior.is_empty() {
                    proxy.to_string()
                } else {
                    format!("{}, {proxy}", prior.join(", "))
                })
            }
            (None, Some(peer)) => Some(peer.ip().to_string()),
            (None, None) => None,
        };
        if let Some(v) = chain.and_then(|value| HeaderValue::from_str(&value).ok()) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static(if request.tls { "https" } else { "http" }),
        );
        if let Some(host) = request.headers.get(header::HOST) {
            headers.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
        }
        // Where the client reaches this route: the URL a map server should advertise, only under
        // one of this server's names.
        let scheme = if request.tls { "https" } else { "http" };
        let prefix = format!(
            "{}{}",
            request.prefix.as_deref().unwrap_or(""),
            route.prefix
        );
        if let Ok(v) = HeaderValue::from_str(&prefix) {
            headers.insert(HeaderName::from_static("x-forwarded-prefix"), v);
        }
        let known_host = request
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| self.is_own_name(h));
        let public_base = known_host.map(|host| format!("{scheme}://{host}{prefix}"));
        // The service URL to advertise is fixed by the route (its prefix, or `service_path`
        // under it), never the request's path: the map server keys its capabilities cache on it.
        let service_path = route.service_path.as_deref().unwrap_or("");
        if let Some(public) = public_base
            .as_deref()
            .and_then(|base| HeaderValue::from_str(&format!("{base}{service_path}")).ok())
        {
            for name in QGIS_SERVICE_URLS {
                headers.insert(name, public.clone());
            }
        }
        // The client's Host, for upstreams that keep a cache per host (QGIS Server's
        // capabilities); otherwise the upstream's own. Only one of this server's names is sent.
        if route.preserve_host
            && let Some(host) = known_host.and_then(|h| HeaderValue::from_str(h).ok())
        {
            headers.insert(header::HOST, host);
        }
        // Answers to be rewritten come uncompressed and whole.
        if route.rewrite_urls {
            headers.remove(header::ACCEPT_ENCODING);
            headers.remove(header::RANGE);
        }

        let limit = self.body_limit;
        let mut seen = 0u64;
        let limited = body.and_then(move |chunk| {
            seen += chunk.len() as u64;
            let result = if seen > limit {
                Err(std::io::Error::other("request body exceeds the limit"))
            } else {
                Ok(chunk)
            };
            futures::future::ready(result)
        });
        let has_body = !matches!(request.method, Method::GET | Method::HEAD | Method::OPTIONS)
            || request.headers.contains_key(header::CONTENT_LENGTH)
            || request.headers.contains_key(header::TRANSFER_ENCODING);
        let mut builder = self
            .client
            .request(request.method.clone(), &url)
            .headers(headers)
            .timeout(Duration::from_secs(route.timeout_secs));
        if has_body {
            builder = builder.body(reqwest::Body::wrap_stream(limited));
        }
        match builder.send().await {
            Ok(upstream) => {
                let status = upstream.status();
                let mut out = HeaderMap::new();
                let named = connection_named(upstream.headers());
                for (name, value) in upstream.headers() {
                    if !is_hop_by_hop(name, &named) {
                        out.append(name.clone(), value.clone());
                    }
                }
                if route.rewrite_urls
                    && status == StatusCode::OK
                    && request.method != Method::HEAD
                    && let Some(public) = &public_base
                    && is_text(&out)
                    && out.get(header::CONTENT_ENCODING).is_none()
                    && upstream
                        .content_length()
                        .is_none_or(|n| n <= MAX_REWRITE_BYTES as u64)
                {
                    return rewrite(upstream, status, out, route, public, &self.rewriting).await;
                }
                let stream = upstream.bytes_stream().map_err(std::io::Error::other);
                let mut response = Response::new(Body::stream(stream));
                *response.status_mut() = status;
                *response.headers_mut() = out;
                Ok(response)
            }
            // The upstream's address stays in the log: clients learn only the route.
            Err(e) if e.is_timeout() => {
                tracing::warn!(upstream = %route.upstream, timeout_secs = route.timeout_secs, "upstream timed out");
                Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream timed out",
                    Some(format!(
                        "the server behind {} did not answer within {} s",
                        route.prefix, route.timeout_secs
                    )),
                ))
            }
            Err(e) => {
                tracing::warn!(upstream = %route.upstream, error = %root_cause(&e), "upstream unreachable");
                Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream unreachable",
                    Some(format!(
                        "the server behind {} cannot be reached",
                        route.prefix
                    )),
                ))
            }
        }
    }
}

/// The headers a `Connection` header names: hop-by-hop for this connection only (RFC 9110
/// section 7.6.1).
fn connection_named(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn is_hop_by_hop(name: &HeaderName, named: &[String]) -> bool {
    HOP_BY_HOP.contains(&name.as_str()) || named.iter().any(|n| n == name.as_str())
}

/// Replaces every `from` (ASCII, any case) in `text` with `to`.
fn replace_ignoring_case(text: &str, from: &str, to: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (at, _) in lower.match_indices(from) {
        out.push_str(&text[last..at]);
        out.push_str(to);
        last = at + from.len();
    }
    out.push_str(&text[last..]);
    out
}

/// The path sent upstream for `rest` (what follows the route's prefix): dot segments resolved
/// as an upstream would resolve them (plain or percent-encoded, after `/` or `\`, with `;`
/// parameters), so that nothing can climb above the upstream's base.
///
/// # Errors
/// When the path would leave the base, or hides dots or slashes under double encoding.
fn upstream_path(rest: &str) -> Result<String, &'static str> {
    let lower = rest.to_ascii_lowercase();
    if ["%252e", "%252f", "%255c"]
        .iter()
        .any(|d| lower.contains(d))
    {
        return Err("double-encoded dots and slashes are not forwarded");
    }
    let mut unified = rest.replace('\\', "/");
    for (encoded, plain) in [("%2e", "."), ("%2f", "/"), ("%5c", "/")] {
        unified = replace_ignoring_case(&unified, encoded, plain);
    }
    let mut kept: Vec<&str> = Vec::new();
    let segments: Vec<&str> = unified.split('/').skip(1).collect();
    for segment in &segments {
        match segment.split(';').next().unwrap_or_default() {
            "." => {}
            ".." => {
                if kept.pop().is_none() {
                    return Err("the path leaves the proxied server's base");
                }
            }
            _ => kept.push(segment),
        }
    }
    let mut path = String::with_capacity(unified.len());
    for segment in &kept {
        path.push('/');
        path.push_str(segment);
    }
    // A trailing slash (or a last dot segment) names a folder.
    if segments
        .last()
        .is_some_and(|s| s.is_empty() || matches!(*s, "." | ".."))
        && !path.ends_with('/')
    {
        path.push('/');
    }
    Ok(path)
}

fn root_cause(error: &dyn std::error::Error) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::upstream_path;

    #[test]
    fn dot_segments_stay_under_the_base() {
        for (rest, forwarded) in [
            ("", ""),
            ("/", "/"),
            ("/wms", "/wms"),
            ("/a/../b", "/b"),
            ("/a/./b/", "/a/b/"),
            ("/a/%2e%2E/b", "/b"),
            ("/a%2fb", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/x%20y", "/x%20y"),
        ] {
            assert_eq!(upstream_path(rest), Ok(forwarded.to_owned()), "{rest}");
        }
        for rest in [
            "/../secret",
            "/%2e%2e/secret",
            "/..\\secret",
            "/.%2e/.%2e/root",
            "/a/../../root",
            "/..;/secret",
            "/%2E%2E%5csecret",
            "/%252e%252e/secret",
        ] {
            assert!(upstream_path(rest).is_err(), "{rest} accepted");
        }
    }
}
