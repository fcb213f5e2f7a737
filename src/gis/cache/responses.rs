//! A memory cache of recent GeoJSON answers, keyed by dataset version and query: the web app asks
//! for the same layer URLs for every user, and a replaced dataset is a new version, so a cached
//! answer is never stale. Bounded in bytes by quick_cache (sharded, and scan-resistant: answers
//! asked again are kept over a run of answers asked once).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Semaphore;

/// Memory an entry costs beyond its body and key: the table slot, the key's and body's
/// allocation headers and rounding.
const ENTRY_OVERHEAD: usize = 128;

/// What an entry costs in memory.
fn cost(key: &str, body: &Bytes) -> usize {
    body.len() + key.len() + ENTRY_OVERHEAD
}

/// Answers larger than this are not kept.
pub const MAX_ENTRY: usize = 8 * 1024 * 1024;

/// An answer's cost, as [`cost`] counts it.
#[derive(Debug, Clone, Copy)]
struct Cost;

impl quick_cache::Weighter<String, Bytes> for Cost {
    fn weight(&self, key: &String, body: &Bytes) -> u64 {
        cost(key, body) as u64
    }
}

/// The cache.
#[derive(Debug)]
pub struct ResponseCache {
    budget: usize,
    /// `None` when the budget is 0.
    entries: Option<quick_cache::sync::Cache<String, Bytes, Cost>>,
    /// Bytes of answers being collected on their way to clients, all together (as much as the
    /// cache holds): past it an answer is sent without being collected.
    collecting: Arc<Semaphore>,
    /// Lookups answered from the cache.
    hits: std::sync::atomic::AtomicU64,
    /// Lookups that were not.
    misses: std::sync::atomic::AtomicU64,
}

/// What the response cache holds and how often it answers, for `/health`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseStats {
    /// Answers held.
    pub entries: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that were not.
    pub misses: u64,
}

impl Default for ResponseCache {
    fn default() -> Self {
        Self::new(0)
    }
}

impl ResponseCache {
    /// A cache holding up to `budget` bytes (0 disables it).
    #[must_use]
    pub fn new(budget: usize) -> Self {
        let entries = (budget > 0).then(|| {
            super::weighted(
                budget as u64,
                (MAX_ENTRY + ENTRY_OVERHEAD) as u64,
                (budget / (16 * 1024)).max(16),
                Cost,
            )
        });
        Self {
            budget,
            entries,
            collecting: Arc::new(Semaphore::new(budget.min(Semaphore::MAX_PERMITS))),
            hits: std::sync::atomic::AtomicU64::new(0),
            misses: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Passes an answer through to its client, collecting it for the cache (under `key`) when it
    /// ends whole, stays under [`MAX_ENTRY`] and fits in the memory for collecting.
    pub fn tee<S>(
        self: &Arc<Self>,
        key: String,
        stream: S,
    ) -> impl futures::Stream<Item = S::Item> + Send + Sync + 'static
    where
        S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + Unpin + 'static,
    {
        let cache = self.clone();
        tee(stream, self.collecting.clone(), move |body| {
            cache.put(key, body)
        })
    }

    /// Whether it keeps anything.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// The cached answer for `key`.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        let found = self.entries.as_ref()?.get(key);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        found
    }

    /// Entries, bytes, hits and misses so far.
    #[must_use]
    pub fn stats(&self) -> ResponseStats {
        use std::sync::atomic::Ordering::Relaxed;
        ResponseStats {
            entries: self.entries.as_ref().map_or(0, |e| e.len() as u64),
            bytes: self.held(),
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
        }
    }

    /// Keeps an answer, evicting others to stay within budget.
    pub fn put(&self, key: String, body: Bytes) {
        if let Some(entries) = &self.entries
            && body.len() <= MAX_ENTRY.min(self.budget)
        {
            entries.insert(key, body);
        }
    }

    /// Bytes held now, as [`cost`] counts them.
    #[must_use]
    pub fn held(&self) -> u64 {
        self.entries
            .as_ref()
            .map_or(0, quick_cache::sync::Cache::weight)
    }
}

/// Bytes collected for the cache, with the permits they hold (given back when dropped).
struct Collected {
    buffer: Vec<u8>,
    budget: Arc<Semaphore>,
    held: usize,
}

impl Collected {
    /// Adds a chunk, or says no when it would pass [`MAX_ENTRY`] or the shared budget.
    fn add(&mut self, chunk: &[u8]) -> bool {
        if self.buffer.len() + chunk.len() > MAX_ENTRY {
            return false;
        }
        let Ok(n) = u32::try_from(chunk.len()) else {
            return false;
        };
        match self.budget.try_acquire_many(n) {
            Ok(permit) => {
                permit.forget();
                self.held += chunk.len();
                self.buffer.extend_from_slice(chunk);
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for Collected {
    fn drop(&mut self) {
        self.budget.add_permits(self.held);
    }
}

/// Passes a stream of chunks through, and gives the whole body to `done` at its end when it
/// completed without error, stayed under [`MAX_ENTRY`] and fit in `budget` (shared by every
/// answer being collected).
fn tee<S>(
    stream: S,
    budget: Arc<Semaphore>,
    done: impl FnOnce(Bytes) + Send + Sync + 'static,
) -> impl futures::Stream<Item = S::Item> + Send + Sync + 'static
where
    S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + Unpin + 'static,
{
    use futures::StreamExt;
    let mut collected = Some(Collected {
        buffer: Vec::new(),
        budget,
        held: 0,
    });
    let mut done = Some(done);
    let mut stream = stream;
    futures::stream::poll_fn(move |cx| {
        let item = futures::ready!(stream.poll_next_unpin(cx));
        match &item {
            Some(Ok(chunk)) => {
                if collected.as_mut().is_some_and(|c| !c.add(chunk)) {
                    collected = None;
                }
            }
            Some(Err(_)) => collected = None,
            None => {
                if let (Some(mut collected), Some(done)) = (collected.take(), done.take()) {
                    // What is kept is what is counted: the buffer's spare capacity (up to half
                    // of it, as it grew) is given back first.
                    let mut body = std::mem::take(&mut collected.buffer);
                    body.shrink_to_fit();
                    done(Bytes::from(body));
                }
            }
        }
        std::task::Poll::Ready(item)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The budget holds whatever is put, and an answer asked for again and again stays
    /// while a run of answers asked once passes through.
    #[test]
    fn stays_within_budget_and_keeps_answers_asked_again() {
        let body = Bytes::from(vec![b'x'; 1000]);
        let budget = 20 * (1000 + 8 + ENTRY_OVERHEAD);
        let cache = ResponseCache::new(budget);
        cache.put("hot".into(), body.clone());
        for i in 0..1000 {
            cache.put(format!("once-{i:03}"), body.clone());
            assert!(
                cache.get("hot").is_some(),
                "the answer asked again was evicted at {i}"
            );
            assert!(
                cache.held() <= budget as u64,
                "{} over {budget}",
                cache.held()
            );
        }
        assert!(
            cache.get("once-999").is_some(),
            "the newest answer was not kept"
        );
        // An answer that becomes popular later (asked, and kept again after each miss, as
        // the server does) is soon answered from the cache through the next run too.
        let ask = |key: &str| {
            let hit = cache.get(key).is_some();
            if !hit {
                cache.put(key.to_owned(), body.clone());
            }
            hit
        };
        let mut hits = 0;
        for i in 0..1000 {
            cache.put(format!("again-{i:03}"), body.clone());
            hits += usize::from(ask("later"));
            assert!(
                cache.get("hot").is_some(),
                "the first popular answer was evicted at {i}"
            );
            assert!(
                cache.held() <= budget as u64,
                "{} over {budget}",
                cache.held()
            );
        }
        assert!(
            hits >= 990,
            "the popular answer was found {hits} times in 1000"
        );
        // An answer larger than the budget is not kept; nothing is kept without a budget.
        let small = ResponseCache::new(100);
        small.put("big".into(), body.clone());
        assert!(small.get("big").is_none());
        let off = ResponseCache::new(0);
        off.put("a".into(), Bytes::from_static(b"a"));
        assert!(off.get("a").is_none());
        assert_eq!(off.held(), 0);
    }
}
