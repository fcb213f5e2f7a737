//! `state/update.sqlite`: every updater event (checked, downloaded, verified, switched,
//! healthy, rolled back, refused and why), the newest manifest accepted per channel, versions
//! that failed and are not retried, and the cached manifest for conditional GETs.

use std::path::Path;
use std::sync::Mutex;

use chrono::Utc;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::manifest::History;

/// Events kept (the newest).
const KEEP_EVENTS: i64 = 2000;

/// The journal.
#[derive(Debug)]
pub struct Journal {
    db: Mutex<Connection>,
}

/// One journaled event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// `checked`, `available`, `up-to-date`, `downloaded`, `verified`, `switching`, `healthy`,
    /// `switched`, `rolled-back`, `refused`, `unreachable`, `started`.
    pub event: String,
    /// The channel, where one applies.
    pub channel: Option<String>,
    /// The version concerned, where one applies.
    pub version: Option<String>,
    /// What happened, in words.
    pub detail: String,
}

/// A manifest kept for conditional GETs: its validators and bytes.
#[derive(Debug, Clone, Default)]
pub struct Cached {
    /// `ETag` of the last 200.
    pub etag: Option<String>,
    /// `Last-Modified` of the last 200.
    pub last_modified: Option<String>,
    /// The manifest's bytes.
    pub body: Vec<u8>,
    /// Its signature file, if there was one.
    pub signature: Option<String>,
}

/// Records `event` in `journal`, or, without one, puts it in the log so that it is not lost.
pub fn note(
    journal: Option<&Journal>,
    event: &str,
    channel: Option<&str>,
    version: Option<&str>,
    detail: &str,
) {
    match journal {
        Some(journal) => journal.record(event, channel, version, detail),
        None => tracing::warn!(component = "updater", event, version, "{detail}"),
    }
}

impl Journal {
    /// Opens (creating) the journal of `root`, `state/update.sqlite`.
    ///
    /// # Errors
    /// As [`Journal::open`].
    pub fn open_in(root: &crate::root::Root) -> Result<Self, rusqlite::Error> {
        Self::open(&root.state_dir().join("update.sqlite"))
    }

    /// Opens (creating) the journal at `path`.
    ///
    /// # Errors
    /// When the database cannot be opened or its tables created.
    pub fn open(path: &Path) -> Result<Self, rusqlite::Error> {
        let db = Connection::open(path)?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE IF NOT EXISTS events (
                 id INTEGER PRIMARY KEY, at TEXT NOT NULL, event TEXT NOT NULL,
                 channel TEXT, version TEXT, detail TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS accepted (
                 channel TEXT PRIMARY KEY, version TEXT NOT NULL, date TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS failed (
                 version TEXT PRIMARY KEY, at TEXT NOT NULL, reason TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS installed (
                 version TEXT PRIMARY KEY, channel TEXT NOT NULL, at TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS cache (
                 url TEXT PRIMARY KEY, etag TEXT, last_modified TEXT, body BLOB NOT NULL,
                 signature TEXT);",
        )?;
        Ok(Self { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Journals an event (and logs it): warnings for refusals and rollbacks.
    pub fn record(&self, event: &str, channel: Option<&str>, version: Option<&str>, detail: &str) {
        match event {
            "refused" | "rolled-back" | "unreachable" => {
                tracing::warn!(component = "updater", event, channel, version, "{detail}");
            }
            _ => tracing::info!(component = "updater", event, channel, version, "{detail}"),
        }
        let db = self.db();
        let written = db
            .execute(
                "INSERT INTO events (at, event, channel, version, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![Utc::now().to_rfc3339(), event, channel, version, detail],
            )
            .and_then(|_| {
                db.execute(
                    "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?1",
                    [KEEP_EVENTS],
                )
            });
        if let Err(e) = written {
            tracing::warn!(component = "updater", error = %e, "cannot journal an update event");
        }
    }

    /// The newest events, newest first.
    ///
    /// # Errors
    /// When the journal cannot be read.
    pub fn events(&self, limit: usize) -> Result<Vec<Event>, rusqlite::Error> {
        let db = self.db();
        let mut statement = db.prepare(
            "SELECT at, event, channel, version, detail FROM events ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = statement.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok(Event {
                at: r.get(0)?,
                event: r.get(1)?,
                channel: r.get(2)?,
                version: r.get(3)?,
                detail: r.get(4)?,
            })
        })?;
        rows.collect()
    }

    /// What bears on a verdict for `channel`, with `running` the running version.
    ///
    /// # Errors
    /// When the journal cannot be read.
    pub fn history(&self, channel: &str, running: &str) -> Result<History, rusqlite::Error> {
        let db = self.db();
        let last_accepted = db
            .query_row(
                "SELECT version, date FROM accepted WHERE channel = ?1",
                [channel],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?
            .and_then(|(v, d)| {
                Some((
                    semver::Version::parse(&v).ok()?,
                    chrono::DateTime::parse_from_rfc3339(&d)
                        .ok()?
                        .with_timezone(&Utc),
                ))
            });
        let running_channel = db
            .query_row(
                "SELECT channel FROM installed WHERE version = ?1",
                [running],
                |r| r.get(0),
            )
            .optional()?;
        let mut statement = db.prepare("SELECT version, reason FROM failed")?;
        let failed = statement
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(History {
            last_accepted,
            running_channel,
            failed,
        })
    }

    /// Remembers the newest manifest accepted on `channel`.
    ///
    /// # Errors
    /// When the journal cannot be written.
    pub fn accept(&self, channel: &str, version: &str, date: &str) -> Result<(), rusqlite::Error> {
        self.db().execute(
            "INSERT INTO accepted (channel, version, date) VALUES (?1, ?2, ?3)
             ON CONFLICT (channel) DO UPDATE SET version = ?2, date = ?3",
            params![channel, version, date],
        )?;
        Ok(())
    }

    /// Remembers that `version` was installed from `channel` (a later channel change may then
    /// go to a lower version).
    ///
    /// # Errors
    /// When the journal cannot be written.
    pub fn installed(&self, version: &str, channel: &str) -> Result<(), rusqlite::Error> {
        self.db().execute(
            "INSERT INTO installed (version, channel, at) VALUES (?1, ?2, ?3)
             ON CONFLICT (version) DO UPDATE SET channel = ?2, at = ?3",
            params![version, channel, Utc::now().to_rfc3339()],
        )?;
        Ok(())
    }

    /// The versions the updater installed (the only folders under `versions/` it may prune).
    ///
    /// # Errors
    /// When the journal cannot be read.
    pub fn installed_versions(&self) -> Result<Vec<String>, rusqlite::Error> {
        let db = self.db();
        let mut statement = db.prepare("SELECT version FROM installed ORDER BY at")?;
        let rows = statement.query_map([], |r| r.get(0))?;
        rows.collect()
    }

    /// Forgets an installed version whose folder was pruned.
    ///
    /// # Errors
    /// When the journal cannot be written.
    pub fn forget_installed(&self, version: &str) -> Result<(), rusqlite::Error> {
        self.db()
            .execute("DELETE FROM installed WHERE version = ?1", [version])?;
        Ok(())
    }

    /// Remembers that `version` failed and is not to be retried.
    ///
    /// # Errors
    /// When the journal cannot be written.
    pub fn fail(&self, version: &str, reason: &str) -> Result<(), rusqlite::Error> {
        self.db().execute(
            "INSERT INTO failed (version, at, reason) VALUES (?1, ?2, ?3)
             ON CONFLICT (version) DO UPDATE SET at = ?2, reason = ?3",
            params![version, Utc::now().to_rfc3339(), reason],
        )?;
        Ok(())
    }

    /// The cached manifest of `url`.
    ///
    /// # Errors
    /// When the journal cannot be read.
    pub fn cached(&self, url: &str) -> Result<Option<Cached>, rusqlite::Error> {
        self.db()
            .query_row(
                "SELECT etag, last_modified, body, signature FROM cache WHERE url = ?1",
                [url],
                |r| {
                    Ok(Cached {
                        etag: r.get(0)?,
                        last_modified: r.get(1)?,
                        body: r.get(2)?,
                        signature: r.get(3)?,
                    })
                },
            )
            .optional()
    }

    /// Caches the manifest of `url` (only a verified one is cached).
    ///
    /// # Errors
    /// When the journal cannot be written.
    pub fn cache(&self, url: &str, cached: &Cached) -> Result<(), rusqlite::Error> {
        self.db().execute(
            "INSERT INTO cache (url, etag, last_modified, body, signature) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (url) DO UPDATE SET etag = ?2, last_modified = ?3, body = ?4, signature = ?5",
            params![url, cached.etag, cached.last_modified, cached.body, cached.signature],
        )?;
        Ok(())
    }
}
