//! GeoPackage and SQLite datasets: read-only connections that cannot reach other files or
//! write, the layer catalog of a file, and a pool of connections per file version.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::{Connection, OpenFlags};

use tokio_util::sync::CancellationToken;

use crate::api::gdal::Gdal;
use crate::config::DataConfig;
use crate::gis::query::admission::{Admission, Busy};
use crate::gis::quote;

/// Why a dataset could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// No such file.
    #[error("{0}: no such dataset")]
    NotFound(String),
    /// The file is not an SQLite database or cannot be opened.
    #[error("{path}: cannot open: {reason}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// No such layer in the file.
    #[error("no layer named {layer:?}; layers: {available}")]
    UnknownLayer {
        /// The name asked for.
        layer: String,
        /// The layers there are.
        available: String,
    },
}

/// Where a layer's rows are kept, which decides how its plans are written
/// ([`crate::gis::query::plan`]) and run. A database table, when it comes, is another kind here:
/// the APIs ask every layer the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// A table (or view) of a GeoPackage or SQLite file, read with SQL on a read-only
    /// connection.
    #[default]
    Sqlite,
}

/// A table with geometries (or attributes only) in a GeoPackage.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Where its rows are kept.
    pub storage: Storage,
    /// Table name.
    pub name: String,
    /// The integer primary key column.
    pub fid: String,
    /// The geometry column, if the layer has geometries.
    pub geometry: Option<String>,
    /// SRS id of the geometries (4326 for WGS 84).
    pub srs_id: Option<i64>,
    /// Attribute columns, in table order.
    pub fields: Vec<String>,
    /// Each attribute column's declared type (`TEXT`, `INTEGER`, `REAL`, `DATE`…), as `fields`.
    pub field_types: Vec<String>,
    /// The R*Tree index table for the geometry column, when there is one.
    pub rtree: Option<String>,
    /// Bounds from `gpkg_contents`, as `[xmin, ymin, xmax, ymax]`.
    pub extent: Option<[f64; 4]>,
}

impl Layer {
    /// The JSON Schema type of attribute column `index` (`string` when the declared type says
    /// nothing better), as OGC API Features queryables list it.
    #[must_use]
    pub fn json_type(&self, index: usize) -> &'static str {
        let declared = self
            .field_types
            .get(index)
            .map(|t| t.to_ascii_uppercase())
            .unwrap_or_default();
        if declared.contains("INT") && !declared.contains("POINT") {
            "integer"
        } else if ["REAL", "FLOA", "DOUB", "NUMERIC", "DECIMAL"]
            .iter()
            .any(|t| declared.contains(t))
        {
            "number"
        } else if declared == "BOOLEAN" {
            "boolean"
        } else {
            "string"
        }
    }

    /// The quoted column list `fid, geometry, fields…` of a query on this layer, with `fields`
    /// (the layer's own when `None`).
    #[must_use]
    pub fn select_list(&self, fields: Option<&[String]>) -> String {
        std::iter::once(&self.fid)
            .chain(self.geometry.iter())
            .chain(fields.unwrap_or(&self.fields))
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One version of a dataset file (a replaced file is a new version).
#[derive(Debug)]
pub struct Dataset {
    path: PathBuf,
    version: u64,
    max_value: i32,
    /// Its layers, in `gpkg_contents` order (or every table for plain SQLite).
    pub layers: Vec<Layer>,
    /// Idle connections, each with when it was given back (most recent last).
    pool: Mutex<Vec<(Connection, Instant)>>,
}

/// Memory-mapped bytes per dataset connection.
const MMAP_BYTES: i64 = 1 << 30;
/// Idle connections kept per dataset version.
const POOL_SIZE: usize = 32;

/// Functions a query may never call.
const DENIED_FUNCTIONS: &[&str] = &[
    "load_extension",
    "readfile",
    "writefile",
    "edit",
    "fts3_tokenizer",
    "sqlite_compileoption_get",
];

/// The authorizer of every dataset connection: reads and selects only. No ATTACH (other files),
/// no writes, no schema changes, no pragmas beyond reading the schema, no dangerous functions.
fn authorize(context: AuthContext<'_>) -> Authorization {
    match context.action {
        AuthAction::Read { .. } | AuthAction::Select | AuthAction::Recursive => {
            Authorization::Allow
        }
        AuthAction::Function { function_name } => {
            if DENIED_FUNCTIONS
                .iter()
                .any(|f| f.eq_ignore_ascii_case(function_name))
            {
                Authorization::Deny
            } else {
                Authorization::Allow
            }
        }
        // The R*Tree module prepares (never runs: the connection is read-only) statements on its
        // shadow tables when a spatial index is queried.
        AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name }
            if is_rtree_shadow(table_name) =>
        {
            Authorization::Allow
        }
        // Schema reads only; `PRAGMA table_info(t)` passes the table as the value.
        AuthAction::Pragma { pragma_name, .. }
            if ["table_info", "table_xinfo", "index_list", "index_info"].contains(&pragma_name) =>
        {
            Authorization::Allow
        }
        other => {
            tracing::debug!(action = ?other, "query refused by the dataset authorizer");
            Authorization::Deny
        }
    }
}

fn is_rtree_shadow(table: &str) -> bool {
    table.starts_with("rtree_")
        && ["_node", "_parent", "_rowid"]
            .iter()
            .any(|s| table.ends_with(s))
}

/// Longest SQL text a query may have, in bytes (a request's whole head is smaller).
const MAX_SQL_LENGTH: i32 = 100_000;

/// Opens `path` read-only with the authorizer installed, ATTACH disabled, and no string or blob
/// longer than `max_value` bytes.
fn connect(path: &Path, max_value: i32) -> Result<Connection, DatasetError> {
    let fail = |e: rusqlite::Error| DatasetError::Open {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags).map_err(fail)?;
    for (limit, value) in [
        (Limit::SQLITE_LIMIT_ATTACHED, 0),
        (Limit::SQLITE_LIMIT_LENGTH, max_value),
        (Limit::SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_LENGTH),
    ] {
        connection.set_limit(limit, value).map_err(fail)?;
    }
    connection
        .pragma_update(None, "query_only", true)
        .map_err(fail)?;
    // Memory-mapped reads share the OS page cache between connections without a system call per
    // page; each connection keeps a modest page cache of its own.
    connection
        .pragma_update(None, "mmap_size", MMAP_BYTES)
        .map_err(fail)?;
    connection
        .pragma_update(None, "cache_size", -2048)
        .map_err(fail)?;
    connection.authorizer(Some(authorize)).map_err(fail)?;
    Ok(connection)
}

impl Dataset {
    fn open(path: &Path, stamp: Stamp, max_value: i32) -> Result<Self, DatasetError> {
        let connection = connect(path, max_value)?;
        let layers = read_layers(&connection).map_err(|e| DatasetError::Open {
            path: path.display().to_string(),
            reason: format!("not a GeoPackage or SQLite database: {e}"),
        })?;
        let nanos = stamp
            .1
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Ok(Self {
            path: path.to_owned(),
            version: u64::try_from(nanos % u128::from(u64::MAX)).unwrap_or(0)
                ^ stamp.0.rotate_left(32),
            max_value,
            layers,
            pool: Mutex::new(vec![(connection, Instant::now())]),
        })
    }

    /// The layer of that name, or the only/first layer when `name` is `None`.
    ///
    /// # Errors
    /// When no layer has that name, or the file has no layers.
    pub fn layer(&self, name: Option<&str>) -> Result<&Layer, DatasetError> {
        let found = match name {
            Some(name) => self
                .layers
                .iter()
                .find(|l| l.name.eq_ignore_ascii_case(name)),
            None => self.layers.first(),
        };
        found.ok_or_else(|| DatasetError::UnknownLayer {
            layer: name.unwrap_or_default().to_owned(),
            available: self
                .layers
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Identifies this version of the file (size and modification time), for ETags.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// A connection from the pool (or a new one); give it back with [`Dataset::release`].
    ///
    /// # Errors
    /// When a new connection cannot be opened.
    pub fn connection(&self) -> Result<Connection, DatasetError> {
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        match pooled {
            Some((connection, _)) => Ok(connection),
            None => connect(&self.path, self.max_value),
        }
    }

    /// Closes the pooled connections unused for `idle` or longer, giving their page caches
    /// back; returns how many were closed.
    pub fn trim(&self, idle: Duration) -> usize {
        let mut pool = self
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = pool.len();
        pool.retain(|(_, since)| since.elapsed() < idle);
        before - pool.len()
    }

    /// Returns a connection to the pool.
    pub fn release(&self, connection: Connection) {
        let mut pool = self
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pool.len() < POOL_SIZE {
            pool.push((connection, Instant::now()));
        }
    }
}

/// Returns memory SQLite has freed to the system. SQLite allocates through the C library's
/// `malloc`, whose free pages between live allocations are otherwise kept by the process.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(
        unsafe_code,
        reason = "malloc_trim takes no pointers and only releases free pages of the C heap"
    )]
    // SAFETY: glibc's malloc_trim is thread-safe and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Reads the layers: GeoPackage contents when present, else every table of a plain SQLite file.
fn read_layers(connection: &Connection) -> rusqlite::Result<Vec<Layer>> {
    let is_gpkg: bool = connection
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'gpkg_contents'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)?;
    type Row = (String, Option<String>, Option<i64>, Option<[f64; 4]>);
    let tables: Vec<Row> = if is_gpkg {
        let mut statement = connection.prepare(
            "SELECT c.table_name, g.column_name, g.srs_id, c.min_x, c.min_y, c.max_x, c.max_y FROM gpkg_contents c
             LEFT JOIN gpkg_geometry_columns g ON g.table_name = c.table_name
             WHERE c.data_type IN ('features', 'attributes') ORDER BY c.table_name",
        )?;
        statement
            .query_map([], |r| {
                let bounds: [Option<f64>; 4] = [r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?];
                let extent = match bounds {
                    [Some(a), Some(b), Some(c), Some(d)] => Some([a, b, c, d]),
                    _ => None,
                };
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, extent))
            })?
            .collect::<Result<_, _>>()?
    } else {
        let mut statement = connection.prepare(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?;
        statement
            .query_map([], |r| Ok((r.get(0)?, None, None, None)))?
            .collect::<Result<_, _>>()?
    };
    let mut layers = Vec::with_capacity(tables.len());
    for (name, geometry, srs_id, extent) in tables {
        let mut fid = None;
        let mut fields = Vec::new();
        let mut field_types = Vec::new();
        let mut statement = connection.prepare(&format!("PRAGMA table_info({})", quote(&name)))?;
        let columns = statement.query_map([], |r| {
            Ok((
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        for column in columns {
            let (column, kind, pk) = column?;
            if pk == 1 && kind.eq_ignore_ascii_case("INTEGER") && fid.is_none() {
                fid = Some(column);
            } else if geometry.as_deref() != Some(column.as_str()) {
                fields.push(column);
                field_types.push(kind);
            }
        }
        let rtree = geometry
            .as_ref()
            .map(|g| format!("rtree_{name}_{g}"))
            .filter(|t| {
                connection
                    .query_row(
                        "SELECT count(*) FROM sqlite_master WHERE name = ?1",
                        [t],
                        |r| r.get::<_, i64>(0),
                    )
                    .is_ok_and(|n| n > 0)
            });
        layers.push(Layer {
            storage: Storage::Sqlite,
            fid: fid.unwrap_or_else(|| "rowid".to_owned()),
            name,
            geometry,
            srs_id,
            fields,
            field_types,
            rtree,
            extent,
        });
    }
    Ok(layers)
}

type Stamp = (u64, SystemTime);

/// GeoPackages found in a folder, as (path, collection-id stem).
pub type Listing = Arc<Vec<(PathBuf, String)>>;

/// How long a folder listing is trusted: new datasets appear within this.
const LISTING_TTL: Duration = Duration::from_secs(1);
/// Dataset versions kept open; the least recently used is closed past this (requests using it
/// keep it until they finish).
const MAX_OPEN: usize = 256;

/// What each query may use: its time inside SQLite and its memory.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Longest time inside SQLite.
    pub timeout: Duration,
    /// Largest single value, feature and buffered answer, in bytes.
    pub memory: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self::from(&DataConfig::default())
    }
}

impl From<&DataConfig> for QueryLimits {
    fn from(config: &DataConfig) -> Self {
        Self {
            timeout: Duration::from_secs(config.query_timeout_secs.max(1)),
            memory: config.query_memory_mb.saturating_mul(1024 * 1024),
        }
    }
}

impl QueryLimits {
    /// The longest string or blob SQLite may make (its `SQLITE_LIMIT_LENGTH`).
    fn max_value(self) -> i32 {
        i32::try_from(self.memory).unwrap_or(i32::MAX)
    }
}

/// One open dataset version, and when it was last used.
type OpenEntry = (Stamp, Arc<Dataset>, u64);

/// Datasets by path, each kept while its file is unchanged. A file replaced (by rename) is a new
/// version at the next request; requests already running keep the version they started with.
/// Also the limits every query runs under: a bounded pool of query threads, per-query time and
/// memory, and the GDAL processes.
#[derive(Debug)]
pub struct Catalog {
    open: Mutex<HashMap<PathBuf, OpenEntry>>,
    clock: AtomicU64,
    cache: Option<PathBuf>,
    converting: Mutex<()>,
    /// Conversions and when this process last used each.
    conversions: Mutex<HashMap<PathBuf, SystemTime>>,
    conversion_budget: u64,
    listings: Mutex<HashMap<PathBuf, (std::time::Instant, Listing)>>,
    /// Recent answers, by dataset version and query.
    pub responses: Arc<crate::gis::cache::responses::ResponseCache>,
    /// Rendered features, for box queries over features already read.
    pub features: Arc<crate::gis::cache::features::FeatureCache>,
    /// Time and memory each query may use.
    pub limits: QueryLimits,
    /// The threads queries run on.
    pub queries: Admission,
    /// GDAL for sources not read natively.
    pub gdal: Gdal,
    /// Cancelled when the server stops: running queries are interrupted.
    pub stop: CancellationToken,
    /// Bytes of answers held for their clients, all queries together.
    pub answers: Arc<tokio::sync::Semaphore>,
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
        let limits = QueryLimits::from(config);
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        // Two per core: a query finishing on one thread and the next starting on another keep
        // the cores busy, and runaway queries still take at most every core.
        let workers = if config.query_workers == 0 {
            2 * cores
        } else {
            config.query_workers
        };
        set_heap_limit(config.sqlite_memory_mb);
        Self {
            open: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
            cache: None,
            converting: Mutex::new(()),
            conversions: Mutex::new(HashMap::new()),
            conversion_budget: config.conversion_cache_mb.saturating_mul(1024 * 1024),
            listings: Mutex::new(HashMap::new()),
            responses: Arc::new(crate::gis::cache::responses::ResponseCache::new(
                config.response_cache_mb.saturating_mul(1024 * 1024),
            )),
            features: Arc::new(crate::gis::cache::features::FeatureCache::new(
                config.feature_cache_mb.saturating_mul(1024 * 1024),
            )),
            limits,
            queries: Admission::new("queries", workers, config.query_queue, limits.timeout),
            gdal: Gdal::new(&config.gdal),
            stop: CancellationToken::new(),
            answers: Arc::new(tokio::sync::Semaphore::new(
                config
                    .answer_memory_mb
                    .saturating_mul(1024 * 1024)
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
        }
    }

    /// Keeps GeoPackage conversions of other formats in `cache` (`<root>/state/cache`).
    #[must_use]
    pub fn with_cache(mut self, cache: PathBuf) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Keeps up to `bytes` of recent answers in memory (0: none).
    #[must_use]
    pub fn with_response_cache(mut self, bytes: usize) -> Self {
        self.responses = Arc::new(crate::gis::cache::responses::ResponseCache::new(bytes));
        self
    }

    /// Keeps up to `bytes` of rendered features in memory (0: none).
    #[must_use]
    pub fn with_feature_cache(mut self, bytes: usize) -> Self {
        self.features = Arc::new(crate::gis::cache::features::FeatureCache::new(bytes));
        self
    }

    /// Runs blocking work (SQLite, file conversions) on a query thread, waiting in the bounded
    /// queue for one.
    ///
    /// # Errors
    /// [`Busy`] when the queue is full or the wait ran out; the work is not run then.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, RunError> {
        self.start(work)
            .await?
            .await
            .map_err(|_| RunError::Panicked)
    }

    /// Starts blocking work on a query thread once one is free, without waiting for it to end.
    /// The thread is held until the work returns, even if the returned handle is dropped.
    ///
    /// # Errors
    /// [`Busy`] when the queue is full or the wait ran out; the work is not run then.
    pub async fn start<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<tokio::task::JoinHandle<T>, Busy> {
        let slot = self.queries.enter().await?;
        Ok(tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let result = work();
            crate::memory::going_idle();
            result
        }))
    }

    /// The GeoPackages in `folder` and in its direct subfolders (`sub/x.gpkg` has the stem
    /// `sub.x`), sorted; the listing is reused for a second so that requests do not rescan.
    pub fn geopackages_in(&self, folder: &Path) -> Listing {
        if let Some((at, listing)) = lock(&self.listings).get(folder)
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
                } else if path
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
        lock(&self.listings).insert(
            folder.to_owned(),
            (std::time::Instant::now(), listing.clone()),
        );
        listing
    }

    fn cache_dir(&self) -> PathBuf {
        self.cache
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("poziserver-cache"))
    }

    /// The GeoPackage holding `source` (GeoJSON, CSV…) converted, made on first use and again
    /// whenever the source changes. Its one layer is named after the file.
    ///
    /// # Errors
    /// When the source is missing or cannot be read, or the conversion cannot be written.
    pub fn converted(
        &self,
        source: &Path,
        shown: &str,
        options: &crate::gis::source::readers::OpenOptions,
    ) -> Result<PathBuf, DatasetError> {
        let meta = std::fs::metadata(source)
            .ok()
            .filter(std::fs::Metadata::is_file)
            .ok_or_else(|| DatasetError::NotFound(shown.to_owned()))?;
        let cache = self.cache_dir();
        let key = crate::gis::stable_hash(&source.to_string_lossy());
        let prefix = format!("{key:016x}-{}-", options.key());
        let target = cache.join(format!("{prefix}{}.gpkg", stamp_text(&meta)));
        if target.exists() {
            lock(&self.conversions).insert(target.clone(), SystemTime::now());
            return Ok(target);
        }
        // One conversion at a time: a burst of first requests converts once.
        let _one = lock(&self.converting);
        if target.exists() {
            return Ok(target);
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
        let features = crate::gis::source::readers::convert(source, &target, &layer, options)
            .map_err(|e| {
                tracing::warn!(source = %source.display(), error = %e, "conversion failed");
                open_error(e.reason())
            })?;
        // The source beside the conversion, so that a sweep can tell when it is gone.
        if let Err(e) = std::fs::write(
            target.with_extension(SOURCE_NOTE),
            source.to_string_lossy().as_bytes(),
        ) {
            tracing::warn!(cache = %cache.display(), error = %e, "cannot note a conversion's source");
        }
        lock(&self.conversions).insert(target.clone(), SystemTime::now());
        tracing::info!(source = %shown, features, ms = started.elapsed().as_millis(), "converted to a GeoPackage");
        self.sweep_conversions_keeping(Some(&target));
        Ok(target)
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
            give_back_freed_memory();
        }
        closed
    }

    /// Removes conversions whose source is gone or has changed, then the least recently used
    /// until the cache is within its budget. Returns the files removed.
    pub fn sweep_conversions(&self) -> usize {
        self.sweep_conversions_keeping(None)
    }

    fn sweep_conversions_keeping(&self, keep: Option<&Path>) -> usize {
        let cache = self.cache_dir();
        let Ok(entries) = std::fs::read_dir(&cache) else {
            return 0;
        };
        let used = lock(&self.conversions).clone();
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
            if total <= self.conversion_budget {
                break;
            }
            if keep != Some(path.as_path()) {
                total -= len;
                stale.push(path.clone());
            }
        }
        let mut removed = 0;
        for path in stale {
            // On Windows a conversion still being read cannot be removed; the next sweep tries
            // again.
            if std::fs::remove_file(&path).is_ok() {
                removed += 1;
                let _ = std::fs::remove_file(path.with_extension(SOURCE_NOTE));
                lock(&self.conversions).remove(&path);
                lock(&self.open).remove(&path);
                tracing::info!(conversion = %path.display(), "removed a conversion (source gone or changed, or the cache is full)");
            }
        }
        removed
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
        let dataset = Arc::new(Dataset::open(path, stamp, self.limits.max_value()).map_err(
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

/// Why work could not be run on a query thread.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Too many queries running and waiting.
    #[error(transparent)]
    Busy(#[from] Busy),
    /// The work panicked (the panic hook has logged where).
    #[error("internal error")]
    Panicked,
}

/// Sets SQLite's hard heap limit for the whole process.
fn set_heap_limit(megabytes: usize) {
    let bytes = i64::try_from(megabytes.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
    let set =
        Connection::open_in_memory().and_then(|c| c.pragma_update(None, "hard_heap_limit", bytes));
    if let Err(e) = set {
        tracing::warn!(error = %e, "cannot set SQLite's heap limit");
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("x.sqlite");
        let c = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        c.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO t VALUES (1, 'a');",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        (dir, path)
    }

    #[test]
    fn connections_cannot_write_attach_or_load_extensions() {
        let (dir, path) = sample();
        let c = connect(&path, 1 << 20).unwrap_or_else(|e| panic!("{e}"));
        let other = dir.path().join("other.sqlite");
        for sql in [
            "INSERT INTO t VALUES (2, 'b')".to_owned(),
            "DELETE FROM t".to_owned(),
            "DROP TABLE t".to_owned(),
            "CREATE TABLE u (x)".to_owned(),
            format!("ATTACH DATABASE '{}' AS o", other.display()),
            "SELECT load_extension('libspatialite')".to_owned(),
            "PRAGMA writable_schema = 1".to_owned(),
        ] {
            let result = c.prepare(&sql).and_then(|mut s| s.query([]).map(|_| ()));
            assert!(result.is_err(), "{sql} was allowed");
        }
        assert!(!other.exists(), "ATTACH created a file");
        let n: i64 = c
            .query_row("SELECT count(*) FROM t WHERE name LIKE 'a%'", [], |r| {
                r.get(0)
            })
            .unwrap_or(0);
        assert_eq!(n, 1);
    }
}
