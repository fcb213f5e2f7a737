//! The `sync` supervisor and its children: one actor per job (health `sync/<job>`), which
//! fires the job on its schedule, catches up a run missed while the server was down, runs it
//! in a worker process within the global limit of concurrent runs, journals it, and retries a
//! failed run with backoff. A job's failures never touch the other jobs or the listener.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actors::{ChildSpec, HealthRegistry, RestartType, SupervisorSpec};
use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use schedules::{AtStart, MarkStore, Schedule};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;

use crate::config::sync::SyncJob;
use crate::sync::journal::Journal;
use crate::sync::worker::{self, Input, Outcome};
use crate::sync::{JobPaths, Report, Status, Trigger, webhook};

/// Longest single timer (schedules are re-read against the clock at least this often).
const MAX_TIMER: Duration = Duration::from_secs(30);

/// How long a stopping job waits for its run to be killed and journaled.
const STOP_WAIT: Duration = Duration::from_secs(3);

/// What every job actor shares.
#[derive(Debug)]
pub struct Shared {
    /// The installation root.
    pub root: PathBuf,
    /// The journal.
    pub journal: Arc<Journal>,
    /// Permits for runs in progress (`sync.max_concurrent_runs`).
    pub slots: Arc<tokio::sync::Semaphore>,
    /// Last scheduled run of each job, for catch-up.
    pub marks: Arc<MarkStore>,
    /// Health, where run failures are reported.
    pub registry: HealthRegistry,
    /// `sync.webhook`.
    pub webhook: Option<String>,
    /// The tree's named actors: each job registers itself; the search indexer is found here.
    pub directory: actors::Directory,
}

/// One job's actor arguments.
#[derive(Debug, Clone)]
pub struct JobArgs {
    /// The job.
    pub job: SyncJob,
    /// Its schedule, if it is scheduled.
    pub schedule: Option<Schedule>,
    /// Whether the search index reads its target (and is rebuilt after each publish).
    pub reindex: bool,
    /// What every job shares.
    pub shared: Arc<Shared>,
}

/// The name a job's actor has in the tree's directory (for the admin API).
#[must_use]
pub fn actor_name(job: &str) -> String {
    format!("sync/{job}")
}

/// The `sync` supervisor's spec: one child per job.
#[must_use]
pub fn spec(registry: &HealthRegistry, jobs: Vec<JobArgs>) -> SupervisorSpec {
    let mut spec = SupervisorSpec::new("sync", registry.clone());
    for args in jobs {
        let name = args.job.name.clone();
        let child = ChildSpec::new(name.clone(), RestartType::Permanent, move |supervisor| {
            let args = args.clone();
            let name = actor_name(&args.job.name);
            async move {
                let directory = args.shared.directory.clone();
                let (actor, _) = Actor::spawn_linked(None, JobActor, args, supervisor).await?;
                directory.register(name, actor.get_cell());
                Ok(actor.get_cell())
            }
        })
        .with_shutdown(STOP_WAIT + Duration::from_secs(2));
        spec = spec.child(child);
    }
    spec
}

/// How long the `sync` supervisor may take to stop its jobs (each stops its run first).
#[must_use]
pub fn stop_time(jobs: usize) -> Duration {
    (STOP_WAIT + Duration::from_secs(2)) * u32::try_from(jobs.max(1)).unwrap_or(u32::MAX)
        + Duration::from_secs(1)
}

/// A job's actor.
#[derive(Debug, Clone, Copy)]
pub struct JobActor;

/// Messages to a job's actor.
#[derive(Debug)]
pub enum JobMsg {
    /// Check the schedule against the clock.
    Tick,
    /// Run now; the reply is the run's journal id, or why it cannot run.
    Run {
        /// Why.
        trigger: Trigger,
        /// Where the id goes.
        reply: Option<RpcReplyPort<Result<i64, String>>>,
    },
    /// A run ended.
    Finished {
        /// How.
        status: Status,
    },
}

struct Running {
    /// Cancels the run when dropped (the actor stopped or died).
    _cancel: DropGuard,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// A job actor's state.
pub struct JobState {
    args: JobArgs,
    next: Option<DateTime<Utc>>,
    running: Option<Running>,
    /// Retries made since the last run that was not a retry.
    retries: u32,
    /// Whether the last run failed (for the recovery webhook).
    failing: bool,
}

impl std::fmt::Debug for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobState")
            .field("job", &self.args.job.name)
            .field("next", &self.next)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

fn mark_name(job: &str) -> String {
    format!("sync:{job}")
}

impl JobState {
    fn arm(&self, myself: &ActorRef<JobMsg>) {
        if let Some(next) = self.next {
            let wait = (next - Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(MAX_TIMER);
            myself.send_after(wait, || JobMsg::Tick);
        }
    }

    fn mark(&self, at: DateTime<Utc>) {
        if let Some(schedule) = &self.args.schedule {
            let name = mark_name(&self.args.job.name);
            if let Err(e) = self
                .args
                .shared
                .marks
                .record(&name, schedule.expression(), at)
            {
                tracing::warn!(job = %self.args.job.name, error = %e, "cannot record the run; a restart may repeat it as a catch-up");
            }
        }
    }

    /// Starts a run: journals it, then runs it in a worker within the global limit.
    fn start(&mut self, myself: &ActorRef<JobMsg>, trigger: Trigger) -> Result<i64, String> {
        let job = self.args.job.clone();
        if self.running.is_some() {
            return Err(format!("job {} is already running", job.name));
        }
        if trigger != Trigger::Retry {
            self.retries = 0;
        }
        let shared = self.args.shared.clone();
        let id = shared
            .journal
            .start(&job.name, trigger)
            .map_err(|e| e.to_string())?;
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let me = myself.clone();
        let failing = self.failing;
        let reindex = self.args.reindex;
        let directory = self.args.shared.directory.clone();
        let span = tracing::info_span!("sync", job = %job.name, run = id);
        let task = tokio::spawn(
            async move {
                let status = run(&shared, &job, id, trigger, token, failing).await;
                if reindex && status == Status::Ok {
                    match directory.get(crate::gis::search::ACTOR_NAME) {
                        Some(cell) => {
                            tracing::info!("the search index reads this dataset; rebuilding it");
                            let _ = ActorRef::<crate::gis::search::SearchMsg>::from(cell)
                                .send_message(crate::gis::search::SearchMsg::Rebuild);
                        }
                        None => tracing::warn!(
                            "the search index is not running; it is rebuilt on its schedule"
                        ),
                    }
                }
                let _ = me.send_message(JobMsg::Finished { status });
            }
            .instrument(span),
        );
        self.running = Some(Running {
            _cancel: cancel.clone().drop_guard(),
            cancel,
            task,
        });
        Ok(id)
    }
}

/// One run, from the permit to the journal.
async fn run(
    shared: &Shared,
    job: &SyncJob,
    id: i64,
    trigger: Trigger,
    cancel: CancellationToken,
    was_failing: bool,
) -> Status {
    let name = &job.name;
    let run_started = std::time::Instant::now();
    let permit = tokio::select! {
        permit = shared.slots.clone().acquire_owned() => permit.ok(),
        () = cancel.cancelled() => None,
    };
    let validators = shared.journal.validators(name).ok().flatten();
    let outcome = match permit {
        None => Outcome::Cancelled,
        Some(_permit) => {
            tracing::info!(trigger = trigger.as_str(), "sync run started");
            let input = Input {
                job: job.clone(),
                validators,
            };
            let journal = shared.journal.clone();
            worker::run(
                &shared.root,
                &input,
                Duration::from_secs(job.timeout_secs),
                cancel,
                move |rows, bytes| {
                    let _ = journal.progress(id, rows, bytes);
                },
            )
            .await
        }
    };
    let (status, report, error) = match outcome {
        Outcome::Done(report) if report.published => (Status::Ok, report, None),
        Outcome::Done(report) => (Status::Unchanged, report, None),
        Outcome::Failed(e) => (Status::Failed, Report::default(), Some(e)),
        Outcome::TimedOut => (
            Status::TimedOut,
            Report::default(),
            Some(format!("ran past timeout_secs ({})", job.timeout_secs)),
        ),
        Outcome::Cancelled => (
            Status::Cancelled,
            Report::default(),
            Some("cancelled: the server is stopping".to_owned()),
        ),
    };
    if matches!(status, Status::TimedOut | Status::Cancelled) {
        // The worker was killed (its lock went with it): taking the lock removes what it was
        // writing.
        let _ = JobPaths::new(&shared.root, job).lock();
    }
    if let Err(e) = shared.journal.finish(id, status, &report, error.as_deref()) {
        tracing::error!(error = %e, "cannot journal the end of the run");
    }
    if let Some(metrics) = crate::ops::metrics::global() {
        metrics.sync_run(
            name,
            status.as_str(),
            run_started.elapsed(),
            report.rows_written,
        );
    }
    if let Some(v) = &report.validators
        && let Err(e) = shared.journal.set_validators(name, v)
    {
        tracing::warn!(error = %e, "cannot keep the source's validators");
    }
    match status {
        Status::Ok => tracing::info!(
            rows_read = report.rows_read,
            rows_written = report.rows_written,
            bytes = report.bytes,
            "sync run published a new version"
        ),
        Status::Unchanged => tracing::info!("sync run: the source is unchanged"),
        _ => {
            let message = error.clone().unwrap_or_default();
            tracing::error!(status = status.as_str(), error = %message, "sync run failed; the published dataset is unchanged");
            shared
                .registry
                .report_error(&actor_name(name), format!("run {id}: {message}"));
        }
    }
    let failed = matches!(status, Status::Failed | Status::TimedOut);
    let url = job.webhook.clone().or_else(|| shared.webhook.clone());
    if let Some(url) = url
        && (failed || (was_failing && matches!(status, Status::Ok | Status::Unchanged)))
    {
        webhook::send(
            url,
            webhook::Event {
                event: if failed { "failed" } else { "recovered" },
                job: name.clone(),
                run: id,
                status: status.as_str(),
                error,
                at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            },
        );
    }
    status
}

impl Actor for JobActor {
    type Msg = JobMsg;
    type State = JobState;
    type Arguments = JobArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<JobMsg>,
        args: JobArgs,
    ) -> Result<JobState, ActorProcessingErr> {
        let name = args.job.name.clone();
        // Taking the job's lock (when no other process runs the job) removes what an
        // interrupted run left.
        if let Err(e) = JobPaths::new(&args.shared.root, &args.job).lock() {
            tracing::warn!(job = %name, error = %e, "cannot take the job's lock");
        }
        let now = Utc::now();
        let failing = args
            .shared
            .journal
            .runs(&name, 1)
            .ok()
            .and_then(|r| r.into_iter().next())
            .is_some_and(|r| matches!(r.status.as_str(), "failed" | "timed_out"));
        let next = match (&args.schedule, args.job.enabled) {
            (Some(schedule), true) => schedule.next_after(now),
            _ => None,
        };
        let state = JobState {
            args,
            next,
            running: None,
            retries: 0,
            failing,
        };
        if let (Some(schedule), true) = (&state.args.schedule, state.args.job.enabled) {
            let last = state
                .args
                .shared
                .marks
                .last_run(&mark_name(&name))
                .unwrap_or_else(|e| {
                    tracing::warn!(job = %name, error = %e, "cannot read the last run");
                    None
                });
            match schedule.at_start(last, now, state.args.job.catch_up) {
                AtStart::FirstStart => state.mark(now),
                AtStart::UpToDate => {}
                AtStart::RunMissed(missed) => {
                    tracing::info!(job = %name, missed = %missed, "run missed while down; running it once now");
                    let _ = myself.send_message(JobMsg::Run {
                        trigger: Trigger::CatchUp,
                        reply: None,
                    });
                    state.mark(now);
                }
                AtStart::SkipMissed(missed) => {
                    tracing::info!(job = %name, missed = %missed, "run missed while down; skipped (catch_up = skip)");
                    state.mark(now);
                }
            }
            tracing::info!(job = %name, next = ?state.next, "sync job scheduled");
            state.arm(&myself);
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<JobMsg>,
        message: JobMsg,
        state: &mut JobState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            JobMsg::Tick => {
                let now = Utc::now();
                if let Some(due) = state.next.filter(|due| *due <= now) {
                    state.next = state.args.schedule.as_ref().and_then(|s| s.next_after(now));
                    state.mark(due);
                    if let Err(e) = state.start(&myself, Trigger::Schedule) {
                        tracing::warn!(job = %state.args.job.name, reason = %e, "scheduled run skipped");
                    }
                }
                state.arm(&myself);
            }
            JobMsg::Run { trigger, reply } => {
                let started = state.start(&myself, trigger);
                if let Err(e) = &started {
                    tracing::info!(job = %state.args.job.name, reason = %e, "run not started");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(started);
                }
            }
            JobMsg::Finished { status } => {
                state.running = None;
                let failed = matches!(status, Status::Failed | Status::TimedOut);
                state.failing = failed || (state.failing && status == Status::Cancelled);
                let policy = &state.args.job.retries;
                if failed && state.retries < policy.count {
                    let wait = Duration::from_secs(policy.backoff_secs)
                        .saturating_mul(2u32.saturating_pow(state.retries));
                    state.retries += 1;
                    tracing::info!(job = %state.args.job.name, retry = state.retries, of = policy.count, wait_secs = wait.as_secs(), "retrying the failed run");
                    myself.send_after(wait, || JobMsg::Run {
                        trigger: Trigger::Retry,
                        reply: None,
                    });
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<JobMsg>,
        state: &mut JobState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(running) = state.running.take() {
            running.cancel.cancel();
            let _ = tokio::time::timeout(STOP_WAIT, running.task).await;
        }
        Ok(())
    }
}
