//! The scheduler component: fires planned restarts on their cron schedules, catching up runs
//! missed while the server was down when asked to, and marking each run in SQLite.

use std::sync::Arc;
use std::time::Duration;

use actors::SupervisorMsg;
use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use schedules::{AtStart, CatchUp, MarkStore, Schedule};

/// Longest single timer: schedules are re-checked against the wall clock at least this often,
/// so a clock change or a suspended machine cannot make a run late by more than this.
const MAX_TIMER: Duration = Duration::from_secs(30);

/// A planned restart of one component.
#[derive(Debug, Clone)]
pub struct PlannedJob {
    /// Stable name under which its last run is marked.
    pub name: String,
    /// The root supervisor's child to restart.
    pub component: String,
    /// When.
    pub schedule: Schedule,
    /// What to do about a run missed while the server was down.
    pub catch_up: CatchUp,
}

/// What the scheduler is started with.
#[derive(Debug, Clone)]
pub struct SchedulerArgs {
    /// The planned jobs.
    pub jobs: Vec<PlannedJob>,
    /// Last-run marks.
    pub marks: Arc<MarkStore>,
}

/// The scheduler actor; a child of the root supervisor, whose children it restarts.
#[derive(Debug, Clone, Copy)]
pub struct Scheduler;

/// Timer messages.
#[derive(Debug)]
pub enum SchedulerMsg {
    /// Check job `n` against the clock.
    Tick(usize),
    /// Run job `n` now (a catch-up run).
    RunNow(usize),
}

/// The jobs and their next fire times.
#[derive(Debug)]
pub struct SchedulerState {
    args: SchedulerArgs,
    next: Vec<Option<DateTime<Utc>>>,
}

impl SchedulerState {
    fn arm(&self, myself: &ActorRef<SchedulerMsg>, n: usize) {
        if let Some(next) = self.next[n] {
            let wait = (next - Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(MAX_TIMER);
            myself.send_after(wait, move || SchedulerMsg::Tick(n));
        }
    }

    fn mark(&self, job: &PlannedJob, at: DateTime<Utc>) {
        if let Err(e) = self
            .args
            .marks
            .record(&job.name, job.schedule.expression(), at)
        {
            tracing::warn!(job = %job.name, error = %e, "could not record the run; a restart may repeat it as a catch-up");
        }
    }

    fn run(&self, myself: &ActorRef<SchedulerMsg>, n: usize, due: DateTime<Utc>) {
        let job = &self.args.jobs[n];
        self.mark(job, due);
        // The link to the supervisor is made after `pre_start`, so it is looked up here.
        let Some(root) = myself
            .try_get_supervisor()
            .map(ActorRef::<SupervisorMsg>::from)
        else {
            tracing::error!(job = %job.name, "no supervisor to ask for the restart");
            return;
        };
        tracing::info!(job = %job.name, component = %job.component, due = %due, "planned restart");
        let (tx, rx) = ractor::concurrency::oneshot();
        let message = SupervisorMsg::RestartChild {
            name: job.component.clone(),
            reply: RpcReplyPort::from(tx),
        };
        // Fire and forget: the component restarted may be this scheduler itself.
        if root.send_message(message).is_err() {
            tracing::warn!(job = %job.name, "supervisor is stopping; restart not requested");
            return;
        }
        let (name, component) = (job.name.clone(), job.component.clone());
        tokio::spawn(async move {
            match rx.await {
                Ok(Ok(())) => {
                    tracing::info!(job = %name, component = %component, "component restarted")
                }
                Ok(Err(e)) => tracing::error!(job = %name, error = %e, "planned restart failed"),
                Err(_) => {}
            }
        });
    }
}

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    #[tracing::instrument(name = "component", fields(component = "scheduler"), skip_all)]
    async fn pre_start(
        &self,
        myself: ActorRef<SchedulerMsg>,
        args: SchedulerArgs,
    ) -> Result<SchedulerState, ActorProcessingErr> {
        let now = Utc::now();
        let next = args
            .jobs
            .iter()
            .map(|j| j.schedule.next_after(now))
            .collect();
        let state = SchedulerState { args, next };
        for (n, job) in state.args.jobs.iter().enumerate() {
            let last = state.args.marks.last_run(&job.name).unwrap_or_else(|e| {
                tracing::warn!(job = %job.name, error = %e, "cannot read the last run");
                None
            });
            match job.schedule.at_start(last, now, job.catch_up) {
                AtStart::FirstStart => state.mark(job, now),
                AtStart::UpToDate => {}
                AtStart::RunMissed(missed) => {
                    tracing::info!(job = %job.name, missed = %missed, "run missed while down; running it once now");
                    let _ = myself.send_message(SchedulerMsg::RunNow(n));
                }
                AtStart::SkipMissed(missed) => {
                    tracing::info!(job = %job.name, missed = %missed, "run missed while down; skipped (catch_up = skip)");
                    state.mark(job, now);
                }
            }
            tracing::info!(job = %job.name, next = ?state.next[n], zone = %job.schedule.zone(), "scheduled");
            state.arm(&myself, n);
        }
        Ok(state)
    }

    #[tracing::instrument(name = "component", fields(component = "scheduler"), skip_all)]
    async fn handle(
        &self,
        myself: ActorRef<SchedulerMsg>,
        message: SchedulerMsg,
        state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SchedulerMsg::RunNow(n) => state.run(&myself, n, Utc::now()),
            SchedulerMsg::Tick(n) => {
                let now = Utc::now();
                if let Some(due) = state.next[n].filter(|due| *due <= now) {
                    state.next[n] = state.args.jobs[n].schedule.next_after(now);
                    state.run(&myself, n, due);
                }
                state.arm(&myself, n);
            }
        }
        Ok(())
    }
}
