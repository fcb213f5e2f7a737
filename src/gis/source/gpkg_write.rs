//! Writing OGC GeoPackage 1.3 layers: the required metadata tables, GeoPackage binary
//! geometries with envelopes, and an R*Tree spatial index with the specification's triggers.
//! A layer is written into a temporary file and published by renaming it over the old one, so
//! readers see the old version or the new one, never a mix.
//!
//! Features are written in spatial order: rows are serialised as they come and sorted, in
//! batches of a few MiB merged at the end (`sorted_runs`), by their bounds' centres along a
//! Hilbert curve (rows without a geometry last, in the order they came); they are then written
//! with fids in that order, and the R*Tree is packed from them (`rtree_pack`). A box query then
//! reads rows that lie together in the file, not rows scattered through it in the order the
//! source listed them. Memory stays within the batch size whatever the layer's size.

use std::path::{Path, PathBuf};

use geo::BoundingRect;
use geozero::CoordDimensions;
use geozero::ToWkb;
use rusqlite::Connection;
use rusqlite::types::Value;

use crate::gis::quote;

/// The type of an attribute column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// 64-bit integers (and booleans).
    Integer,
    /// Floating point.
    Real,
    /// Text (anything else).
    Text,
}

impl FieldType {
    fn sql(self) -> &'static str {
        match self {
            Self::Integer => "INTEGER",
            Self::Real => "REAL",
            Self::Text => "TEXT",
        }
    }
}

/// An attribute column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Column name.
    pub name: String,
    /// Column type.
    pub kind: FieldType,
}

/// A failure while writing a GeoPackage.
#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {reason}")]
pub struct WriteError {
    /// The file being written.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// A geometry as it is written: its GeoPackage blob and its bounds (`[min x, max x, min y,
/// max y]`).
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    /// The GeoPackage binary geometry (`None`: no geometry).
    pub blob: Option<Vec<u8>>,
    /// Its bounds, when it has any.
    pub bounds: Option<[f64; 4]>,
}

/// Encodes a geometry for a layer in `srs_id`: the blob with an envelope (but for points) and
/// the bounds.
///
/// # Errors
/// When the geometry cannot be encoded.
pub fn encode(geometry: Option<&geo::Geometry<f64>>, srs_id: i64) -> Result<Encoded, String> {
    let Some(g) = geometry else {
        return Ok(Encoded::default());
    };
    let rect = g.bounding_rect();
    let envelope = match (g, rect) {
        (geo::Geometry::Point(_), _) | (_, None) => Vec::new(),
        (_, Some(r)) => vec![r.min().x, r.max().x, r.min().y, r.max().y],
    };
    let blob = g
        .to_gpkg_wkb(CoordDimensions::xy(), i32::try_from(srs_id).ok(), envelope)
        .map_err(|e| e.to_string())?;
    Ok(Encoded {
        blob: Some(blob),
        bounds: rect.map(|r| [r.min().x, r.max().x, r.min().y, r.max().y]),
    })
}

const WGS84_WKT: &str = r#"GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,AUTHORITY["EPSG","8901"]],UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],AXIS["Latitude",NORTH],AXIS["Longitude",EAST],AUTHORITY["EPSG","4326"]]"#;

/// Writes one feature layer into a new GeoPackage.
pub struct LayerWriter {
    connection: Connection,
    temporary: Temporary,
    destination: PathBuf,
    table: String,
    srs_id: i64,
    /// The layer's attribute columns, in order; the table is made from them at the end.
    fields: Fields,
    /// The rows, gathered and sorted by their place along the Hilbert curve.
    runs: crate::gis::source::sorted_runs::Runs,
    /// A row being serialised (reused).
    record: Vec<u8>,
    /// The cells of a row given by [`LayerWriter::add`] (reused).
    cells: Cells,
    extent: Option<[f64; 4]>,
    count: u64,
}

impl std::fmt::Debug for LayerWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LayerWriter({} -> {})",
            self.table,
            self.destination.display()
        )
    }
}

impl LayerWriter {
    /// Starts a GeoPackage for `destination` with one layer `table` in `srs_id` (an EPSG code;
    /// its WKT comes from the EPSG definitions carried).
    ///
    /// # Errors
    /// When the temporary file cannot be created.
    pub fn create(
        destination: &Path,
        table: &str,
        srs_id: i64,
        fields: &[Field],
    ) -> Result<Self, WriteError> {
        let temporary = destination.with_extension(format!("gpkg.{}.tmp", std::process::id()));
        let fail = |e: rusqlite::Error| WriteError {
            path: destination.to_owned(),
            reason: e.to_string(),
        };
        check_fields(fields).map_err(|reason| WriteError {
            path: destination.to_owned(),
            reason,
        })?;
        let _ = std::fs::remove_file(&temporary);
        let connection = Connection::open(&temporary).map_err(fail)?;
        connection
            .execute_batch(&format!(
                "PRAGMA application_id = 1196444487; PRAGMA user_version = 10300; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
                 BEGIN;
                 CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT NOT NULL, srs_id INTEGER PRIMARY KEY, organization TEXT NOT NULL,
                     organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL, description TEXT);
                 CREATE TABLE gpkg_contents (table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL, identifier TEXT UNIQUE,
                     description TEXT DEFAULT '', last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
                     min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
                     CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id));
                 CREATE TABLE gpkg_geometry_columns (table_name TEXT NOT NULL, column_name TEXT NOT NULL, geometry_type_name TEXT NOT NULL,
                     srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL,
                     CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
                     CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
                     CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys (srs_id));
                 CREATE TABLE gpkg_extensions (table_name TEXT, column_name TEXT, extension_name TEXT NOT NULL, definition TEXT NOT NULL,
                     scope TEXT NOT NULL, CONSTRAINT ge_tce UNIQUE (table_name, column_name, extension_name));
                 INSERT INTO gpkg_spatial_ref_sys VALUES ('Undefined cartesian SRS', -1, 'NONE', -1, 'undefined', 'undefined cartesian coordinate reference system');
                 INSERT INTO gpkg_spatial_ref_sys VALUES ('Undefined geographic SRS', 0, 'NONE', 0, 'undefined', 'undefined geographic coordinate reference system');
                 INSERT INTO gpkg_spatial_ref_sys VALUES ('WGS 84 geodetic', 4326, 'EPSG', 4326, '{WGS84_WKT}', 'longitude/latitude coordinates in decimal degrees on the WGS 84 spheroid');",
            ))
            .map_err(fail)?;
        if srs_id > 0 && srs_id != 4326 {
            let definition = u16::try_from(srs_id)
                .ok()
                .and_then(proj4rs_wkt)
                .ok_or_else(|| WriteError {
                    path: destination.to_owned(),
                    reason: format!("unknown EPSG:{srs_id}"),
                })?;
            connection
                .execute(
                    "INSERT INTO gpkg_spatial_ref_sys VALUES (?1, ?2, 'EPSG', ?2, ?3, NULL)",
                    rusqlite::params![format!("EPSG:{srs_id}"), srs_id, definition],
                )
                .map_err(fail)?;
        }
        Ok(Self {
            fields: Fields::new(fields),
            runs: crate::gis::source::sorted_runs::Runs::new(temporary.clone(), RUN_BYTES),
            record: Vec::new(),
            cells: Cells::default(),
            connection,
            temporary: Temporary(temporary),
            destination: destination.to_owned(),
            table: table.to_owned(),
            srs_id,
            extent: None,
            count: 0,
        })
    }

    fn fail(&self, reason: impl std::fmt::Display) -> WriteError {
        WriteError {
            path: self.destination.clone(),
            reason: reason.to_string(),
        }
    }

    /// Adds a feature: attribute values in field order, and its geometry.
    ///
    /// # Errors
    /// When the row cannot be written.
    pub fn add(
        &mut self,
        values: Vec<Value>,
        geometry: Option<&geo::Geometry<f64>>,
    ) -> Result<(), WriteError> {
        let mut cells = std::mem::take(&mut self.cells);
        cells.clear();
        for (column, value) in values.iter().enumerate() {
            cells.value(column, value);
        }
        let added = self.add_cells(geometry, &cells);
        self.cells = cells;
        added
    }

    /// The layer's fields, to which a source whose fields are found as it is read adds them.
    pub fn fields_mut(&mut self) -> &mut Fields {
        &mut self.fields
    }

    /// Adds a feature: its geometry, and the values of its attributes by column (a column
    /// not given is null).
    ///
    /// # Errors
    /// When the row cannot be written.
    pub fn add_cells(
        &mut self,
        geometry: Option<&geo::Geometry<f64>>,
        cells: &Cells,
    ) -> Result<(), WriteError> {
        let Encoded { blob, bounds } = encode(geometry, self.srs_id).map_err(|e| self.fail(e))?;
        let key = bounds.map_or(u64::MAX, |[minx, maxx, miny, maxy]| {
            hilbert_key(
                f64::midpoint(minx, maxx),
                f64::midpoint(miny, maxy),
                self.srs_id,
            )
        });
        self.record.clear();
        match blob.as_deref() {
            Some(b) => {
                self.record.push(1);
                self.record
                    .extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
                self.record.extend_from_slice(b);
            }
            None => self.record.push(0),
        }
        self.record.extend_from_slice(&cells.0);
        self.runs
            .push(key, &self.record)
            .map_err(|e| self.fail(format!("cannot keep a row for sorting: {e}")))?;
        if let Some([minx, maxx, miny, maxy]) = bounds {
            let e = self.extent.get_or_insert([minx, miny, maxx, maxy]);
            *e = [
                e[0].min(minx),
                e[1].min(miny),
                e[2].max(maxx),
                e[3].max(maxy),
            ];
        }
        self.count += 1;
        Ok(())
    }

    /// Writes the metadata and index triggers, then publishes the file by renaming it over
    /// `destination`. Returns the number of features.
    ///
    /// # Errors
    /// When the metadata cannot be written or the file cannot be published.
    pub fn finish(mut self) -> Result<u64, WriteError> {
        let runs = std::mem::replace(
            &mut self.runs,
            crate::gis::source::sorted_runs::Runs::new(PathBuf::new(), 0),
        );
        self.write_in_spatial_order(runs)
            .map_err(|e| self.fail(format!("writing the rows in spatial order: {e}")))?;
        let t = &self.table;
        let [min_x, min_y, max_x, max_y] = self.extent.map_or([None; 4], |e| e.map(Some));
        let triggers = rtree_triggers(t, "geom", "fid");
        self.connection
            .execute(
                "INSERT INTO gpkg_contents (table_name, data_type, identifier, min_x, min_y, max_x, max_y, srs_id) VALUES (?1, 'features', ?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![t, min_x, min_y, max_x, max_y, self.srs_id],
            )
            .and_then(|_| {
                self.connection.execute(
                    "INSERT INTO gpkg_geometry_columns VALUES (?1, 'geom', 'GEOMETRY', ?2, 0, 0)",
                    rusqlite::params![t, self.srs_id],
                )
            })
            .and_then(|_| {
                self.connection.execute(
                    "INSERT INTO gpkg_extensions VALUES (?1, 'geom', 'gpkg_rtree_index', 'http://www.geopackage.org/spec120/#extension_rtree', 'write-only')",
                    [t],
                )
            })
            .and_then(|_| self.connection.execute_batch(&triggers))
            .and_then(|()| self.connection.execute_batch("COMMIT;"))
            .map_err(|e| self.fail(e))?;
        let Self {
            connection,
            temporary,
            destination,
            count,
            ..
        } = self;
        // Closed before the rename, which Windows requires.
        drop(connection);
        std::fs::rename(&temporary.0, &destination).map_err(|e| WriteError {
            path: destination.clone(),
            reason: e.to_string(),
        })?;
        Ok(count)
    }
}

/// Bytes of rows gathered in memory before a sorted batch is written out.
const RUN_BYTES: usize = 8 * 1024 * 1024;

/// The most parameters one insert statement takes (SQLite's default limit is 32,766).
const MAX_PARAMETERS: usize = 32_000;

/// The most rows one insert statement writes.
const MAX_BATCH_ROWS: usize = 128;

/// The bytes of rows after which an insert statement is written with fewer rows (SQLite holds
/// a copy of what is bound until the statement is done).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Cells per axis of the Hilbert curve's grid (2^ORDER).
const ORDER: u8 = 32;

/// The largest number of attribute columns a layer may have (SQLite allows 2,000 columns in
/// all; `fid` and `geom` take two).
pub const MAX_FIELDS: usize = 1998;

/// A layer's attribute columns: their names, in order, and their types, widened as values of
/// other types come.
#[derive(Debug, Default)]
pub struct Fields {
    list: Vec<Field>,
    by_name: std::collections::HashMap<String, usize>,
}

impl Fields {
    fn new(fields: &[Field]) -> Self {
        let mut by_name = std::collections::HashMap::new();
        for (i, f) in fields.iter().enumerate() {
            by_name.entry(f.name.clone()).or_insert(i);
        }
        Self {
            list: fields.to_vec(),
            by_name,
        }
    }

    /// The fields, in column order.
    #[must_use]
    pub fn list(&self) -> &[Field] {
        &self.list
    }

    /// The column of field `name`, added if it is new, its type widened to hold a value of
    /// `kind` (integers and reals make reals, anything with text makes text). `hint` is where
    /// the field is expected (the place of the property in its feature), tried first.
    ///
    /// # Errors
    /// When a new field would make more than [`MAX_FIELDS`].
    pub fn column(&mut self, name: &str, kind: FieldType, hint: usize) -> Result<usize, String> {
        let at = match self.list.get(hint) {
            Some(f) if f.name == name => hint,
            _ => match self.by_name.get(name) {
                Some(&at) => at,
                None => {
                    if self.list.len() >= MAX_FIELDS {
                        return Err(format!("more than {MAX_FIELDS} fields"));
                    }
                    self.list.push(Field {
                        name: name.to_owned(),
                        kind,
                    });
                    self.by_name.insert(name.to_owned(), self.list.len() - 1);
                    return Ok(self.list.len() - 1);
                }
            },
        };
        let field = &mut self.list[at];
        field.kind = match (field.kind, kind) {
            (a, b) if a == b => a,
            (FieldType::Integer | FieldType::Real, FieldType::Integer | FieldType::Real) => {
                FieldType::Real
            }
            _ => FieldType::Text,
        };
        Ok(at)
    }
}

/// A row's attribute values as the writer keeps them while it sorts: each value with its
/// column and its own type; the column's final type decides at the end how it is written
/// (an integer in a text column as its digits, a real in a text column as JSON writes it).
#[derive(Debug, Default, Clone)]
pub struct Cells(Vec<u8>);

impl Cells {
    /// Empties the row, keeping its memory.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    fn head(&mut self, column: usize, tag: u8) {
        self.0
            .extend_from_slice(&u16::try_from(column).unwrap_or(u16::MAX).to_le_bytes());
        self.0.push(tag);
    }

    fn bytes(&mut self, column: usize, tag: u8, b: &[u8]) {
        self.head(column, tag);
        self.0
            .extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
        self.0.extend_from_slice(b);
    }

    /// An integer.
    pub fn integer(&mut self, column: usize, v: i64) {
        self.head(column, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// A real.
    pub fn real(&mut self, column: usize, v: f64) {
        self.head(column, 2);
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// Text.
    pub fn text(&mut self, column: usize, v: &str) {
        self.bytes(column, 3, v.as_bytes());
    }

    /// An integer above `i64::MAX` (null in an integer column, as GDAL reads it).
    pub fn big_integer(&mut self, column: usize, v: u64) {
        self.head(column, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn value(&mut self, column: usize, value: &Value) {
        match value {
            Value::Null => {}
            Value::Integer(i) => self.integer(column, *i),
            Value::Real(r) => self.real(column, *r),
            Value::Text(t) => self.text(column, t),
            Value::Blob(b) => self.bytes(column, 4, b),
        }
    }
}

/// Checks fields known from the start (a CSV header, a shapefile's table) before any row is
/// read, instead of when the table is made at the end: too many, or names SQLite refuses.
fn check_fields(fields: &[Field]) -> Result<(), String> {
    if fields.len() > MAX_FIELDS {
        return Err(format!("more than {MAX_FIELDS} fields"));
    }
    if fields.is_empty() {
        return Ok(());
    }
    let columns = column_definitions(fields, &column_names(fields));
    Connection::open_in_memory()
        .and_then(|c| c.execute_batch(&format!("CREATE TABLE t (fid INTEGER, geom BLOB{columns})")))
        .map_err(|e| e.to_string())
}

/// The attribute columns of a `CREATE TABLE`, each after a comma, named `names`.
fn column_definitions(fields: &[Field], names: &[String]) -> String {
    fields
        .iter()
        .zip(names)
        .map(|(f, name)| format!(", {} {}", quote(name), f.kind.sql()))
        .collect()
}

/// The table's column name for each field: its own, except that a name equal (ignoring ASCII
/// case, as SQLite compares names) to `fid`, `geom` or an earlier column's is renamed
/// `<name>2`, `<name>3`… as ogr2ogr renames a field a GeoPackage cannot hold twice (ogr2ogr
/// itself fails on a field named `geom`, and on one named `fid` that is not an integer).
fn column_names(fields: &[Field]) -> Vec<String> {
    let mut taken: std::collections::HashSet<String> = ["fid".to_owned(), "geom".to_owned()].into();
    fields
        .iter()
        .map(|f| {
            let mut name = f.name.clone();
            let mut n = 1u32;
            while !taken.insert(name.to_ascii_lowercase()) {
                n += 1;
                name = format!("{}{n}", f.name);
            }
            name
        })
        .collect()
}

/// `INSERT INTO <into> VALUES` with `rows` rows of `per_row` parameters each: rows go into
/// SQLite many per statement, since one statement per row pays the statement's own work (and
/// `AUTOINCREMENT`'s bookkeeping) a million times over.
pub(crate) fn insert_rows_sql(into: &str, per_row: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; per_row].join(","));
    format!("INSERT INTO {into} VALUES {}", vec![row; rows].join(","))
}

/// A kept row: its geometry blob (if any) and its cells.
fn split_record(record: &[u8]) -> rusqlite::Result<(Option<&[u8]>, &[u8])> {
    let corrupt = || rusqlite::Error::InvalidQuery;
    match record.first() {
        Some(0) => Ok((None, &record[1..])),
        Some(1) => {
            let length: [u8; 4] = record
                .get(1..5)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(corrupt)?;
            let end = 5 + u32::from_le_bytes(length) as usize;
            let blob = record.get(5..end).ok_or_else(corrupt)?;
            Ok((Some(blob), &record[end..]))
        }
        _ => Err(corrupt()),
    }
}

/// Binds a row's cells to `statement`'s parameters (column `i` at parameter `base + i + 3`,
/// after the fid and the geometry), each as its column's type in `fields` asks.
fn bind(
    statement: &mut rusqlite::Statement<'_>,
    base: usize,
    mut cells: &[u8],
    fields: &[Field],
) -> rusqlite::Result<()> {
    let corrupt = || rusqlite::Error::InvalidQuery;
    let mut take = |n: usize| -> rusqlite::Result<&[u8]> {
        if cells.len() < n {
            return Err(corrupt());
        }
        let (head, rest) = cells.split_at(n);
        cells = rest;
        Ok(head)
    };
    let eight = |b: &[u8]| -> rusqlite::Result<[u8; 8]> { b.try_into().map_err(|_| corrupt()) };
    loop {
        let Ok(head) = take(3) else { break };
        let column = usize::from(u16::from_le_bytes([head[0], head[1]]));
        let kind = fields.get(column).ok_or_else(corrupt)?.kind;
        let index = base + column + 3;
        match (head[2], kind) {
            (1, FieldType::Text) => {
                let v = i64::from_le_bytes(eight(take(8)?)?);
                statement.raw_bind_parameter(index, itoa::Buffer::new().format(v))?;
            }
            (1, FieldType::Real) => {
                statement.raw_bind_parameter(index, i64::from_le_bytes(eight(take(8)?)?) as f64)?
            }
            (1, FieldType::Integer) => {
                statement.raw_bind_parameter(index, i64::from_le_bytes(eight(take(8)?)?))?;
            }
            (2, FieldType::Text) => {
                let v = f64::from_le_bytes(eight(take(8)?)?);
                let text = serde_json::Number::from_f64(v)
                    .map_or_else(|| v.to_string(), |n| n.to_string());
                statement.raw_bind_parameter(index, text)?;
            }
            (2, _) => statement.raw_bind_parameter(index, f64::from_le_bytes(eight(take(8)?)?))?,
            (5, kind) => {
                let v = u64::from_le_bytes(eight(take(8)?)?);
                match kind {
                    FieldType::Integer => {
                        statement.raw_bind_parameter(index, rusqlite::types::Null)?
                    }
                    FieldType::Real => statement.raw_bind_parameter(index, v as f64)?,
                    FieldType::Text => {
                        statement.raw_bind_parameter(index, itoa::Buffer::new().format(v))?;
                    }
                }
            }
            (tag @ (3 | 4), _) => {
                let length = u32::from_le_bytes(take(4)?.try_into().map_err(|_| corrupt())?);
                let bytes = take(length as usize)?;
                if tag == 3 {
                    let text = std::str::from_utf8(bytes).map_err(|_| corrupt())?;
                    statement.raw_bind_parameter(index, text)?;
                } else {
                    statement.raw_bind_parameter(index, bytes)?;
                }
            }
            _ => return Err(corrupt()),
        }
    }
    Ok(())
}

impl LayerWriter {
    /// Makes the layer's table (with its fields as they now are, in columns named `names`)
    /// and its empty R*Tree.
    fn create_table(&self, names: &[String]) -> rusqlite::Result<()> {
        let renamed: Vec<String> = self
            .fields
            .list
            .iter()
            .zip(names)
            .filter(|(field, name)| field.name != **name)
            .map(|(field, name)| format!("{} as {name}", field.name))
            .collect();
        if !renamed.is_empty() {
            tracing::warn!(
                layer = %self.table,
                renamed = renamed.len(),
                first = %renamed.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                "fields renamed: their names are taken (ignoring case) by the feature id, the geometry or another field"
            );
        }
        let columns = column_definitions(&self.fields.list, names);
        self.connection.execute_batch(&format!(
            "CREATE TABLE {t} (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, geom GEOMETRY{columns});
             CREATE VIRTUAL TABLE {r} USING rtree(id, minx, maxx, miny, maxy);",
            t = quote(&self.table),
            r = quote(&format!("rtree_{}_geom", self.table)),
        ))
    }

    /// Writes the gathered rows into the layer, fids in Hilbert order of their bounds' centres
    /// (rows without a geometry last, as they came), then packs its R*Tree from them: the
    /// bounds of each row are noted beside the file as it is written, so the rows are not read
    /// back.
    fn write_in_spatial_order(
        &self,
        runs: crate::gis::source::sorted_runs::Runs,
    ) -> Result<(), RunError> {
        let columns = column_names(&self.fields.list);
        self.create_table(&columns)?;
        let c = &self.connection;
        let names: String = columns
            .iter()
            .map(|name| format!(", {}", quote(name)))
            .collect();
        let into = format!("main.{} (fid, geom{names})", quote(&self.table));
        let per_row = self.fields.list.len() + 2;
        let batch = (MAX_PARAMETERS / per_row).clamp(1, MAX_BATCH_ROWS);
        let bounds_path = Temporary(self.temporary.0.with_extension("bounds"));
        let mut bounds_out =
            std::io::BufWriter::with_capacity(256 * 1024, std::fs::File::create(&bounds_path.0)?);
        let mut located = 0u64;
        let mut fid = 0i64;
        // The records of the batch being gathered, end to end, and where each ends.
        let mut pending: Vec<u8> = Vec::new();
        let mut ends: Vec<usize> = Vec::with_capacity(batch);
        let fields = &self.fields.list;
        // Writes the gathered rows (fids from `first`) with one statement, and notes the bounds
        // of each for the R*Tree.
        let mut flush = |pending: &[u8], ends: &[usize], first: i64| -> Result<(), RunError> {
            let mut statement = c.prepare_cached(&insert_rows_sql(&into, per_row, ends.len()))?;
            let mut start = 0;
            for (k, (&end, fid)) in ends.iter().zip(first..).enumerate() {
                let base = k * per_row;
                let (blob, cells) = split_record(&pending[start..end])?;
                statement.raw_bind_parameter(base + 1, fid)?;
                statement.raw_bind_parameter(base + 2, blob)?;
                bind(&mut statement, base, cells, fields)?;
                if let Some(b) = blob.and_then(crate::gis::source::rtree_pack::blob_bounds)
                    && b.iter().all(|v| v.is_finite())
                {
                    use std::io::Write;
                    bounds_out.write_all(&fid.to_le_bytes())?;
                    for v in b {
                        bounds_out.write_all(&v.to_le_bytes())?;
                    }
                    located += 1;
                }
                start = end;
            }
            statement.raw_execute()?;
            // SQLite keeps its copies of what was bound until they are cleared.
            statement.clear_bindings();
            Ok(())
        };
        runs.drain(|record| -> Result<(), RunError> {
            fid += 1;
            pending.extend_from_slice(record);
            ends.push(pending.len());
            // Large rows (long lines, detailed polygons) go in fewer at a time.
            if ends.len() == batch || pending.len() >= MAX_BATCH_BYTES {
                flush(&pending, &ends, fid + 1 - ends.len() as i64)?;
                pending.clear();
                ends.clear();
            }
            Ok(())
        })?;
        if !ends.is_empty() {
            flush(&pending, &ends, fid + 1 - ends.len() as i64)?;
        }
        let file = bounds_out
            .into_inner()
            .map_err(|e| RunError::Io(e.into_error()))?;
        drop(file);
        // The R*Tree, packed from the rows as they now lie: in Hilbert order.
        let mut reader =
            std::io::BufReader::with_capacity(256 * 1024, std::fs::File::open(&bounds_path.0)?);
        let entries = (0..located).map(|_| {
            use std::io::Read;
            let mut entry = [0u8; 40];
            reader
                .read_exact(&mut entry)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            let number = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&entry[i * 8..i * 8 + 8]);
                b
            };
            Ok((
                i64::from_le_bytes(number(0)),
                [1, 2, 3, 4].map(|i| f64::from_le_bytes(number(i))),
            ))
        });
        crate::gis::source::rtree_pack::pack(c, &format!("rtree_{}_geom", self.table), entries)?;
        Ok(())
    }
}

/// A failure while the sorted rows are written.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The place of point (`x`, `y`) along a Hilbert curve over the layer's system's whole range
/// (longitude and latitude for EPSG:4326; ±10^9 units for projected systems), on a grid of 2^32
/// cells per axis: fine enough that neighbours on the ground are neighbours on the curve at
/// any scale, and known before the layer's extent is.
fn hilbert_key(x: f64, y: f64, srs_id: i64) -> u64 {
    let frame = if srs_id == 4326 || srs_id == 0 {
        [-180.0, -90.0, 180.0, 90.0]
    } else {
        [-1e9, -1e9, 1e9, 1e9]
    };
    let cell = |value: f64, min: f64, max: f64| -> u32 {
        if value.is_finite() {
            let scaled = ((value - min) / (max - min) * f64::from(u32::MAX)).round();
            // Within 0..=u32::MAX by the clamp.
            scaled.clamp(0.0, f64::from(u32::MAX)) as u32
        } else {
            0
        }
    };
    fast_hilbert::xy2h::<u32>(
        cell(x, frame[0], frame[2]),
        cell(y, frame[1], frame[3]),
        ORDER,
    )
}

/// The temporary file, removed unless it was published.
struct Temporary(PathBuf);

impl Drop for Temporary {
    fn drop(&mut self) {
        // A writer dropped before `finish` (a failed conversion) leaves nothing behind.
        let _ = std::fs::remove_file(&self.0);
    }
}

fn proj4rs_wkt(code: u16) -> Option<String> {
    crs_definitions::from_code(code).map(|d| d.wkt.to_owned())
}

/// The GeoPackage 1.3 R*Tree triggers that keep the index in step with later edits.
fn rtree_triggers(t: &str, c: &str, i: &str) -> String {
    let r = format!("rtree_{t}_{c}");
    format!(
        r#"CREATE TRIGGER "{r}_insert" AFTER INSERT ON "{t}" WHEN (new."{c}" NOT NULL AND NOT ST_IsEmpty(NEW."{c}"))
BEGIN INSERT OR REPLACE INTO "{r}" VALUES (NEW."{i}", ST_MinX(NEW."{c}"), ST_MaxX(NEW."{c}"), ST_MinY(NEW."{c}"), ST_MaxY(NEW."{c}")); END;
CREATE TRIGGER "{r}_update1" AFTER UPDATE OF "{c}" ON "{t}" WHEN OLD."{i}" = NEW."{i}" AND (NEW."{c}" NOTNULL AND NOT ST_IsEmpty(NEW."{c}"))
BEGIN INSERT OR REPLACE INTO "{r}" VALUES (NEW."{i}", ST_MinX(NEW."{c}"), ST_MaxX(NEW."{c}"), ST_MinY(NEW."{c}"), ST_MaxY(NEW."{c}")); END;
CREATE TRIGGER "{r}_update2" AFTER UPDATE OF "{c}" ON "{t}" WHEN OLD."{i}" = NEW."{i}" AND (NEW."{c}" ISNULL OR ST_IsEmpty(NEW."{c}"))
BEGIN DELETE FROM "{r}" WHERE id = OLD."{i}"; END;
CREATE TRIGGER "{r}_update3" AFTER UPDATE ON "{t}" WHEN OLD."{i}" != NEW."{i}" AND (NEW."{c}" NOTNULL AND NOT ST_IsEmpty(NEW."{c}"))
BEGIN DELETE FROM "{r}" WHERE id = OLD."{i}"; INSERT OR REPLACE INTO "{r}" VALUES (NEW."{i}", ST_MinX(NEW."{c}"), ST_MaxX(NEW."{c}"), ST_MinY(NEW."{c}"), ST_MaxY(NEW."{c}")); END;
CREATE TRIGGER "{r}_update4" AFTER UPDATE ON "{t}" WHEN OLD."{i}" != NEW."{i}" AND (NEW."{c}" ISNULL OR ST_IsEmpty(NEW."{c}"))
BEGIN DELETE FROM "{r}" WHERE id IN (OLD."{i}", NEW."{i}"); END;
CREATE TRIGGER "{r}_delete" AFTER DELETE ON "{t}" WHEN old."{c}" NOT NULL
BEGIN DELETE FROM "{r}" WHERE id = OLD."{i}"; END;"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text fields of these names.
    fn text_fields(names: &[&str]) -> Vec<Field> {
        names
            .iter()
            .map(|name| Field {
                name: (*name).to_owned(),
                kind: FieldType::Text,
            })
            .collect()
    }

    /// Fields known from the start are checked before any row is read.
    #[test]
    fn too_many_fields_fail_at_the_start() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<String> = (0..=MAX_FIELDS).map(|i| format!("f{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let error = LayerWriter::create(
            &dir.path().join("wide.gpkg"),
            "wide",
            4326,
            &text_fields(&names),
        )
        .err()
        .unwrap_or_else(|| panic!("{} fields were accepted", MAX_FIELDS + 1));
        assert!(error.reason.contains("more than"), "{error}");
    }

    /// Fields named as the feature id, the geometry or an earlier field (ignoring case) are
    /// renamed as ogr2ogr renames them, and keep their values.
    #[test]
    fn fields_named_alike_are_renamed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("alike.gpkg");
        let fields = text_fields(&["name", "NAME", "fid", "GEOM", "name2", "Fid2"]);
        let mut writer =
            LayerWriter::create(&path, "alike", 4326, &fields).unwrap_or_else(|e| panic!("{e}"));
        let values = ["a", "b", "c", "d", "e", "f"].map(|v| Value::Text(v.to_owned()));
        writer
            .add(values.to_vec(), None)
            .unwrap_or_else(|e| panic!("{e}"));
        writer.finish().unwrap_or_else(|e| panic!("{e}"));
        let c = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let columns: Vec<String> = c
            .prepare("SELECT name FROM pragma_table_info('alike') ORDER BY cid")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            columns,
            [
                "fid", "geom", "name", "NAME2", "fid2", "GEOM2", "name22", "Fid22"
            ]
        );
        let row: Vec<String> = c
            .query_row(
                "SELECT name, NAME2, fid2, GEOM2, name22, Fid22 FROM alike",
                [],
                |r| (0..6).map(|i| r.get(i)).collect(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(row, ["a", "b", "c", "d", "e", "f"]);
    }

    #[test]
    fn large_rows_go_in_fewer_per_statement_and_all_arrive() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("large.gpkg");
        let fields = text_fields(&["text"]);
        let mut writer =
            LayerWriter::create(&path, "large", 4326, &fields).unwrap_or_else(|e| panic!("{e}"));
        // 300 rows of about 100 KB: statements are cut by bytes (about 40 rows, then a shorter
        // last one), not by count; every row must still arrive with its own geometry.
        for i in 0..300 {
            let point = geo::Geometry::Point(geo::Point::new(f64::from(i), 0.0));
            let text = format!("{i}:{}", "x".repeat(100_000));
            writer
                .add(vec![Value::Text(text)], Some(&point))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(writer.finish().unwrap_or_else(|e| panic!("{e}")), 300);
        let c = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let rows: Vec<(i64, String, f64)> = c
            .prepare("SELECT g.fid, g.text, r.minx FROM large g JOIN rtree_large_geom r ON r.id = g.fid ORDER BY g.fid")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rows.len(), 300);
        let mut seen: Vec<i64> = Vec::new();
        for (fid, text, x) in &rows {
            let (i, rest) = text.split_once(':').unwrap_or_else(|| panic!("row {fid}"));
            let i: i64 = i.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(rest.len(), 100_000, "row {fid}");
            assert_eq!(*x, i as f64, "row {fid} has another row's geometry");
            seen.push(i);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..300).collect::<Vec<_>>());
    }

    /// Fields named like SQLite's row ids or the staging columns are kept as they are.
    #[test]
    fn fields_named_rowid_or_like_the_staging_columns_convert() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("odd.gpkg");
        let fields = text_fields(&["rowid", "pozi_minx", "pozi_seq"]);
        let mut writer =
            LayerWriter::create(&path, "odd", 4326, &fields).unwrap_or_else(|e| panic!("{e}"));
        for (i, x) in [(0, 5.0), (1, -5.0), (2, 5.0)] {
            let point = geo::Geometry::Point(geo::Point::new(x, 0.0));
            let values = ["same", "text", "t"]
                .map(|v| Value::Text(format!("{v}{i}")))
                .to_vec();
            writer
                .add(values, Some(&point))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(writer.finish().unwrap_or_else(|e| panic!("{e}")), 3);
        let c = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let rows: Vec<(String, String, f64)> = c
            .prepare("SELECT g.\"rowid\", g.pozi_minx, r.minx FROM odd g JOIN rtree_odd_geom r ON r.id = g.fid ORDER BY g.fid")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rows.len(), 3);
        for (rowid, minx, x) in rows {
            let i = &rowid[4..];
            assert_eq!(minx, format!("text{i}"));
            assert_eq!(
                x,
                if i == "1" { -5.0 } else { 5.0 },
                "row {i} lost its geometry"
            );
        }
    }

    /// Points written in a scattered order come back with fids in spatial order: neighbours
    /// in fid order are neighbours on the ground. Rows without geometry come last, in order.
    #[test]
    fn features_are_written_in_spatial_order() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("grid.gpkg");
        let fields = [Field {
            name: "n".to_owned(),
            kind: FieldType::Integer,
        }];
        let mut writer =
            LayerWriter::create(&path, "grid", 4326, &fields).unwrap_or_else(|e| panic!("{e}"));
        // A 32 × 32 grid, visited in a scrambled order (a stride coprime with 1024).
        let mut order = Vec::new();
        for i in 0..1024_i64 {
            let cell = (i * 389) % 1024;
            let point =
                geo::Geometry::Point(geo::Point::new((cell % 32) as f64, (cell / 32) as f64));
            writer
                .add(vec![Value::Integer(i)], Some(&point))
                .unwrap_or_else(|e| panic!("{e}"));
            order.push(cell);
        }
        for i in [2000_i64, 2001] {
            writer
                .add(vec![Value::Integer(i)], None)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(writer.finish().unwrap_or_else(|e| panic!("{e}")), 1026);

        let c = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let rows: Vec<(i64, Option<f64>, Option<f64>)> = c
            .prepare("SELECT g.fid, r.minx, r.miny FROM grid g LEFT JOIN rtree_grid_geom r ON r.id = g.fid ORDER BY g.fid")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rows.len(), 1026);
        let step = |a: (f64, f64), b: (f64, f64)| (a.0 - b.0).abs() + (a.1 - b.1).abs();
        let points: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|(_, x, y)| Some(((*x)?, (*y)?)))
            .collect();
        let along_fids: f64 = points.windows(2).map(|w| step(w[0], w[1])).sum();
        let as_written: f64 = order
            .windows(2)
            .map(|w| {
                step(
                    ((w[0] % 32) as f64, (w[0] / 32) as f64),
                    ((w[1] % 32) as f64, (w[1] / 32) as f64),
                )
            })
            .sum();
        let mean = along_fids / 1023.0;
        assert!(
            mean < 1.5,
            "fids are not in spatial order: {mean} cells between neighbours"
        );
        assert!(as_written / 1023.0 > 10.0, "the input was not scattered");
        // The rows without geometry are last, in the order they came, and every row's
        // attributes moved with it.
        let tail: Vec<i64> = c
            .prepare("SELECT n FROM grid ORDER BY fid DESC LIMIT 2")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tail, vec![2001, 2000]);
        let (sum, distinct): (i64, i64) = c
            .query_row("SELECT sum(n), count(DISTINCT n) FROM grid", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((sum, distinct), ((0..1024).sum::<i64>() + 4001, 1026));
        let first_cell: i64 = c
            .query_row("SELECT n FROM grid WHERE fid = 1", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{e}"));
        let cell = (first_cell * 389) % 1024;
        assert_eq!(
            (rows[0].1, rows[0].2),
            (Some((cell % 32) as f64), Some((cell / 32) as f64)),
            "a row's attributes stayed with its geometry"
        );
    }
}
