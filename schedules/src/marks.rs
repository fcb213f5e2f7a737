//! Last-run marks persisted in SQLite, so missed runs can be detected after a restart.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

/// A failure to read or write the marks database.
#[derive(Debug, thiserror::Error)]
#[error("schedule marks in {path}: {source}")]
pub struct MarkError {
    /// The database file.
    pub path: PathBuf,
    /// What SQLite said.
    #[source]
    pub source: rusqlite::Error,
}

/// The last time each named schedule fired, in an SQLite file (normally
/// `<root>/state/schedules.sqlite`).
#[derive(Debug)]
pub struct MarkStore {
    path: PathBuf,
    connection: Mutex<Connection>,
}

impl MarkStore {
    /// Opens (creating if needed) the marks database at `path`.
    ///
    /// # Errors
    /// When the file cannot be opened or its table created.
    pub fn open(path: &Path) -> Result<Self, MarkError> {
        let error = |source| MarkError {
            path: path.to_owned(),
            source,
        };
        let connection = Connection::open(path).map_err(error)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE IF NOT EXISTS schedule_marks (
                     name TEXT PRIMARY KEY,
                     last_run TEXT NOT NULL,
                     expression TEXT NOT NULL
                 );",
            )
            .map_err(error)?;
        Ok(Self {
            path: path.to_owned(),
            connection: Mutex::new(connection),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, MarkError> {
        let connection = self
            .connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&connection).map_err(|source| MarkError {
            path: self.path.clone(),
            source,
        })
    }

    /// When the named schedule last fired, if ever.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn last_run(&self, name: &str) -> Result<Option<DateTime<Utc>>, MarkError> {
        let text: Option<String> = self.with(|c| {
            c.query_row(
                "SELECT last_run FROM schedule_marks WHERE name = ?1",
                params![name],
                |row| row.get(0),
            )
            .optional()
        })?;
        Ok(text.and_then(|t| {
            DateTime::parse_from_rfc3339(&t)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        }))
    }

    /// Records that the named schedule fired (or was deliberately skipped) at `at`.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub fn record(&self, name: &str, expression: &str, at: DateTime<Utc>) -> Result<(), MarkError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO schedule_marks (name, last_run, expression) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET last_run = excluded.last_run, expression = excluded.expression",
                params![name, at.to_rfc3339(), expression],
            )
            .map(|_| ())
        })
    }
}
