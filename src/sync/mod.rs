//! Sync jobs: scheduled, supervised refreshes of datasets under `userdata/` from files, web
//! services and databases. A run stages the source as a GeoPackage beside the target, applies
//! the job's transform, validates the result and renames it over the published file, keeping
//! the previous version under `state/sync/<job>/` for `poziserver sync rollback`.
//!
//! | module        | what it does                                                        |
//! |---------------|---------------------------------------------------------------------|
//! | `source/`     | one reader per source type, each staging a GeoPackage               |
//! | `write`       | rows of an SQL query into a GeoPackage (transforms, SQLite sources) |
//! | `extras`      | a GeoJSON copy (with `.gz` and `.br`) beside the target             |
//! | `publish`     | validation, the atomic rename, the kept previous version, rollback  |
//! | `execute`     | one run, start to finish, in this process                            |
//! | `worker`      | a run in a child process, which a timeout or shutdown can kill       |
//! | `journal`     | every run in `state/sync.sqlite`                                     |
//! | `component`   | the `sync` supervisor: one actor per job, schedules and retries     |
//! | `command`     | `poziserver sync list | run | history | rollback`                    |

pub mod command;
pub mod component;
pub mod execute;
pub mod extras;
pub mod journal;
pub mod publish;
pub mod source;
pub mod webhook;
pub mod worker;
pub mod write;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::config::sync::SyncJob;

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Its cron schedule.
    Schedule,
    /// `sync run` or `POST /admin/jobs/{name}/run`.
    Manual,
    /// A run missed while the server was down.
    CatchUp,
    /// A retry of a failed run.
    Retry,
}

impl Trigger {
    /// The name journaled.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::Manual => "manual",
            Self::CatchUp => "catch-up",
            Self::Retry => "retry",
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A new version was published.
    Ok,
    /// The source had not changed; nothing was published.
    Unchanged,
    /// It failed; the published version is as it was.
    Failed,
    /// It ran past its `timeout_secs` and was stopped.
    TimedOut,
    /// The server stopped, or an operator cancelled it.
    Cancelled,
}

impl Status {
    /// The name journaled.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Unchanged => "unchanged",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Why a run failed, by the step that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// The source could not be read, downloaded or understood.
    #[error("source: {0}")]
    Source(String),
    /// The transform's SQL failed, or a geometry could not be reprojected.
    #[error("transform: {0}")]
    Transform(String),
    /// The new version was refused (`min_features`, integrity, a lost column).
    #[error("validation: {0}")]
    Validation(String),
    /// The new version could not be written or put in place.
    #[error("publish: {0}")]
    Publish(String),
}

/// What a source's last answer said, for a conditional GET next time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    /// The URL they belong to.
    pub url: String,
    /// `ETag`.
    pub etag: Option<String>,
    /// `Last-Modified`.
    pub last_modified: Option<String>,
}

/// A run's counters, read by progress bars and the worker's reports while it goes.
#[derive(Debug, Default)]
pub struct Progress {
    /// Rows read from the source so far.
    pub rows: AtomicU64,
    /// Bytes downloaded or read so far.
    pub bytes: AtomicU64,
    /// Bytes expected in all (0: unknown).
    pub total_bytes: AtomicU64,
}

impl Progress {
    /// Adds `n` rows.
    pub fn row(&self, n: u64) {
        self.rows.fetch_add(n, Ordering::Relaxed);
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Whether a new version was published (else the source was unchanged).
    pub published: bool,
    /// Rows read from the source.
    pub rows_read: u64,
    /// Rows in the published version.
    pub rows_written: u64,
    /// Bytes downloaded (or read, for files).
    pub bytes: u64,
    /// The source's validators, to keep for the next run.
    pub validators: Option<Validators>,
}

/// A job and the root it runs in: where its files go.
#[derive(Debug, Clone)]
pub struct JobPaths {
    /// The installation root.
    pub root: PathBuf,
    /// The published GeoPackage.
    pub target: PathBuf,
    /// `state/sync/<job>/`: downloads, the previous version.
    pub state: PathBuf,
}

impl JobPaths {
    /// The paths of `job` under `root`.
    #[must_use]
    pub fn new(root: &Path, job: &SyncJob) -> Self {
        let dataset = job.target.dataset.trim_start_matches('/');
        Self {
            root: root.to_owned(),
            target: root.join("userdata").join(dataset),
            state: root.join("state").join("sync").join(&job.name),
        }
    }

    /// A work file beside the target (`.<stem>.sync-<part>.<extension>`): on the same file
    /// system, so it can be renamed over the target, and hidden (a leading dot) from listings
    /// and the static server.
    #[must_use]
    pub fn beside(&self, part: &str) -> PathBuf {
        self.target
            .with_file_name(format!("{}{part}.{}", self.work_prefix(), self.extension()))
    }

    /// The target's extension (`gpkg`, or `xml` for a catalogue).
    fn extension(&self) -> String {
        self.target
            .extension()
            .map_or_else(|| "gpkg".to_owned(), |e| e.to_string_lossy().into_owned())
    }

    fn work_prefix(&self) -> String {
        let stem = self
            .target
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!(".{stem}.sync-")
    }

    /// The version kept for rollback.
    #[must_use]
    pub fn previous(&self) -> PathBuf {
        self.state.join(format!("previous.{}", self.extension()))
    }

    /// Removes what an interrupted run left: work files beside the target and downloads.
    /// Returns how many files were removed.
    pub fn remove_leftovers(&self) -> usize {
        let prefix = self.work_prefix();
        let mut removed = 0;
        let mut sweep = |dir: &Path, keep: &dyn Fn(&str) -> bool| {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                if !keep(&file) && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        };
        if let Some(dir) = self.target.parent() {
            sweep(dir, &|file| !file.starts_with(&prefix));
        }
        sweep(&self.state, &|file| {
            file.starts_with("previous.") || file == LOCK
        });
        removed
    }

    /// Takes the job's lock (`state/sync/<job>/lock`, an operating-system file lock, freed
    /// when the process ends however it ends), so that two processes never run the same job at
    /// once, then removes what an interrupted run left. `None` when another process holds it.
    ///
    /// # Errors
    /// [`SyncError::Publish`] when the lock file cannot be made.
    pub fn lock(&self) -> Result<Option<JobLock>, SyncError> {
        std::fs::create_dir_all(&self.state)
            .map_err(|e| SyncError::Publish(format!("{}: {e}", self.state.display())))?;
        let path = self.state.join(LOCK);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| SyncError::Publish(format!("{}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {
                let removed = self.remove_leftovers();
                if removed > 0 {
                    tracing::info!(target_file = %self.target.display(), files = removed, "removed what an interrupted run left");
                }
                Ok(Some(JobLock { _file: file }))
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(SyncError::Publish(format!("{}: {e}", path.display())))
            }
        }
    }
}

/// The lock file's name in a job's state folder.
const LOCK: &str = "lock";

/// A held job lock, released when dropped (or when the process ends).
#[derive(Debug)]
pub struct JobLock {
    _file: std::fs::File,
}
