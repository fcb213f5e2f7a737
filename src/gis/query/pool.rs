//! The query threads: a fixed number of threads that take queued work themselves. A thread that
//! finishes a query starts the next waiting one at once, instead of waking the async side to
//! hand it a thread (a context switch costs as much as a small query on a virtual machine).
//! At most `slots` run at once and at most `queue` more wait; the async side gives up on work
//! that waited too long and takes it out of the queue.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::admission::Busy;

/// Work for a query thread.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// The threads and their queue.
#[derive(Debug)]
pub struct Pool {
    shared: Arc<Shared>,
    what: &'static str,
    slots: usize,
    queue: usize,
    wait: Duration,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    work: Condvar,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

#[derive(Default)]
struct State {
    /// Work not yet taken, with the number of its ticket.
    jobs: VecDeque<(u64, Job)>,
    next_ticket: u64,
    threads: usize,
    idle: usize,
    running: usize,
    /// The pool is gone: threads end once the queue is empty.
    closed: bool,
}

/// Queued work, until it starts: dropped or withdrawn before then, the work leaves the queue
/// without running.
#[derive(Debug)]
pub struct Ticket {
    shared: Arc<Shared>,
    number: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs run outside the lock, so a poisoned lock only means a panic in this module's
        // own bookkeeping, which leaves the state consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Ticket {
    /// Takes the work out of the queue if no thread has taken it yet; true when it was.
    pub fn withdraw(&self) -> bool {
        let mut state = self.shared.lock();
        let before = state.jobs.len();
        state.jobs.retain(|(number, _)| *number != self.number);
        state.jobs.len() != before
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.withdraw();
    }
}

impl Pool {
    /// A pool for `what` with `slots` threads (at least 1), `queue` waiting and a longest wait.
    #[must_use]
    pub fn new(what: &'static str, slots: usize, queue: usize, wait: Duration) -> Self {
        Self {
            shared: Arc::new(Shared::default()),
            what,
            slots: slots.max(1),
            queue,
            wait,
        }
    }

    /// Work running right now.
    #[must_use]
    pub fn running(&self) -> usize {
        self.shared.lock().running
    }

    /// Work waiting right now.
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.shared.lock().jobs.len()
    }

    /// The error for a full queue or a wait that ran out.
    fn busy(&self) -> Busy {
        Busy::new(self.what, self.slots, self.queue, self.wait)
    }

    /// Queues `work`, starting a thread for it when fewer than `slots` exist and none is idle.
    ///
    /// # Errors
    /// [`Busy`] when every thread is running and the queue is full (the work is dropped).
    pub fn submit(&self, work: impl FnOnce() + Send + 'static) -> Result<Ticket, Busy> {
        let mut state = self.shared.lock();
        if state.running + state.jobs.len() >= self.slots + self.queue {
            return Err(self.busy());
        }
        let number = state.next_ticket;
        state.next_ticket += 1;
        state.jobs.push_back((number, Box::new(work)));
        if state.idle > 0 {
            self.shared.work.notify_one();
        }
        // Idle threads count as idle until they wake: more work than them needs another.
        if state.jobs.len() > state.idle && state.threads < self.slots {
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("query".to_owned())
                .spawn(move || work_loop(&shared));
            match spawned {
                Ok(_) => state.threads += 1,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a query thread");
                    if state.threads == 0 {
                        state.jobs.pop_back();
                        return Err(self.busy());
                    }
                }
            }
        }
        Ok(Ticket {
            shared: self.shared.clone(),
            number,
        })
    }

    /// Waits for `done` (the work's result or first answer), giving up with [`Busy`] when the
    /// work has not started within the pool's longest wait; once started it is waited for
    /// without that limit (the work's own limits bound it).
    ///
    /// # Errors
    /// [`Busy`] when the work was still queued at the end of the wait (it is taken out).
    pub async fn wait<F: std::future::Future>(
        &self,
        ticket: Ticket,
        done: F,
    ) -> Result<F::Output, Busy> {
        let mut done = std::pin::pin!(done);
        match tokio::time::timeout(self.wait, &mut done).await {
            Ok(output) => Ok(output),
            Err(_) if ticket.withdraw() => Err(self.busy()),
            Err(_) => Ok(done.await),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
    }
}

/// A query thread: takes work until the pool is gone and the queue empty.
fn work_loop(shared: &Shared) {
    loop {
        let job = {
            let mut state = shared.lock();
            loop {
                if let Some((_, job)) = state.jobs.pop_front() {
                    state.running += 1;
                    break job;
                }
                if state.closed {
                    state.threads -= 1;
                    return;
                }
                drop(state);
                crate::memory::going_idle();
                state = shared.lock();
                if !state.jobs.is_empty() || state.closed {
                    continue;
                }
                state.idle += 1;
                state = shared
                    .work
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                state.idle -= 1;
            }
        };
        // A panic (logged by the panic hook) drops what the work would have answered with,
        // which its waiter sees as an internal error; the thread goes on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        shared.lock().running -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(slots: usize, queue: usize, wait: Duration) -> Pool {
        Pool::new("tests", slots, queue, wait)
    }

    /// Occupies one of the pool's threads until the returned sender is dropped, and waits
    /// until it has.
    async fn hold(pool: &Pool) -> std::sync::mpsc::Sender<()> {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let before = pool.running();
        let _ticket = pool
            .submit(move || {
                let _ = held.recv();
            })
            .unwrap_or_else(|e| panic!("{e}"));
        while pool.running() == before {
            tokio::task::yield_now().await;
        }
        release
    }

    /// Runs `work` on the pool and waits for its answer.
    async fn run<T: Send + 'static>(
        pool: &Pool,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<Result<T, tokio::sync::oneshot::error::RecvError>, Busy> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ticket = pool.submit(move || {
            let _ = tx.send(work());
        })?;
        pool.wait(ticket, rx).await
    }

    #[tokio::test]
    async fn running_and_waiting_work_is_bounded() {
        let pool = Arc::new(pool(1, 1, Duration::from_secs(5)));
        let release = hold(&pool).await;
        // One may wait; the next is turned away at once.
        let waiter = tokio::spawn({
            let pool = pool.clone();
            async move { run(&pool, || 7).await.ok().and_then(Result::ok) }
        });
        while pool.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            pool.submit(|| ()),
            Err(Busy { what: "tests", .. })
        ));
        drop(release);
        assert_eq!(waiter.await.ok().flatten(), Some(7));
        assert_eq!(pool.waiting(), 0);
    }

    #[tokio::test]
    async fn work_that_waits_too_long_is_busy_and_never_runs() {
        let pool = pool(1, 4, Duration::from_millis(20));
        let release = hold(&pool).await;
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let late = {
            let ran = ran.clone();
            run(&pool, move || {
                ran.store(true, std::sync::atomic::Ordering::SeqCst)
            })
            .await
        };
        assert!(
            late.is_err(),
            "work waited past the limit and was not refused"
        );
        assert_eq!(pool.waiting(), 0, "refused work stayed in the queue");
        drop(release);
        // The thread is free again and the refused work did not run.
        assert_eq!(run(&pool, || 1).await.ok().and_then(Result::ok), Some(1));
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_panic_is_an_error_for_its_waiter_and_the_thread_goes_on() {
        let pool = pool(1, 1, Duration::from_secs(5));
        let panicked = run(&pool, || -> u8 { panic!("on purpose") }).await;
        assert!(matches!(panicked, Ok(Err(_))));
        assert_eq!(run(&pool, || 2).await.ok().and_then(Result::ok), Some(2));
        // The thread counts itself free just after its work answered.
        let free = tokio::time::timeout(Duration::from_secs(5), async {
            while pool.running() != 0 {
                tokio::task::yield_now().await;
            }
        });
        assert!(free.await.is_ok(), "the thread stayed counted as running");
    }

    #[tokio::test]
    async fn dropped_waiters_leave_the_queue() {
        let pool = pool(1, 1, Duration::from_secs(5));
        let release = hold(&pool).await;
        let ticket = pool.submit(|| ()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pool.waiting(), 1);
        drop(ticket);
        assert_eq!(pool.waiting(), 0);
        drop(release);
    }
}
