//! Runs in a worker process: the server starts `poziserver sync worker` for each run, hands it
//! the job on standard input, and reads its progress and result from standard output. A
//! timeout, a cancel or a shutdown kills the process, at any moment, without harm: the
//! published dataset only ever changes by a rename. A panic or a crash in a reader ends that
//! run only. The worker exits when its standard input closes, so it never outlives a server
//! that was killed.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::config::sync::SyncJob;
use crate::sync::{Progress, Report, Validators};

/// What the server hands a worker.
#[derive(Debug, Serialize, Deserialize)]
pub struct Input {
    /// The job, as the server's config has it.
    pub job: SyncJob,
    /// The last download's validators.
    pub validators: Option<Validators>,
}

/// One line a worker writes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    /// Counters so far.
    Progress {
        /// Rows read.
        rows: u64,
        /// Bytes read or downloaded.
        bytes: u64,
    },
    /// The run published a version or found the source unchanged.
    Done(Report),
    /// The run failed.
    Failed(String),
}

/// How a run in a worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It finished.
    Done(Report),
    /// It failed, and why.
    Failed(String),
    /// It ran out of time and was killed.
    TimedOut,
    /// It was cancelled (shutdown) and killed.
    Cancelled,
}

fn emit(line: &Line) {
    if let Ok(text) = serde_json::to_string(line) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}").and_then(|()| out.flush());
    }
}

/// The `sync worker` command: reads an [`Input`] line, runs the job under `root`, reports.
#[must_use]
pub fn child_main(root: &Path) -> ExitCode {
    let mut first = String::new();
    let stdin = std::io::stdin();
    if stdin.lock().read_line(&mut first).is_err() {
        return ExitCode::from(2);
    }
    let input: Input = match serde_json::from_str(&first) {
        Ok(input) => input,
        Err(e) => {
            emit(&Line::Failed(format!("bad worker input: {e}")));
            return ExitCode::from(2);
        }
    };
    // The server holds our standard input open while it wants the run; its end (the server
    // stopped or was killed) ends the run.
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut rest);
        std::process::exit(3);
    });
    // A failure injected by the tests: `POZI_FAILPOINT=sync-panic:<job>` makes that job's
    // runs panic, as a bug in a reader would.
    if std::env::var("POZI_FAILPOINT").is_ok_and(|f| f == format!("sync-panic:{}", input.job.name))
    {
        panic!("failpoint sync-panic:{}", input.job.name);
    }
    let progress = Arc::new(Progress::default());
    let reporter = progress.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(500));
            emit(&Line::Progress {
                rows: reporter.rows.load(Ordering::Relaxed),
                bytes: reporter.bytes.load(Ordering::Relaxed),
            });
        }
    });
    let paths = crate::sync::JobPaths::new(root, &input.job);
    let _lock = match paths.lock() {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            emit(&Line::Failed(format!(
                "job {} is already running in another process (poziserver sync run?)",
                input.job.name
            )));
            return ExitCode::FAILURE;
        }
        Err(e) => {
            emit(&Line::Failed(e.to_string()));
            return ExitCode::FAILURE;
        }
    };
    match crate::sync::execute::execute(&input.job, root, input.validators.as_ref(), &progress) {
        Ok(report) => {
            emit(&Line::Done(report));
            ExitCode::SUCCESS
        }
        Err(e) => {
            emit(&Line::Failed(e.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// Most of a worker's standard error kept (a panic message), in bytes.
const STDERR_KEPT: u64 = 4096;

/// Runs `input` in a worker process under `root`, calling `on_progress` with its counters,
/// until it ends, `timeout` passes or `cancel` fires.
pub async fn run(
    root: &Path,
    input: &Input,
    timeout: Duration,
    cancel: tokio_util::sync::CancellationToken,
    on_progress: impl Fn(u64, u64),
) -> Outcome {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            return Outcome::Failed(format!("cannot find this program to start a worker: {e}"));
        }
    };
    let spawned = tokio::process::Command::new(exe)
        .args(["sync", "worker", "--root"])
        .arg(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return Outcome::Failed(format!("cannot start a worker process: {e}")),
    };
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Outcome::Failed("the worker's pipes were not opened".to_owned());
    };
    let text = match serde_json::to_string(input) {
        Ok(text) => text,
        Err(e) => return Outcome::Failed(format!("cannot write the worker's input: {e}")),
    };
    if let Err(e) = stdin.write_all(format!("{text}\n").as_bytes()).await {
        return Outcome::Failed(format!("cannot hand the job to the worker: {e}"));
    }
    let errors = tokio::spawn(async move {
        let mut kept = String::new();
        let _ = stderr.take(STDERR_KEPT).read_to_string(&mut kept).await;
        kept
    });
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut result: Option<Outcome> = None;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => match serde_json::from_str::<Line>(&line) {
                    Ok(Line::Progress { rows, bytes }) => on_progress(rows, bytes),
                    Ok(Line::Done(report)) => result = Some(Outcome::Done(report)),
                    Ok(Line::Failed(message)) => result = Some(Outcome::Failed(message)),
                    Err(_) => {}
                },
                _ => break,
            },
            () = &mut deadline => {
                let _ = child.kill().await;
                return Outcome::TimedOut;
            }
            () = cancel.cancelled() => {
                let _ = child.kill().await;
                return Outcome::Cancelled;
            }
        }
    }
    drop(stdin);
    let status = child.wait().await;
    if let Some(result) = result {
        return result;
    }
    let stderr = errors.await.unwrap_or_default();
    // A panic prints `thread '…' panicked at file:line:` and its message on the next line.
    let lines: Vec<&str> = stderr.lines().collect();
    let detail = lines
        .iter()
        .position(|l| l.contains("panicked at"))
        .map_or_else(
            || stderr.trim().to_owned(),
            |at| lines[at..(at + 2).min(lines.len())].join(" "),
        );
    match status {
        Ok(status) => Outcome::Failed(format!(
            "the worker process ended ({status}) without a result: {detail}"
        )),
        Err(e) => Outcome::Failed(format!("the worker process was lost: {e}")),
    }
}
