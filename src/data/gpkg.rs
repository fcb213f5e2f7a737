//! GeoPackage and SQLite datasets: read-only connections that cannot reach other files or
//! write, the layer catalog of a file, and a pool of connections per file version.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::{Connection, OpenFlags};

use super::quote;

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

/// A table with geometries (or attributes only) in a GeoPackage.
#[derive(Debug, Clone)]
pub struct Layer {
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
    /// The R*Tree index table for the geometry column, when there is one.
    pub rtree: Option<String>,
    /// Bounds from `gpkg_contents`, as `[xmin, ymin, xmax, ymax]`.
    pub extent: Option<[f64; 4]>,
}

impl Layer {
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
    /// Its layers, in `gpkg_contents` order (or every table for plain SQLite).
    pub layers: Vec<Layer>,
    pool: Mutex<Vec<Connection>>,
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

/// Opens `path` read-only with the authorizer installed and ATTACH disabled.
fn connect(path: &Path) -> Result<Connection, DatasetError> {
    let fail = |e: rusqlite::Error| DatasetError::Open {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags).map_err(fail)?;
    connection
        .set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)
        .map_err(fail)?;
    connection
        .pragma_update(None, "query_only", true)
        .map_err(fail)?;
    // Memory-mapped reads share the OS page cache between connections without a system call per
    // page; each connection keeps a modest page cache of its own.
    connection
        .pragma_update(None, "mmap_size", MMAP_BYTES)
        .map_err(fail)?;
    connection
        .pragma_update(None, "cache_size", -8192)
        .map_err(fail)?;
    connection.authorizer(Some(authorize)).map_err(fail)?;
    Ok(connection)
}

impl Dataset {
    fn open(path: &Path, stamp: Stamp) -> Result<Self, DatasetError> {
        let connection = connect(path)?;
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
            layers,
            pool: Mutex::new(vec![connection]),
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

    /// Runs a `SELECT count(*)` statement.
    #[must_use]
    pub fn count(&self, sql: &str, params: &[rusqlite::types::Value]) -> Option<u64> {
        let connection = self.connection().ok()?;
        let count = connection
            .query_row(sql, rusqlite::params_from_iter(params.iter()), |r| {
                r.get::<_, i64>(0)
            })
            .ok()
            .and_then(|n| u64::try_from(n).ok());
        self.release(connection);
        count
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
            Some(connection) => Ok(connection),
            None => connect(&self.path),
        }
    }

    /// Returns a connection to the pool.
    pub fn release(&self, connection: Connection) {
        let mut pool = self
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pool.len() < POOL_SIZE {
            pool.push(connection);
        }
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
            fid: fid.unwrap_or_else(|| "rowid".to_owned()),
            name,
            geometry,
            srs_id,
            fields,
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
const LISTING_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Datasets by path, each kept while its file is unchanged. A file replaced (by rename) is a new
/// version at the next request; requests already running keep the version they started with.
#[derive(Debug, Default)]
pub struct Catalog {
    open: Mutex<HashMap<PathBuf, (Stamp, Arc<Dataset>)>>,
    cache: Option<PathBuf>,
    converting: Mutex<()>,
    listings: Mutex<HashMap<PathBuf, (std::time::Instant, Listing)>>,
    /// Recent answers, by dataset version and query.
    pub responses: super::cache::ResponseCache,
    /// Rendered features, for box queries over features already read.
    pub features: Arc<super::feature_cache::FeatureCache>,
}

impl Catalog {
    /// A catalog that keeps GeoPackage conversions of other formats in `cache`
    /// (`<root>/state/cache`).
    #[must_use]
    pub fn with_cache(cache: PathBuf) -> Self {
        Self {
            cache: Some(cache),
            ..Self::default()
        }
    }

    /// The GeoPackages in `folder` and in its direct subfolders (`sub/x.gpkg` has the stem
    /// `sub.x`), sorted; the listing is reused for a second so that requests do not rescan.
    pub fn geopackages_in(&self, folder: &Path) -> Listing {
        if let Some((at, listing)) = self
            .listings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(folder)
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
        self.listings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                folder.to_owned(),
                (std::time::Instant::now(), listing.clone()),
            );
        listing
    }

    /// Keeps up to `bytes` of recent answers in memory (0: none).
    #[must_use]
    pub fn with_response_cache(mut self, bytes: usize) -> Self {
        self.responses = super::cache::ResponseCache::new(bytes);
        self
    }

    /// Keeps up to `bytes` of rendered features in memory (0: none).
    #[must_use]
    pub fn with_feature_cache(mut self, bytes: usize) -> Self {
        self.features = Arc::new(super::feature_cache::FeatureCache::new(bytes));
        self
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
        options: &super::readers::OpenOptions,
    ) -> Result<PathBuf, DatasetError> {
        let meta = std::fs::metadata(source)
            .ok()
            .filter(std::fs::Metadata::is_file)
            .ok_or_else(|| DatasetError::NotFound(shown.to_owned()))?;
        let nanos = meta
            .modified()
            .unwrap_or(SystemTime::UNIX_EPOCH)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let cache = self
            .cache
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("poziserver-cache"));
        let key = super::stable_hash(&source.to_string_lossy());
        let prefix = format!("{key:016x}-{}-", options.key());
        let target = cache.join(format!("{prefix}{:x}-{nanos:x}.gpkg", meta.len()));
        if target.exists() {
            return Ok(target);
        }
        // One conversion at a time: a burst of first requests converts once.
        let _one = self
            .converting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if target.exists() {
            return Ok(target);
        }
        let open_error = |reason: String| DatasetError::Open {
            path: shown.to_owned(),
            reason,
        };
        std::fs::create_dir_all(&cache)
            .map_err(|e| open_error(format!("cannot create {}: {e}", cache.display())))?;
        let layer = source
            .file_stem()
            .map_or_else(|| "layer".to_owned(), |s| s.to_string_lossy().into_owned());
        let started = std::time::Instant::now();
        let features = super::readers::convert(source, &target, &layer, options).map_err(|e| {
            tracing::warn!(source = %source.display(), error = %e, "conversion failed");
            open_error(e.reason())
        })?;
        tracing::info!(source = %shown, features, ms = started.elapsed().as_millis(), "converted to a GeoPackage");
        // Older conversions of the same source are no longer needed.
        if let Ok(entries) = std::fs::read_dir(&cache) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) && entry.path() != target {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(target)
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
        {
            let open = self
                .open
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((known, dataset)) = open.get(path)
                && *known == stamp
            {
                return Ok(dataset.clone());
            }
        }
        let dataset = Arc::new(Dataset::open(path, stamp).map_err(|e| match e {
            DatasetError::Open { reason, .. } => DatasetError::Open {
                path: shown.to_owned(),
                reason,
            },
            other => other,
        })?);
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(path.to_owned(), (stamp, dataset.clone()));
        Ok(dataset)
    }
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
        let c = connect(&path).unwrap_or_else(|e| panic!("{e}"));
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
