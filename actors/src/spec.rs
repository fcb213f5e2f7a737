//! Child specifications: what a supervisor starts, restarts and stops.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, SpawnErr};

use crate::policy::RestartType;
use crate::supervisor::{Supervisor, SupervisorSpec};

/// The future a child's start function returns: the new child, linked to the supervisor.
pub type StartFuture = Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>>;

type StartFn = Arc<dyn Fn(ActorCell) -> StartFuture + Send + Sync>;

/// Shutdown timeout given to children unless a spec says otherwise.
pub const DEFAULT_SHUTDOWN: Duration = Duration::from_secs(5);

/// How to build (and rebuild) one child, when to restart it, and how long it may take to stop.
#[derive(Clone)]
pub struct ChildSpec {
    /// Name within its supervisor; also its key in the health registry.
    pub name: String,
    /// When it is restarted.
    pub restart: RestartType,
    /// How long a graceful stop may take before the child is killed.
    pub shutdown: Duration,
    /// Whether its restarts count toward the supervisor's intensity (default yes).
    pub counts_toward_intensity: bool,
    pub(crate) start: StartFn,
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &self.name)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .finish_non_exhaustive()
    }
}

impl ChildSpec {
    /// A child started by `start`, which must spawn an actor linked to the supervisor cell it is
    /// given (`Actor::spawn_linked(None, …, supervisor)`) and return its cell.
    pub fn new<F, Fut>(name: impl Into<String>, restart: RestartType, start: F) -> Self
    where
        F: Fn(ActorCell) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, SpawnErr>> + Send + 'static,
    {
        Self {
            name: name.into(),
            restart,
            shutdown: DEFAULT_SHUTDOWN,
            counts_toward_intensity: true,
            start: Arc::new(move |supervisor| Box::pin(start(supervisor))),
        }
    }

    /// A child that is an actor, built afresh for every start by `make`.
    pub fn actor<A, F>(name: impl Into<String>, restart: RestartType, make: F) -> Self
    where
        A: Actor,
        F: Fn() -> (A, A::Arguments) + Send + Sync + 'static,
    {
        Self::new(name, restart, move |supervisor| {
            let (actor, arguments) = make();
            async move {
                let (child, _) = Actor::spawn_linked(None, actor, arguments, supervisor).await?;
                Ok(child.get_cell())
            }
        })
    }

    /// A child that is itself a supervisor. Its children appear in the health registry as
    /// `<name>/<child>`. Its shutdown timeout defaults to the sum of its children's, plus a
    /// second, so it can stop them all gracefully.
    #[must_use]
    pub fn supervisor(restart: RestartType, spec: SupervisorSpec) -> Self {
        let shutdown =
            spec.children.iter().map(|c| c.shutdown).sum::<Duration>() + Duration::from_secs(1);
        let name = spec.name.clone();
        Self::new(name, restart, move |supervisor| {
            let spec = spec.clone();
            async move {
                let (child, _) = Actor::spawn_linked(None, Supervisor, spec, supervisor).await?;
                Ok(child.get_cell())
            }
        })
        .with_shutdown(shutdown)
    }

    /// A child that is itself a supervisor whose spec `make` builds afresh at every start, so
    /// that a restart takes up what changed since (a reloaded configuration). `shutdown` bounds
    /// its stop.
    #[must_use]
    pub fn supervisor_from<F>(
        name: impl Into<String>,
        restart: RestartType,
        shutdown: Duration,
        make: F,
    ) -> Self
    where
        F: Fn() -> SupervisorSpec + Send + Sync + 'static,
    {
        Self::actor(name, restart, move || (Supervisor, make())).with_shutdown(shutdown)
    }

    /// Makes the child retry for ever: its restarts do not count toward the supervisor's
    /// intensity, so it never takes its siblings down; the backoff still spaces its attempts up
    /// to the cap. For a listener whose port may be taken for hours while the rest must run.
    #[must_use]
    pub fn retry_forever(mut self) -> Self {
        self.counts_toward_intensity = false;
        self
    }

    /// Sets how long a graceful stop may take before the child is killed.
    #[must_use]
    pub fn with_shutdown(mut self, timeout: Duration) -> Self {
        self.shutdown = timeout;
        self
    }
}
