//! `file` sources (and downloaded or converted files): native formats through the readers, GeoPackage and
//! SQLite through an SQL copy.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::gis::source::readers::{self, Format, OpenOptions};
use crate::sync::write::{gpkg_layer, query_to_gpkg};
use crate::sync::{Progress, SyncError};

/// Stages the file at `file` (its layer `source_layer` for GeoPackages) as layer `layer` of a
/// new GeoPackage at `destination`. Returns the rows read.
///
/// # Errors
/// [`SyncError::Source`] when the file is missing or is not what its extension says.
pub fn stage_file(
    file: &Path,
    source_layer: Option<&str>,
    open_options: &BTreeMap<String, String>,
    keep_crs: bool,
    destination: &Path,
    layer: &str,
    progress: &Progress,
) -> Result<u64, SyncError> {
    if !file.is_file() {
        return Err(SyncError::Source(format!(
            "{}: no such file",
            file.display()
        )));
    }
    let extension = file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if matches!(extension.as_str(), "gpkg" | "sqlite" | "db") {
        let connection = open_read_only(file)?;
        let (table, geometry) = gpkg_layer(&connection, source_layer)
            .map_err(|e| SyncError::Source(format!("{}: {e}", file.display())))?;
        let sql = format!("SELECT * FROM {}", crate::gis::quote(&table));
        return query_to_gpkg(
            &connection,
            &sql,
            &geometry,
            keep_crs,
            destination,
            layer,
            progress,
        );
    }
    if Format::of(file).is_none() {
        return Err(SyncError::Source(format!(
            "{}: not a format read natively (use an `ogr` source for it)",
            file.display()
        )));
    }
    let pairs: Vec<(String, String)> = open_options
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let options = OpenOptions::parse(&pairs).map_err(|e| SyncError::Source(e.0))?;
    readers::convert_counting(file, destination, layer, &options, &progress.rows).map_err(|e| {
        match e {
            readers::ReadError::Write(w) => SyncError::Publish(w.to_string()),
            other => SyncError::Source(other.to_string()),
        }
    })
}

/// Opens an SQLite file read-only.
///
/// # Errors
/// [`SyncError::Source`] when it cannot be opened or is not a database.
pub fn open_read_only(file: &Path) -> Result<Connection, SyncError> {
    let fail = |e: rusqlite::Error| SyncError::Source(format!("{}: {e}", file.display()));
    if !file.is_file() {
        return Err(SyncError::Source(format!(
            "{}: no such file",
            file.display()
        )));
    }
    let connection = Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(fail)?;
    // Opening is lazy: reading the schema tells a database from a file that is not one.
    connection
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(fail)?;
    Ok(connection)
}

/// The system of an `sqlite` source's geometries: that of its only GeoPackage geometry column
/// when it has one system throughout, else WGS 84.
pub fn srs_of_query(connection: &Connection) -> Option<i64> {
    connection
        .query_row(
            "SELECT min(srs_id), max(srs_id) FROM gpkg_geometry_columns",
            [],
            |r| Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?)),
        )
        .ok()
        .and_then(|(a, b)| if a == b { a } else { None })
}
