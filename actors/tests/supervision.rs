//! The OTP behaviour of the supervisor, on real ractor actors under tokio's paused clock.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail loudly on unexpected errors"
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actors::{
    Backoff, ChildSpec, ComponentState, HealthRegistry, Intensity, RestartType, RootHandle,
    RootOutcome, Strategy, Supervisor, SupervisorMsg, SupervisorSpec,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, call};

/// What test children did, shared with the test.
#[derive(Default)]
struct Log {
    starts: Mutex<HashMap<String, u32>>,
    events: Mutex<Vec<String>>,
}

impl Log {
    fn starts(&self, name: &str) -> u32 {
        self.starts.lock().unwrap().get(name).copied().unwrap_or(0)
    }
    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
    fn push(&self, event: String) {
        self.events.lock().unwrap().push(event);
    }
}

/// How a test child misbehaves.
#[derive(Clone, Copy, Default)]
struct Faults {
    /// Panic in `pre_start` on the first N starts.
    panic_on_start: u32,
    /// Fail (return Err) in `pre_start` on every start.
    always_fail_start: bool,
    /// Fail in `pre_start` on every start after the first N.
    fail_start_after: Option<u32>,
    /// Panic in `post_stop`.
    panic_on_stop: bool,
}

struct Worker {
    name: String,
    log: Arc<Log>,
    faults: Faults,
}

#[derive(Debug)]
enum WorkerMsg {
    ExitNormally,
    Fail,
    Panic,
    Block,
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<WorkerMsg>, (): ()) -> Result<(), ActorProcessingErr> {
        let n = {
            let mut starts = self.log.starts.lock().unwrap();
            let n = starts.entry(self.name.clone()).or_default();
            *n += 1;
            *n
        };
        if n <= self.faults.panic_on_start {
            panic!("{} panicked while starting", self.name);
        }
        if self.faults.always_fail_start || self.faults.fail_start_after.is_some_and(|k| n > k) {
            return Err(format!("{} cannot start", self.name).into());
        }
        self.log.push(format!("start:{}", self.name));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        message: WorkerMsg,
        (): &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkerMsg::ExitNormally => myself.stop(Some("done".into())),
            WorkerMsg::Fail => return Err(format!("{} failed", self.name).into()),
            WorkerMsg::Panic => panic!("{} panicked", self.name),
            WorkerMsg::Block => tokio::time::sleep(Duration::from_secs(3600)).await,
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<WorkerMsg>,
        (): &mut (),
    ) -> Result<(), ActorProcessingErr> {
        self.log.push(format!("stop:{}", self.name));
        if self.faults.panic_on_stop {
            panic!("{} panicked while stopping", self.name);
        }
        Ok(())
    }
}

fn worker(name: &str, restart: RestartType, log: &Arc<Log>, faults: Faults) -> ChildSpec {
    let (name, log) = (name.to_owned(), log.clone());
    ChildSpec::actor(name.clone(), restart, move || {
        let worker = Worker {
            name: name.clone(),
            log: log.clone(),
            faults,
        };
        (worker, ())
    })
}

fn spec(name: &str, registry: &HealthRegistry) -> SupervisorSpec {
    SupervisorSpec::new(name, registry.clone())
        .backoff(Backoff::none())
        .intensity(Intensity {
            max_restarts: 100,
            period: Duration::from_secs(10),
        })
}

async fn send(root: &RootHandle, child: &str, message: WorkerMsg) {
    let cell = call!(root.actor, |reply| SupervisorMsg::Child {
        name: child.to_owned(),
        reply
    })
    .unwrap()
    .unwrap_or_else(|| panic!("{child} is not running"));
    ActorRef::<WorkerMsg>::from(cell)
        .send_message(message)
        .unwrap();
}

/// Polls `condition` while letting the (paused) clock run, for up to a minute of virtual time.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..60_000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[derive(Clone, Copy, Debug)]
enum Exit {
    Normal,
    Error,
    Panic,
}

async fn run_case(strategy: Strategy, restart: RestartType, exit: Exit) {
    let case = format!("{strategy:?} {restart:?} {exit:?}");
    let log = Arc::new(Log::default());
    let registry = HealthRegistry::new();
    let none = Faults::default();
    let root = Supervisor::start_root(
        spec("root", &registry)
            .strategy(strategy)
            .child(worker("a", RestartType::Permanent, &log, none))
            .child(worker("b", restart, &log, none))
            .child(worker("c", RestartType::Permanent, &log, none)),
    )
    .await
    .unwrap();
    eventually("all started", || log.starts("c") == 1).await;

    let abnormal = !matches!(exit, Exit::Normal);
    let message = match exit {
        Exit::Normal => WorkerMsg::ExitNormally,
        Exit::Error => WorkerMsg::Fail,
        Exit::Panic => WorkerMsg::Panic,
    };
    send(&root, "b", message).await;

    let expected = if restart.restarts_after(abnormal) {
        eventually(&case, || log.starts("b") == 2).await;
        match strategy {
            Strategy::OneForOne => [1, 2, 1],
            Strategy::OneForAll => [2, 2, 2],
            Strategy::RestForOne => [1, 2, 2],
        }
    } else {
        [1, 1, 1]
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let starts = [log.starts("a"), log.starts("b"), log.starts("c")];
    assert_eq!(starts, expected, "{case}: starts of a, b, c");

    let b = registry.get("b").unwrap();
    let want_state = match (restart.restarts_after(abnormal), abnormal) {
        (true, _) => ComponentState::Running,
        (false, true) => ComponentState::Failed,
        (false, false) => ComponentState::Stopped,
    };
    assert_eq!(b.state, want_state, "{case}: state of b");
    assert_eq!(b.last_error.is_some(), abnormal, "{case}: last error of b");
    assert_eq!(
        b.total_restarts,
        u64::from(restart.restarts_after(abnormal)),
        "{case}: restarts of b"
    );
    if let Some(error) = &b.last_error {
        let wanted = if matches!(exit, Exit::Panic) {
            "b panicked"
        } else {
            "b failed"
        };
        assert!(error.message.contains(wanted), "{case}: {}", error.message);
    }
    if starts == [2, 2, 2] {
        // one_for_all stops the siblings in reverse start order before starting all again.
        let events = log.events();
        let stops: Vec<_> = events
            .iter()
            .filter(|e| e.starts_with("stop:") && *e != "stop:b")
            .collect();
        assert_eq!(stops[..2], ["stop:c", "stop:a"], "{case}: {events:?}");
    }
    assert_eq!(root.shutdown().await, RootOutcome::Stopped, "{case}");
}

#[tokio::test(start_paused = true)]
async fn otp_matrix_of_strategies_restart_types_and_exits() {
    for strategy in [
        Strategy::OneForOne,
        Strategy::OneForAll,
        Strategy::RestForOne,
    ] {
        for restart in [
            RestartType::Permanent,
            RestartType::Transient,
            RestartType::Temporary,
        ] {
            for exit in [Exit::Normal, Exit::Error, Exit::Panic] {
                run_case(strategy, restart, exit).await;
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_children_in_reverse_start_order() {
    let log = Arc::new(Log::default());
    let registry = HealthRegistry::new();
    let none = Faults::default();
    let mut spec = spec("root", &registry);
    for name in ["a", "b", "c", "d"] {
        spec = spec.child(worker(name, RestartType::Permanent, &log, none));
    }
    let root = Supervisor::start_root(spec).await.unwrap();
    eventually("all started", || log.starts("d") == 1).await;
    assert_eq!(log.events(), ["start:a", "start:b", "start:c", "start:d"]);
    assert_eq!(root.shutdown().await, RootOutcome::Stopped);
    assert_eq!(log.events()[4..], ["stop:d", "stop:c", "stop:b", "stop:a"]);
    for name in ["a", "b", "c", "d"] {
        assert_eq!(registry.get(name).unwrap().state, ComponentState::Stopped);
    }
}

#[tokio::test(start_paused = true)]
async fn a_child_that_ignores_stop_is_killed_after_its_timeout() {
    let log = Arc::new(Log::default());
    let registry = HealthRegistry::new();
    let none = Faults::default();
    let root = Supervisor::start_root(
        spec("root", &registry)
            .child(worker("a", RestartType::Permanent, &log, none))
            .child(
                worker("stubborn", RestartType::Permanent, &log, none)
                    .with_shutdown(Duration::from_millis(500)),
            ),
    )
    .await
    .unwrap();
    eventually("started", || log.starts("stubborn") == 1).await;
    send(&root, "stubborn", WorkerMsg::Block).await;
    tokio::time::sleep(Duration::from_millis(10)).await;

    let started = tokio::time::Instant::now();
    assert_eq!(root.shutdown().await, RootOutcome::Stopped);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(500), "stopped after {took:?}");
    assert!(
        took < Duration::from_secs(3600),
        "waited for the blocked handler: {took:?}"
    );
    // Killed: its post_stop never ran; the others still stopped gracefully, after it.
    assert_eq!(log.events()[2..], ["stop:a"]);
    assert_eq!(
        registry.get("stubborn").unwrap().state,
        ComponentState::Stopped
    );
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_pre_start_is_restarted_like_an_error() {
    let log = Arc::new(Log::default());
    let registry = HealthRegistry::new();
    let faults = Faults {
        panic_on_start: 2,
        ..Faults::default()
    };
    let root = Supervisor::start_root(spec("root", &registry).child(worker(
        "flaky",
        RestartType::Transient,
        &log,
        faults,
    )))
    .await
    .unwrap();
    eventually("third start runs", || {
        registry
            .get("flaky")
            .is_some_and(|h| h.state == ComponentState::Running)
    })
    .await;
    let health = registry.get("flaky").unwrap();
    assert_eq!(log.starts("flaky"), 3);
    assert_eq!(health.total_restarts, 2);
    let error = health.last_error.unwrap().message;
    assert!(error.contains("flaky panicked while starting"), "{error}");
    root.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_post_stop_is_an_abnormal_exit() {
    let log = Arc::new(Log::default());
    let registry = HealthRegistry::new();
    let faults = Faults {
        panic_on_stop: true,
        ..Faults::default()
    };
    let root = Supervisor::start_root(spec("root", &registry).child(worker(
        "w",
        RestartType::Transient,
        &log,
        faults,
    )))
    .await
    .unwrap();
    eventually("started", || log.starts("w") == 1).await;
    // A normal exit would not restart a transient child; the panic while stopping does.
    send(&root, "w", WorkerMsg::ExitNormally).await;
    eventually("restarted", || log.starts("w") == 2).await;
    let health = registry.get("w").unwrap();
    assert!(
        health
            .last_error
            .unwrap()
            .message
            .contains("panicked while stopping")
    );
    root.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_exceeds_intensity_and_the_root_fails() {
    let log = Arc::new(Log::default());
    let registry = HealthRegistry::new();
    let none = Faults::default();
    let broken = Faults {
        always_fail_start: true,
        ..Faults::default()
    };
    let spec = spec("root", &registry)
        .intensity(Intensity {
            max_restarts: 3,
            period: Duration::from_secs(60),
        })
        .backoff(Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.0,
        })
        .child(worker("a", RestartType::Permanent, &log, none))
        .child(worker("b", RestartType::Permanent, &log, none))
        .child(worker("loop", RestartType::Permanent, &log, broken))
        .child(worker("d", RestartType::Permanent, &log, none));
    let started = tokio::time::Instant::now();
    let root = Supervisor::start_root(spec).await.unwrap();
    let RootOutcome::Failed(reason) = root.wait().await else {
        panic!("root should fail");
    };
    assert!(reason.contains("more than 3 restarts"), "{reason}");
    assert!(reason.contains("loop cannot start"), "{reason}");
    // One immediate restart, then 100 ms and 200 ms of backoff, before the fourth failure.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(log.starts("loop"), 4);
    assert_eq!(
        log.events(),
        [
            "start:a", "start:b", "start:d", "stop:d", "stop:b", "stop:a"
        ]
    );
    assert_eq!(registry.get("loop").unwrap().state, ComponentState::Failed);
    assert_eq!(registry.get("a").unwrap().state, ComponentState::Stopped);
}

#[tokio::test(start_paused = true)]
async fn backoff_delays_later_restarts_and_shows_in_health() {
    let log = Arc::new(Log::default());
    let registry = HealthRegistry::new();
    let none = Faults::default();
    let root = Supervisor::start_root(
        spec("root", &registry)
            .backoff(Backoff {
                initial: Duration::from_secs(2),
                max: Duration::from_secs(10),
                jitter: 0.0,
            })
            .child(worker("w", RestartType::Permanent, &log, none)),
    )
    .await
    .unwrap();
    eventually("started", || log.starts("w") == 1).await;
    send(&root, "w", WorkerMsg::Fail).await;
    eventually("first restart is immediate", || log.starts("w") == 2).await;
    send(&root, "w", WorkerMsg::Fail).await;
    eventually("backing off", || {
        registry
            .get("w")
            .is_some_and(|h| h.state == ComponentState::BackingOff)
    })
    .await;
    let waiting = tokio::time::Instant::now();
    eventually("second restart", || log.starts("w") == 3).await;
    let waited = waiting.elapsed();
    assert!(waited >= Duration::from_millis(1990), "{waited:?}");
    assert!(waited < Duration::from_millis(2100), "{waited:?}");
    let health = registry.get("w").unwrap();
    assert_eq!(health.total_restarts, 2);
    assert_eq!(health.restarts_in_window(std::time::SystemTime::now()), 2);
    root.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn failure_escalates_through_two_levels() {
    let log = Arc::new(Log::default());
    let registry = HealthRegistry::new();
    let none = Faults::default();
    let broken = Faults {
        always_fail_start: true,
        ..Faults::default()
    };
    let window = Duration::from_secs(60);
    let middle = spec("middle", &registry)
        .intensity(Intensity {
            max_restarts: 2,
            period: window,
        })
        .child(worker("m1", RestartType::Permanent, &log, none))
        .child(worker("crasher", RestartType::Permanent, &log, broken));
    let root = Supervisor::start_root(
        spec("root", &registry)
            .intensity(Intensity {
                max_restarts: 1,
                period: window,
            })
            .child(worker("top", RestartType::Permanent, &log, none))
            .child(ChildSpec::supervisor(RestartType::Permanent, middle)),
    )
    .await
    .unwrap();
    let RootOutcome::Failed(reason) = root.wait().await else {
        panic!("root should fail");
    };
    // The middle supervisor gave up twice (3 failed starts each); the root restarted it once.
    assert_eq!(log.starts("crasher"), 6);
    assert_eq!(log.starts("m1"), 2);
    assert!(reason.contains("supervisor root gave up"), "{reason}");
    assert!(reason.contains("supervisor middle gave up"), "{reason}");
    let middle = registry.get("middle").unwrap();
    assert_eq!(middle.state, ComponentState::Failed);
    assert_eq!(middle.total_restarts, 1);
    assert_eq!(
        registry.get("middle/crasher").unwrap().state,
        ComponentState::Failed
    );
    assert_eq!(registry.get("top").unwrap().state, ComponentState::Stopped);
    assert_eq!(log.events().last().unwrap(), "stop:top");
}

#[tokio::test(start_paused = true)]
async fn planned_restart_replaces_a_child_without_counting_against_intensity() {
    let log = Arc::new(Log::default());
    let registry = HealthRegistry::new();
    let none = Faults::default();
    let root = Supervisor::start_root(spec("root", &registry).child(worker(
        "http",
        RestartType::Permanent,
        &log,
        none,
    )))
    .await
    .unwrap();
    eventually("started", || log.starts("http") == 1).await;
    for n in 2..=4 {
        call!(root.actor, |reply| SupervisorMsg::RestartChild {
            name: "http".into(),
            reply
        })
        .unwrap()
        .unwrap();
        assert_eq!(log.starts("http"), n);
    }
    let unknown = call!(root.actor, |reply| SupervisorMsg::RestartChild {
        name: "nope".into(),
        reply
    })
    .unwrap();
    assert!(
        unknown
            .unwrap_err()
            .to_string()
            .contains("no child named \"nope\"")
    );
    let health = registry.get("http").unwrap();
    assert_eq!(health.total_restarts, 0);
    assert_eq!(health.planned_restarts, 3);
    assert_eq!(health.state, ComponentState::Running);
    assert_eq!(root.shutdown().await, RootOutcome::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_retry_forever_child_never_takes_the_supervisor_down_and_backs_off_to_the_cap() {
    let log = Arc::new(Log::default());
    let registry = HealthRegistry::new();
    let none = Faults::default();
    let broken = Faults {
        always_fail_start: true,
        ..Faults::default()
    };
    let root = Supervisor::start_root(
        spec("root", &registry)
            .intensity(Intensity {
                max_restarts: 2,
                period: Duration::from_secs(10),
            })
            .backoff(Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(5),
                jitter: 0.0,
            })
            .child(worker("other", RestartType::Permanent, &log, none))
            .child(worker("listener", RestartType::Permanent, &log, broken).retry_forever()),
    )
    .await
    .unwrap();
    // 0 + 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 3.2 + 5 + 5 ... seconds: 20 attempts take about 70 s.
    tokio::time::sleep(Duration::from_secs(70)).await;
    let attempts = log.starts("listener");
    assert!((18..=22).contains(&attempts), "{attempts} attempts");
    let health = registry.get("listener").unwrap();
    assert_eq!(health.state, ComponentState::BackingOff);
    assert!(
        health
            .last_error
            .unwrap()
            .message
            .contains("listener cannot start")
    );
    assert_eq!(
        registry.get("other").unwrap().state,
        ComponentState::Running
    );
    assert_eq!(root.shutdown().await, RootOutcome::Stopped);
}

/// A child that ran for longer than the window and then cannot start again (after a planned
/// restart, say, with a broken certificate in place) backs off as any failing child does, rather
/// than being retried at once forever.
#[tokio::test]
async fn a_start_failing_after_a_long_run_backs_off() {
    let log = Arc::new(Log::default());
    let registry = HealthRegistry::new();
    let broken_later = Faults {
        fail_start_after: Some(1),
        ..Faults::default()
    };
    let root = Supervisor::start_root(
        spec("root", &registry)
            .intensity(Intensity {
                max_restarts: 2,
                period: Duration::from_millis(200),
            })
            .backoff(Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_secs(1),
                jitter: 0.0,
            })
            .child(worker("http", RestartType::Permanent, &log, broken_later).retry_forever()),
    )
    .await
    .unwrap();
    eventually("started", || log.starts("http") == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarted = call!(root.actor, |reply| SupervisorMsg::RestartChild {
        name: "http".into(),
        reply
    })
    .unwrap();
    assert!(restarted.is_err(), "the second start should fail");
    // 0 + 20 + 40 + 80 + 160 + 320 ms: about 6 attempts in a second (fewer on a slow machine),
    // never thousands.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let attempts = log.starts("http");
    assert!(
        (3..=10).contains(&attempts),
        "{attempts} attempts in a second"
    );
    assert_eq!(root.shutdown().await, RootOutcome::Stopped);
}
