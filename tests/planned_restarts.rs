//! Planned restarts through the real runtime: cron schedules firing, catch-up after an outage,
//! and last-run marks in the root's SQLite state.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::time::{Duration, SystemTime};

use actors::{ComponentState, HealthRegistry, RootOutcome};
use chrono::Utc;
use poziserver::config::Config;
use poziserver::root::Root;
use schedules::MarkStore;

async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..600 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn last_start(registry: &HealthRegistry) -> Option<SystemTime> {
    registry
        .get("scheduler")
        .filter(|h| h.state == ComponentState::Running)
        .and_then(|h| h.last_start)
}

/// Runs the server on `config` until `body` returns, then shuts it down and checks it stopped.
async fn with_server<F: Future<Output = ()>>(
    config: &str,
    root: &Root,
    body: impl FnOnce(HealthRegistry) -> F,
) {
    let mut config = Config::parse(config).unwrap();
    config.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let registry = HealthRegistry::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let (config, root, registry) = (config.clone(), root.clone(), registry.clone());
        tokio::spawn(async move {
            let handles = poziserver::runtime::Handles {
                registry,
                ..Default::default()
            };
            poziserver::runtime::run(&config, &root, handles, async {
                let _ = stopped.await;
            })
            .await
        })
    };
    body(registry).await;
    stop.send(()).unwrap();
    assert_eq!(server.await.unwrap().unwrap(), RootOutcome::Stopped);
}

fn temp_root() -> (tempfile::TempDir, Root) {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path()).unwrap();
    root.lay_out().unwrap();
    (dir, root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_is_restarted_on_its_schedule() {
    let (_dir, root) = temp_root();
    let config = r#"{"restarts": [{"component": "scheduler", "schedule": "* * * * * *", "time_zone": "Australia/Melbourne"}]}"#;
    with_server(config, &root, |registry| async move {
        eventually("scheduler running", || last_start(&registry).is_some()).await;
        // Every second: two restarts within a few seconds, each leaving it running.
        eventually("two planned restarts", || {
            registry
                .get("scheduler")
                .is_some_and(|h| h.planned_restarts >= 2)
        })
        .await;
        eventually("running again", || last_start(&registry).is_some()).await;
        let health = registry.get("scheduler").unwrap();
        // Planned restarts are not failures.
        assert_eq!(health.total_restarts, 0);
        assert!(health.last_error.is_none());
    })
    .await;
    let marks = MarkStore::open(&root.state_dir().join("schedules.sqlite")).unwrap();
    let mark = marks
        .last_run("restart:scheduler@* * * * * *")
        .unwrap()
        .unwrap();
    assert!(Utc::now() - mark < chrono::Duration::seconds(10));
}

async fn after_outage(catch_up: &str) -> (u64, chrono::DateTime<Utc>) {
    let (_dir, root) = temp_root();
    let name = "restart:scheduler@0 3 * * *";
    let before = Utc::now() - chrono::Duration::days(3);
    MarkStore::open(&root.state_dir().join("schedules.sqlite"))
        .unwrap()
        .record(name, "0 3 * * *", before)
        .unwrap();
    let config = format!(
        r#"{{"restarts": [{{"component": "scheduler", "schedule": "0 3 * * *", "time_zone": "UTC", "catch_up": "{catch_up}"}}]}}"#
    );
    let planned = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = planned.clone();
    let expect_one = catch_up == "run_once";
    with_server(&config, &root, |registry| async move {
        let count = || registry.get("scheduler").map_or(0, |h| h.planned_restarts);
        if expect_one {
            eventually("the catch-up restart", || count() == 1).await;
        } else {
            eventually("scheduler running", || last_start(&registry).is_some()).await;
        }
        // Give a wrongly repeated or wrongly run catch-up time to show.
        tokio::time::sleep(Duration::from_millis(500)).await;
        seen.store(count(), std::sync::atomic::Ordering::SeqCst);
    })
    .await;
    let marks = MarkStore::open(&root.state_dir().join("schedules.sqlite")).unwrap();
    let mark = marks.last_run(name).unwrap().unwrap();
    (planned.load(std::sync::atomic::Ordering::SeqCst), mark)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_catches_up_a_run_missed_while_down() {
    let (planned, mark) = after_outage("run_once").await;
    assert_eq!(
        planned, 1,
        "the missed restart must run exactly once at start-up"
    );
    assert!(
        Utc::now() - mark < chrono::Duration::seconds(30),
        "mark not advanced: {mark}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_ignores_a_run_missed_while_down_but_moves_the_mark() {
    let (planned, mark) = after_outage("skip").await;
    assert_eq!(planned, 0, "a skipped catch-up ran anyway");
    assert!(
        Utc::now() - mark < chrono::Duration::seconds(30),
        "mark not advanced: {mark}"
    );
}
