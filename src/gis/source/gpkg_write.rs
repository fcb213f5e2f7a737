//! Writing OGC GeoPackage 1.3 layers: the required metadata tables, GeoPackage binary
//! geometries with envelopes, and an R*Tree spatial index with the specification's triggers.
//! A layer is written into a temporary file and published by renaming it over the old one, so
//! readers see the old version or the new one, never a mix.

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

const WGS84_WKT: &str = r#"GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,AUTHORITY["EPSG","8901"]],UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],AXIS["Latitude",NORTH],AXIS["Longitude",EAST],AUTHORITY["EPSG","4326"]]"#;

/// Writes one feature layer into a new GeoPackage.
pub struct LayerWriter {
    connection: Connection,
    temporary: Temporary,
    destination: PathBuf,
    table: String,
    srs_id: i64,
    insert: String,
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
        let columns: Vec<String> = fields
            .iter()
            .map(|f| format!("{} {}", quote(&f.name), f.kind.sql()))
            .collect();
        let column_list = if columns.is_empty() {
            String::new()
        } else {
            format!(", {}", columns.join(", "))
        };
        let rtree = format!("rtree_{table}_geom");
        connection
            .execute_batch(&format!(
                "CREATE TABLE {t} (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, geom GEOMETRY{column_list});
                 CREATE VIRTUAL TABLE {r} USING rtree(id, minx, maxx, miny, maxy);",
                t = quote(table),
                r = quote(&rtree),
            ))
            .map_err(fail)?;
        let placeholders: Vec<String> = (0..=fields.len()).map(|i| format!("?{}", i + 1)).collect();
        let names: Vec<String> = std::iter::once("geom".to_owned())
            .chain(fields.iter().map(|f| quote(&f.name)))
            .collect();
        Ok(Self {
            insert: format!(
                "INSERT INTO {} ({}) VALUES ({})",
                quote(table),
                names.join(", "),
                placeholders.join(", ")
            ),
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
        mut values: Vec<Value>,
        geometry: Option<&geo::Geometry<f64>>,
    ) -> Result<(), WriteError> {
        let bounds = geometry.and_then(BoundingRect::bounding_rect);
        let blob = match geometry {
            Some(g) => {
                let envelope = match (g, bounds) {
                    (geo::Geometry::Point(_), _) | (_, None) => Vec::new(),
                    (_, Some(r)) => vec![r.min().x, r.max().x, r.min().y, r.max().y],
                };
                let srid = i32::try_from(self.srs_id).ok();
                Value::Blob(
                    g.to_gpkg_wkb(CoordDimensions::xy(), srid, envelope)
                        .map_err(|e| self.fail(e))?,
                )
            }
            None => Value::Null,
        };
        values.insert(0, blob);
        self.connection
            .prepare_cached(&self.insert)
            .and_then(|mut s| s.execute(rusqlite::params_from_iter(values.iter())))
            .map_err(|e| self.fail(e))?;
        if let Some(r) = bounds {
            let id = self.connection.last_insert_rowid();
            self.connection
                .prepare_cached(&format!(
                    "INSERT INTO {} VALUES (?1, ?2, ?3, ?4, ?5)",
                    quote(&format!("rtree_{}_geom", self.table))
                ))
                .and_then(|mut s| {
                    s.execute(rusqlite::params![
                        id,
                        r.min().x,
                        r.max().x,
                        r.min().y,
                        r.max().y
                    ])
                })
                .map_err(|e| self.fail(e))?;
            let e = self
                .extent
                .get_or_insert([r.min().x, r.min().y, r.max().x, r.max().y]);
            *e = [
                e[0].min(r.min().x),
                e[1].min(r.min().y),
                e[2].max(r.max().x),
                e[3].max(r.max().y),
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
    pub fn finish(self) -> Result<u64, WriteError> {
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
