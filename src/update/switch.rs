//! Carrying out a switch while the old version serves on. The new binary runs on trial with
//! this process's own arguments, listening only on a private loopback port, until it answers
//! `/health` with `pass` or `warn`; it is then asked (a `serve` line on its standard input) to
//! listen on the configured addresses beside this process (`SO_REUSEPORT`). This process then
//! stops its tree (its listener drains) and re-executes the new binary, which binds beside the
//! trial process; the trial process stops once its successor listens. If the new version exits,
//! never answers, reports `fail` or cannot bind, it is stopped (a `stop` line), the previous
//! version is made current again, and this process never stopped serving.
//!
//! At start, [`boot`] finishes what a crash mid-switch left (the trial marker) and runs the
//! version `versions/current` names when this binary is not it, so a service manager starting
//! the installed binary always runs the current version.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::install::{Stage, Versions};
use super::journal::{Journal, note};
use super::{SwitchPlan, TRIAL_ENV};
use crate::api::access::JsonBody;
use crate::root::Root;

/// How a trial ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trial {
    /// The new version answered `/health` with `pass` or `warn`, and was stopped for the
    /// re-execution.
    Healthy {
        /// Milliseconds from its start to its first healthy answer.
        millis: u128,
    },
    /// It did not, and why.
    Failed(String),
}

/// How long a trial process has to stop after its standard input closes.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Beyond its drain time, how long a stopping trial process may take to exit (the runtime's own
/// shutdown bound, and some slack on a busy machine).
const TRIAL_EXIT_MARGIN: Duration = Duration::from_secs(5);

/// The least time a re-executed process has to answer `/health` once its predecessor is gone.
const MIN_HEALTH_WINDOW: Duration = Duration::from_secs(5);

/// The health URLs of process `pid`, from its note (the trial's, or the running server's) once
/// it has written one.
fn health_urls(note: Option<crate::http::ServerNote>, pid: u32) -> Vec<String> {
    note.filter(|note| note.pid == pid)
        .map(|note| note.loopback())
        .unwrap_or_default()
        .into_iter()
        .map(|(scheme, address)| format!("{scheme}://{address}/health"))
        .collect()
}

/// Runs `plan`'s binary on trial with `args` while this version serves on: it listens on a
/// private loopback port until it answers `/health` with `pass` or `warn`, is then asked to
/// listen on the configured addresses too, and, once it does, is handed back still running
/// (this process then stops its own tree and re-executes). It is stopped on failure.
pub async fn trial(
    plan: &SwitchPlan,
    root: &Root,
    args: &[OsString],
) -> (Trial, Option<tokio::process::Child>) {
    let mut child = match tokio::process::Command::new(&plan.binary)
        .args(args)
        .env(TRIAL_ENV, "1")
        .env_remove(super::SUCCESSOR_ENV)
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            let reason = format!("cannot start {}: {e}", plan.binary.display());
            return (Trial::Failed(reason), None);
        }
    };
    let pid = child.id().unwrap_or(0);
    tracing::info!(component = "updater", version = %plan.version, pid, "new version started on trial");
    match watch(&mut child, plan, root, pid).await {
        Ok(millis) => (Trial::Healthy { millis }, Some(child)),
        Err(reason) => {
            end(child).await;
            (Trial::Failed(reason), None)
        }
    }
}

/// Follows the trial process: healthy on its private port, then listening on the public
/// addresses. Milliseconds to healthy, or why it failed.
async fn watch(
    child: &mut tokio::process::Child,
    plan: &SwitchPlan,
    root: &Root,
    pid: u32,
) -> Result<u128, String> {
    use tokio::io::AsyncWriteExt;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(plan.health_timeout_secs);
    // Its own health: loopback, its own (possibly self-signed) certificate, not verified.
    let client = crate::api::access::loopback_client(Duration::from_secs(2))
        .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
    let mut last = "it never bound its listener".to_owned();
    let millis = 'healthy: loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the new version exited ({status}) before answering /health"
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the new version did not answer /health with pass within {} s: {last}",
                plan.health_timeout_secs
            ));
        }
        for url in health_urls(crate::http::listen::trial_server(root), pid) {
            match health(&client, &url).await {
                Ok(Answer::Good) => break 'healthy started.elapsed().as_millis(),
                Ok(Answer::Fail(failing)) => {
                    return Err(format!(
                        "the new version reports fail on /health ({})",
                        failing.join(", ")
                    ));
                }
                Err(e) => last = e,
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    // Healthy: it may now listen beside this version.
    let asked = match child.stdin.as_mut() {
        Some(stdin) => stdin.write_all(b"serve\n").await.and(stdin.flush().await),
        None => Err(std::io::Error::other("no standard input")),
    };
    asked.map_err(|e| format!("cannot ask the new version to serve: {e}"))?;
    let deadline = Instant::now() + BIND_TIME;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the new version exited ({status}) when asked to serve"
            ));
        }
        if let Some(note) = crate::http::listen::trial_server(root).filter(|n| n.pid == pid) {
            if let Some(error) = note.bind_error {
                return Err(format!("the new version cannot bind: {error}"));
            }
            if note.public {
                return Ok(millis);
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the new version did not listen on the configured addresses within {} s",
                BIND_TIME.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How long a healthy trial process has to bind the configured addresses.
const BIND_TIME: Duration = Duration::from_secs(10);

/// Stops a trial process: `stop` on its standard input, killed after [`STOP_GRACE`].
pub async fn end(mut child: tokio::process::Child) {
    use tokio::io::AsyncWriteExt;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"stop\n").await;
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            component = "updater",
            "the trial process did not stop in time; killing it"
        );
        let _ = child.kill().await;
    }
}

/// After a trial: on success re-executes the new version (only returns when that fails); on
/// failure restores the previous version and journals why.
pub fn conclude(plan: &SwitchPlan, root: &Root, journal: Option<&Journal>, outcome: &Trial) {
    let versions = Versions::new(root.path());
    let record = |event: &str, detail: &str| {
        note(
            journal,
            event,
            Some(&plan.channel),
            Some(&plan.version),
            detail,
        );
    };
    match outcome {
        Trial::Healthy { millis } => {
            record(
                "healthy",
                &format!(
                    "the new version answered /health {millis} ms after it started, and listens beside this one; re-executing as {}",
                    plan.binary.display()
                ),
            );
            // Until the re-executed process confirms, a start finds the switch unfinished.
            if let Some(mut marker) = versions.interrupted_trial() {
                marker.stage = Stage::Handover;
                if let Err(e) = versions.begin_trial(&marker) {
                    tracing::warn!(component = "updater", error = %e, "cannot mark the handover");
                }
            }
        }
        Trial::Failed(reason) => roll_back(
            &versions,
            journal,
            plan.previous.as_deref(),
            (Some(&plan.channel), &plan.version),
            Some(reason),
            &format!("{reason}; the previous version is current again and serving"),
        ),
    }
}

/// Whether this process was re-executed by an old version after a passed trial.
#[must_use]
pub fn is_successor() -> bool {
    std::env::var_os(super::SUCCESSOR_ENV).is_some()
}

/// The switch this process completes: in a re-executed process, the handover marker.
#[must_use]
pub fn pending_takeover(root: &Root) -> Option<super::install::TrialMarker> {
    if !is_successor() {
        return None;
    }
    Versions::new(root.path())
        .interrupted_trial()
        .filter(|m| m.stage == Stage::Handover)
}

/// In a re-executed process: waits until the trial process it took over from has stopped
/// (within `drain`, the time a stopping server has for its requests) and then until this
/// process listens on the configured addresses and answers `/health` with `pass` or `warn`,
/// within `timeout`. Then the switch is complete (journaled
/// `switched`, marker removed); otherwise it is rolled back and the executable to go back to
/// is returned.
///
/// # Errors
/// The executable to go back to (`None`: unknown, exit for the service manager).
pub async fn confirm_takeover(
    root: &Root,
    marker: super::install::TrialMarker,
    drain: Duration,
    timeout: Duration,
) -> Result<(), Option<PathBuf>> {
    let me = std::process::id();
    let started = Instant::now();
    let mut last = "it never listened".to_owned();
    let client = crate::api::access::loopback_client(Duration::from_secs(2)).ok();
    let versions = Versions::new(root.path());
    let journal = Journal::open_in(root).ok();
    // Until the trial process has gone, a connection to a shared listener may reach it instead
    // of this process, and its answer says nothing about this one. It stops once this process
    // listens, after draining its requests (`drain`, then the runtime's own shutdown bound).
    let gone = || PREDECESSOR_GONE.load(std::sync::atomic::Ordering::SeqCst);
    while !gone() {
        if started.elapsed() > timeout + drain + TRIAL_EXIT_MARGIN {
            "the trial process it took over from never stopped".clone_into(&mut last);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The health gate runs within `timeout` of the start, with a few seconds at least once the
    // trial process has gone.
    let deadline = (started + timeout).max(Instant::now() + MIN_HEALTH_WINDOW);
    while Instant::now() < deadline && gone() {
        let urls = health_urls(crate::http::running_server(root).filter(|n| n.public), me);
        if let Some(client) = &client {
            for url in urls {
                match health(client, &url).await {
                    Ok(Answer::Good) => {
                        versions.end_trial();
                        note(
                            journal.as_ref(),
                            "switched",
                            None,
                            Some(&marker.version),
                            &format!(
                                "{} took over the listeners and answers /health ({} ms after it started)",
                                marker.version,
                                started.elapsed().as_millis()
                            ),
                        );
                        return Ok(());
                    }
                    Ok(Answer::Fail(failing)) => {
                        last = format!("{url} reports fail ({})", failing.join(", "));
                    }
                    Err(e) => last = e,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let reason = format!(
        "after the re-execution, {} did not listen and answer /health within {} s: {last}",
        marker.version,
        timeout.as_secs()
    );
    // The previous version binds again where the trial process may still listen: it must be
    // gone first (and reaped, which the re-execution would otherwise leave undone).
    stop_predecessor();
    let asked = Instant::now();
    while !gone() && asked.elapsed() < drain + TRIAL_EXIT_MARGIN {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    roll_back(
        &versions,
        journal.as_ref(),
        marker.previous.as_deref(),
        (None, &marker.version),
        Some(&reason),
        &format!("{reason}; going back to the previous version"),
    );
    Err(marker.previous_binary)
}

/// A stop signal came while the old version drained after a passed trial: the trial process is
/// stopped, and the new version (current, and healthy) runs at the next start.
pub async fn stopped_during_handover(plan: &SwitchPlan, root: &Root, trial: tokio::process::Child) {
    end(trial).await;
    Versions::new(root.path()).end_trial();
    let detail = format!(
        "the server was stopped during the handover; {} passed its trial and runs at the next start",
        plan.version
    );
    note(
        Journal::open_in(root).ok().as_ref(),
        "stopped",
        Some(&plan.channel),
        Some(&plan.version),
        &detail,
    );
}

/// A `/health` answer that decides: pass or warn, or fail with the failing checks.
enum Answer {
    Good,
    Fail(Vec<String>),
}

/// Asks `url`; `Err` when it does not answer, or answers neither healthy nor failing.
async fn health(client: &reqwest::Client, url: &str) -> Result<Answer, String> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let code = response.status();
    let body = response.json_body().await;
    match body.get("status").and_then(|s| s.as_str()) {
        Some("pass" | "warn") if code.is_success() => Ok(Answer::Good),
        Some("fail") => Ok(Answer::Fail(
            body.get("checks")
                .and_then(|c| c.as_object())
                .into_iter()
                .flatten()
                .filter(|(_, v)| v[0]["status"] == "fail")
                .map(|(k, _)| k.clone())
                .collect(),
        )),
        other => Err(format!("{url} answered {code} {}", other.unwrap_or(""))),
    }
}

/// After the tree stopped for a signal: a trial that was under way is ended as a rollback (a
/// passed one that was being handed over is kept: it runs at the next start). The process on
/// trial leaves that to the process that started it.
pub fn after_stop(root: &Root) {
    let versions = Versions::new(root.path());
    if let Some(marker) = versions.interrupted_trial()
        && marker.stage == Stage::Trial
        && !super::on_trial()
    {
        recover(
            root,
            &versions,
            &marker,
            "the server was stopped during the trial",
        );
    }
}

/// Restores the version before `marker`'s switch and journals why.
fn recover(root: &Root, versions: &Versions, marker: &super::install::TrialMarker, why: &str) {
    let detail = format!(
        "the switch to {} started at {} did not finish ({why}); the previous version is current again",
        marker.version, marker.started
    );
    roll_back(
        versions,
        Journal::open_in(root).ok().as_ref(),
        marker.previous.as_deref(),
        (None, &marker.version),
        None,
        &detail,
    );
}

/// Every rollback: the `previous` version made current again, the switched-to version (on
/// its channel, when known) remembered as `failed` when it failed, `rolled-back` journaled with
/// `detail`, and the trial marker removed.
fn roll_back(
    versions: &Versions,
    journal: Option<&Journal>,
    previous: Option<&str>,
    (channel, version): (Option<&str>, &str),
    failed: Option<&str>,
    detail: &str,
) {
    if let Err(e) = versions.set_current(previous) {
        tracing::error!(component = "updater", error = %e, "cannot restore the previous version's pointer");
    }
    if let (Some(journal), Some(reason)) = (journal, failed)
        && let Err(e) = journal.fail(version, reason)
    {
        tracing::error!(component = "updater", error = %e, "cannot remember the failed version: it may be tried again");
    }
    note(journal, "rolled-back", channel, Some(version), detail);
    versions.end_trial();
}

/// Replaces this process with `binary` and `args` (Unix), telling it the trial process
/// `successor_of` it takes over from. Returns only when that fails.
#[cfg(unix)]
#[must_use]
pub fn exec(binary: &Path, args: &[OsString], successor_of: Option<u32>) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(binary);
    command.args(args).env_remove(TRIAL_ENV);
    match successor_of {
        Some(pid) => command.env(super::SUCCESSOR_ENV, pid.to_string()),
        None => command.env_remove(super::SUCCESSOR_ENV),
    };
    command.exec()
}

/// Set once the trial process this process took over from has exited (or when there was none).
static PREDECESSOR_GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The trial process this process took over from, if it was re-executed for a switch.
#[cfg(unix)]
fn predecessor() -> Option<rustix::process::Pid> {
    std::env::var(super::SUCCESSOR_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw)
}

/// In a process that took over from a trial process (its child, inherited across the
/// re-execution), waits for that process to exit so that it does not linger as a zombie, and
/// so that [`confirm_takeover`] knows every connection to the shared listeners reaches this
/// process.
pub fn reap_predecessor() {
    use std::sync::atomic::Ordering;
    #[cfg(unix)]
    if let Some(pid) = predecessor() {
        // A handle on that very process while it is unreaped, so that a stop signal sent later
        // cannot reach another process given the same pid after it has gone.
        #[cfg(target_os = "linux")]
        if let Ok(fd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            let _ = PREDECESSOR_FD.set(fd);
        }
        std::thread::spawn(move || {
            wait_for_exit(pid);
            PREDECESSOR_GONE.store(true, Ordering::SeqCst);
        });
        return;
    }
    PREDECESSOR_GONE.store(true, Ordering::SeqCst);
}

/// Waits until process `pid` has exited: reaped when it is this process's child, else (a pid
/// that is not, which a re-execution should never leave) watched until it no longer exists.
#[cfg(unix)]
fn wait_for_exit(pid: rustix::process::Pid) {
    use rustix::io::Errno;
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(_) => return,
            Err(Errno::INTR) => {}
            Err(e) => {
                tracing::warn!(component = "updater", pid = pid.as_raw_nonzero().get(), error = %e, "cannot wait for the trial process; watching for it to end instead");
                while rustix::process::test_kill_process(pid).is_ok() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return;
            }
        }
    }
}

/// Asks the trial process this process took over from to stop, when a takeover failed while
/// it still listened.
fn stop_predecessor() {
    if PREDECESSOR_GONE.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Some(fd) = PREDECESSOR_FD.get() {
        let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::TERM);
        return;
    }
    #[cfg(unix)]
    if let Some(pid) = predecessor() {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// The trial process this process took over from, as a pidfd (Linux).
#[cfg(target_os = "linux")]
static PREDECESSOR_FD: std::sync::OnceLock<std::os::fd::OwnedFd> = std::sync::OnceLock::new();

/// Elsewhere (a Windows service) there is no `exec`: the new version runs as a child with the
/// same arguments and this process exits with its status (the service manager's restart also
/// lands on it, through [`boot`]).
#[cfg(not(unix))]
#[must_use]
pub fn exec(binary: &Path, args: &[OsString], _successor_of: Option<u32>) -> std::io::Error {
    match std::process::Command::new(binary)
        .args(args)
        .env_remove(TRIAL_ENV)
        .env_remove(super::SUCCESSOR_ENV)
        .status()
    {
        Ok(status) => std::process::exit(status.code().unwrap_or(1)),
        Err(e) => e,
    }
}

/// At start (not on trial): restores the previous version when a switch was cut short, and
/// returns the binary to run instead of this one when `versions/current` names another.
#[must_use]
pub fn boot(root: &Root) -> Option<PathBuf> {
    let versions = Versions::new(root.path());
    if let Some(marker) = versions.interrupted_trial()
        && !(is_successor() && marker.stage == Stage::Handover)
    {
        recover(
            root,
            &versions,
            &marker,
            "the server stopped during the switch, or the new version did not start after it",
        );
    }
    let current = versions.current()?;
    let target = versions.binary(&current);
    let me = std::env::current_exe().ok()?;
    let same = match (std::fs::canonicalize(&me), std::fs::canonicalize(&target)) {
        (Ok(a), Ok(b)) => a == b,
        _ => true,
    };
    (!same).then_some(target)
}
