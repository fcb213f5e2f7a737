//! The supervisor actor: starts children in order, restarts them by strategy, gives up by
//! intensity, and stops them in reverse order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use ractor::concurrency::JoinHandle;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RactorErr, RpcReplyPort,
    SupervisionEvent,
};
use tokio::time::Instant;

use crate::health::{ComponentState, HealthRegistry, LastError};
use crate::policy::{Backoff, Intensity, RestartType, Strategy};
use crate::spec::ChildSpec;

/// How long a child that ignored its graceful stop gets to die after being killed.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// Errors from supervisor operations.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The supervisor has no child of that name.
    #[error("supervisor {supervisor} has no child named {child:?}")]
    UnknownChild {
        /// The supervisor asked.
        supervisor: String,
        /// The name asked for.
        child: String,
    },
    /// The child could not be started again.
    #[error("child {child} failed to start: {reason}")]
    StartFailed {
        /// The child's registry name.
        child: String,
        /// Why.
        reason: String,
    },
    /// The supervisor actor itself could not be spawned or reached.
    #[error("supervisor {supervisor}: {reason}")]
    Actor {
        /// The supervisor's name.
        supervisor: String,
        /// Why.
        reason: String,
    },
}

/// Everything a supervisor needs: its name, policies, children and the registry to report to.
#[derive(Debug, Clone)]
pub struct SupervisorSpec {
    /// Name of the supervisor; the prefix of its children's registry keys unless it is the root.
    pub name: String,
    /// Which children restart together.
    pub strategy: Strategy,
    /// How many restarts before giving up.
    pub intensity: Intensity,
    /// Delay between restarts of the same child.
    pub backoff: Backoff,
    /// Children, in start order.
    pub children: Vec<ChildSpec>,
    /// Where children's health is reported.
    pub registry: HealthRegistry,
    prefix: String,
    outcome: Option<Arc<OnceLock<RootOutcome>>>,
}

impl SupervisorSpec {
    /// A one-for-one supervisor with default intensity and backoff and no children yet.
    pub fn new(name: impl Into<String>, registry: HealthRegistry) -> Self {
        let name = name.into();
        Self {
            prefix: format!("{name}/"),
            name,
            strategy: Strategy::default(),
            intensity: Intensity::default(),
            backoff: Backoff::default(),
            children: Vec::new(),
            registry,
            outcome: None,
        }
    }

    /// Sets the restart strategy.
    #[must_use]
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the restart intensity.
    #[must_use]
    pub fn intensity(mut self, intensity: Intensity) -> Self {
        self.intensity = intensity;
        self
    }

    /// Sets the backoff between restarts.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Adds a child after the ones already there.
    #[must_use]
    pub fn child(mut self, child: ChildSpec) -> Self {
        self.children.push(child);
        self
    }
}

/// How the root supervisor ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootOutcome {
    /// Stopped on request after stopping its children.
    Stopped,
    /// Gave up (restart intensity exceeded) or crashed; the process should exit non-zero.
    Failed(String),
}

/// The running root of a supervision tree.
#[derive(Debug)]
pub struct RootHandle {
    /// The root supervisor, to send it requests.
    pub actor: ActorRef<SupervisorMsg>,
    join: JoinHandle<()>,
    outcome: Arc<OnceLock<RootOutcome>>,
}

impl RootHandle {
    /// Waits until the root supervisor has ended, and says how.
    pub async fn wait(self) -> RootOutcome {
        let joined = self.join.await;
        match (self.outcome.get(), joined) {
            (Some(outcome), _) => outcome.clone(),
            (None, Err(e)) => RootOutcome::Failed(format!("root supervisor task failed: {e}")),
            (None, Ok(())) => RootOutcome::Failed("root supervisor crashed".to_owned()),
        }
    }

    /// Stops every child in reverse start order, then the root, and waits for the end.
    pub async fn shutdown(self) -> RootOutcome {
        self.actor.stop(Some("shutdown".to_owned()));
        self.wait().await
    }
}

/// Requests a supervisor answers.
#[derive(Debug)]
pub enum SupervisorMsg {
    /// Stops the named child gracefully and starts it again at once (a planned restart: not
    /// counted against intensity).
    RestartChild {
        /// The child's name within this supervisor.
        name: String,
        /// Where the result goes.
        reply: RpcReplyPort<Result<(), SupervisorError>>,
    },
    /// The current incarnation of the named child, if it is running.
    Child {
        /// The child's name within this supervisor.
        name: String,
        /// Where the answer goes.
        reply: RpcReplyPort<Option<ActorCell>>,
    },
    /// Internal: a scheduled restart of a group of children.
    #[doc(hidden)]
    RestartGroup(RestartGroup),
}

/// Children to start again, each with the generation it had when the restart was planned;
/// a child whose generation moved on since is left alone.
#[doc(hidden)]
#[derive(Debug)]
pub struct RestartGroup(Vec<(usize, u64)>);

/// The supervisor actor. Spawn it with [`Supervisor::start_root`] or as a child through
/// [`ChildSpec::supervisor`].
#[derive(Debug, Clone, Copy)]
pub struct Supervisor;

struct Child {
    spec: ChildSpec,
    key: String,
    cell: Option<ActorCell>,
    started_at: Option<Instant>,
    /// Restarts since the child last ran for a whole intensity window: the backoff exponent.
    consecutive: usize,
    generation: u64,
}

/// A supervisor's running state.
pub struct SupervisorState {
    spec: SupervisorSpec,
    children: Vec<Child>,
    by_id: HashMap<ActorId, usize>,
    restarts: VecDeque<Instant>,
}

impl Supervisor {
    /// Spawns `spec` as the root of a tree. Its children's registry keys are their bare names.
    ///
    /// # Errors
    /// When the supervisor actor cannot be spawned.
    pub async fn start_root(mut spec: SupervisorSpec) -> Result<RootHandle, SupervisorError> {
        let outcome = Arc::new(OnceLock::new());
        spec.prefix = String::new();
        spec.outcome = Some(outcome.clone());
        let name = spec.name.clone();
        let (actor, join) =
            Actor::spawn(None, Supervisor, spec)
                .await
                .map_err(|e| SupervisorError::Actor {
                    supervisor: name,
                    reason: e.to_string(),
                })?;
        Ok(RootHandle {
            actor,
            join,
            outcome,
        })
    }
}

impl SupervisorState {
    fn window(&self) -> Duration {
        self.spec.intensity.period
    }

    fn set_state(&self, idx: usize, state: ComponentState) {
        self.spec
            .registry
            .set_state(&self.children[idx].key, self.window(), state);
    }

    fn group(&self, idx: usize) -> Vec<usize> {
        match self.spec.strategy {
            Strategy::OneForOne => vec![idx],
            Strategy::OneForAll => (0..self.children.len()).collect(),
            Strategy::RestForOne => (idx..self.children.len()).collect(),
        }
    }

    /// Starts one child; on failure returns why, leaving it not running.
    async fn start_child(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        idx: usize,
    ) -> Result<(), String> {
        self.set_state(idx, ComponentState::Starting);
        // Until this start succeeds the child has not run: a failure now must not count as the
        // end of the long run of an earlier incarnation (which would reset its backoff).
        self.children[idx].started_at = None;
        let start = self.children[idx].spec.start.clone();
        match start(myself.get_cell()).await {
            Ok(cell) => {
                self.by_id.insert(cell.get_id(), idx);
                self.children[idx].cell = Some(cell);
                self.children[idx].started_at = Some(Instant::now());
                let key = &self.children[idx].key;
                tracing::debug!(supervisor = %self.spec.name, child = %key, "child started");
                self.spec.registry.update(key, self.window(), |h| {
                    h.state = ComponentState::Running;
                    h.last_start = Some(SystemTime::now());
                });
                Ok(())
            }
            Err(e) => Err(format!("failed to start: {e}")),
        }
    }

    /// Starts each member still at its planned generation, in order. A member that fails to
    /// start is handled as an exit, which may stop the others and plan a new group.
    async fn start_group(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        members: Vec<(usize, u64)>,
    ) -> Result<(), ActorProcessingErr> {
        for (idx, generation) in members {
            let child = &self.children[idx];
            if child.generation != generation || child.cell.is_some() {
                continue;
            }
            if let Err(reason) = self.start_child(myself, idx).await {
                self.child_exited(myself, idx, true, reason).await?;
            }
        }
        Ok(())
    }

    /// Stops one child gracefully within its shutdown timeout, else kills it.
    async fn stop_child(&mut self, idx: usize, then: ComponentState) {
        let Some(cell) = self.children[idx].cell.take() else {
            return;
        };
        self.by_id.remove(&cell.get_id());
        self.set_state(idx, ComponentState::Stopping);
        let child = &self.children[idx];
        match cell
            .stop_and_wait(Some("shutdown".to_owned()), Some(child.spec.shutdown))
            .await
        {
            Ok(()) => {}
            Err(RactorErr::Timeout) => {
                tracing::warn!(
                    supervisor = %self.spec.name, child = %child.key,
                    timeout_ms = child.spec.shutdown.as_millis(),
                    "child did not stop within its shutdown timeout; killing it"
                );
                if cell.kill_and_wait(Some(KILL_GRACE)).await.is_err() {
                    tracing::error!(supervisor = %self.spec.name, child = %child.key, "child did not die after kill");
                }
            }
            // Already gone: nothing to wait for.
            Err(_) => {}
        }
        self.set_state(idx, then);
    }

    /// Stops every running child in reverse start order.
    async fn stop_all(&mut self) {
        for idx in (0..self.children.len()).rev() {
            self.stop_child(idx, ComponentState::Stopped).await;
        }
    }

    /// Applies the restart policy after child `idx` exited.
    async fn child_exited(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        idx: usize,
        abnormal: bool,
        reason: String,
    ) -> Result<(), ActorProcessingErr> {
        let window = self.window();
        let key = self.children[idx].key.clone();
        let restart = self.children[idx].spec.restart;
        if abnormal {
            tracing::warn!(supervisor = %self.spec.name, child = %key, error = %reason, "child failed");
            let error = LastError {
                message: reason.clone(),
                at: SystemTime::now(),
            };
            self.spec
                .registry
                .update(&key, window, |h| h.last_error = Some(error.clone()));
        } else {
            tracing::info!(supervisor = %self.spec.name, child = %key, reason = %reason, "child exited");
        }
        if !restart.restarts_after(abnormal) {
            let state = if abnormal {
                ComponentState::Failed
            } else {
                ComponentState::Stopped
            };
            self.set_state(idx, state);
            return Ok(());
        }

        let now = Instant::now();
        let child = &mut self.children[idx];
        if child
            .started_at
            .is_some_and(|t| now.duration_since(t) > window)
        {
            child.consecutive = 0;
        }
        let counted = child.spec.counts_toward_intensity;
        prune(&mut self.restarts, now, window);
        if counted {
            self.restarts.push_back(now);
        }
        let max = self.spec.intensity.max_restarts as usize;
        if self.restarts.len() > max {
            let message = format!(
                "supervisor {} gave up: more than {max} restarts within {:?}; last failure: {key}: {reason}",
                self.spec.name, window
            );
            tracing::error!(supervisor = %self.spec.name, child = %key, "{message}");
            self.set_state(idx, ComponentState::Failed);
            self.stop_all().await;
            if let Some(outcome) = &self.spec.outcome {
                let _ = outcome.set(RootOutcome::Failed(message.clone()));
            }
            return Err(message.into());
        }

        let child = &mut self.children[idx];
        let delay = self.spec.backoff.delay(child.consecutive);
        child.consecutive += 1;
        self.spec.registry.update(&key, window, |h| {
            let now = SystemTime::now();
            h.total_restarts += 1;
            h.recent_restarts
                .retain(|t| now.duration_since(*t).unwrap_or_default() <= window);
            h.recent_restarts.push(now);
        });

        let group = self.group(idx);
        for &j in group.iter().rev() {
            if j != idx {
                self.stop_child(j, ComponentState::BackingOff).await;
            }
        }
        let waiting = if delay.is_zero() {
            ComponentState::Starting
        } else {
            ComponentState::BackingOff
        };
        let mut members = Vec::with_capacity(group.len());
        for j in group {
            if j != idx && self.children[j].spec.restart == RestartType::Temporary {
                self.set_state(j, ComponentState::Stopped);
                continue;
            }
            self.children[j].generation += 1;
            members.push((j, self.children[j].generation));
            self.set_state(j, waiting);
        }
        tracing::info!(
            supervisor = %self.spec.name, child = %key, delay_ms = delay.as_millis(),
            restarting = members.len(), "restart planned"
        );
        let message = SupervisorMsg::RestartGroup(RestartGroup(members));
        if delay.is_zero() {
            let _ = myself.send_message(message);
        } else {
            myself.send_after(delay, move || message);
        }
        Ok(())
    }
}

fn prune(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times
        .front()
        .is_some_and(|t| now.duration_since(*t) > window)
    {
        times.pop_front();
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorSpec;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        spec: SupervisorSpec,
    ) -> Result<Self::State, ActorProcessingErr> {
        let children: Vec<Child> = spec
            .children
            .iter()
            .map(|c| Child {
                key: format!("{}{}", spec.prefix, c.name),
                spec: c.clone(),
                cell: None,
                started_at: None,
                consecutive: 0,
                generation: 0,
            })
            .collect();
        for child in &children {
            spec.registry
                .set_state(&child.key, spec.intensity.period, ComponentState::Starting);
        }
        Ok(SupervisorState {
            spec,
            children,
            by_id: HashMap::new(),
            restarts: VecDeque::new(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        tracing::info!(supervisor = %state.spec.name, children = state.children.len(), "supervisor starting children");
        let members = state
            .children
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.generation))
            .collect();
        state.start_group(&myself, members).await
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::RestartGroup(RestartGroup(members)) => {
                state.start_group(&myself, members).await?;
            }
            SupervisorMsg::Child { name, reply } => {
                let cell = state
                    .children
                    .iter()
                    .find(|c| c.spec.name == name)
                    .and_then(|c| c.cell.clone());
                let _ = reply.send(cell);
            }
            SupervisorMsg::RestartChild { name, reply } => {
                let Some(idx) = state.children.iter().position(|c| c.spec.name == name) else {
                    let _ = reply.send(Err(SupervisorError::UnknownChild {
                        supervisor: state.spec.name.clone(),
                        child: name,
                    }));
                    return Ok(());
                };
                tracing::info!(supervisor = %state.spec.name, child = %name, "planned restart");
                let window = state.window();
                state
                    .spec
                    .registry
                    .update(&state.children[idx].key, window, |h| {
                        h.planned_restarts += 1
                    });
                // A child that ran for a whole window starts its backoff afresh, as it would
                // after a failure; one restarted often keeps the backoff it has earned.
                let child = &mut state.children[idx];
                if child.started_at.is_some_and(|t| t.elapsed() > window) {
                    child.consecutive = 0;
                }
                state.stop_child(idx, ComponentState::Starting).await;
                state.children[idx].generation += 1;
                let result = match state.start_child(&myself, idx).await {
                    Ok(()) => Ok(()),
                    Err(reason) => {
                        let error = SupervisorError::StartFailed {
                            child: state.children[idx].key.clone(),
                            reason: reason.clone(),
                        };
                        state.child_exited(&myself, idx, true, reason).await?;
                        Err(error)
                    }
                };
                let _ = reply.send(result);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, abnormal, reason) = match event {
            // A child killed (not stopped) leaves no state behind: that is an abnormal exit.
            SupervisionEvent::ActorTerminated(cell, child_state, reason) => (
                cell,
                child_state.is_none(),
                reason.unwrap_or_else(|| "exited normally".to_owned()),
            ),
            SupervisionEvent::ActorFailed(cell, error) => (cell, true, error.to_string()),
            _ => return Ok(()),
        };
        let Some(idx) = state.by_id.remove(&cell.get_id()) else {
            return Ok(());
        };
        state.children[idx].cell = None;
        state.child_exited(&myself, idx, abnormal, reason).await
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        tracing::info!(supervisor = %state.spec.name, "stopping children in reverse start order");
        state.stop_all().await;
        if let Some(outcome) = &state.spec.outcome {
            let _ = outcome.set(RootOutcome::Stopped);
        }
        Ok(())
    }
}
