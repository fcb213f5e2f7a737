//! The health registry: every supervised component's state, readable as a lock-free snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

/// Where a component is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentState {
    /// Being built (its `pre_start` is running).
    Starting,
    /// Started and handling messages.
    Running,
    /// Exited and waiting for its backoff delay before the next start.
    BackingOff,
    /// Being stopped by its supervisor.
    Stopping,
    /// Stopped and not due to start again (normal exit, shutdown, or a temporary child).
    Stopped,
    /// Exited abnormally and will not be restarted by its supervisor.
    Failed,
}

impl ComponentState {
    /// The lower-case name used in logs and health documents.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::BackingOff => "backing_off",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }
}

/// The last abnormal exit of a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    /// What went wrong, as the child reported it (error text or panic message).
    pub message: String,
    /// When it happened.
    pub at: SystemTime,
}

/// One component's entry in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentHealth {
    /// Current state.
    pub state: ComponentState,
    /// Times of the restarts still inside the supervisor's intensity window when last updated.
    pub recent_restarts: Vec<SystemTime>,
    /// The supervisor's intensity window, to age `recent_restarts`.
    pub window: Duration,
    /// Restarts after failures since the server started.
    pub total_restarts: u64,
    /// Planned restarts (asked for, not failures) since the server started.
    pub planned_restarts: u64,
    /// The last abnormal exit, if any.
    pub last_error: Option<LastError>,
    /// When the component last started successfully.
    pub last_start: Option<SystemTime>,
}

impl ComponentHealth {
    fn new(window: Duration) -> Self {
        Self {
            state: ComponentState::Starting,
            recent_restarts: Vec::new(),
            window,
            total_restarts: 0,
            planned_restarts: 0,
            last_error: None,
            last_start: None,
        }
    }

    /// Restarts within the intensity window ending at `now`.
    #[must_use]
    pub fn restarts_in_window(&self, now: SystemTime) -> usize {
        self.recent_restarts
            .iter()
            .filter(|t| now.duration_since(**t).unwrap_or_default() <= self.window)
            .count()
    }
}

/// Shared map from component name (`http`, `sync/nightly-parcels`) to its health.
///
/// Writers are the supervisors (rarely: on a start, exit or restart); readers take a snapshot
/// with one atomic load, so an HTTP handler never waits on an actor.
#[derive(Debug, Clone, Default)]
pub struct HealthRegistry {
    inner: Arc<ArcSwap<BTreeMap<String, ComponentHealth>>>,
}

impl HealthRegistry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The current state of every component.
    #[must_use]
    pub fn snapshot(&self) -> Arc<BTreeMap<String, ComponentHealth>> {
        self.inner.load_full()
    }

    /// One component's current health.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<ComponentHealth> {
        self.inner.load().get(name).cloned()
    }

    /// Changes one component's entry, creating it first if needed.
    pub(crate) fn update(&self, name: &str, window: Duration, f: impl Fn(&mut ComponentHealth)) {
        self.inner.rcu(|map| {
            let mut map = BTreeMap::clone(map);
            let entry = map
                .entry(name.to_owned())
                .or_insert_with(|| ComponentHealth::new(window));
            f(entry);
            map
        });
    }

    /// Records a failure a component handled itself (a sync run that failed, say) as its last
    /// error, without changing its state.
    pub fn report_error(&self, name: &str, message: impl Into<String>) {
        let message = message.into();
        self.inner.rcu(|map| {
            let mut map = BTreeMap::clone(map);
            if let Some(entry) = map.get_mut(name) {
                entry.last_error = Some(LastError {
                    message: message.clone(),
                    at: SystemTime::now(),
                });
            }
            map
        });
    }

    pub(crate) fn set_state(&self, name: &str, window: Duration, state: ComponentState) {
        self.update(name, window, |h| h.state = state);
    }
}
