//! Accepting connections: TLS handshakes in each connection's own task, HTTP/1.1 and HTTP/2 by
//! ALPN, limits, and a graceful drain on stop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::api::error::ApiError;
use crate::api::reply::Response;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::routes::ConnInfo;
use super::service::Pipeline;
use crate::config::Limits;

/// What a listener needs to serve connections.
pub struct Acceptor {
    /// The request pipeline.
    pub pipeline: Arc<Pipeline>,
    /// TLS, or `None` for plain HTTP.
    pub tls: Option<TlsAcceptor>,
    /// Shared by all listeners of the component.
    pub permits: Arc<Semaphore>,
    /// Streamed responses (files read as they are sent, proxied answers, query answers) open
    /// at once, over all connections.
    pub open_streams: Arc<Semaphore>,
    /// Connections held per client address.
    pub per_client: Arc<PerClient>,
    /// Cancelled on stop.
    pub stop: CancellationToken,
    /// Tracks connection tasks for the drain.
    pub tracker: TaskTracker,
}

/// Connections held by each client address, capped.
#[derive(Debug)]
pub struct PerClient {
    cap: std::sync::atomic::AtomicUsize,
    held: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl PerClient {
    /// At most `cap` connections per address.
    #[must_use]
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: std::sync::atomic::AtomicUsize::new(cap),
            held: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Changes the cap (for connections accepted from now on).
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, std::sync::atomic::Ordering::Relaxed);
    }

    fn held(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, usize>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a connection from `ip` until the guard drops, or `None` when `ip` holds its cap.
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<ClientSlot> {
        let mut held = self.held();
        let count = held.entry(ip).or_insert(0);
        if *count >= self.cap.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            clients: self.clone(),
            ip,
        })
    }
}

/// One connection counted against its client address.
struct ClientSlot {
    clients: Arc<PerClient>,
    ip: std::net::IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut held = self.clients.held();
        if let Some(count) = held.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

impl Clone for Acceptor {
    fn clone(&self) -> Self {
        Self {
            pipeline: self.pipeline.clone(),
            tls: self.tls.clone(),
            permits: self.permits.clone(),
            open_streams: self.open_streams.clone(),
            per_client: self.per_client.clone(),
            stop: self.stop.clone(),
            tracker: self.tracker.clone(),
        }
    }
}

impl Acceptor {
    /// Accepts until stopped; each connection is served in its own task.
    pub async fn run(self, listener: TcpListener) {
        let local = listener.local_addr().ok();
        loop {
            let permit = tokio::select! {
                () = self.stop.cancelled() => break,
                permit = self.permits.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                () = self.stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Some(slot) = self.per_client.enter(peer.ip()) else {
                // Closed at once: the address already holds its share of the slots.
                tracing::debug!(client = %peer, "too many connections from this address; closed");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            let open = self
                .pipeline
                .metrics
                .then(crate::ops::metrics::global)
                .flatten()
                .map(crate::ops::metrics::Metrics::connection);
            self.tracker.spawn(async move {
                this.connection(stream, peer).await;
                drop(open);
                drop(slot);
                drop(permit);
            });
        }
        tracing::debug!(address = ?local, "stopped accepting");
    }

    async fn connection(self, stream: TcpStream, peer: SocketAddr) {
        // The limits in effect when the connection was accepted (a reload changes them for the
        // next ones).
        let limits = self.pipeline.site.load().limits.clone();
        match &self.tls {
            Some(tls) => {
                let handshake = tokio::time::timeout(
                    Duration::from_secs(limits.handshake_timeout_secs),
                    tls.accept(stream),
                );
                let handshake = handshake.await;
                if self.pipeline.metrics
                    && let Some(metrics) = crate::ops::metrics::global()
                {
                    metrics.handshake(matches!(handshake, Ok(Ok(_))));
                }
                match handshake {
                    Ok(Ok(tls_stream)) => {
                        self.serve(
                            tls_stream,
                            ConnInfo {
                                peer,
                                tls: true,
                                proxy: None,
                            },
                            &limits,
                        )
                        .await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(client = %peer, error = %e, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(client = %peer, "TLS handshake timed out"),
                }
            }
            None => {
                self.serve(
                    stream,
                    ConnInfo {
                        peer,
                        tls: false,
                        proxy: None,
                    },
                    &limits,
                )
                .await;
            }
        }
    }

    async fn serve<IO>(&self, io: IO, conn: ConnInfo, limits: &Limits)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let pipeline = self.pipeline.clone();
        let streams = Streams::new();
        let counted = streams.clone();
        let open_streams = self.open_streams.clone();
        let service = hyper::service::service_fn(move |request| {
            let stream = counted.begin();
            let answer = pipeline.clone().handle(conn, request);
            let open_streams = open_streams.clone();
            async move {
                let mut response = answer.await?;
                // A body of unknown length is read or produced as it is sent, holding a file,
                // an upstream connection or a query's answer: those are bounded over all
                // connections.
                let open = if hyper::body::Body::size_hint(response.body())
                    .exact()
                    .is_none()
                {
                    match open_streams.try_acquire_owned() {
                        Ok(permit) => Some(permit),
                        Err(_) => {
                            tracing::warn!(client = %conn.peer, "too many streamed responses open; answering 503");
                            response = busy();
                            None
                        }
                    }
                } else {
                    None
                };
                let sending = stream.sending();
                // Streamed answers' bytes are counted as they go (the others by their length).
                let counted = open
                    .as_ref()
                    .and(
                        response
                            .extensions()
                            .get::<crate::ops::metrics::RouteClass>()
                            .copied(),
                    )
                    .zip(crate::ops::metrics::global());
                Ok::<_, Infallible>(response.map(|body| Tracked {
                    body,
                    sending,
                    counted,
                    _open: open,
                    _stream: stream,
                }))
            }
        });
        // Heads up to the ceiling reach the pipeline, which answers one over the limit with a
        // JSON 431; only larger ones get the HTTP layer's bare 431.
        let ceiling = limits
            .max_header_bytes
            .saturating_mul(super::service::HEAD_CEILING);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // hyper's timer also runs while a kept-alive connection waits for its next
            // request, which would close it after this timeout rather than the idle one; the
            // head's time is measured below from its first byte instead.
            .header_read_timeout(None)
            .max_buf_size(ceiling.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(ceiling).unwrap_or(u32::MAX))
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .keep_alive_interval(Some(Duration::from_secs(limits.idle_timeout_secs)));
        let io = Watched {
            io,
            streams: streams.clone(),
            first: true,
            h2: false,
        };
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let head_limit = Duration::from_secs(limits.header_read_timeout_secs);
        let mut connection = std::pin::pin!(connection);
        let idle_limit = Duration::from_secs(limits.idle_timeout_secs);
        // Once asked to close, a connection that has not closed within another idle period
        // (a client that ignores GOAWAY or never reads) is dropped.
        let mut closing_by: Option<tokio::time::Instant> = None;
        loop {
            let idle_for = streams.idle_for();
            // A response the client takes nothing of (a zero HTTP/2 window, a full TCP window)
            // is abandoned after the same period, and its connection with it.
            if streams.stalled_for() >= idle_limit {
                tracing::debug!(client = %conn.peer, "response not taken by the client; connection dropped");
                return;
            }
            // A request head must arrive within its limit from its first byte.
            let head_for = streams.head_for();
            if head_for.is_some_and(|d| d >= head_limit) {
                tracing::debug!(client = %conn.peer, "request head not received in time; connection dropped");
                return;
            }
            // Waking at least once per head limit is what notices a head that began while
            // this task slept.
            let wait = idle_limit
                .saturating_sub(idle_for.max(streams.stalled_for()))
                .min(head_limit.saturating_sub(head_for.unwrap_or_default()))
                .max(Duration::from_millis(100));
            let forced = closing_by.unwrap_or_else(|| tokio::time::Instant::now() + wait);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(client = %conn.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = self.stop.cancelled(), if closing_by.is_none() => {
                    closing_by = Some(tokio::time::Instant::now() + idle_limit.max(Duration::from_secs(limits.drain_timeout_secs)));
                    connection.as_mut().graceful_shutdown();
                }
                () = tokio::time::sleep(wait), if closing_by.is_none() => {
                    // Idle means no request in flight: keep-alive pings and acknowledgements
                    // that move bytes do not count.
                    if streams.idle_for() >= idle_limit {
                        tracing::debug!(client = %conn.peer, "closing idle connection");
                        closing_by = Some(tokio::time::Instant::now() + idle_limit);
                        connection.as_mut().graceful_shutdown();
                    }
                }
                () = tokio::time::sleep_until(forced), if closing_by.is_some() => {
                    tracing::debug!(client = %conn.peer, "connection did not close when asked; dropped");
                    return;
                }
            }
        }
    }
}

/// The requests in flight on one connection, and since when it has had none; the responses
/// being sent, each with when the client last took a piece of it.
struct Streams {
    in_flight: AtomicUsize,
    epoch: Instant,
    /// Milliseconds after `epoch` when the last request ended (or the connection opened).
    idle_since: AtomicU64,
    /// Milliseconds after `epoch` when the first byte of an HTTP/1 request head came with no
    /// request in flight; [`NO_HEAD`] when none is being read.
    head_since: AtomicU64,
    /// Per response being sent: milliseconds after `epoch` when it started or had a piece taken.
    sending: std::sync::Mutex<Vec<Arc<AtomicU64>>>,
}

impl Streams {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            epoch: Instant::now(),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NO_HEAD),
            sending: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn sending(&self) -> std::sync::MutexGuard<'_, Vec<Arc<AtomicU64>>> {
        self.sending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long the most stalled response has waited for the client to take a piece of it
    /// (zero when none is being sent). One stalled response is enough: a client that keeps one
    /// stream moving cannot keep others stalled.
    fn stalled_for(&self) -> Duration {
        let now = self.now();
        let oldest = self
            .sending()
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .min();
        oldest.map_or(Duration::ZERO, |since| {
            Duration::from_millis(now.saturating_sub(since))
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts a request until the returned guard (moved into its response body) is dropped.
    fn begin(self: &Arc<Self>) -> StreamGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NO_HEAD, Ordering::Release);
        StreamGuard(self.clone())
    }

    /// Bytes came in: with no request in flight they begin a request head.
    fn received(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == NO_HEAD
        {
            self.head_since.store(self.now(), Ordering::Release);
        }
    }

    /// How long the request head being read has taken so far.
    fn head_for(&self) -> Option<Duration> {
        let since = self.head_since.load(Ordering::Acquire);
        (since != NO_HEAD).then(|| Duration::from_millis(self.now().saturating_sub(since)))
    }

    /// How long the connection has had no request in flight (zero while one is).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let since = self.idle_since.load(Ordering::Acquire);
        Duration::from_millis(self.now().saturating_sub(since))
    }
}

/// `head_since` when no head is being read.
const NO_HEAD: u64 = u64::MAX;

/// A connection's byte stream, telling its [`Streams`] when an HTTP/1 request head begins.
/// HTTP/2 (its preface `PRI * HTTP/2.0` first) is left alone: its frames arrive between
/// requests (pings, settings) and its streams have their own limits.
struct Watched<IO> {
    io: IO,
    streams: Arc<Streams>,
    /// Still before the connection's first bytes.
    first: bool,
    /// The connection speaks HTTP/2.
    h2: bool,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            if self.first {
                self.first = false;
                self.h2 = new.starts_with(b"PRI ");
            }
            if !self.h2 {
                self.streams.received();
            }
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// One request in flight: from its arrival until its response body is sent or dropped.
struct StreamGuard(Arc<Streams>);

impl StreamGuard {
    /// Lists its response as being sent until the returned guard is dropped.
    fn sending(&self) -> SendingGuard {
        let stamp = Arc::new(AtomicU64::new(self.0.now()));
        self.0.sending().push(stamp.clone());
        SendingGuard {
            streams: self.0.clone(),
            stamp,
        }
    }
}

/// A response being sent, and when the client last took a piece of it.
struct SendingGuard {
    streams: Arc<Streams>,
    stamp: Arc<AtomicU64>,
}

impl SendingGuard {
    fn stamp(&self) {
        self.stamp.store(self.streams.now(), Ordering::Release);
    }
}

impl Drop for SendingGuard {
    fn drop(&mut self) {
        self.streams
            .sending()
            .retain(|s| !Arc::ptr_eq(s, &self.stamp));
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let streams = &self.0;
        if streams.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            streams.idle_since.store(streams.now(), Ordering::Release);
        }
    }
}

/// A response body that keeps its request counted as in flight until it is done.
struct Tracked<B> {
    body: B,
    sending: SendingGuard,
    /// Where a streamed answer's bytes are counted.
    counted: Option<(
        crate::ops::metrics::RouteClass,
        &'static crate::ops::metrics::Metrics,
    )>,
    _open: Option<tokio::sync::OwnedSemaphorePermit>,
    _stream: StreamGuard,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B>
where
    B::Data: bytes::Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame {
            self.sending.stamp();
            if let (Some((class, metrics)), Some(data)) = (self.counted, frame.data_ref()) {
                metrics.sent(class, bytes::Buf::remaining(data) as u64);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// HTTP/2 streams one connection may have open at once (hyper's default is 200).
const MAX_STREAMS_PER_CONNECTION: u32 = 100;

/// The answer when too many streamed responses are open.
fn busy() -> Response {
    ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            Some("too many streamed responses are open; try again shortly".to_owned()),
        )
    }
    .into_response()
}

/// Serves plain-HTTP redirects to HTTPS on a listener until stopped.
pub async fn redirect(
    listener: TcpListener,
    https_port: Option<u16>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
        };
        tracker.spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<Incoming>| async move {
                    Ok::<_, Infallible>(redirect_response(&request, https_port))
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn redirect_response(
    request: &Request<Incoming>,
    https_port: Option<u16>,
) -> http::Response<String> {
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| {
            h.rsplit_once(':')
                .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
                .map_or(h, |(n, _)| n)
        })
        .unwrap_or("localhost")
        .to_owned();
    let port = https_port
        .filter(|p| *p != 443)
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{port}{path}");
    http::Response::builder()
        .status(http::StatusCode::PERMANENT_REDIRECT)
        .header(http::header::LOCATION, location)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body("{\"status\":308,\"error\":\"use https\"}".to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use http::Request;
    use hyper::body::Incoming;
    use tokio::net::TcpListener;
    use tokio::sync::Semaphore;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::Acceptor;
    use crate::api::reply::Response;
    use crate::config::HttpConfig;
    use crate::http::cors::Cors;
    use crate::http::host::HostFolders;
    use crate::http::proxy::Proxy;
    use crate::http::routes::{ConnInfo, Route, Site};
    use crate::http::service::Pipeline;
    use crate::http::static_files::StaticFiles;
    use crate::ops::health::Health;

    /// A dispatch whose `/features/boom` handler panics (an API path: static files are not
    /// dispatched).
    fn panicky(
        _: Arc<Site>,
        _: ConnInfo,
        _: Route,
        request: Request<Incoming>,
    ) -> Pin<Box<dyn Future<Output = Response> + Send>> {
        Box::pin(async move {
            assert!(request.uri().path() != "/features/boom", "handler bug");
            Response::new("fine".into())
        })
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_to_that_request_alone() {
        let config = HttpConfig::default();
        let dir = std::env::temp_dir();
        let site = Arc::new(Site {
            access_log: config.access_log.clone(),
            trusted: crate::http::forwarded::Trusted::default(),
            limits: config.limits.clone(),
            hosts: HostFolders::new(&dir, &config.hosts),
            files: StaticFiles::new(&config.cache_control),
            cors: Cors::new(&config.cors),
            proxy: Proxy::new(&[], 1024, &[]).unwrap_or_else(|e| panic!("{e}")),
            health: Health::new(actors::HealthRegistry::new(), None),
            metrics: crate::config::MetricsConfig::default(),
            status: crate::ops::status::StatusPage {
                registry: actors::HealthRegistry::new(),
                config: Arc::default(),
                root: std::path::PathBuf::new(),
                cert: None,
                journal: None,
                update: None,
                folders: crate::ops::status::FolderCounts::default(),
            },
            catalog: Arc::default(),
            gdal: Arc::new(crate::api::ogr2ogr::gdal::Gdal::new(
                &crate::config::GdalConfig::default(),
            )),
            search_index: dir.join("search.sqlite"),
            admin: crate::api::admin::Admin {
                config: Arc::default(),
                journal: None,
                directory: actors::Directory::new(),
                update: None,
                access: crate::api::access::AdminAccess::loopback_only(),
                root: std::path::PathBuf::new(),
                reloader: None,
            },
            refused: Vec::new(),
        });
        let acceptor = Acceptor {
            pipeline: Arc::new(Pipeline {
                metrics: false,
                site: arc_swap::ArcSwap::new(site),
                dispatch: panicky,
                counter: AtomicU64::new(0),
            }),
            tls: None,
            permits: Arc::new(Semaphore::new(10)),
            open_streams: Arc::new(Semaphore::new(10)),
            per_client: super::PerClient::new(10),
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(acceptor.clone().run(listener));
        // One keep-alive connection: the panic must not take it down either.
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(1)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let boom = client
            .get(format!("http://{addr}/features/boom"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(boom.status(), 500);
        let body: serde_json::Value = boom.json().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body["error"], "internal error");
        let fine = client
            .get(format!("http://{addr}/features/ok"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fine.status(), 200);
        assert_eq!(fine.text().await.unwrap_or_default(), "fine");
        acceptor.stop.cancel();
    }
}
