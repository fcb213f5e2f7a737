//! The threads queries run on: a bounded pool with a bounded queue, the time and memory each
//! query may use, the memory of answers held for clients, and the stop every running query
//! watches.

use std::sync::Arc;

use rusqlite::Connection;
use tokio_util::sync::CancellationToken;

use super::admission::Busy;
use super::limits::QueryLimits;
use super::pool::{Pool, Ticket};
use crate::config::DataConfig;

/// Why work could not be run on a query thread.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Too many queries running and waiting.
    #[error(transparent)]
    Busy(#[from] Busy),
    /// The work panicked (the panic hook has logged where).
    #[error("internal error")]
    Panicked,
}

/// The query threads and the limits every query runs under.
#[derive(Debug)]
pub struct Queries {
    /// Time and memory each query may use.
    pub limits: QueryLimits,
    /// The threads, with their queue.
    pub threads: Pool,
    /// Cancelled when the server stops: running queries are interrupted.
    pub stop: CancellationToken,
    /// Bytes of answers held for their clients, all queries together.
    pub answers: Arc<tokio::sync::Semaphore>,
}

impl Queries {
    /// Query threads under `config`'s limits (setting SQLite's process-wide heap limit from
    /// it).
    #[must_use]
    pub fn new(config: &DataConfig) -> Self {
        let limits = QueryLimits::from(config);
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        // Two per core: a query finishing on one thread and the next starting on another keep
        // the cores busy, and runaway queries still take at most every core.
        let workers = if config.query_workers == 0 {
            2 * cores
        } else {
            config.query_workers
        };
        set_heap_limit(config.sqlite_memory_mb);
        Self {
            limits,
            threads: Pool::new("queries", workers, config.query_queue, limits.timeout),
            stop: CancellationToken::new(),
            answers: Arc::new(tokio::sync::Semaphore::new(
                config
                    .answer_memory_mb
                    .saturating_mul(1024 * 1024)
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
        }
    }

    /// Runs blocking work (SQLite, file conversions) on a query thread, waiting in the bounded
    /// queue for one.
    ///
    /// # Errors
    /// [`RunError::Busy`] when the queue is full or the wait ran out (the work is not run
    /// then); [`RunError::Panicked`] when it panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, RunError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ticket = self.start(move || {
            let _ = tx.send(work());
        })?;
        self.wait(ticket, rx).await?.map_err(|_| RunError::Panicked)
    }

    /// Queues blocking work for a query thread without waiting for it; wait for what it
    /// answers with [`Queries::wait`], which gives up if it has not started in time. The work
    /// runs to its end once started, even if nobody waits for it any more; dropped before it
    /// starts, the ticket takes it out of the queue.
    ///
    /// # Errors
    /// [`Busy`] when every thread is running and the queue is full; the work is not run then.
    pub fn start(&self, work: impl FnOnce() + Send + 'static) -> Result<Ticket, Busy> {
        self.threads.submit(work)
    }

    /// Waits for `done`, what started work answers with, giving up with [`Busy`] if the work
    /// has not left the queue within the query timeout.
    ///
    /// # Errors
    /// [`Busy`] when the work was still waiting at the end of the wait (it will not run).
    pub async fn wait<F: std::future::Future>(
        &self,
        ticket: Ticket,
        done: F,
    ) -> Result<F::Output, Busy> {
        self.threads.wait(ticket, done).await
    }
}

/// Sets SQLite's hard heap limit for the whole process.
fn set_heap_limit(megabytes: usize) {
    let bytes = i64::try_from(megabytes.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
    let set =
        Connection::open_in_memory().and_then(|c| c.pragma_update(None, "hard_heap_limit", bytes));
    if let Err(e) = set {
        tracing::warn!(error = %e, "cannot set SQLite's heap limit");
    }
}
