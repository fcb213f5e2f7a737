//! Validating a new version and putting it in place: fsync, keep the published version under
//! `state/sync/<job>/previous.gpkg`, rename the new one over the target, fsync the folder.
//! Each step leaves either the old version or the new one published, never a mix, at any
//! moment the process may be killed.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::config::sync::SyncJob;
use crate::sync::{JobPaths, SyncError};

/// Checks a candidate before it is published: SQLite's `integrity_check`, the layer and its
/// geometry column, at least `min_features` rows, and (unless the job allows it) every column
/// of the published version still there. Returns its row count.
///
/// # Errors
/// [`SyncError::Validation`] saying what is wrong.
pub fn validate(
    candidate: &Path,
    layer: &str,
    job: &SyncJob,
    paths: &JobPaths,
) -> Result<u64, SyncError> {
    let invalid = |m: String| SyncError::Validation(m);
    let c = Connection::open_with_flags(candidate, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| invalid(e.to_string()))?;
    let integrity: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| invalid(e.to_string()))?;
    if integrity != "ok" {
        return Err(invalid(format!("integrity_check: {integrity}")));
    }
    let geometry: Option<String> = c
        .query_row(
            "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?1",
            [layer],
            |r| r.get(0),
        )
        .ok();
    let Some(geometry) = geometry else {
        return Err(invalid(format!("layer {layer:?} has no geometry column")));
    };
    let columns = columns_of(&c, layer)?;
    if !columns.iter().any(|n| n.eq_ignore_ascii_case(&geometry)) {
        return Err(invalid(format!(
            "the geometry column {geometry:?} is missing"
        )));
    }
    let rows: i64 = c
        .query_row(
            &format!("SELECT count(*) FROM {}", crate::gis::quote(layer)),
            [],
            |r| r.get(0),
        )
        .map_err(|e| invalid(e.to_string()))?;
    let rows = u64::try_from(rows).unwrap_or(0);
    if rows < job.min_features {
        return Err(invalid(format!(
            "{rows} features, fewer than min_features ({})",
            job.min_features
        )));
    }
    let located: i64 = c
        .query_row(
            &format!(
                "SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} IS NOT NULL LIMIT 1)",
                crate::gis::quote(layer),
                crate::gis::quote(&geometry)
            ),
            [],
            |r| r.get(0),
        )
        .map_err(|e| invalid(e.to_string()))?;
    if rows > 0 && located == 0 {
        return Err(invalid(
            "no feature has a geometry (a transform must select the `geom` column)".to_owned(),
        ));
    }
    if !job.target.allow_column_loss && paths.target.is_file() {
        let old = Connection::open_with_flags(&paths.target, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()
            .and_then(|o| columns_of(&o, layer).ok())
            .unwrap_or_default();
        let lost: Vec<&String> = old
            .iter()
            .filter(|o| !columns.iter().any(|n| n.eq_ignore_ascii_case(o)))
            .collect();
        if !lost.is_empty() {
            let names: Vec<&str> = lost.iter().map(|s| s.as_str()).collect();
            return Err(invalid(format!(
                "column{} {} of the published version would be lost (set target.allow_column_loss to allow it)",
                if lost.len() == 1 { "" } else { "s" },
                names.join(", ")
            )));
        }
    }
    Ok(rows)
}

fn columns_of(c: &Connection, layer: &str) -> Result<Vec<String>, SyncError> {
    let mut statement = c
        .prepare("SELECT name FROM pragma_table_info(?1)")
        .map_err(|e| SyncError::Validation(e.to_string()))?;
    let names = statement
        .query_map([layer], |r| r.get(0))
        .and_then(Iterator::collect)
        .map_err(|e| SyncError::Validation(e.to_string()))?;
    Ok(names)
}

fn sync_file(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// Flushes a folder's entries (the rename) to disk; folders cannot be opened for that on
/// Windows, where the rename is already durable through NTFS's journal.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// A second name for `from` at `to` (a hard link, or a copy across file systems), made under
/// a temporary name first and renamed, so `to` is always whole.
fn keep_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut name = to.as_os_str().to_owned();
    name.push(".tmp");
    let temporary = std::path::PathBuf::from(name);
    let _ = std::fs::remove_file(&temporary);
    if std::fs::hard_link(from, &temporary).is_err() {
        std::fs::copy(from, &temporary)?;
        sync_file(&temporary)?;
    }
    std::fs::rename(&temporary, to)?;
    if let Some(dir) = to.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Publishes `candidate` (beside the target) as the target, keeping the published version
/// for rollback.
///
/// # Errors
/// [`SyncError::Publish`] naming the file that could not be written.
pub fn publish(candidate: &Path, paths: &JobPaths) -> Result<(), SyncError> {
    let fail =
        |path: &Path, e: std::io::Error| SyncError::Publish(format!("{}: {e}", path.display()));
    sync_file(candidate).map_err(|e| fail(candidate, e))?;
    std::fs::create_dir_all(&paths.state).map_err(|e| fail(&paths.state, e))?;
    if paths.target.is_file() {
        keep_copy(&paths.target, &paths.previous()).map_err(|e| fail(&paths.previous(), e))?;
    }
    std::fs::rename(candidate, &paths.target).map_err(|e| fail(&paths.target, e))?;
    if let Some(dir) = paths.target.parent() {
        sync_dir(dir).map_err(|e| fail(dir, e))?;
    }
    Ok(())
}

/// Puts the kept previous version back, keeping the one it replaces as the new previous (a
/// second rollback undoes the first).
///
/// # Errors
/// [`SyncError::Publish`] when there is no previous version or a file cannot be written.
pub fn rollback(paths: &JobPaths) -> Result<(), SyncError> {
    let previous = paths.previous();
    if !previous.is_file() {
        return Err(SyncError::Publish(format!(
            "no previous version kept ({} is missing)",
            previous.display()
        )));
    }
    let fail =
        |path: &Path, e: std::io::Error| SyncError::Publish(format!("{}: {e}", path.display()));
    let back = paths.beside("rollback");
    keep_copy(&previous, &back).map_err(|e| fail(&back, e))?;
    let replaced = paths.state.join("replaced");
    if paths.target.is_file() {
        keep_copy(&paths.target, &replaced).map_err(|e| fail(&replaced, e))?;
    }
    std::fs::rename(&back, &paths.target).map_err(|e| fail(&paths.target, e))?;
    if let Some(dir) = paths.target.parent() {
        sync_dir(dir).map_err(|e| fail(dir, e))?;
    }
    if replaced.is_file() {
        std::fs::rename(&replaced, &previous).map_err(|e| fail(&previous, e))?;
    }
    Ok(())
}
