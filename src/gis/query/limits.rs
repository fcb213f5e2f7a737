//! What keeps one query from hurting the server: a deadline on its time inside SQLite, checked
//! by SQLite's progress handler together with whether its client is still there and whether the
//! server is stopping; a memory budget on its answer; and the sink its chunks go through, which
//! holds back the first chunk until the query is known to work (so that an error is still an
//! error status) and waits, within limits, for a slow client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::Connection;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::DataConfig;
use crate::gis::query::admission::Busy;
use crate::gis::query::threads::RunError;
use crate::gis::store::DatasetError;

/// A piece of a response body.
pub type Chunk = Result<Bytes, std::io::Error>;

/// SQLite virtual-machine steps between two checks of the deadline and the client.
const CHECK_EVERY: i32 = 4000;
/// Longest a query waits for its client to take a chunk before giving up on it.
pub const CLIENT_STALL: Duration = Duration::from_secs(30);

/// What each query may use: its time inside SQLite and its memory.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Longest time inside SQLite.
    pub timeout: Duration,
    /// Largest single value, feature and buffered answer, in bytes.
    pub memory: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self::from(&DataConfig::default())
    }
}

impl From<&DataConfig> for QueryLimits {
    fn from(config: &DataConfig) -> Self {
        Self {
            timeout: Duration::from_secs(config.query_timeout_secs.max(1)),
            memory: config.query_memory_mb.saturating_mul(1024 * 1024),
        }
    }
}

impl QueryLimits {
    /// The longest string or blob SQLite may make (its `SQLITE_LIMIT_LENGTH`).
    #[must_use]
    pub fn max_value(self) -> i32 {
        i32::try_from(self.memory).unwrap_or(i32::MAX)
    }
}

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
    /// Its client went away.
    #[error("the client went away")]
    Gone,
    /// Its client took nothing of the answer for this long while memory for answers was full.
    #[error("the client took nothing for {} s while the memory for answers was full", .0.as_secs())]
    Stalled(Duration),
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
    client: Option<Closed>,
    stop: CancellationToken,
    stopped: AtomicU8,
    /// Calls of [`Watch::must_stop`], so the server's stop (a lock to read) and the clock are
    /// looked at only every [`STOP_EVERY`] and [`CLOCK_EVERY`] of them.
    calls: AtomicU32,
}

/// Calls of [`Watch::must_stop`] (rows, geometries) between two looks at the server's stop.
const STOP_EVERY: u32 = 64;

/// Calls of [`Watch::must_stop`] between two looks at the clock for the deadline (reading it
/// was a fortieth of a fresh box's time when done on every row); the client is looked at every
/// time. A query overruns its deadline by at most this many rows' work, each bounded by the
/// query's memory.
const CLOCK_EVERY: u32 = 8;

impl Watch {
    /// A watch with `limits.timeout` of SQLite time, noticing `client` going away and `stop`.
    #[must_use]
    pub fn new(limits: QueryLimits, client: Option<Closed>, stop: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            limits,
            deadline: AtomicU64::new(nanos(limits.timeout)),
            client,
            stop,
            stopped: AtomicU8::new(Stop::Running as u8),
            calls: AtomicU32::new(0),
        })
    }

    /// Whether the query must stop now (and why is remembered).
    fn check(&self) -> bool {
        self.look(true, true)
    }

    /// [`Watch::check`], looking at the server's stop only when `server` is set and at the
    /// clock only when `clock` is.
    fn look(&self, server: bool, clock: bool) -> bool {
        let stop = if server && self.stop.is_cancelled() {
            Stop::Stopping
        } else if self.client.as_ref().is_some_and(Closed::is_closed) {
            Stop::Gone
        } else if clock && nanos(self.started.elapsed()) > self.deadline.load(Ordering::Relaxed) {
            Stop::TimedOut
        } else {
            return false;
        };
        self.stopped.store(stop as u8, Ordering::Relaxed);
        true
    }

    /// Whether the query must stop now (past its deadline, its client gone, the server
    /// stopping), for work done between SQLite's steps; [`Watch::stopped_error`] says why.
    #[must_use]
    pub fn must_stop(&self) -> bool {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        self.look(
            call.is_multiple_of(STOP_EVERY),
            call.is_multiple_of(CLOCK_EVERY),
        )
    }

    /// Why [`Watch::must_stop`] said stop.
    #[must_use]
    pub fn stopped_error(&self) -> QueryError {
        match self.stopped.load(Ordering::Relaxed) {
            2 => QueryError::Gone,
            3 => QueryError::Stopping,
            _ => QueryError::TimedOut(self.limits.timeout),
        }
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

/// Bytes of answers held for their clients: each query's own budget and the budget of all of
/// them together. A chunk takes its bytes from both before it is queued and gives them back when
/// the client's side takes it (or the answer is dropped).
#[derive(Debug, Clone)]
pub struct AnswerMemory {
    query: Arc<Semaphore>,
    all: Arc<Semaphore>,
    budget: usize,
}

impl AnswerMemory {
    /// A query's budget of `limits.memory` bytes within `all`.
    #[must_use]
    pub fn new(limits: QueryLimits, all: Arc<Semaphore>) -> Self {
        let budget = limits.memory.clamp(1, MAX_PERMITS_PER_CHUNK);
        Self {
            query: Arc::new(Semaphore::new(budget)),
            all,
            budget,
        }
    }

    /// Permits a chunk of `len` bytes takes (a chunk larger than the query's budget takes all of
    /// it, so that it can still pass once nothing else is held).
    fn permits(&self, len: usize) -> u32 {
        u32::try_from(len.clamp(1, self.budget)).unwrap_or(u32::MAX)
    }

    fn try_take(&self, n: u32) -> bool {
        let Ok(own) = self.query.try_acquire_many(n) else {
            return false;
        };
        match self.all.try_acquire_many(n) {
            Ok(all) => {
                own.forget();
                all.forget();
                true
            }
            Err(_) => false,
        }
    }

    async fn take(&self, n: u32) -> bool {
        let (Ok(own), Ok(all)) = (
            self.query.acquire_many(n).await,
            self.all.acquire_many(n).await,
        ) else {
            return false;
        };
        own.forget();
        all.forget();
        true
    }

    fn give_back(&self, n: u32) {
        let n = n as usize;
        self.query.add_permits(n);
        self.all.add_permits(n);
    }
}

/// The most bytes one chunk may hold permits for (a `u32` of permits).
const MAX_PERMITS_PER_CHUNK: usize = 1 << 30;

/// A chunk and the permits it holds.
type Held = (Chunk, u32);

/// Where a streaming query's chunks go: the first one is held until the query is known to
/// work; later ones wait, when the answer's memory is full, for the client to take some (which
/// moves the deadline back), up to [`CLIENT_STALL`].
pub struct Sink {
    tx: mpsc::UnboundedSender<Held>,
    ready: Option<oneshot::Sender<Result<(), QueryError>>>,
    watch: Arc<Watch>,
    memory: AnswerMemory,
    runtime: tokio::runtime::Handle,
}

/// The client's side of an answer: its chunks, each giving its memory back once the HTTP layer
/// asks for the next one (until then it may still hold it, waiting for the client) or drops the
/// answer.
pub struct Answer {
    rx: mpsc::UnboundedReceiver<Held>,
    memory: AnswerMemory,
    /// Permits of the chunk handed on last.
    handed: u32,
}

impl futures::Stream for Answer {
    type Item = Chunk;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Chunk>> {
        let handed = std::mem::take(&mut self.handed);
        self.memory.give_back(handed);
        self.rx.poll_recv(cx).map(|held| {
            held.map(|(chunk, permits)| {
                self.handed = permits;
                chunk
            })
        })
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.memory.give_back(self.handed);
        self.rx.close();
        while let Ok((_, permits)) = self.rx.try_recv() {
            self.memory.give_back(permits);
        }
    }
}

/// A sink for a query and the answer its client reads, held under `memory`.
#[must_use]
pub fn answer_channel(
    ready: oneshot::Sender<Result<(), QueryError>>,
    watch_limits: QueryLimits,
    memory: AnswerMemory,
    stop: CancellationToken,
) -> (Sink, Answer) {
    let (tx, rx) = mpsc::unbounded_channel();
    let watch = Watch::new(watch_limits, Some(Closed(tx.clone())), stop);
    let sink = Sink {
        tx,
        ready: Some(ready),
        watch,
        memory: memory.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    (
        sink,
        Answer {
            rx,
            memory,
            handed: 0,
        },
    )
}

impl Sink {
    /// The watch of this query.
    #[must_use]
    pub fn watch(&self) -> &Arc<Watch> {
        &self.watch
    }

    /// Hands on a chunk; false when the answer cannot go on (the client went away, or took
    /// nothing for [`CLIENT_STALL`]: then the answer is ended broken, or with an error status
    /// when nothing was sent yet).
    pub fn send(&mut self, chunk: Bytes) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        let permits = self.memory.permits(chunk.len());
        if !self.memory.try_take(permits) {
            let waited = Instant::now();
            let memory = &self.memory;
            let taken = self
                .runtime
                .block_on(async { tokio::time::timeout(CLIENT_STALL, memory.take(permits)).await })
                .unwrap_or(false);
            self.watch.extend(waited.elapsed());
            if !taken {
                if !self.tx.is_closed() {
                    self.fail(QueryError::Stalled(CLIENT_STALL));
                }
                return false;
            }
        }
        if let Some(ready) = self.ready.take()
            && ready.send(Ok(())).is_err()
        {
            self.memory.give_back(permits);
            return false;
        }
        match self.tx.send((Ok(chunk), permits)) {
            Ok(()) => true,
            Err(_) => {
                self.memory.give_back(permits);
                false
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
                let _ = self
                    .tx
                    .send((Err(std::io::Error::other(error.to_string())), 0));
            }
        }
    }
}

/// Whether an answer's client has gone, as the watch asks it.
#[derive(Debug)]
pub struct Closed(mpsc::UnboundedSender<Held>);

impl Closed {
    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}
