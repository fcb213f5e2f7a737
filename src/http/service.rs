//! The outer request step around the router: CORS preflight, panic isolation, CORS headers and
//! the access log.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::FutureExt;
use http::header::{self, HeaderValue};
use http::{Request, StatusCode};
use hyper::body::Incoming;

use super::routes::{ConnInfo, Route, Site, serve_file};
use crate::api::error::ApiError;
use crate::api::reply::Response;
use crate::config::{AccessLog, AccessLogMode};

/// The handler of every request that is not a static file: [`super::routes::dispatch`], or a
/// stand-in in tests.
pub type Dispatch = fn(
    Arc<Site>,
    ConnInfo,
    Route,
    Request<Incoming>,
) -> Pin<Box<dyn Future<Output = Response> + Send>>;

/// [`super::routes::dispatch`] as a [`Dispatch`].
pub fn routes(
    site: Arc<Site>,
    conn: ConnInfo,
    route: Route,
    request: Request<Incoming>,
) -> Pin<Box<dyn Future<Output = Response> + Send>> {
    Box::pin(super::routes::dispatch(site, conn, route, request))
}

/// Shared by every connection of a listener.
#[derive(Debug)]
pub struct Pipeline {
    /// The site the routes serve, replaced whole by a config reload (a request keeps the one it
    /// started with).
    pub site: arc_swap::ArcSwap<Site>,
    /// The handler of API and proxy requests.
    pub dispatch: Dispatch,
    /// Requests seen, for sampling.
    pub counter: AtomicU64,
    /// Whether requests are counted for `/metrics`.
    pub metrics: bool,
}

/// How many times `max_header_bytes` the HTTP layer reads before cutting a head off itself.
pub const HEAD_CEILING: usize = 4;

/// The size of a request head as sent: the target and every header line.
fn head_bytes<B>(request: &Request<B>) -> usize {
    let target = request
        .uri()
        .path_and_query()
        .map_or(1, |p| p.as_str().len());
    request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + target
        + 16
}

impl Pipeline {
    /// Handles one request.
    pub async fn handle(
        self: Arc<Self>,
        conn: ConnInfo,
        mut request: Request<Incoming>,
    ) -> Result<Response, Infallible> {
        let started = Instant::now();
        let site = self.site.load_full();
        let mut conn = conn;
        // Through a trusted proxy: the client, scheme, host and prefix it gives are the request's.
        // (Two Host headers are refused below, untouched.)
        let one_host = request
            .headers()
            .get_all(header::HOST)
            .iter()
            .nth(1)
            .is_none();
        if let Some(forwarded) = one_host
            .then(|| site.trusted.read(conn.peer.ip(), request.headers()))
            .flatten()
        {
            conn.proxy = Some(conn.peer.ip());
            if let Some(client) = forwarded.client {
                conn.peer.set_ip(client);
            }
            if let Some(https) = forwarded.https {
                conn.tls = https;
            }
            if let Some(host) = forwarded.host {
                request.headers_mut().insert(header::HOST, host);
            }
            if let Some(prefix) = forwarded.prefix {
                request
                    .extensions_mut()
                    .insert(super::routes::ForwardedPrefix(prefix));
            }
        }
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let host = request.headers().get(header::HOST).cloned().or_else(|| {
            request
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        // HTTP/2 carries the host in :authority; handlers read the Host header.
        if !request.headers().contains_key(header::HOST)
            && let Some(host) = &host
        {
            request.headers_mut().insert(header::HOST, host.clone());
        }
        let origin = request.headers().get(header::ORIGIN).cloned();
        let mut class = crate::ops::metrics::RouteClass::Other;
        let route = Route::of(&site, &path);
        // The operators' endpoints are never readable cross-origin: no CORS for them.
        let operator = matches!(route, Route::Admin | Route::Metrics | Route::Status);

        let response = if head_bytes(&request) > site.limits.max_header_bytes {
            ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
                Some(format!(
                    "the request line and headers may hold at most {} bytes",
                    site.limits.max_header_bytes
                )),
            )
            .into_response()
        } else if !one_host {
            // Which of two hosts picks the site folder (and what a proxy in front saw) would
            // be a guess: refused, as RFC 9112 asks.
            ApiError::bad_request("bad request", "more than one Host header").into_response()
        } else if let Some(preflight) = (!operator)
            .then(|| site.cors.preflight(&method, request.headers()))
            .flatten()
        {
            preflight
        } else {
            class = route.class();
            let future = if route == Route::File
                && (method == http::Method::GET || method == http::Method::HEAD)
            {
                // Static files, most of the traffic, without boxing a future for them.
                AssertUnwindSafe(serve_file(&site, &method, &path, request.headers()))
                    .catch_unwind()
                    .await
            } else {
                AssertUnwindSafe((self.dispatch)(site.clone(), conn, route, request))
                    .catch_unwind()
                    .await
            };
            future.unwrap_or_else(|_| panicked(&method, &path))
        };
        let mut response = if method == http::Method::HEAD {
            without_body(response)
        } else {
            response
        };
        if !operator {
            site.cors.decorate(origin.as_ref(), &mut response);
        }
        if self.metrics
            && let Some(metrics) = crate::ops::metrics::global()
        {
            let status = response.status().as_u16();
            metrics.request(class, status, content_length(&response), started.elapsed());
            // A streamed answer's bytes are counted as they are sent (an answer of known
            // length, most of them, was counted whole above: no allocation for it).
            if http_body::Body::size_hint(response.body())
                .exact()
                .is_none()
            {
                response.extensions_mut().insert(class);
            }
        }
        self.log(
            &site.access_log,
            &conn,
            &method,
            host.as_ref(),
            (path, &response),
            started,
        );
        Ok(response)
    }

    fn log(
        &self,
        access_log: &AccessLog,
        conn: &ConnInfo,
        method: &http::Method,
        host: Option<&HeaderValue>,
        (path, response): (String, &Response),
        started: Instant,
    ) {
        let status = response.status();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let wanted = match access_log.mode {
            AccessLogMode::Off => false,
            AccessLogMode::On => true,
            AccessLogMode::Sampled => {
                status.is_server_error() || n.is_multiple_of(access_log.sample_one_in.max(1))
            }
        };
        if !wanted {
            return;
        }
        let bytes = content_length(response);
        crate::logging::access::record(crate::logging::access::Record {
            at: std::time::SystemTime::now(),
            client: conn.peer.ip(),
            method: method.clone(),
            host: host.cloned(),
            path,
            status: status.as_u16(),
            bytes,
            duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        });
    }
}

/// An answer's `Content-Length`, when it has one.
fn content_length(response: &Response) -> Option<u64> {
    response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A HEAD answer: the GET answer's headers, with its length when it is known, and no body
/// (HTTP/2 treats body bytes on a HEAD answer as a protocol error). A streamed body dropped
/// here stops the query or file read behind it.
fn without_body(response: Response) -> Response {
    use http_body::Body as _;
    let (mut parts, body) = response.into_parts();
    if let Some(length) = body.size_hint().exact()
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
        && parts.status != StatusCode::NOT_MODIFIED
        && parts.status != StatusCode::NO_CONTENT
    {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    Response::from_parts(parts, crate::api::reply::Body::empty())
}

/// The answer to a request whose handler panicked (the panic hook has logged the message and
/// location).
fn panicked(method: &http::Method, path: &str) -> Response {
    tracing::error!(method = %method, path = %path, "request handler panicked; answering 500");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error", None).into_response()
}
