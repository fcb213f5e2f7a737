//! Rendered features kept in memory, so that a box query over features already read is
//! answered from the R*Tree and these copies, without reading rows or writing JSON again.
//!
//! Unlike the response cache this serves any box: the web app asks for the features in view,
//! and a panned or zoomed view asks again for most of the same features under a new box. Each
//! copy is keyed by a *variant* (the dataset's path and version and the query's SELECT), so a
//! replaced dataset is never answered from old copies; those age out. Bounded in bytes; the least
//! recently used copies go first.
//!
//! A feature is copied the second time it is read, not the first (a "doorkeeper" bit set
//! remembers first reads): queries that wander over a large layer, touching each feature once,
//! then cost almost nothing extra and do not push out the copies that are reused. And once the
//! cache is full, queries copy what they read only while recent queries are finding their
//! copies: a layer far larger than the cache, read all over, would otherwise churn copies in and
//! out at a cost (about 40% of throughput, measured) that no hit repays.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;

/// What is kept of one feature.
#[derive(Debug, Clone)]
pub struct Cached {
    /// Its GeoJSON `Feature` object, or `None` when it was read but not written (it fell outside
    /// the box that read it).
    pub json: Option<Bytes>,
    /// Its bounds in the layer's system; `None` when it has no geometry.
    pub envelope: Option<[f64; 4]>,
    /// Its GeoPackage geometry, kept when its bounds are not a point (to test a box that only
    /// partly covers them).
    pub geometry: Option<Bytes>,
}

/// The memory a table of `capacity` entries takes: hashbrown keeps a power of two of buckets
/// at most 7/8 full, each a slot and a control byte. The table never shrinks as copies go, so
/// it is counted at its size, not by its entries.
fn table_bytes(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = (capacity.saturating_mul(8) / 7).next_power_of_two().max(4);
    buckets * (std::mem::size_of::<((u64, i64), Entry)>() + 1) + 16
}

/// What the allocator hands out for `n` bytes: small sizes in steps of 16, larger ones in
/// eighths of their power of two (mimalloc's size classes).
fn allocation(n: usize) -> usize {
    if n == 0 {
        0
    } else if n <= 1024 {
        n.div_ceil(16) * 16
    } else {
        let step = n.next_power_of_two() / 8;
        n.div_ceil(step) * step
    }
}

#[derive(Debug)]
struct Entry {
    feature: Cached,
    used: AtomicU64,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<(u64, i64), Entry>,
    bytes: usize,
}

/// Counters for the log and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Queries answered wholly from copies.
    pub hits: u64,
    /// Queries that had to read rows.
    pub misses: u64,
    /// Copies held now.
    pub features: usize,
    /// Bytes they take, table included.
    pub bytes: u64,
}

/// Bits remembering first reads (512 KiB); cleared when a quarter are set.
const DOORKEEPER_BITS: usize = 1 << 22;

/// The cache, shared by every dataset.
#[derive(Debug, Default)]
pub struct FeatureCache {
    budget: usize,
    clock: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    entries: Mutex<Entries>,
    doorkeeper: Vec<AtomicU64>,
    first_reads: AtomicUsize,
    /// Bytes held, readable without the lock.
    held: AtomicUsize,
    /// Recent lookups and hits, halved every `RECENT` lookups.
    recent: Mutex<(u32, u32)>,
}

/// Lookups over which the recent hit rate is judged.
const RECENT: u32 = 256;

/// Spreads a (variant, fid) pair over 64 bits (the SplitMix64 finaliser).
fn mix(variant: u64, fid: i64) -> u64 {
    let mut z = variant ^ (fid as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The heap memory of a copy beyond its table slot: its JSON and geometry allocations.
fn cost(feature: &Cached) -> usize {
    allocation(feature.json.as_ref().map_or(0, Bytes::len))
        + allocation(feature.geometry.as_ref().map_or(0, Bytes::len))
}

impl FeatureCache {
    /// A cache holding up to `budget` bytes (0 turns it off).
    #[must_use]
    pub fn new(budget: usize) -> Self {
        let words = if budget > 0 { DOORKEEPER_BITS / 64 } else { 0 };
        Self {
            budget,
            doorkeeper: (0..words).map(|_| AtomicU64::new(0)).collect(),
            ..Self::default()
        }
    }

    /// Whether a query that reads rows should copy them: while the cache has room; once full,
    /// while at least one recent lookup in eight found its copies, and otherwise for one query
    /// in sixteen, so that a workload turning to reuse is noticed.
    pub fn copying(&self) -> bool {
        if !self.enabled() {
            return false;
        }
        if self.held.load(Ordering::Relaxed) < self.budget / 4 * 3 {
            return true;
        }
        let (lookups, hits) = *self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        hits * 8 >= lookups || self.clock.load(Ordering::Relaxed).is_multiple_of(16)
    }

    fn count_lookup(&self, hit: bool) {
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        recent.0 += 1;
        recent.1 += u32::from(hit);
        if recent.0 >= RECENT {
            *recent = (recent.0 / 2, recent.1 / 2);
        }
    }

    /// Whether a feature just read should be copied: true from its second read on (until the
    /// doorkeeper is cleared).
    pub fn admit(&self, variant: u64, fid: i64) -> bool {
        if self.doorkeeper.is_empty() {
            return false;
        }
        let hash = mix(variant, fid);
        let word = usize::try_from(hash >> 6).unwrap_or_default() % self.doorkeeper.len();
        let bit = 1u64 << (hash & 63);
        if self.doorkeeper[word].fetch_or(bit, Ordering::Relaxed) & bit != 0 {
            return true;
        }
        if self.first_reads.fetch_add(1, Ordering::Relaxed) >= DOORKEEPER_BITS / 4 {
            self.first_reads.store(0, Ordering::Relaxed);
            for word in &self.doorkeeper {
                word.store(0, Ordering::Relaxed);
            }
        }
        false
    }

    /// Whether it keeps anything.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// Runs `read` on the copies of all of `fids` in `variant`, in the same order, or returns
    /// `None` (counted as a miss) when any is missing. `read` runs under the cache's lock, so
    /// it should copy what it needs and return: copying beats sharing the copies, whose
    /// reference counts would bounce between cores.
    pub fn read_all<T>(
        &self,
        variant: u64,
        fids: &[i64],
        read: impl FnOnce(&[&Cached]) -> T,
    ) -> Option<T> {
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        let entries = self.lock();
        let found: Option<Vec<&Cached>> = fids
            .iter()
            .map(|fid| {
                let entry = entries.map.get(&(variant, *fid))?;
                entry.used.store(tick, Ordering::Relaxed);
                Some(&entry.feature)
            })
            .collect();
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.count_lookup(found.is_some());
        found.map(|found| read(&found))
    }

    /// Keeps copies of `features` in `variant`; when over budget, the least recently used copies
    /// are dropped until a quarter of the budget is free again.
    pub fn put_all(&self, variant: u64, features: Vec<(i64, Cached)>) {
        if !self.enabled() || features.is_empty() {
            return;
        }
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.lock();
        for (fid, feature) in features {
            let added = cost(&feature);
            if let Some(old) = entries.map.insert(
                (variant, fid),
                Entry {
                    feature,
                    used: AtomicU64::new(tick),
                },
            ) {
                entries.bytes -= cost(&old.feature);
            }
            entries.bytes += added;
        }
        if entries.bytes + table_bytes(entries.map.capacity()) > self.budget {
            let mut ages: Vec<(u64, (u64, i64))> = entries
                .map
                .iter()
                .map(|(k, e)| (e.used.load(Ordering::Relaxed), *k))
                .collect();
            ages.sort_unstable();
            // Down to three quarters of the budget, with the table shrunk to what is left.
            let target = self.budget / 4 * 3;
            for (_, key) in ages {
                if entries.bytes + table_bytes(entries.map.len()) <= target {
                    break;
                }
                if let Some(old) = entries.map.remove(&key) {
                    entries.bytes -= cost(&old.feature);
                }
            }
            entries.map.shrink_to_fit();
        }
        self.held.store(
            entries.bytes + table_bytes(entries.map.capacity()),
            Ordering::Relaxed,
        );
    }

    /// Hits, misses and size so far.
    #[must_use]
    pub fn stats(&self) -> Stats {
        Stats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            features: self.lock().map.len(),
            bytes: self.held.load(Ordering::Relaxed) as u64,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feature(text: &str) -> Cached {
        Cached {
            json: Some(Bytes::copy_from_slice(text.as_bytes())),
            envelope: Some([0.0, 0.0, 1.0, 1.0]),
            geometry: None,
        }
    }

    #[test]
    fn all_or_nothing_per_variant() {
        let cache = FeatureCache::new(1 << 20);
        cache.put_all(7, vec![(1, feature("a")), (2, feature("b"))]);
        let found = cache.read_all(7, &[2, 1], |f| {
            f.iter()
                .map(|c| c.json.clone().unwrap_or_default())
                .collect::<Vec<_>>()
        });
        assert_eq!(found, Some(vec![Bytes::from("b"), Bytes::from("a")]));
        assert!(cache.read_all(7, &[1, 3], |_| ()).is_none());
        assert!(cache.read_all(8, &[1], |_| ()).is_none(), "another variant");
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.features), (1, 2, 2));
    }

    #[test]
    fn least_recently_used_copies_go_first() {
        // Room for ten one-byte copies.
        let cache = FeatureCache::new(table_bytes(10) + 10 * allocation(1));
        cache.put_all(1, (0..8).map(|fid| (fid, feature("x"))).collect());
        assert!(cache.read_all(1, &[0, 1], |_| ()).is_some());
        cache.put_all(1, (8..12).map(|fid| (fid, feature("x"))).collect());
        let stats = cache.stats();
        assert!(stats.features <= 7, "{stats:?}");
        assert!(
            cache.read_all(1, &[0, 1], |_| ()).is_some(),
            "recently used kept"
        );
        assert!(
            cache.read_all(1, &[8, 9, 10, 11], |_| ()).is_some(),
            "newest kept"
        );
        assert!(cache.read_all(1, &[2], |_| ()).is_none(), "oldest dropped");
    }

    #[test]
    fn features_are_admitted_on_their_second_read() {
        let cache = FeatureCache::new(1 << 20);
        assert!(!cache.admit(1, 10));
        assert!(!cache.admit(2, 10), "another variant");
        assert!(!cache.admit(1, 11));
        assert!(cache.admit(1, 10));
        assert!(cache.admit(1, 10));
        assert!(!FeatureCache::new(0).admit(1, 10));
    }

    #[test]
    fn a_full_cache_copies_only_while_copies_are_found() {
        // Exactly full with four one-byte copies (a table grown to seven).
        let cache = FeatureCache::new(table_bytes(7) + 4 * allocation(1));
        assert!(cache.copying(), "room left");
        cache.put_all(1, (0..4).map(|fid| (fid, feature("x"))).collect());
        for fid in 100..116 {
            assert!(cache.read_all(1, &[fid], |_| ()).is_none());
        }
        assert!(
            !cache.copying(),
            "full and nothing found: {:?}",
            cache.stats()
        );
        for _ in 0..4 {
            assert!(cache.read_all(1, &[0, 1], |_| ()).is_some());
        }
        assert!(
            cache.copying(),
            "full, and one lookup in five found its copies"
        );
    }

    #[test]
    fn off_keeps_nothing() {
        let cache = FeatureCache::new(0);
        cache.put_all(1, vec![(1, feature("a"))]);
        assert!(cache.read_all(1, &[1], |_| ()).is_none());
    }
}
