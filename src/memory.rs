//! Giving freed memory back to the system once a burst of work is over.
//!
//! mimalloc keeps pages freed by a thread for that thread's next allocations, and purges them
//! only when the thread next works in the allocator. A thread that goes idle after a burst
//! (a runtime worker parking, a query thread between queries) would keep them indefinitely, so
//! each asks mimalloc to collect as it goes idle, at most once a second: under load that is a
//! clock read per park; once the load ends, memory is returned within a second or two.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The least time between two collections on one thread.
const EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Called by a thread that is about to wait for work: collects its allocator heap, unless it
/// did so less than a second ago.
pub fn going_idle() {
    let now = Instant::now();
    let due = LAST.with(|last| {
        let due = last.get().is_none_or(|at| now.duration_since(at) >= EVERY);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        collect();
    }
}

fn collect() {
    #[allow(
        unsafe_code,
        reason = "mi_collect is a plain C call on the calling thread's own heap, safe at any time"
    )]
    // SAFETY: mi_collect takes no pointers; it frees only memory the allocator holds as free.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}
