//! One run of a job, start to finish, in this process: stage the source, apply the transform,
//! validate, publish. Blocking; the server runs it in a worker process (see `worker`).

use std::path::Path;

use crate::config::sync::SyncJob;
use crate::sync::source::{self, Staged};
use crate::sync::write::{GeometryColumn, query_to_gpkg};
use crate::sync::{JobPaths, Progress, Report, SyncError, Validators, publish};

/// Work files of a run, removed when the run ends however it ends.
struct WorkFiles<'a>(&'a JobPaths);

impl Drop for WorkFiles<'_> {
    fn drop(&mut self) {
        for part in [
            "stage",
            "new",
            "geojson",
            "geojson.gz",
            "geojson.br",
            "catalogue",
        ] {
            let _ = std::fs::remove_file(self.0.beside(part));
        }
    }
}

/// Runs `job` under `root`; `previous` are the validators of the last download, for a
/// conditional GET.
///
/// # Errors
/// The step that failed and why; the published dataset is then as it was.
pub fn execute(
    job: &SyncJob,
    root: &Path,
    previous: Option<&Validators>,
    progress: &Progress,
) -> Result<Report, SyncError> {
    let paths = JobPaths::new(root, job);
    if let Some(dir) = paths.target.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| SyncError::Publish(format!("{}: {e}", dir.display())))?;
    }
    let _work = WorkFiles(&paths);
    if let crate::config::sync::SyncSource::Catalogue { .. } = &job.source {
        return crate::sync::source::catalogue::run(job, &paths, previous, progress);
    }
    let layer = source::layer_name(job, &paths);
    let (rows_read, bytes, validators) = match source::stage(job, &paths, previous, progress)? {
        Staged::Unchanged(validators) => {
            return Ok(Report {
                published: false,
                validators,
                ..Report::default()
            });
        }
        Staged::Rows {
            rows,
            bytes,
            validators,
        } => (rows, bytes, validators),
    };
    let stage = paths.beside("stage");
    let candidate = match &job.transform.sql {
        None => stage,
        Some(sql) => {
            let new = paths.beside("new");
            transform(&stage, &layer, sql, job.transform.keep_crs, &new, progress)?;
            let _ = std::fs::remove_file(&stage);
            new
        }
    };
    let rows_written = publish::validate(&candidate, &layer, job, &paths)?;
    publish::publish(&candidate, &paths)?;
    if job.target.geojson {
        crate::sync::extras::write_geojson(&paths, &layer)?;
    }
    Ok(Report {
        published: true,
        rows_read,
        rows_written,
        bytes,
        validators,
    })
}

/// Applies `sql` (a `SELECT … FROM source`) to the staged layer, writing `destination`.
fn transform(
    stage: &Path,
    layer: &str,
    sql: &str,
    keep_crs: bool,
    destination: &Path,
    progress: &Progress,
) -> Result<u64, SyncError> {
    let fail = |e: rusqlite::Error| SyncError::Transform(e.to_string());
    let connection =
        rusqlite::Connection::open_with_flags(stage, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(fail)?;
    connection
        .execute_batch(&format!(
            "CREATE TEMP VIEW source AS SELECT * FROM {}",
            crate::gis::quote(layer)
        ))
        .map_err(fail)?;
    let srs: Option<i64> = connection
        .query_row(
            "SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = ?1",
            [layer],
            |r| r.get(0),
        )
        .ok();
    query_to_gpkg(
        &connection,
        sql,
        &GeometryColumn {
            name: "geom".to_owned(),
            srs,
        },
        keep_crs,
        destination,
        layer,
        progress,
    )
}
