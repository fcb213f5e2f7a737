//! What keeps one query from hurting the server: a deadline on its time inside SQLite, checked
//! by SQLite's progress handler together with whether its client is still there and whether the
//! server is stopping; a memory budget on its answer; and the sink its chunks go through, which
//! holds back the first chunk until the query is known to work (so that an error is still an
//! error status) and waits, within limits, for a slow client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use warp::reply::Response;

use super::admission::Busy;
use super::gpkg::{DatasetError, QueryLimits, RunError};
use crate::http::error_body;

/// A piece of a response body.
pub type Chunk = Result<Bytes, std::io::Error>;

/// SQLite virtual-machine steps between two checks of the deadline and the client.
const CHECK_EVERY: i32 = 4000;
/// Longest a query waits for its client to take a chunk before giving up on it.
pub const CLIENT_STALL: Duration = Duration::from_secs(30);

/// Why a query did not give its answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Too many queries running and waiting.
    #[error(transparent)]
    Busy(#[from] Busy),
    /// It ran past its time inside SQLite.
    #[error("the query ran past its time limit of {} s (data.query_timeout_secs)", .0.as_secs())]
    TimedOut(Duration),
    /// The server is stopping.
    #[error("the server is stopping")]
    Stopping,
    /// Its client went away (or stopped reading).
    #[error("the client went away")]
    Gone,
    /// A value, a feature or the answer held for the client is larger than a query may use.
    #[error(
        "the answer needs more than the {} MiB a query may use (data.query_memory_mb)",
        .0 / (1024 * 1024)
    )]
    TooLarge(usize),
    /// SQLite reached the process-wide heap limit.
    #[error("SQLite is out of memory (data.sqlite_memory_mb)")]
    OutOfMemory,
    /// SQLite refused the statement or failed running it.
    #[error("{0}")]
    Sql(String),
    /// The dataset could not be used.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// A bug (the panic hook has logged it).
    #[error("internal error")]
    Internal,
}

impl From<RunError> for QueryError {
    fn from(error: RunError) -> Self {
        match error {
            RunError::Busy(busy) => Self::Busy(busy),
            RunError::Panicked => Self::Internal,
        }
    }
}

impl QueryError {
    /// The JSON error answer. `client_sql` says whether the statement held the client's own
    /// SQL (`-sql`, `-where`): then a failure is the request's fault (400); otherwise a
    /// statement this server made failed, which is the server's (500), or it ran out of time or
    /// memory (503).
    #[must_use]
    pub fn response(&self, client_sql: bool) -> Response {
        let detail = self.to_string();
        let (status, error) = match self {
            Self::Busy(busy) => return super::gdal::busy_response(busy),
            Self::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "server stopping"),
            Self::Gone => (StatusCode::BAD_REQUEST, "client went away"),
            Self::Dataset(DatasetError::NotFound(_)) => (StatusCode::NOT_FOUND, "not found"),
            Self::Dataset(DatasetError::UnknownLayer { .. }) => {
                (StatusCode::BAD_REQUEST, "bad request")
            }
            Self::Dataset(_) => (StatusCode::BAD_REQUEST, "bad dataset"),
            Self::TimedOut(_) | Self::TooLarge(_) | Self::OutOfMemory | Self::Sql(_)
                if client_sql =>
            {
                (StatusCode::BAD_REQUEST, "query refused")
            }
            Self::TimedOut(_) | Self::TooLarge(_) | Self::OutOfMemory => {
                tracing::warn!(error = %detail, "query stopped at a limit");
                (StatusCode::SERVICE_UNAVAILABLE, "query stopped at a limit")
            }
            Self::Sql(_) | Self::Internal => {
                tracing::error!(error = %detail, "query failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "query failed")
            }
        };
        error_body(status, error, Some(&detail))
    }
}

/// Why a watch stopped its query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Stop {
    Running = 0,
    TimedOut = 1,
    Gone = 2,
    Stopping = 3,
}

/// Watches one query: its deadline (which time spent waiting for the client moves back), its
/// client, and the server's stop.
#[derive(Debug)]
pub struct Watch {
    started: Instant,
    limits: QueryLimits,
    /// Nanoseconds after `started` when the query must stop.
    deadline: AtomicU64,
    client: Option<mpsc::Sender<Chunk>>,
    stop: CancellationToken,
    stopped: AtomicU8,
}

impl Watch {
    /// A watch with `limits.timeout` of SQLite time, noticing `client` going away and `stop`.
    #[must_use]
    pub fn new(
        limits: QueryLimits,
        client: Option<mpsc::Sender<Chunk>>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            limits,
            deadline: AtomicU64::new(nanos(limits.timeout)),
            client,
            stop,
            stopped: AtomicU8::new(Stop::Running as u8),
        })
    }

    /// Whether the query must stop now (and why is remembered).
    fn check(&self) -> bool {
        let stop = if self.stop.is_cancelled() {
            Stop::Stopping
        } else if self.client.as_ref().is_some_and(mpsc::Sender::is_closed) {
            Stop::Gone
        } else if nanos(self.started.elapsed()) > self.deadline.load(Ordering::Relaxed) {
            Stop::TimedOut
        } else {
            return false;
        };
        self.stopped.store(stop as u8, Ordering::Relaxed);
        true
    }

    /// Moves the deadline back by time spent waiting for the client.
    fn extend(&self, waited: Duration) {
        self.deadline.fetch_add(nanos(waited), Ordering::Relaxed);
    }

    /// The error for an SQLite failure, telling an interruption by this watch apart.
    #[must_use]
    pub fn error(&self, error: &rusqlite::Error) -> QueryError {
        use rusqlite::ErrorCode;
        match error.sqlite_error_code() {
            Some(ErrorCode::OperationInterrupted) => match self.stopped.load(Ordering::Relaxed) {
                2 => QueryError::Gone,
                3 => QueryError::Stopping,
                _ => QueryError::TimedOut(self.limits.timeout),
            },
            Some(ErrorCode::OutOfMemory) => QueryError::OutOfMemory,
            Some(ErrorCode::TooBig) => QueryError::TooLarge(self.limits.memory),
            _ => QueryError::Sql(sql_message(error)),
        }
    }

    /// The memory a query may use, in bytes.
    #[must_use]
    pub fn memory(&self) -> usize {
        self.limits.memory
    }

    /// Installs this watch as `connection`'s progress handler until the guard is dropped.
    ///
    /// # Errors
    /// When SQLite does not take the handler (the query must not run unwatched).
    pub fn install<'c>(
        self: &Arc<Self>,
        connection: &'c Connection,
    ) -> Result<Installed<'c>, QueryError> {
        let watch = self.clone();
        connection
            .progress_handler(CHECK_EVERY, Some(move || watch.check()))
            .map_err(|e| QueryError::Sql(sql_message(&e)))?;
        Ok(Installed(connection))
    }
}

/// Removes the progress handler when the query is done with the connection.
pub struct Installed<'c>(&'c Connection);

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        let _ = self.0.progress_handler(0, None::<fn() -> bool>);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// SQLite's own message for an error.
#[must_use]
pub fn sql_message(error: &rusqlite::Error) -> String {
    match error {
        rusqlite::Error::SqliteFailure(_, Some(message)) => message.clone(),
        other => other.to_string(),
    }
}

/// Where a streaming query's chunks go: the first one is held until the query is known to
/// work; later ones wait for a slow client (which moves the deadline back) up to
/// [`CLIENT_STALL`].
pub struct Sink {
    tx: mpsc::Sender<Chunk>,
    ready: Option<oneshot::Sender<Result<(), QueryError>>>,
    watch: Arc<Watch>,
    runtime: tokio::runtime::Handle,
}

impl Sink {
    /// A sink into `tx` that reports readiness (or the error) on `ready`.
    #[must_use]
    pub fn new(
        tx: mpsc::Sender<Chunk>,
        ready: oneshot::Sender<Result<(), QueryError>>,
        watch: Arc<Watch>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            tx,
            ready: Some(ready),
            watch,
            runtime,
        }
    }

    /// The watch of this query.
    #[must_use]
    pub fn watch(&self) -> &Arc<Watch> {
        &self.watch
    }

    /// Hands on a chunk; false when the client went away or stopped reading.
    pub fn send(&mut self, chunk: Bytes) -> bool {
        if let Some(ready) = self.ready.take()
            && ready.send(Ok(())).is_err()
        {
            return false;
        }
        match self.tx.try_send(Ok(chunk)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(item)) => {
                let waited = Instant::now();
                let tx = &self.tx;
                let sent = self
                    .runtime
                    .block_on(async { tokio::time::timeout(CLIENT_STALL, tx.send(item)).await });
                self.watch.extend(waited.elapsed());
                matches!(sent, Ok(Ok(())))
            }
        }
    }

    /// Ends the answer with `error`: an error status when nothing was sent yet, else a broken
    /// body (never one that looks complete).
    pub fn fail(&mut self, error: QueryError) {
        match self.ready.take() {
            Some(ready) => {
                let _ = ready.send(Err(error));
            }
            None => {
                tracing::warn!(error = %error, "query failed after its answer started");
                let tx = &self.tx;
                let item = Err(std::io::Error::other(error.to_string()));
                let _ = self
                    .runtime
                    .block_on(async { tokio::time::timeout(CLIENT_STALL, tx.send(item)).await });
            }
        }
    }
}

/// The chunks of an answer held for a client under a `limits.memory` budget.
#[must_use]
pub fn channel(limits: QueryLimits) -> (mpsc::Sender<Chunk>, mpsc::Receiver<Chunk>) {
    mpsc::channel((limits.memory / super::geojson::CHUNK).max(4))
}
