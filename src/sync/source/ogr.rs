//! `ogr` sources: any GDAL source string converted by the real `ogr2ogr` into a GeoPackage in
//! the job's state folder, then staged like a GeoPackage file.

use std::process::Command;

use crate::config::sync::SyncJob;
use crate::sync::{JobPaths, Progress, SyncError};

/// Runs `ogr2ogr` on `source` and stages its result.
///
/// # Errors
/// [`SyncError::Source`] when GDAL is not installed or `ogr2ogr` fails (with its message).
pub fn stage(
    source: &str,
    source_layer: Option<&str>,
    job: &SyncJob,
    paths: &JobPaths,
    layer: &str,
    progress: &Progress,
) -> Result<super::Staged, SyncError> {
    let converted = paths.state.join("ogr.gpkg");
    let _ = std::fs::remove_file(&converted);
    let mut command = Command::new("ogr2ogr");
    // Relative paths in the source string are under the root, as for `file` sources.
    command.current_dir(&paths.root);
    command.args(["-f", "GPKG", "-nln", "source"]);
    if !job.transform.keep_crs {
        command.args(["-t_srs", "EPSG:4326"]);
    }
    // The source string comes from the config, never from a request; it is one argument, no
    // shell sees it.
    command.arg(&converted).arg(source);
    if let Some(l) = source_layer {
        command.arg(l);
    }
    let output = command.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            SyncError::Source(format!(
                "job {}: ogr2ogr was not found; install GDAL (gdal-bin) for `ogr` sources",
                job.name
            ))
        } else {
            SyncError::Source(format!("cannot run ogr2ogr: {e}"))
        }
    })?;
    if !output.status.success() {
        let message = String::from_utf8_lossy(&output.stderr);
        let message: String = message.trim().chars().take(2000).collect();
        let _ = std::fs::remove_file(&converted);
        return Err(SyncError::Source(format!(
            "ogr2ogr failed ({}): {message}",
            output.status
        )));
    }
    let bytes = std::fs::metadata(&converted).map(|m| m.len()).unwrap_or(0);
    let rows = super::stage_file(
        &converted,
        None,
        &std::collections::BTreeMap::new(),
        job.transform.keep_crs,
        &paths.beside("stage"),
        layer,
        progress,
    );
    let _ = std::fs::remove_file(&converted);
    Ok(super::Staged::Rows {
        rows: rows?,
        bytes,
        validators: None,
    })
}
