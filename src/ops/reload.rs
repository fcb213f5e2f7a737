//! Live config reload: `config.json` changed on disk (watched, debounced) or `POST
//! /admin/reload`. The file is validated in full; an invalid one is refused with every problem
//! listed and logged, the running config stays, and `/health` warns until a valid one is loaded.
//! A valid one is applied without dropping a connection:
//!
//! - the listener's site (CORS, host folders, cache rules, proxies, refused extensions, the
//!   access log, limits, admin rules, `/metrics` access, the health and status pages) is
//!   replaced whole; requests under way finish as they began, and connections open keep the
//!   timeouts they were accepted with;
//! - the log level is changed in place;
//! - planned restarts, search (sources, schedule) and sync jobs restart the `scheduler`,
//!   `search` and `sync` components, which read the new config as they start (a sync run under
//!   way is stopped and journaled as cancelled);
//! - everything else that changed (listen addresses, HTTPS or plain mode, certificate names,
//!   data limits, supervision, the updater, log files, and jobs added to a server started
//!   without any) is reported as needing a restart of the server, in the answer and the log.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use ractor::{ActorRef, RpcReplyPort};
use serde::Serialize;
use serde_json::json;

use super::health::{CheckStatus, ExtraCheck, NamedCheck};
use crate::config::Config;

/// The config the components that restart read as they start.
pub type LiveConfig = Arc<ArcSwap<Config>>;

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Settings in effect for the next request or log line.
    pub applied: Vec<String>,
    /// Components restarted to take up the change.
    pub restarted: Vec<String>,
    /// Settings that changed but take effect only when the server restarts.
    pub needs_restart: Vec<String>,
    /// Whether a part could not take the new config (its reason is in `needs_restart`).
    #[serde(skip)]
    failed: bool,
}

impl Report {
    /// `part` could not take the new config, for `why`.
    fn refused(&mut self, part: &str, why: impl std::fmt::Display) {
        self.needs_restart.push(format!("{part}: {why}"));
        self.failed = true;
    }
}

/// Reloads the config.
#[derive(Debug)]
pub struct Reloader {
    file: PathBuf,
    /// `--listen` addresses given on the command line, which a reload keeps.
    listen: Option<Vec<std::net::SocketAddr>>,
    live: LiveConfig,
    directory: actors::Directory,
    /// Why the file on disk is not in effect (`None`: it is).
    problem: Mutex<Option<String>>,
    /// One reload at a time.
    running: tokio::sync::Mutex<()>,
}

fn changed<T: PartialEq>(old: &T, new: &T) -> bool {
    old != new
}

impl Reloader {
    /// A reloader of `file`, whose running config is in `live`.
    #[must_use]
    pub fn new(
        file: PathBuf,
        listen: Option<Vec<std::net::SocketAddr>>,
        live: LiveConfig,
        directory: actors::Directory,
    ) -> Self {
        Self {
            file: std::path::absolute(&file).unwrap_or(file),
            listen,
            live,
            directory,
            problem: Mutex::new(None),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// `/health`'s `config` check: `warn` while the file on disk could not be loaded.
    #[must_use]
    pub fn health_check(self: &Arc<Self>) -> ExtraCheck {
        let this = self.clone();
        let root = self
            .file
            .parent()
            .map_or_else(PathBuf::new, std::path::Path::to_owned);
        Arc::new(move || {
            let problem = this
                .problem
                .lock()
                .ok()
                .and_then(|p| p.clone())
                .map(|p| super::health::hide_root(&root, &p));
            vec![NamedCheck {
                key: "config:reload".to_owned(),
                status: if problem.is_some() {
                    CheckStatus::Warn
                } else {
                    CheckStatus::Pass
                },
                value: json!({
                    "componentId": "config.json",
                    "output": problem.map(|p| format!("the changed config is not in effect: {p}")),
                }),
            }]
        })
    }

    /// Loads the file and applies what can be applied while running (`why` is logged).
    ///
    /// # Errors
    /// Every problem of an invalid file (the running config stays).
    pub async fn reload(self: &Arc<Self>, why: &str) -> Result<Report, String> {
        // In a task of its own: a client that goes away does not cut a reload short.
        let (this, why) = (self.clone(), why.to_owned());
        tokio::spawn(async move { this.reload_now(&why).await })
            .await
            .map_err(|e| format!("the reload failed: {e}"))?
    }

    async fn reload_now(&self, why: &str) -> Result<Report, String> {
        let _one = self.running.lock().await;
        let file = self.file.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&file))
            .await
            .map_err(|e| e.to_string())?;
        let mut new = match loaded {
            Ok(config) => config,
            Err(e) => {
                let text = e.to_string();
                tracing::warn!(
                    trigger = why,
                    "config reload refused; the running config stays:\n{text}"
                );
                if let Ok(mut problem) = self.problem.lock() {
                    *problem = Some(text.clone());
                }
                return Err(text);
            }
        };
        if let Some(listen) = &self.listen {
            new.listen.clone_from(listen);
        }
        let old = self.live.load_full();
        let new = Arc::new(new);
        let report = self.apply(&old, &new).await;
        if let Ok(mut problem) = self.problem.lock() {
            *problem = report.failed.then(|| {
                format!(
                    "parts could not take it: {}",
                    report.needs_restart.join("; ")
                )
            });
        }
        tracing::info!(
            trigger = why,
            applied = ?report.applied,
            restarted = ?report.restarted,
            needs_restart = ?report.needs_restart,
            "config reloaded"
        );
        for setting in &report.needs_restart {
            tracing::warn!(setting = %setting, "changed in config.json; takes effect when the server restarts");
        }
        Ok(report)
    }

    async fn apply(&self, old: &Arc<Config>, new: &Arc<Config>) -> Report {
        let mut report = Report::default();
        let (o, n) = (&old.http, &new.http);
        let mut needs = |what: &str, differs: bool| {
            if differs {
                report.needs_restart.push(what.to_owned());
            }
        };
        needs("listen", changed(&old.listen, &new.listen));
        needs("http.plain_http", changed(&o.plain_http, &n.plain_http));
        needs("http.host_names", changed(&o.host_names, &n.host_names));
        needs(
            "http.redirect_listen",
            changed(&o.redirect_listen, &n.redirect_listen),
        );
        needs(
            "http.certificate_check_secs",
            changed(&o.certificate_check_secs, &n.certificate_check_secs),
        );
        needs("data", changed(&old.data, &new.data));
        let sync_changed = changed(&old.sync, &new.sync);
        needs(
            "sync (the server started without jobs, so it has no sync component)",
            sync_changed && old.sync.jobs.is_empty(),
        );
        needs("supervisor", changed(&old.supervisor, &new.supervisor));
        needs("update", changed(&old.update, &new.update));
        needs(
            "metrics.enabled",
            changed(&old.metrics.enabled, &new.metrics.enabled),
        );
        let mut log_files = old.log.clone();
        log_files.level.clone_from(&new.log.level);
        needs("log (other than level)", changed(&log_files, &new.log));

        // The listener's site: replaced whole, whatever changed in it.
        let site_differs = changed(&o.cors, &n.cors)
            || changed(&o.hosts, &n.hosts)
            || changed(&o.cache_control, &n.cache_control)
            || changed(&o.proxy, &n.proxy)
            || changed(&o.refused_extensions, &n.refused_extensions)
            || changed(&o.access_log, &n.access_log)
            || changed(&o.limits, &n.limits)
            || changed(&old.admin, &new.admin)
            || changed(&old.metrics.public, &new.metrics.public)
            || changed(&old.health, &new.health);
        // Stored first: the components restarted below read it as they start. Kept only if they
        // all took it (else the next reload tries again).
        self.live.store(new.clone());
        // The site also shows the jobs, schedules and settings of the rest (admin API, health,
        // status page): it is rebuilt whenever anything changed.
        if old != new {
            match self.reload_listener(new).await {
                Ok(()) if site_differs => report.applied.push("http (CORS, host folders, cache rules, proxies, refused extensions, access log, limits for the connections accepted from now on, admin rules, /metrics access, health)".to_owned()),
                Ok(()) => {}
                Err(e) => report.refused("http", e),
            }
        }
        if changed(&old.log.level, &new.log.level) {
            match crate::logging::set_level(&new.log.level) {
                Ok(()) => report.applied.push("log.level".to_owned()),
                Err(e) => report.refused("log.level", e),
            }
        }
        let zone = changed(&old.time_zone, &new.time_zone);
        if zone || changed(&old.restarts, &new.restarts) {
            self.restart("scheduler", &mut report).await;
        }
        if zone || changed(&old.search, &new.search) {
            self.restart("search", &mut report).await;
        }
        if (zone || sync_changed || changed(&old.search.sources, &new.search.sources))
            && !old.sync.jobs.is_empty()
        {
            // Runs under way are stopped (journaled as cancelled) and the jobs start again.
            self.restart("sync", &mut report).await;
        }
        if report.failed {
            // A part could not take the new config: the old one stays the reference, so that
            // the next reload applies the difference again.
            self.live.store(old.clone());
        }
        report
    }

    async fn reload_listener(&self, config: &Arc<Config>) -> Result<(), String> {
        use crate::http::{HTTP_ACTOR, HttpMsg};
        let cell = self
            .directory
            .get(HTTP_ACTOR)
            .ok_or_else(|| "the listener is not running".to_owned())?;
        let actor: ActorRef<HttpMsg> = cell.into();
        let (tx, rx) = ractor::concurrency::oneshot();
        actor
            .send_message(HttpMsg::Reload(config.clone(), RpcReplyPort::from(tx)))
            .map_err(|_| "the listener is stopping".to_owned())?;
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .map_err(|_| "the listener did not answer".to_owned())?
            .map_err(|_| "the listener stopped".to_owned())?
    }

    async fn restart(&self, component: &str, report: &mut Report) {
        let asked = match crate::runtime::request_restart(&self.directory, component) {
            Ok(rx) => rx,
            Err(why) => return report.refused(component, why),
        };
        match tokio::time::timeout(Duration::from_secs(30), asked).await {
            Ok(Ok(Ok(()))) => report.restarted.push(component.to_owned()),
            Ok(Ok(Err(e))) => report.refused(component, e),
            _ => report.refused(component, "did not restart in time"),
        }
    }

    /// Watches the config file's folder and reloads after changes settle (500 ms), until
    /// `stop` completes. A watcher that cannot start is logged; `POST /admin/reload` still
    /// works.
    pub async fn watch(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        use notify::Watcher;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
        let name = self.file.file_name().map(std::ffi::OsStr::to_owned);
        let watched = self
            .file
            .parent()
            .map_or_else(|| PathBuf::from("."), std::path::Path::to_owned);
        let handler = move |event: notify::Result<notify::Event>| {
            if let Err(e) = &event {
                tracing::warn!(error = %e, "watching config.json failed for an event; reload with POST /admin/reload if a change is not picked up");
            }
            let ours = event.is_ok_and(|e| {
                !e.kind.is_access()
                    && e.paths
                        .iter()
                        .any(|p| p.file_name().map(std::ffi::OsStr::to_owned) == name)
            });
            if ours {
                let _ = tx.try_send(());
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch config.json; reload with POST /admin/reload");
                return;
            }
        };
        if let Err(e) = watcher.watch(&watched, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(folder = %watched.display(), error = %e, "cannot watch the config folder; reload with POST /admin/reload");
            return;
        }
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                event = rx.recv() => {
                    if event.is_none() {
                        break;
                    }
                    // Settle: editors write a file in several steps.
                    let settled_by = tokio::time::Instant::now() + Duration::from_secs(5);
                    while tokio::time::Instant::now() < settled_by
                        && let Ok(Some(())) =
                            tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
                    {}
                    let _ = self.reload("config.json changed").await;
                }
            }
        }
        drop(watcher);
    }
}

/// Shares `config` as the live config.
#[must_use]
pub fn live(config: &Config) -> LiveConfig {
    Arc::new(ArcSwap::from_pointee(config.clone()))
}
