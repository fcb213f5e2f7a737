//! The catalog: what the APIs query through. Datasets by path, each kept open while its file is
//! unchanged (a file replaced by rename is a new version at the next request; requests already
//! running keep the version they started with); folder listings; conversions of other formats;
//! the query threads and their limits; and the caches. Each part is its own type with its own
//! lock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::dataset::{Dataset, DatasetError, Stamp};
use crate::config::DataConfig;
use crate::gis::cache::features::FeatureCache;
use crate::gis::cache::responses::ResponseCache;
use crate::gis::query::threads::Queries;
use crate::gis::source::conversions::Conversions;
use crate::gis::source::readers::OpenOptions;

/// GeoPackages found in a folder, as (path, collection-id stem).
pub type Listing = Arc<Vec<(PathBuf, String)>>;

/// How long a folder listing is trusted: new datasets appear within this.
const LISTING_TTL: Duration = Duration::from_secs(1);
/// Dataset versions kept open; the least recently used is closed past this (requests using it
/// keep it until they finish).
const MAX_OPEN: usize = 256;

/// Everything the APIs query through.
#[derive(Debug)]
pub struct Catalog {
    /// Open dataset versions.
    pub datasets: Datasets,
    /// Folder listings.
    pub listings: Listings,
    /// GeoPackage conversions of other formats.
    pub conversions: Conversions,
    /// The query threads and the limits every query runs under.
    pub queries: Queries,
    /// Recent answers, by dataset version and query.
    pub responses: Arc<ResponseCache>,
    /// Rendered features, for box queries over features already read.
    pub features: Arc<FeatureCache>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::with_limits(&DataConfig::default())
    }
}

impl Catalog {
    /// A catalog whose queries run under `config`'s limits (and that sets SQLite's process-wide
    /// heap limit from it).
    #[must_use]
    pub fn with_limits(config: &DataConfig) -> Self {
        let queries = Queries::new(config);
        Self {
            datasets: Datasets::new(queries.limits.max_value()),
            listings: Listings::default(),
            conversions: Conversions::new(
                None,
                config.conversion_cache_mb.saturating_mul(1024 * 1024),
            ),
            queries,
            responses: Arc::new(ResponseCache::new(
                config.response_cache_mb.saturating_mul(1024 * 1024),
            )),
            features: Arc::new(FeatureCache::new(
                config.feature_cache_mb.saturating_mul(1024 * 1024),
            )),
        }
    }

    /// Keeps GeoPackage conversions of other formats in `cache` (`<root>/state/cache`), within
    /// `config`'s budget.
    #[must_use]
    pub fn with_cache(mut self, cache: PathBuf, config: &DataConfig) -> Self {
        self.conversions = Conversions::new(
            Some(cache),
            config.conversion_cache_mb.saturating_mul(1024 * 1024),
        );
        self
    }

    /// Keeps up to `bytes` of recent answers in memory (0: none).
    #[must_use]
    pub fn with_response_cache(mut self, bytes: usize) -> Self {
        self.responses = Arc::new(ResponseCache::new(bytes));
        self
    }

    /// Keeps up to `bytes` of rendered features in memory (0: none).
    #[must_use]
    pub fn with_feature_cache(mut self, bytes: usize) -> Self {
        self.features = Arc::new(FeatureCache::new(bytes));
        self
    }

    /// The GeoPackage holding `source` converted (see [`Conversions::converted`]); the open
    /// versions of conversions a new one's sweep removed are closed.
    ///
    /// # Errors
    /// When the source is missing or cannot be read, or the conversion cannot be written.
    pub fn converted(
        &self,
        source: &Path,
        shown: &str,
        options: &OpenOptions,
    ) -> Result<PathBuf, DatasetError> {
        let (target, removed) = self.conversions.converted(source, shown, options)?;
        for path in &removed {
            self.datasets.forget(path);
        }
        Ok(target)
    }

    /// Removes conversions whose source is gone or has changed, then the least recently used
    /// until the cache is within its budget, and forgets their open versions. Returns the
    /// files removed.
    pub fn sweep_conversions(&self) -> usize {
        let removed = self.conversions.sweep();
        for path in &removed {
            self.datasets.forget(path);
        }
        removed.len()
    }
}

/// Open dataset versions by path, least recently used closed past [`MAX_OPEN`].
#[derive(Debug)]
pub struct Datasets {
    open: Mutex<HashMap<PathBuf, OpenEntry>>,
    clock: AtomicU64,
    max_value: i32,
}

/// One open dataset version, and when it was last used.
type OpenEntry = (Stamp, Arc<Dataset>, u64);

impl Datasets {
    /// None open yet; each opened with no string or blob longer than `max_value` bytes.
    #[must_use]
    pub fn new(max_value: i32) -> Self {
        Self {
            open: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
            max_value,
        }
    }

    /// The current version of the dataset at `path`.
    ///
    /// # Errors
    /// When there is no such file or it is not a usable database.
    pub fn get(&self, path: &Path, shown: &str) -> Result<Arc<Dataset>, DatasetError> {
        let meta = std::fs::metadata(path)
            .ok()
            .filter(std::fs::Metadata::is_file)
            .ok_or_else(|| DatasetError::NotFound(shown.to_owned()))?;
        let stamp = (
            meta.len(),
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        );
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        if let Some((known, dataset, used)) = lock(&self.open).get_mut(path)
            && *known == stamp
        {
            *used = tick;
            return Ok(dataset.clone());
        }
        let dataset = Arc::new(Dataset::open(path, stamp, self.max_value).map_err(
            |e| match e {
                DatasetError::Open { reason, .. } => DatasetError::Open {
                    path: shown.to_owned(),
                    reason,
                },
                other => other,
            },
        )?);
        let mut open = lock(&self.open);
        open.insert(path.to_owned(), (stamp, dataset.clone(), tick));
        while open.len() > MAX_OPEN {
            let Some(oldest) = open
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(p, _)| p.clone())
            else {
                break;
            };
            open.remove(&oldest);
        }
        Ok(dataset)
    }

    /// Dataset versions open now.
    #[must_use]
    pub fn open_count(&self) -> usize {
        lock(&self.open).len()
    }

    /// Closes the open versions of `path` (a removed file).
    pub fn forget(&self, path: &Path) {
        lock(&self.open).remove(path);
    }

    /// Closes pooled connections of every open dataset unused for `idle`, so that memory held
    /// for a burst of queries goes back when it ends; returns how many were closed.
    pub fn trim_idle(&self, idle: Duration) -> usize {
        let datasets: Vec<Arc<Dataset>> = lock(&self.open)
            .values()
            .map(|(_, dataset, _)| dataset.clone())
            .collect();
        let closed = datasets.iter().map(|d| d.trim(idle)).sum();
        if closed > 0 {
            crate::gis::store::dataset::give_back_freed_memory();
        }
        closed
    }
}

/// Folder listings, each reused for [`LISTING_TTL`].
#[derive(Debug, Default)]
pub struct Listings {
    folders: Mutex<HashMap<PathBuf, (std::time::Instant, Listing)>>,
}

impl Listings {
    /// The GeoPackages in `folder` and in its direct subfolders (`sub/x.gpkg` has the stem
    /// `sub.x`), sorted; the listing is reused for a second so that requests do not rescan.
    pub fn geopackages_in(&self, folder: &Path) -> Listing {
        if let Some((at, listing)) = lock(&self.folders).get(folder)
            && at.elapsed() < LISTING_TTL
        {
            return listing.clone();
        }
        let mut out = Vec::new();
        let mut dirs = vec![(folder.to_owned(), String::new())];
        while let Some((dir, prefix)) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if path.is_dir() && prefix.is_empty() && !name.starts_with('.') {
                    dirs.push((path, format!("{name}.")));
                } else if !name.starts_with('.')
                    && path
                        .extension()
                        .is_some_and(|e| e.eq_ignore_ascii_case("gpkg"))
                {
                    let stem = path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    out.push((path, format!("{prefix}{stem}")));
                }
            }
        }
        out.sort();
        let listing: Listing = Arc::new(out);
        lock(&self.folders).insert(
            folder.to_owned(),
            (std::time::Instant::now(), listing.clone()),
        );
        listing
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
