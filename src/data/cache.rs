//! A memory cache of recent GeoJSON answers, keyed by dataset version and query: the web app asks
//! for the same layer URLs for every user, and a replaced dataset is a new version, so a cached
//! answer is never stale. Bounded in bytes; least recently used answers go first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

/// Answers larger than this are not kept.
pub const MAX_ENTRY: usize = 8 * 1024 * 1024;

/// Bodies by key, with when each was last used.
type Entries = HashMap<String, (Bytes, u64)>;

/// The cache.
#[derive(Debug, Default)]
pub struct ResponseCache {
    budget: usize,
    clock: AtomicU64,
    entries: Mutex<(Entries, usize)>,
}

impl ResponseCache {
    /// A cache holding up to `budget` bytes (0 disables it).
    #[must_use]
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            ..Self::default()
        }
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
        *total += body.len();
        if let Some((old, _)) = map.insert(key, (body, tick)) {
            *total -= old.len();
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
                *total -= evicted.len();
            }
        }
    }
}

/// Passes a stream of chunks through, and gives the whole body to `done` at its end when it
/// completed without error and stayed under [`MAX_ENTRY`].
pub fn tee<S>(
    stream: S,
    done: impl FnOnce(Bytes) + Send + Sync + 'static,
) -> impl futures::Stream<Item = S::Item> + Send + Sync + 'static
where
    S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + Unpin + 'static,
{
    use futures::StreamExt;
    let mut collected: Option<Vec<u8>> = Some(Vec::new());
    let mut done = Some(done);
    let mut stream = stream;
    futures::stream::poll_fn(move |cx| {
        let item = futures::ready!(stream.poll_next_unpin(cx));
        match &item {
            Some(Ok(chunk)) => {
                if let Some(buffer) = collected.as_mut() {
                    if buffer.len() + chunk.len() > MAX_ENTRY {
                        collected = None;
                    } else {
                        buffer.extend_from_slice(chunk);
                    }
                }
            }
            Some(Err(_)) => collected = None,
            None => {
                if let (Some(buffer), Some(done)) = (collected.take(), done.take()) {
                    done(Bytes::from(buffer));
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
        let cache = ResponseCache::new(10);
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
