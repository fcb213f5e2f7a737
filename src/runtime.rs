//! The running server: the root supervisor and its components, until a signal or a give-up.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actors::{
    Backoff, ChildSpec, HealthRegistry, Intensity, RestartType, RootOutcome, Supervisor,
    SupervisorSpec,
};
use schedules::{MarkStore, Schedule};

use crate::config::{Config, parse_zone};
use crate::gis::search::{SearchArgs, SearchIndexer};
use crate::http::{HttpArgs, HttpComponent, Listening};
use crate::root::Root;
use crate::scheduler::{PlannedJob, Scheduler, SchedulerArgs};

/// Why the server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The scheduler's marks database could not be opened.
    #[error(transparent)]
    Marks(#[from] schedules::MarkError),
    /// A schedule was invalid (config validation normally catches this).
    #[error("schedule {index}: {reason}")]
    Schedule {
        /// Index in `restarts`.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The supervision tree could not be started.
    #[error(transparent)]
    Supervisor(#[from] actors::SupervisorError),
    /// Components did not stop within the shutdown timeout.
    #[error("shutdown did not finish within {0:?}")]
    ShutdownTimeout(Duration),
}

/// Shared views into the running server, for `/health`, logs and tests.
#[derive(Debug, Clone, Default)]
pub struct Handles {
    /// Every component's health.
    pub registry: HealthRegistry,
    /// The addresses the HTTP component is listening on.
    pub listening: Listening,
    /// The tree's named actors (sync jobs, the search indexer, the updater).
    pub directory: actors::Directory,
    /// Where the updater asks for a switch to a new version, which the caller carries out
    /// (running the new version on trial while this tree serves on).
    pub switch: crate::update::SwitchRequest,
    /// The config file the server was started with (default `<root>/config.json`), which a
    /// new version's self-test checks and a reload reads.
    pub config_file: Option<std::path::PathBuf>,
    /// `--listen` addresses from the command line, which a reload keeps.
    pub listen_override: Option<Vec<std::net::SocketAddr>>,
}

/// The root supervisor's name in the actor directory (the admin API restarts components
/// through it).
pub const ROOT_NAME: &str = "root";

/// The root supervisor's policy from the config.
fn root_spec(config: &Config, registry: &HealthRegistry) -> SupervisorSpec {
    let s = &config.supervisor;
    SupervisorSpec::new("root", registry.clone())
        .intensity(Intensity {
            max_restarts: s.max_restarts,
            period: Duration::from_secs(s.period_secs),
        })
        .backoff(Backoff {
            initial: Duration::from_millis(s.backoff_initial_ms),
            max: Duration::from_millis(s.backoff_max_ms),
            ..Backoff::default()
        })
}

fn planned_jobs(config: &Config) -> Result<Vec<PlannedJob>, RuntimeError> {
    let default_zone = config.zone();
    config
        .restarts
        .iter()
        .enumerate()
        .map(|(index, r)| {
            let fail = |reason: String| RuntimeError::Schedule { index, reason };
            let zone = match &r.time_zone {
                Some(name) => parse_zone(name).map_err(fail)?,
                None => default_zone,
            };
            let schedule = Schedule::parse(&r.schedule, zone).map_err(|e| fail(e.to_string()))?;
            Ok(PlannedJob {
                name: format!("restart:{}@{}", r.component, r.schedule),
                component: r.component.clone(),
                schedule,
                catch_up: r.catch_up,
            })
        })
        .collect()
}

/// What the search indexer starts with, from `config`.
fn search_args(
    config: &Config,
    root: &Root,
    catalog: &Arc<crate::gis::store::Catalog>,
) -> Result<SearchArgs, RuntimeError> {
    let zone = match &config.search.time_zone {
        Some(name) => {
            parse_zone(name).map_err(|reason| RuntimeError::Schedule { index: 0, reason })?
        }
        None => config.zone(),
    };
    Ok(SearchArgs {
        sources: config.search.sources.clone(),
        userdata: root.path().join("userdata"),
        index: root.state_dir().join("search.sqlite"),
        schedule: Schedule::parse(&config.search.rebuild, zone).map_err(|e| {
            RuntimeError::Schedule {
                index: 0,
                reason: format!("search.rebuild: {e}"),
            }
        })?,
        catalog: catalog.clone(),
    })
}

/// The sync journal (`state/sync.sqlite`), opened once for the jobs and the admin API, with
/// the runs a killed server left `running` closed as cancelled. `None` without jobs, or when it
/// cannot be opened (loudly: the jobs are then left out rather than the server stopped).
fn open_journal(config: &Config, root: &Root) -> Option<Arc<crate::sync::journal::Journal>> {
    if config.sync.jobs.is_empty() {
        return None;
    }
    let journal = match crate::sync::journal::Journal::open(
        &root.state_dir().join("sync.sqlite"),
        config.sync.keep_runs,
    ) {
        Ok(journal) => journal,
        Err(e) => {
            tracing::error!(error = %e, "sync jobs are not started: the journal cannot be opened");
            return None;
        }
    };
    // A new version on trial must not close the runs the old version has under way.
    if crate::update::on_trial() {
        return Some(Arc::new(journal));
    }
    match journal.close_interrupted() {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            runs = n,
            "runs cut short by the last stop journaled as cancelled"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot close interrupted runs in the journal"),
    }
    Some(Arc::new(journal))
}

/// The `sync` supervisor for the configured jobs (`None` without a journal, that is without
/// jobs or when it could not be opened).
fn sync_jobs(
    live: &crate::ops::reload::LiveConfig,
    root: &Root,
    registry: &HealthRegistry,
    marks: &Arc<MarkStore>,
    directory: &actors::Directory,
    journal: Option<Arc<crate::sync::journal::Journal>>,
) -> Option<actors::ChildSpec> {
    use crate::sync::component::{JobArgs, Shared, spec, stop_time};
    let journal = journal?;
    let (live, root, registry, marks, directory) = (
        live.clone(),
        root.path().to_owned(),
        registry.clone(),
        marks.clone(),
        directory.clone(),
    );
    let stop = stop_time(live.load().sync.jobs.len());
    // Built afresh at every start, from the live config: a reload that changes the jobs
    // restarts `sync` with them.
    let make = move || {
        let config = live.load();
        let shared = Arc::new(Shared {
            root: root.clone(),
            journal: journal.clone(),
            slots: Arc::new(tokio::sync::Semaphore::new(
                config.sync.max_concurrent_runs.max(1),
            )),
            marks: marks.clone(),
            registry: registry.clone(),
            webhook: config.sync.webhook.clone(),
            directory: directory.clone(),
        });
        let jobs = config
            .sync
            .jobs
            .iter()
            .map(|job| JobArgs {
                job: job.clone(),
                schedule: job_schedule(&config, job),
                reindex: config.search.sources.iter().any(|s| {
                    s.source.trim_start_matches('/') == job.target.dataset.trim_start_matches('/')
                }),
                shared: shared.clone(),
            })
            .collect();
        spec(&registry, jobs)
    };
    Some(actors::ChildSpec::supervisor_from(
        "sync",
        RestartType::Permanent,
        stop,
        make,
    ))
}

/// The updater's context, when the config turns it on and this process is not itself a new
/// version on trial (whose updater stays off). `None`, loudly, when its journal cannot be opened.
fn updater(
    config: &Config,
    root: &Root,
    config_file: std::path::PathBuf,
    switch: &crate::update::SwitchRequest,
) -> Option<crate::update::component::Context> {
    if !config.update.enabled() || crate::update::on_trial() {
        return None;
    }
    let journal = match crate::update::journal::Journal::open_in(root) {
        Ok(journal) => Arc::new(journal),
        Err(e) => {
            tracing::error!(error = %e, "the updater is not started: its journal cannot be opened");
            return None;
        }
    };
    Some(crate::update::component::Context {
        root: root.path().to_owned(),
        config_file,
        config: config.update.clone(),
        journal,
        switch: Some(switch.clone()),
        view: crate::update::component::View::default(),
    })
}

/// A job's schedule in its zone (validation has checked both).
pub fn job_schedule(config: &Config, job: &crate::config::sync::SyncJob) -> Option<Schedule> {
    let zone = job
        .time_zone
        .as_deref()
        .and_then(|z| parse_zone(z).ok())
        .unwrap_or_else(|| config.zone());
    job.schedule
        .as_deref()
        .and_then(|s| Schedule::parse(s, zone).ok())
}

/// Asks the root supervisor found in `directory` to restart `component` (stopped gracefully
/// and started again, not counted as a failure); the receiver gets the outcome.
///
/// # Errors
/// Why it could not be asked: the supervisor is not running, or is stopping.
pub fn request_restart(
    directory: &actors::Directory,
    component: &str,
) -> Result<ractor::concurrency::OneshotReceiver<Result<(), actors::SupervisorError>>, &'static str>
{
    let root: ractor::ActorRef<actors::SupervisorMsg> = directory
        .get(ROOT_NAME)
        .ok_or("the root supervisor is not running")?
        .into();
    let (tx, rx) = ractor::concurrency::oneshot();
    root.send_message(actors::SupervisorMsg::RestartChild {
        name: component.to_owned(),
        reply: ractor::RpcReplyPort::from(tx),
    })
    .map_err(|_| "the root supervisor is stopping")?;
    Ok(rx)
}

/// When a job runs next after `now` on its schedule: `None` when it is disabled or has none.
pub fn next_run(
    config: &Config,
    job: &crate::config::sync::SyncJob,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    job.enabled
        .then(|| job_schedule(config, job))
        .flatten()
        .and_then(|s| s.next_after(now))
}

/// Runs the server until `shutdown` completes (then stops every component in reverse order
/// within the configured time) or the root supervisor gives up.
///
/// # Errors
/// When the tree cannot be started, or shutdown overruns its time.
pub async fn run(
    config: &Config,
    root: &Root,
    handles: Handles,
    shutdown: impl Future<Output = ()>,
) -> Result<RootOutcome, RuntimeError> {
    let Handles {
        registry,
        listening,
        directory,
        switch,
        config_file,
        listen_override,
    } = handles;
    let config_file = config_file.unwrap_or_else(|| root.config_file());
    // A new version on trial runs beside the old one, which keeps the scheduled work (planned
    // restarts, sync jobs), the config watcher and the command line's token until the switch.
    let on_trial = crate::update::on_trial();
    let updater = updater(config, root, config_file.clone(), &switch);
    let search_directory = directory.clone();
    let marks = Arc::new(MarkStore::open(&root.state_dir().join("schedules.sqlite"))?);
    // The scheduler and search read the live config as they start, so a reload that changes
    // them restarts them.
    let live = crate::ops::reload::live(config);
    planned_jobs(config)?;
    let catalog = Arc::new(
        crate::gis::store::Catalog::with_limits(&config.data)
            .with_cache(root.state_dir().join("cache"), &config.data),
    );
    let first_search = search_args(config, root, &catalog)?;
    let scheduler = {
        let (live, marks) = (live.clone(), marks.clone());
        move || SchedulerArgs {
            jobs: planned_jobs(&live.load()).unwrap_or_default(),
            marks: marks.clone(),
        }
    };
    let search = {
        let (live, root, catalog) = (live.clone(), root.clone(), catalog.clone());
        move || search_args(&live.load(), &root, &catalog).unwrap_or_else(|_| first_search.clone())
    };
    let reloader = Arc::new(crate::ops::reload::Reloader::new(
        config_file.clone(),
        listen_override,
        live.clone(),
        directory.clone(),
    ));
    let journal = open_journal(config, root);
    let http = HttpArgs {
        config: live.load_full(),
        root: root.clone(),
        registry: registry.clone(),
        listening,
        directory: directory.clone(),
        journal: journal.clone(),
        reloader: Some(reloader.clone()),
        admin_token: if on_trial {
            None
        } else {
            crate::api::access::AdminAccess::create_local_token(root.path())
        },
        update: updater.as_ref().map(|u| crate::api::admin::UpdateAdmin {
            journal: u.journal.clone(),
            view: u.view.clone(),
            root: root.path().to_owned(),
        }),
    };
    let drain = Duration::from_secs(config.http.limits.drain_timeout_secs);
    let spec = root_spec(config, &registry)
        .child(
            // A port that is taken must not take the server down: retry with capped backoff.
            // In the directory, so that a config reload can hand it the new site.
            ChildSpec::new("http", RestartType::Permanent, {
                let directory = directory.clone();
                let live = live.clone();
                move |supervisor| {
                    // The config in effect now: a restart after a reload keeps what was reloaded.
                    let mut http = http.clone();
                    http.config = live.load_full();
                    let directory = directory.clone();
                    async move {
                        let (actor, _) =
                            ractor::Actor::spawn_linked(None, HttpComponent, http, supervisor)
                                .await?;
                        directory.register(crate::http::HTTP_ACTOR, actor.get_cell());
                        Ok(actor.get_cell())
                    }
                }
            })
            .retry_forever()
            .with_shutdown(drain + Duration::from_secs(1)),
        )
        .child(ChildSpec::new(
            "search",
            RestartType::Permanent,
            // In the directory, so that a sync job can ask for a rebuild after it publishes.
            move |supervisor| {
                let (search, directory) = (search(), search_directory.clone());
                async move {
                    let (actor, _) =
                        ractor::Actor::spawn_linked(None, SearchIndexer, search, supervisor)
                            .await?;
                    directory.register(crate::gis::search::ACTOR_NAME, actor.get_cell());
                    Ok(actor.get_cell())
                }
            },
        ));
    let spec = if on_trial {
        spec
    } else {
        let spec = spec.child(ChildSpec::actor(
            "scheduler",
            RestartType::Permanent,
            move || (Scheduler, scheduler()),
        ));
        match sync_jobs(&live, root, &registry, &marks, &directory, journal) {
            Some(child) => spec.child(child),
            None => spec,
        }
    };
    let spec = match updater {
        Some(ctx) => {
            let directory = directory.clone();
            spec.child(ChildSpec::new(
                "updater",
                RestartType::Permanent,
                move |supervisor| {
                    let (ctx, directory) = (ctx.clone(), directory.clone());
                    async move {
                        use crate::update::component::{ACTOR_NAME, Updater};
                        let (actor, _) =
                            ractor::Actor::spawn_linked(None, Updater, ctx, supervisor).await?;
                        directory.register(ACTOR_NAME, actor.get_cell());
                        Ok(actor.get_cell())
                    }
                },
            ))
        }
        None => spec,
    };
    let handle = Supervisor::start_root(spec).await?;
    directory.register(ROOT_NAME, handle.actor.get_cell());
    let watching = tokio_util::sync::CancellationToken::new();
    if !on_trial {
        let stop = watching.clone().cancelled_owned();
        tokio::spawn(reloader.clone().watch(stop));
    }
    let _stop_watching = watching.drop_guard();
    tracing::info!(root = %root.path().display(), "server started");
    let actor = handle.actor.clone();
    let finished = handle.wait();
    tokio::pin!(finished);
    tokio::select! {
        outcome = &mut finished => Ok(outcome),
        () = shutdown => {
            let limit = Duration::from_secs(config.supervisor.shutdown_timeout_secs);
            tracing::info!(timeout_secs = limit.as_secs(), "shutting down");
            actor.stop(Some("shutdown".to_owned()));
            tokio::time::timeout(limit, finished)
                .await
                .map_err(|_| RuntimeError::ShutdownTimeout(limit))
        }
    }
}

/// Completes on SIGINT or SIGTERM (Ctrl-C or service stop on Windows).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C received");
    }
}
