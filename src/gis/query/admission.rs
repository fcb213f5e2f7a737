//! Bounded admission to scarce work (GDAL processes; query threads have their own queue in
//! `pool`, with the same bounds and the same [`Busy`]): at most
//! `slots` holders at once, at most `queue` more waiting, each waiting at most `wait`. Whoever
//! finds the queue full, or waits too long, is told to come back later (HTTP 503 with
//! `Retry-After`) instead of piling up threads, processes or memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Too much of this work is running and waiting; try again after `retry_after`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}: {slots} running and {queue} waiting, the most allowed; try again shortly")]
pub struct Busy {
    /// What was full (`queries`, `GDAL processes`, `conversions`).
    pub what: &'static str,
    /// Holders allowed at once.
    pub slots: usize,
    /// Waiters allowed.
    pub queue: usize,
    /// A sensible wait before trying again.
    pub retry_after: Duration,
}

impl Busy {
    /// `what` full, with `slots` holders and `queue` waiters, each waiting at most `wait`.
    #[must_use]
    pub fn new(what: &'static str, slots: usize, queue: usize, wait: Duration) -> Self {
        Self {
            what,
            slots,
            queue,
            retry_after: Duration::from_secs(1).max(wait / 2),
        }
    }
}

/// The gate.
#[derive(Debug)]
pub struct Admission {
    what: &'static str,
    slots: usize,
    queue: usize,
    wait: Duration,
    semaphore: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// A held slot; dropping it lets the next waiter in.
pub type Slot = OwnedSemaphorePermit;

/// Counts a waiter for as long as it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// A gate for `what` with `slots` holders (at least 1), `queue` waiters and a longest wait.
    #[must_use]
    pub fn new(what: &'static str, slots: usize, queue: usize, wait: Duration) -> Self {
        let slots = slots.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            what,
            slots,
            queue,
            wait,
            semaphore: Arc::new(Semaphore::new(slots)),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Holders allowed at once.
    #[must_use]
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Holders right now.
    #[must_use]
    pub fn running(&self) -> usize {
        self.slots - self.semaphore.available_permits()
    }

    /// Waiters right now.
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    fn busy(&self) -> Busy {
        Busy::new(self.what, self.slots, self.queue, self.wait)
    }

    /// A slot, at once when one is free, else after waiting in the queue.
    ///
    /// # Errors
    /// [`Busy`] when the queue is full or the wait ran out.
    pub async fn enter(&self) -> Result<Slot, Busy> {
        if let Ok(slot) = self.semaphore.clone().try_acquire_owned() {
            return Ok(slot);
        }
        let before = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        if before >= self.queue {
            return Err(self.busy());
        }
        match tokio::time::timeout(self.wait, self.semaphore.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Ok(slot),
            _ => Err(self.busy()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holders_and_waiters_are_bounded() {
        let gate = Arc::new(Admission::new("tests", 1, 1, Duration::from_secs(5)));
        let held = gate.enter().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(gate.running(), 1);
        // One may wait; the next is turned away at once.
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter().await.is_ok() }
        });
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let refused = gate.enter().await;
        assert!(matches!(refused, Err(Busy { what: "tests", .. })));
        drop(held);
        assert!(waiter.await.unwrap_or(false));
        assert_eq!(gate.waiting(), 0);
    }

    #[tokio::test]
    async fn a_wait_that_runs_out_is_busy() {
        let gate = Admission::new("tests", 1, 4, Duration::from_millis(20));
        let _held = gate.enter().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(gate.enter().await.is_err());
        assert_eq!(gate.waiting(), 0);
    }
}
