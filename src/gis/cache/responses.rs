//! A memory cache of recent GeoJSON answers, keyed by dataset version and query: the web app asks
//! for the same layer URLs for every user, and a replaced dataset is a new version, so a cached
//! answer is never stale. Bounded in bytes; least recently used answers go first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

/// Bodies by key, with when each was last used.
type Entries = HashMap<String, (Bytes, u64)>;

/// The cache.
#[derive(Debug)]
pub struct ResponseCache {
    budget: usize,
    clock: AtomicU64,
    entries: Mutex<(Entries, usize)>,
    /// Bytes of answers being collected on their way to clients, all together (as much as the
    /// cache holds): past it an answer is sent without being collected.
    collecting: Arc<Semaphore>,
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
        Self {
            budget,
            clock: AtomicU64::new(0),
            entries: Mutex::new((HashMap::new(), 0)),
            collecting: Arc::new(Semaphore::new(budget.min(Semaphore::MAX_PERMITS))),
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
        if !self.enabled() {
            return None;
        }
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.0.get_mut(key).map(|(body, used)| {
            *used = tick;
            body.clone()
        })
    }

    /// Keeps an answer, evicting the least recently used ones to stay within budget.
    pub fn put(&self, key: String, body: Bytes) {
        if !self.enabled() || body.len() > MAX_ENTRY.min(self.budget) {
            return;
        }
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut guard = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (map, total) = &mut *guard;
        *total += cost(&key, &body);
        let key_cost = key.len();
        if let Some((old, _)) = map.insert(key, (body, tick)) {
            *total -= old.len() + key_cost + ENTRY_OVERHEAD;
        }
        while *total > self.budget {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((evicted, _)) = map.remove(&oldest) {
                *total -= cost(&oldest, &evicted);
            }
        }
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

    #[test]
    fn least_recently_used_answers_go_first() {
        // Room for two entries of four bytes under one-letter keys, not three.
        let cache = ResponseCache::new(2 * (4 + 1 + ENTRY_OVERHEAD) + 2);
        cache.put("a".into(), Bytes::from_static(b"aaaa"));
        cache.put("b".into(), Bytes::from_static(b"bbbb"));
        assert!(cache.get("a").is_some());
        cache.put("c".into(), Bytes::from_static(b"cccc"));
        assert!(cache.get("b").is_none(), "b was the least recently used");
        assert_eq!(cache.get("a").as_deref(), Some(&b"aaaa"[..]));
        assert_eq!(cache.get("c").as_deref(), Some(&b"cccc"[..]));
        let off = ResponseCache::new(0);
        off.put("a".into(), Bytes::from_static(b"a"));
        assert!(off.get("a").is_none());
    }
}
