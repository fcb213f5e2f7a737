//! The rows of an SQL query written as a GeoPackage layer (in spatial order, with its R*Tree),
//! reprojected to WGS 84 unless the job keeps the source's system: how GeoPackage and SQLite
//! sources are staged and how transforms are applied.

use std::path::Path;

use rusqlite::Connection;
use rusqlite::types::{Value, ValueRef};

use crate::gis::query::reproject::Reprojector;
use crate::gis::source::gpkg_write::{Field, FieldType, LayerWriter};
use crate::sync::{Progress, SyncError};

/// Where the geometry of a query's rows is, and in which system.
#[derive(Debug, Clone)]
pub struct GeometryColumn {
    /// The column's name (GeoPackage binary geometries).
    pub name: String,
    /// Its EPSG code, when known (`None`: WGS 84).
    pub srs: Option<i64>,
}

/// Writes the rows of `sql` on `connection` into a new GeoPackage at `destination` (layer
/// `layer`), with `geometry` as the geometry and every other column as an attribute. Returns
/// the rows written.
///
/// # Errors
/// [`SyncError::Transform`] when the query fails or a geometry cannot be read or reprojected;
/// [`SyncError::Publish`] when the file cannot be written.
pub fn query_to_gpkg(
    connection: &Connection,
    sql: &str,
    geometry: &GeometryColumn,
    keep_crs: bool,
    destination: &Path,
    layer: &str,
    progress: &Progress,
) -> Result<u64, SyncError> {
    let fail = |e: rusqlite::Error| SyncError::Transform(e.to_string());
    let mut statement = connection.prepare(sql).map_err(fail)?;
    let names: Vec<String> = statement
        .column_names()
        .iter()
        .map(|n| (*n).to_owned())
        .collect();
    let geometry_at = names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(&geometry.name));
    let declared: Vec<Option<FieldType>> = statement
        .columns()
        .iter()
        .map(|c| c.decl_type().and_then(declared_type))
        .collect();
    // Columns whose type the query does not declare (expressions) take the widest type of
    // their values: a first pass over the rows finds it.
    let mut kinds = declared.clone();
    if kinds
        .iter()
        .enumerate()
        .any(|(i, k)| k.is_none() && Some(i) != geometry_at)
    {
        let mut rows = statement.query([]).map_err(fail)?;
        while let Some(row) = rows.next().map_err(fail)? {
            for (i, kind) in kinds.iter_mut().enumerate() {
                if declared[i].is_some() || Some(i) == geometry_at {
                    continue;
                }
                let seen = match row.get_ref(i).map_err(fail)? {
                    ValueRef::Integer(_) => Some(FieldType::Integer),
                    ValueRef::Real(_) => Some(FieldType::Real),
                    ValueRef::Text(_) | ValueRef::Blob(_) => Some(FieldType::Text),
                    ValueRef::Null => None,
                };
                *kind = match (*kind, seen) {
                    (None, s) => s,
                    (k, None) => k,
                    (Some(a), Some(b)) if a == b => Some(a),
                    (
                        Some(FieldType::Integer | FieldType::Real),
                        Some(FieldType::Integer | FieldType::Real),
                    ) => Some(FieldType::Real),
                    _ => Some(FieldType::Text),
                };
            }
        }
    }
    let columns: Vec<(usize, Field)> = names
        .iter()
        .enumerate()
        .filter(|(i, name)| Some(*i) != geometry_at && !name.eq_ignore_ascii_case("fid"))
        .map(|(i, name)| {
            (
                i,
                Field {
                    name: name.clone(),
                    kind: kinds[i].unwrap_or(FieldType::Text),
                },
            )
        })
        .collect();
    let reproject = if keep_crs {
        None
    } else {
        Reprojector::for_srs(geometry.srs).map_err(|e| SyncError::Transform(e.to_string()))?
    };
    let srs = if keep_crs {
        geometry.srs.unwrap_or(4326)
    } else {
        4326
    };
    let fields: Vec<Field> = columns.iter().map(|(_, f)| f.clone()).collect();
    let publish = |e: crate::gis::source::gpkg_write::WriteError| SyncError::Publish(e.to_string());
    let mut writer = LayerWriter::create(destination, layer, srs, &fields).map_err(publish)?;
    let mut rows = statement.query([]).map_err(fail)?;
    let mut n = 0u64;
    while let Some(row) = rows.next().map_err(fail)? {
        n += 1;
        let values = columns
            .iter()
            .map(|(i, field)| {
                Ok(match (row.get_ref(*i).map_err(fail)?, field.kind) {
                    (ValueRef::Null, _) => Value::Null,
                    (ValueRef::Integer(v), FieldType::Integer) => Value::Integer(v),
                    (ValueRef::Integer(v), FieldType::Real) => Value::Real(v as f64),
                    (ValueRef::Real(v), FieldType::Real) => Value::Real(v),
                    (ValueRef::Real(v), FieldType::Integer) => Value::Real(v),
                    (ValueRef::Integer(v), FieldType::Text) => Value::Text(v.to_string()),
                    (ValueRef::Real(v), FieldType::Text) => Value::Text(v.to_string()),
                    (ValueRef::Text(t) | ValueRef::Blob(t), _) => {
                        Value::Text(String::from_utf8_lossy(t).into_owned())
                    }
                })
            })
            .collect::<Result<Vec<Value>, SyncError>>()?;
        let shape = match geometry_at.map(|i| row.get_ref(i)) {
            Some(Ok(ValueRef::Blob(blob))) => Some(decode(blob, n)?),
            Some(Ok(ValueRef::Null)) | None => None,
            Some(Ok(_)) => {
                return Err(SyncError::Transform(format!(
                    "row {n}: column {} is not a GeoPackage geometry",
                    geometry.name
                )));
            }
            Some(Err(e)) => return Err(fail(e)),
        };
        let shape = match (shape, &reproject) {
            (Some(g), Some(r)) => Some(
                r.to_wgs84(&g)
                    .map_err(|e| SyncError::Transform(format!("row {n}: {e}")))?,
            ),
            (g, _) => g,
        };
        writer.add(values, shape.as_ref()).map_err(publish)?;
        progress.row(1);
    }
    writer.finish().map_err(publish)
}

/// A GeoPackage geometry blob, checked before it is decoded.
fn decode(blob: &[u8], row: u64) -> Result<geo::Geometry<f64>, SyncError> {
    crate::gis::wkb::check_gpkg(blob)
        .map_err(|e| SyncError::Transform(format!("row {row}: bad geometry: {e}")))?;
    crate::gis::wkb::to_geo(blob)
        .map_err(|e| SyncError::Transform(format!("row {row}: bad geometry: {e}")))
}

/// The attribute type of a declared SQLite column type, by SQLite's affinity rules; `None`
/// for geometry and blob columns.
fn declared_type(declared: &str) -> Option<FieldType> {
    let upper = declared.to_ascii_uppercase();
    if upper.contains("INT") || upper == "BOOLEAN" {
        Some(FieldType::Integer)
    } else if upper.contains("CHAR") || upper.contains("CLOB") || upper.contains("TEXT") {
        Some(FieldType::Text)
    } else if upper.contains("REAL") || upper.contains("FLOA") || upper.contains("DOUB") {
        Some(FieldType::Real)
    } else if upper.contains("DATE") || upper.contains("TIME") {
        Some(FieldType::Text)
    } else {
        None
    }
}

/// The geometry column and system of a GeoPackage layer (the first when `layer` is `None`),
/// and the layer's name.
///
/// # Errors
/// [`SyncError::Source`] when the file has no such feature layer.
pub fn gpkg_layer(
    connection: &Connection,
    layer: Option<&str>,
) -> Result<(String, GeometryColumn), SyncError> {
    let found: Option<(String, String, i64)> = connection
        .query_row(
            "SELECT table_name, column_name, srs_id FROM gpkg_geometry_columns WHERE ?1 IS NULL OR table_name = ?1 ORDER BY table_name LIMIT 1",
            [layer],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .ok();
    match found {
        Some((table, column, srs)) => Ok((
            table,
            GeometryColumn {
                name: column,
                srs: Some(srs),
            },
        )),
        None => Err(SyncError::Source(match layer {
            Some(l) => format!("no feature layer {l:?} in the GeoPackage"),
            None => "no feature layer in the GeoPackage".to_owned(),
        })),
    }
}
