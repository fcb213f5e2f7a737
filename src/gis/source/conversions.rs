//! GeoPackage conversions of other formats (GeoJSON, CSV, Shapefile…): made once per source
//! version into the conversion cache (`<root>/state/cache`), each with a note naming its
//! source, and swept when the source is gone or changed or the cache is over its budget.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::gis::store::DatasetError;

/// The conversion cache.
#[derive(Debug)]
pub struct Conversions {
    cache: Option<PathBuf>,
    converting: Mutex<()>,
    /// Conversions and when this process last used each.
    used: Mutex<HashMap<PathBuf, SystemTime>>,
    budget: u64,
}

impl Conversions {
    /// A cache in `cache` (the system's temporary folder when `None`) of at most `budget`
    /// bytes.
    #[must_use]
    pub fn new(cache: Option<PathBuf>, budget: u64) -> Self {
        Self {
            cache,
            converting: Mutex::new(()),
            used: Mutex::new(HashMap::new()),
            budget,
        }
    }

    fn cache_dir(&self) -> PathBuf {
        self.cache
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("poziserver-cache"))
    }

    /// The GeoPackage holding `source` (GeoJSON, CSV…) converted, made on first use and again
    /// whenever the source changes. Its one layer is named after the file. A new one sweeps the
    /// cache (keeping it); the files that sweep removed come back with it.
    ///
    /// # Errors
    /// When the source is missing or cannot be read, or the conversion cannot be written.
    pub fn converted(
        &self,
        source: &Path,
        shown: &str,
        options: &crate::gis::source::readers::OpenOptions,
    ) -> Result<(PathBuf, Vec<PathBuf>), DatasetError> {
        let meta = std::fs::metadata(source)
            .ok()
            .filter(std::fs::Metadata::is_file)
            .ok_or_else(|| DatasetError::NotFound(shown.to_owned()))?;
        let cache = self.cache_dir();
        let key = crate::gis::stable_hash(&source.to_string_lossy());
        let prefix = format!("{key:016x}-{}-", options.key());
        let target = cache.join(format!("{prefix}{}.gpkg", stamp_text(&meta)));
        if target.exists() {
            lock(&self.used).insert(target.clone(), SystemTime::now());
            return Ok((target, Vec::new()));
        }
        // One conversion (or sweep) at a time: a burst of first requests converts once.
        let _one = lock(&self.converting);
        if target.exists() {
            return Ok((target, Vec::new()));
        }
        let open_error = |reason: String| DatasetError::Open {
            path: shown.to_owned(),
            reason,
        };
        std::fs::create_dir_all(&cache)
            .map_err(|e| open_error(format!("cannot create the conversion cache: {e}")))?;
        let layer = source
            .file_stem()
            .map_or_else(|| "layer".to_owned(), |s| s.to_string_lossy().into_owned());
        let started = std::time::Instant::now();
        // The source beside the conversion, written first, so that no sweep ever sees the
        // conversion without it (and takes it for one whose source is gone).
        let note = target.with_extension(SOURCE_NOTE);
        if let Err(e) = std::fs::write(&note, source.to_string_lossy().as_bytes()) {
            tracing::warn!(cache = %cache.display(), error = %e, "cannot note a conversion's source");
        }
        let features = crate::gis::source::readers::convert(source, &target, &layer, options)
            .map_err(|e| {
                let _ = std::fs::remove_file(&note);
                tracing::warn!(source = %source.display(), error = %e, "conversion failed");
                open_error(e.reason())
            })?;
        lock(&self.used).insert(target.clone(), SystemTime::now());
        tracing::info!(source = %shown, features, ms = started.elapsed().as_millis(), "converted to a GeoPackage");
        let removed = self.sweep_locked(Some(&target));
        Ok((target, removed))
    }

    /// Removes conversions whose source is gone or has changed, then the least recently used
    /// until the cache is within its budget. Returns the files removed.
    pub fn sweep(&self) -> Vec<PathBuf> {
        let _one = lock(&self.converting);
        self.sweep_locked(None)
    }

    /// [`Conversions::sweep`], never removing `keep`, with the conversion lock held.
    fn sweep_locked(&self, keep: Option<&Path>) -> Vec<PathBuf> {
        let cache = self.cache_dir();
        let Ok(entries) = std::fs::read_dir(&cache) else {
            return Vec::new();
        };
        let used = lock(&self.used).clone();
        let mut live = Vec::new();
        let mut stale = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("gpkg") {
                continue;
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let source = std::fs::read_to_string(path.with_extension(SOURCE_NOTE)).ok();
            let current = source
                .as_deref()
                .and_then(|s| std::fs::metadata(s).ok())
                .filter(std::fs::Metadata::is_file)
                .is_some_and(|m| {
                    path.file_stem()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.ends_with(&stamp_text(&m)))
                });
            if current || keep == Some(path.as_path()) {
                let last = used
                    .get(&path)
                    .copied()
                    .or_else(|| meta.modified().ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                live.push((last, meta.len(), path));
            } else {
                stale.push(path);
            }
        }
        // Least recently used first; the one just made is never removed.
        live.sort();
        let mut total: u64 = live.iter().map(|(_, len, _)| len).sum();
        for (_, len, path) in &live {
            if total <= self.budget {
                break;
            }
            if keep != Some(path.as_path()) {
                total -= len;
                stale.push(path.clone());
            }
        }
        let mut removed = Vec::new();
        for path in stale {
            // On Windows a conversion still being read cannot be removed; the next sweep tries
            // again.
            if std::fs::remove_file(&path).is_ok() {
                let _ = std::fs::remove_file(path.with_extension(SOURCE_NOTE));
                lock(&self.used).remove(&path);
                tracing::info!(conversion = %path.display(), "removed a conversion (source gone or changed, or the cache is full)");
                removed.push(path);
            }
        }
        removed
    }
}

/// Extension of the note beside a conversion naming its source.
const SOURCE_NOTE: &str = "source";

/// A file's size and modification time as a name part (`<len>-<nanos>`, hexadecimal).
fn stamp_text(meta: &std::fs::Metadata) -> String {
    let nanos = meta
        .modified()
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{:x}-{nanos:x}", meta.len())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
