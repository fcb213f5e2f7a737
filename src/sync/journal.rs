//! The journal: every run of every job in `state/sync.sqlite` (trigger, times, status, counts,
//! the error), the newest `keep_runs` per job kept; and each source's validators for the next
//! conditional GET.

use std::path::Path;
use std::sync::Mutex;

use chrono::{SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::sync::{Report, Status, Trigger, Validators};

/// A journal that could not be opened or written.
#[derive(Debug, thiserror::Error)]
#[error("sync journal {path}: {source}")]
pub struct JournalError {
    /// The journal's file.
    pub path: String,
    /// Why.
    #[source]
    pub source: rusqlite::Error,
}

/// One run as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    /// Its id.
    pub id: i64,
    /// The job.
    pub job: String,
    /// What started it.
    pub trigger: String,
    /// When it started (RFC 3339, UTC).
    pub started: String,
    /// When it ended.
    pub ended: Option<String>,
    /// `running`, `ok`, `unchanged`, `failed`, `timed_out` or `cancelled`.
    pub status: String,
    /// Rows read from the source (so far, while running).
    pub rows_read: u64,
    /// Rows published.
    pub rows_written: u64,
    /// Bytes downloaded or read.
    pub bytes: u64,
    /// Why it failed.
    pub error: Option<String>,
}

/// The journal.
#[derive(Debug)]
pub struct Journal {
    path: String,
    connection: Mutex<Connection>,
    keep: usize,
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Journal {
    /// Opens (or creates) the journal at `path`, keeping `keep` runs per job.
    ///
    /// # Errors
    /// When the file cannot be opened or its tables made.
    pub fn open(path: &Path, keep: usize) -> Result<Self, JournalError> {
        let shown = path.display().to_string();
        let fail = |source| JournalError {
            path: shown.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let connection = Connection::open(path).map_err(fail)?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(fail)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, job TEXT NOT NULL, trigger TEXT NOT NULL,
                     started TEXT NOT NULL, ended TEXT, status TEXT NOT NULL, rows_read INTEGER NOT NULL DEFAULT 0,
                     rows_written INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0, error TEXT);
                 CREATE INDEX IF NOT EXISTS runs_by_job ON runs (job, id);
                 CREATE TABLE IF NOT EXISTS validators (job TEXT PRIMARY KEY, url TEXT NOT NULL, etag TEXT, last_modified TEXT);",
            )
            .map_err(fail)?;
        Ok(Self {
            path: shown,
            connection: Mutex::new(connection),
            keep: keep.max(1),
        })
    }

    fn fail(&self, source: rusqlite::Error) -> JournalError {
        JournalError {
            path: self.path.clone(),
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks runs still `running` (their process was killed with the server) as cancelled.
    /// Returns how many.
    ///
    /// # Errors
    /// When the journal cannot be written.
    pub fn close_interrupted(&self) -> Result<usize, JournalError> {
        self.lock()
            .execute(
                "UPDATE runs SET status = 'cancelled', ended = ?1, error = 'the server stopped during the run' WHERE status = 'running'",
                [now()],
            )
            .map_err(|e| self.fail(e))
    }

    /// [`Journal::close_interrupted`] for one job's runs (whose lock this process now holds).
    ///
    /// # Errors
    /// When the journal cannot be written.
    pub fn close_interrupted_job(&self, job: &str) -> Result<usize, JournalError> {
        self.lock()
            .execute(
                "UPDATE runs SET status = 'cancelled', ended = ?1, error = 'the run was stopped before it finished' WHERE status = 'running' AND job = ?2",
                [now(), job.to_owned()],
            )
            .map_err(|e| self.fail(e))
    }

    /// Journals the start of a run; returns its id.
    ///
    /// # Errors
    /// When the journal cannot be written.
    pub fn start(&self, job: &str, trigger: Trigger) -> Result<i64, JournalError> {
        let c = self.lock();
        c.execute(
            "INSERT INTO runs (job, trigger, started, status) VALUES (?1, ?2, ?3, 'running')",
            params![job, trigger.as_str(), now()],
        )
        .map_err(|e| self.fail(e))?;
        Ok(c.last_insert_rowid())
    }

    /// Records a running run's counters.
    ///
    /// # Errors
    /// When the journal cannot be written.
    pub fn progress(&self, id: i64, rows: u64, bytes: u64) -> Result<(), JournalError> {
        self.lock()
            .execute(
                "UPDATE runs SET rows_read = ?2, bytes = ?3 WHERE id = ?1 AND status = 'running'",
                params![id, rows as i64, bytes as i64],
            )
            .map(|_| ())
            .map_err(|e| self.fail(e))
    }

    /// Journals the end of a run, and drops the job's runs beyond the newest `keep`.
    ///
    /// # Errors
    /// When the journal cannot be written.
    pub fn finish(
        &self,
        id: i64,
        status: Status,
        report: &Report,
        error: Option<&str>,
    ) -> Result<(), JournalError> {
        let c = self.lock();
        c.execute(
            "UPDATE runs SET ended = ?2, status = ?3, rows_read = max(rows_read, ?4), rows_written = ?5, bytes = max(bytes, ?6), error = ?7 WHERE id = ?1",
            params![
                id,
                now(),
                status.as_str(),
                report.rows_read as i64,
                report.rows_written as i64,
                report.bytes as i64,
                error
            ],
        )
        .map_err(|e| self.fail(e))?;
        c.execute(
            "DELETE FROM runs WHERE job = (SELECT job FROM runs WHERE id = ?1) AND id NOT IN
                 (SELECT id FROM runs WHERE job = (SELECT job FROM runs WHERE id = ?1) ORDER BY id DESC LIMIT ?2)",
            params![id, self.keep as i64],
        )
        .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// The newest `limit` runs of `job`, newest first.
    ///
    /// # Errors
    /// When the journal cannot be read.
    pub fn runs(&self, job: &str, limit: usize) -> Result<Vec<Run>, JournalError> {
        let c = self.lock();
        let mut statement = c
            .prepare(
                "SELECT id, job, trigger, started, ended, status, rows_read, rows_written, bytes, error
                 FROM runs WHERE job = ?1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(|e| self.fail(e))?;
        statement
            .query_map(params![job, limit as i64], |r| {
                Ok(Run {
                    id: r.get(0)?,
                    job: r.get(1)?,
                    trigger: r.get(2)?,
                    started: r.get(3)?,
                    ended: r.get(4)?,
                    status: r.get(5)?,
                    rows_read: r.get::<_, i64>(6)?.try_into().unwrap_or(0),
                    rows_written: r.get::<_, i64>(7)?.try_into().unwrap_or(0),
                    bytes: r.get::<_, i64>(8)?.try_into().unwrap_or(0),
                    error: r.get(9)?,
                })
            })
            .and_then(Iterator::collect)
            .map_err(|e| self.fail(e))
    }

    /// The validators kept for `job`.
    ///
    /// # Errors
    /// When the journal cannot be read.
    pub fn validators(&self, job: &str) -> Result<Option<Validators>, JournalError> {
        self.lock()
            .query_row(
                "SELECT url, etag, last_modified FROM validators WHERE job = ?1",
                [job],
                |r| {
                    Ok(Validators {
                        url: r.get(0)?,
                        etag: r.get(1)?,
                        last_modified: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.fail(e))
    }

    /// Keeps `job`'s validators for its next run.
    ///
    /// # Errors
    /// When the journal cannot be written.
    pub fn set_validators(&self, job: &str, v: &Validators) -> Result<(), JournalError> {
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO validators VALUES (?1, ?2, ?3, ?4)",
                params![job, v.url, v.etag, v.last_modified],
            )
            .map(|_| ())
            .map_err(|e| self.fail(e))
    }
}
