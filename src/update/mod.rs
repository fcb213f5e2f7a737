//! The updater: polls the channel's signed release manifest, downloads and verifies the
//! artifact into `versions/<version>/`, self-tests it, and asks the process to switch to it.
//! The switch runs the new binary on trial against the real listener while this version waits;
//! only when the new one answers `/health` in time does this process re-execute it, else the
//! previous version is made current again and serves on (see `docs/updates.md`).
//!
//! - [`channel`]: `updater/updater-config.json` → the manifest file and channel name.
//! - [`manifest`]: the manifest format, its minisign signature, and what is accepted.
//! - [`fetch`]: conditional GETs, bounded downloads with SHA-256, the reachability probe.
//! - [`install`]: `versions/`, the current pointer, the self-test, the trial marker.
//! - [`switch`]: the trial run and the re-execution, outside the supervision tree.
//! - [`journal`]: `state/update.sqlite`, every event and what was accepted or failed.
//! - [`component`]: the `updater` actor (poller) under the root supervisor.
//! - [`command`]: `poziserver update check | apply | status`.

pub mod channel;
pub mod command;
pub mod component;
pub mod fetch;
pub mod install;
pub mod journal;
pub mod manifest;
pub mod switch;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Environment variable set on a new version run on trial: it stops when its standard input
/// closes, and its own updater stays off.
pub const TRIAL_ENV: &str = "POZI_UPDATE_TRIAL";

/// Environment variable set on the process an old version re-executes into after a
/// successful trial: it binds beside the trial process (which stops once this one listens)
/// instead of first checking that its addresses are free. Its value is the trial's process id,
/// which it reaps.
pub const SUCCESSOR_ENV: &str = "POZI_UPDATE_SUCCESSOR";

/// Asks a new version on trial to listen on the configured addresses (sent by the old version
/// once it has seen it healthy).
pub fn request_public() {
    let _ = public_sender().send(true);
}

/// Completes once [`request_public`] has been called (at once if it has).
#[must_use]
pub fn public_requested() -> tokio::sync::watch::Receiver<bool> {
    public_sender().subscribe()
}

fn public_sender() -> &'static tokio::sync::watch::Sender<bool> {
    static SENDER: std::sync::OnceLock<tokio::sync::watch::Sender<bool>> =
        std::sync::OnceLock::new();
    SENDER.get_or_init(|| tokio::sync::watch::Sender::new(false))
}

/// Whether this process is a new version on trial.
#[must_use]
pub fn on_trial() -> bool {
    std::env::var_os(TRIAL_ENV).is_some()
}

/// Why an update step failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The channel file could not be read or is malformed.
    #[error("channel file {path}: {reason}")]
    Channel {
        /// `updater/updater-config.json`.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The release server could not be reached (DNS, TCP, TLS or an HTTP status).
    #[error("release server unreachable: {0}")]
    Unreachable(String),
    /// A manifest or artifact was refused, and why (the running version is untouched).
    #[error("refused: {0}")]
    Refused(String),
    /// A file under `versions/` or `state/` could not be written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The journal could not be read or written.
    #[error("update journal: {0}")]
    Journal(#[from] rusqlite::Error),
}

impl UpdateError {
    /// An I/O error on `path`.
    pub fn io(what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self::Io { what, path, source }
    }
}

/// A verified, self-tested version the process should switch to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchPlan {
    /// The new version.
    pub version: String,
    /// Its binary under `versions/`.
    pub binary: PathBuf,
    /// The channel it came from.
    pub channel: String,
    /// What `versions/current` named before (`None`: the installed binary itself).
    pub previous: Option<String>,
    /// Seconds the new version has to answer `/health`.
    pub health_timeout_secs: u64,
}

/// Where the updater leaves a [`SwitchPlan`] for the runtime, which then stops the tree and
/// hands the plan to the command line to carry out.
#[derive(Debug, Clone, Default)]
pub struct SwitchRequest {
    inner: Arc<(Mutex<Option<SwitchPlan>>, tokio::sync::Notify)>,
    /// From [`SwitchRequest::ask`] until the switch has failed (a passed one ends the process).
    busy: Arc<std::sync::atomic::AtomicBool>,
}

impl SwitchRequest {
    /// Whether a switch is asked for or under way (no other install starts meanwhile).
    #[must_use]
    pub fn busy(&self) -> bool {
        self.busy.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The switch under way has ended without switching.
    pub fn failed(&self) {
        self.busy.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Asks for a switch.
    pub fn ask(&self, plan: SwitchPlan) {
        self.busy.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut slot) = self.inner.0.lock() {
            *slot = Some(plan);
        }
        self.inner.1.notify_one();
    }

    /// Completes when a switch has been asked for.
    pub async fn asked(&self) {
        loop {
            if self.inner.0.lock().is_ok_and(|slot| slot.is_some()) {
                return;
            }
            self.inner.1.notified().await;
        }
    }

    /// The plan asked for, if any (taking it).
    #[must_use]
    pub fn take(&self) -> Option<SwitchPlan> {
        self.inner.0.lock().ok().and_then(|mut slot| slot.take())
    }
}
