//! What is kept in memory between requests: whole answers as sent, and rendered features for
//! box queries over features already read.

pub mod features;
pub mod responses;

/// A cache bounded by the weight of its entries (quick_cache: sharded, scan-resistant). Each
/// shard holds an equal share of `capacity` and refuses entries heavier than that share, so the
/// shards are as many as fit twice the `heaviest` entry (at least one, at most eight to spread
/// the locks), not quick_cache's default of four per core.
pub fn weighted<K, V, W>(
    capacity: u64,
    heaviest: u64,
    estimated_items: usize,
    weighter: W,
) -> quick_cache::sync::Cache<K, V, W>
where
    K: Eq + std::hash::Hash,
    V: Clone,
    W: quick_cache::Weighter<K, V> + Clone,
{
    let shards = usize::try_from(capacity / heaviest.saturating_mul(2).max(1))
        .unwrap_or(1)
        .clamp(1, 8);
    let options = quick_cache::OptionsBuilder::new()
        .estimated_items_capacity(estimated_items)
        .weight_capacity(capacity)
        .shards(shards)
        .build();
    match options {
        Ok(options) => quick_cache::sync::Cache::with_options(
            options,
            weighter,
            quick_cache::DefaultHashBuilder::default(),
            quick_cache::sync::DefaultLifecycle::default(),
        ),
        // Every option is set above, so building does not fail; were it to, the defaults
        // still bound the cache by its capacity.
        Err(_) => quick_cache::sync::Cache::with_weighter(estimated_items, capacity, weighter),
    }
}

#[cfg(test)]
mod tests {
    /// Weighs a value by its length.
    #[derive(Clone)]
    struct Length;

    impl quick_cache::Weighter<u32, Vec<u8>> for Length {
        fn weight(&self, _: &u32, value: &Vec<u8>) -> u64 {
            value.len() as u64
        }
    }

    /// The heaviest entry fits whatever the machine's core count (quick_cache's default of
    /// four shards per core would give a shard of 2 MiB on eight cores, refusing it).
    #[test]
    fn the_heaviest_entry_is_kept() {
        let cache = super::weighted(64 << 20, 3 << 20, 16, Length);
        cache.insert(1, vec![0; 3 << 20]);
        assert!(cache.get(&1).is_some());
        cache.insert(2, vec![0; 1 << 20]);
        assert!(cache.get(&2).is_some());
        assert!(cache.weight() <= 64 << 20);
    }
}
