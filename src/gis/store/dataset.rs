//! One dataset file: a GeoPackage or SQLite file opened read-only behind an SQLite authorizer
//! (reads only; no ATTACH, writes, schema changes or dangerous functions), its layers, and a
//! pool of connections per file version handed out behind an RAII guard.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::{Connection, OpenFlags};

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
    pub(crate) fn open(path: &Path, stamp: Stamp, max_value: i32) -> Result<Self, DatasetError> {
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

    /// A connection from the pool (or a new one), given back when the guard is dropped.
    ///
    /// # Errors
    /// When a new connection cannot be opened.
    pub fn connection(&self) -> Result<Pooled<'_>, DatasetError> {
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let connection = match pooled {
            Some((connection, _)) => connection,
            None => connect(&self.path, self.max_value)?,
        };
        Ok(Pooled {
            dataset: self,
            connection: Some(connection),
        })
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

    fn release(&self, connection: Connection) {
        let mut pool = self
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pool.len() < POOL_SIZE {
            pool.push((connection, Instant::now()));
        }
    }
}

/// A connection of a dataset's pool, returned to it when dropped.
#[derive(Debug)]
pub struct Pooled<'a> {
    dataset: &'a Dataset,
    connection: Option<Connection>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        // Present from creation until drop.
        self.connection
            .as_ref()
            .unwrap_or_else(|| unreachable!("a pooled connection is held until dropped"))
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.dataset.release(connection);
        }
    }
}

/// Returns memory SQLite has freed to the system. SQLite allocates through the C library's
/// `malloc`, whose free pages between live allocations are otherwise kept by the process.
pub(crate) fn give_back_freed_memory() {
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

/// A file's size and modification time: a new pair is a new version.
pub(crate) type Stamp = (u64, SystemTime);

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
