//! `poziserver sync list | run | history | rollback`: the operator's side of sync jobs.
//! `sync run` asks a running server (over loopback, through `/admin/`) when there is one, and
//! otherwise runs the job in this process; either way it shows a progress bar and ends with a
//! summary line, exiting non-zero when the run fails.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::api::access::JsonBody;
use crate::config::Config;
use crate::config::sync::SyncJob;
use crate::root::Root;
use crate::sync::journal::{Journal, Run};
use crate::sync::{JobPaths, Progress, Report, Status, Trigger};

use crate::cli::{fail, out as say};

/// The config and the root for a sync command.
fn load(root: &Path, config: Option<&Path>) -> Result<(Root, Config), String> {
    let root = Root::new(root).map_err(|e| e.to_string())?;
    let file = config.map_or_else(|| root.config_file(), Path::to_owned);
    let config = Config::load(&file).map_err(|e| e.to_string())?;
    Ok((root, config))
}

fn find<'a>(config: &'a Config, name: &str) -> Result<&'a SyncJob, String> {
    config
        .sync
        .jobs
        .iter()
        .find(|j| j.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = config.sync.jobs.iter().map(|j| j.name.as_str()).collect();
            if names.is_empty() {
                format!("no sync job {name:?}: the config has no sync.jobs")
            } else {
                format!("no sync job {name:?}; the jobs are {}", names.join(", "))
            }
        })
}

fn journal(root: &Root, config: &Config) -> Result<Journal, String> {
    Journal::open(&root.state_dir().join("sync.sqlite"), config.sync.keep_runs)
        .map_err(|e| e.to_string())
}

/// `sync list`.
#[must_use]
pub fn list(root: &Path, config: Option<&Path>) -> ExitCode {
    let (root, config) = match load(root, config) {
        Ok(loaded) => loaded,
        Err(e) => return fail(&e),
    };
    let journal = journal(&root, &config).ok();
    let mut text = format!(
        "{:<24} {:<8} {:<18} {:<10} {:<25} {}\n",
        "JOB", "SOURCE", "SCHEDULE", "LAST", "LAST RUN", "TARGET"
    );
    for job in &config.sync.jobs {
        let last = journal
            .as_ref()
            .and_then(|j| j.runs(&job.name, 1).ok())
            .and_then(|r| r.into_iter().next());
        let schedule = match (&job.schedule, job.enabled) {
            (Some(s), true) => s.clone(),
            (Some(_), false) => "disabled".to_owned(),
            (None, _) => "by hand".to_owned(),
        };
        text.push_str(&format!(
            "{:<24} {:<8} {:<18} {:<10} {:<25} {}\n",
            job.name,
            crate::api::admin::source_kind(&job.source),
            schedule,
            last.as_ref().map_or("-", |r| r.status.as_str()),
            last.as_ref().map_or("-", |r| r.started.as_str()),
            job.target.dataset
        ));
    }
    if config.sync.jobs.is_empty() {
        text = "no sync jobs in the config (sync.jobs)\n".to_owned();
    }
    say(&text)
}

/// `sync history <job>`.
#[must_use]
pub fn history(root: &Path, config: Option<&Path>, name: &str, limit: usize) -> ExitCode {
    let (root, config) = match load(root, config) {
        Ok(loaded) => loaded,
        Err(e) => return fail(&e),
    };
    if let Err(e) = find(&config, name) {
        return fail(&e);
    }
    let runs = match journal(&root, &config)
        .and_then(|j| j.runs(name, limit).map_err(|e| e.to_string()))
    {
        Ok(runs) => runs,
        Err(e) => return fail(&e),
    };
    let mut text = format!(
        "{:>6} {:<10} {:<24} {:<10} {:>10} {:>10} {:>12}  {}\n",
        "RUN", "TRIGGER", "STARTED", "STATUS", "READ", "WRITTEN", "BYTES", "ERROR"
    );
    for r in &runs {
        text.push_str(&format!(
            "{:>6} {:<10} {:<24} {:<10} {:>10} {:>10} {:>12}  {}\n",
            r.id,
            r.trigger,
            r.started,
            r.status,
            r.rows_read,
            r.rows_written,
            r.bytes,
            r.error.as_deref().unwrap_or("")
        ));
    }
    if runs.is_empty() {
        text = format!("job {name} has not run yet\n");
    }
    say(&text)
}

/// `sync rollback <job>`.
#[must_use]
pub fn rollback(root: &Path, config: Option<&Path>, name: &str) -> ExitCode {
    let (root, config) = match load(root, config) {
        Ok(loaded) => loaded,
        Err(e) => return fail(&e),
    };
    let job = match find(&config, name) {
        Ok(job) => job,
        Err(e) => return fail(&e),
    };
    let paths = JobPaths::new(root.path(), job);
    match crate::sync::publish::rollback(&paths) {
        Ok(()) => say(&format!(
            "{name}: the previous version of {} is published again (run rollback again to undo)\n",
            job.target.dataset
        )),
        Err(e) => fail(&format!("{name}: {e}")),
    }
}

fn bar(total: u64) -> ProgressBar {
    let bar = if total > 0 {
        ProgressBar::new(total)
    } else {
        ProgressBar::new_spinner()
    };
    let template = if total > 0 {
        "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta})"
    } else {
        "{spinner} {msg} {bytes} ({bytes_per_sec}) {elapsed}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn summary(
    name: &str,
    id: i64,
    status: &str,
    report: &Report,
    error: Option<&str>,
    took: Duration,
) -> String {
    let mut line = format!(
        "{name}: run {id} {status}: {} rows read, {} written, {} bytes in {:.1} s",
        report.rows_read,
        report.rows_written,
        report.bytes,
        took.as_secs_f64()
    );
    if let Some(e) = error {
        line.push_str(&format!("; {e}"));
    }
    line.push('\n');
    line
}

/// `sync run <job>`.
#[must_use]
pub fn run(root: &Path, config: Option<&Path>, name: &str) -> ExitCode {
    let (root, config) = match load(root, config) {
        Ok(loaded) => loaded,
        Err(e) => return fail(&e),
    };
    let job = match find(&config, name) {
        Ok(job) => job.clone(),
        Err(e) => return fail(&e),
    };
    match ask_server(&root, name) {
        Asked::Done(code) => return code,
        Asked::NoServer => {}
    }
    let _lock = match JobPaths::new(root.path(), &job).lock() {
        Ok(Some(lock)) => lock,
        Ok(None) => return fail(&format!("job {name} is already running in another process")),
        Err(e) => return fail(&e.to_string()),
    };
    let journal = match journal(&root, &config) {
        Ok(j) => j,
        Err(e) => return fail(&e),
    };
    // Runs of this job still marked running were cut short (their process held the lock).
    let _ = journal.close_interrupted_job(name);
    let id = match journal.start(name, Trigger::Manual) {
        Ok(id) => id,
        Err(e) => return fail(&e.to_string()),
    };
    let validators = journal.validators(name).ok().flatten();
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let worker = {
        let (progress, root) = (progress.clone(), root.path().to_owned());
        let (job, validators) = (job.clone(), validators.clone());
        std::thread::spawn(move || {
            crate::sync::execute::execute(&job, &root, validators.as_ref(), &progress)
        })
    };
    let bar = bar(0);
    while !worker.is_finished() {
        let total = progress.total_bytes.load(Ordering::Relaxed);
        if total > 0 && bar.length() != Some(total) {
            bar.set_length(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
        }
        bar.set_position(progress.bytes.load(Ordering::Relaxed));
        bar.set_message(format!(
            "{name}: {} rows",
            progress.rows.load(Ordering::Relaxed)
        ));
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
    let result = worker.join().unwrap_or_else(|_| {
        Err(crate::sync::SyncError::Source(
            "the run panicked".to_owned(),
        ))
    });
    let (status, report, error) = match result {
        Ok(report) if report.published => (Status::Ok, report, None),
        Ok(report) => (Status::Unchanged, report, None),
        Err(e) => (Status::Failed, Report::default(), Some(e.to_string())),
    };
    if let Err(e) = journal.finish(id, status, &report, error.as_deref()) {
        let _ = fail(&e.to_string());
    }
    if let Some(v) = &report.validators {
        let _ = journal.set_validators(name, v);
    }
    let line = summary(
        name,
        id,
        status.as_str(),
        &report,
        error.as_deref(),
        started.elapsed(),
    );
    if status == Status::Failed {
        let _ = writeln!(std::io::stderr().lock(), "{}", line.trim_end());
        ExitCode::FAILURE
    } else {
        say(&line)
    }
}

enum Asked {
    /// No server answers: run here.
    NoServer,
    /// The server ran it (or refused); the exit code.
    Done(ExitCode),
}

/// Asks a running server to run `name` and follows the run in its journal.
fn ask_server(root: &Root, name: &str) -> Asked {
    let addresses = crate::http::running_server(root)
        .map(|n| n.loopback())
        .unwrap_or_default();
    if addresses.is_empty() {
        return Asked::NoServer;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(_) => return Asked::NoServer,
    };
    runtime.block_on(async {
        let Some(client) = crate::api::access::local_client(root.path(), Duration::from_secs(10))
        else {
            return Asked::NoServer;
        };
        for (scheme, address) in addresses {
            let base = format!("{scheme}://{address}/admin/jobs/{name}");
            let request = client
                .post(format!("{base}/run"))
                .header(crate::api::admin::ADMIN_HEADER, "1");
            let Ok(response) = request.send().await else {
                continue;
            };
            let status = response.status();
            let body: serde_json::Value = response.json_body().await;
            if !status.is_success() {
                let detail = body.get("detail").and_then(|d| d.as_str()).unwrap_or("");
                return Asked::Done(fail(&format!(
                    "the server at {address} refused: {status} {detail}"
                )));
            }
            let Some(id) = body.get("run").and_then(serde_json::Value::as_i64) else {
                return Asked::Done(fail("the server's answer has no run id"));
            };
            return Asked::Done(follow(&client, &base, name, id).await);
        }
        Asked::NoServer
    })
}

/// Follows run `id` in the server's journal until it ends.
async fn follow(client: &reqwest::Client, base: &str, name: &str, id: i64) -> ExitCode {
    let started = Instant::now();
    let bar = bar(0);
    let ended: Run = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Ok(response) = client.get(format!("{base}/runs?limit=20")).send().await else {
            bar.finish_and_clear();
            return fail("lost the server while the run went on; see `poziserver sync history`");
        };
        let body = response.json_body().await;
        let run = body
            .get("runs")
            .and_then(|r| serde_json::from_value::<Vec<RunView>>(r.clone()).ok())
            .and_then(|runs| runs.into_iter().find(|r| r.id == id));
        let Some(run) = run else { continue };
        bar.set_position(run.bytes);
        bar.set_message(format!("{name} (in the server): {} rows", run.rows_read));
        if run.status != "running" {
            break Run {
                id: run.id,
                job: name.to_owned(),
                trigger: run.trigger,
                started: String::new(),
                ended: None,
                status: run.status,
                rows_read: run.rows_read,
                rows_written: run.rows_written,
                bytes: run.bytes,
                error: run.error,
            };
        }
    };
    bar.finish_and_clear();
    let report = Report {
        published: ended.status == "ok",
        rows_read: ended.rows_read,
        rows_written: ended.rows_written,
        bytes: ended.bytes,
        validators: None,
    };
    let line = summary(
        name,
        id,
        &ended.status,
        &report,
        ended.error.as_deref(),
        started.elapsed(),
    );
    if matches!(ended.status.as_str(), "ok" | "unchanged") {
        say(&line)
    } else {
        let _ = writeln!(std::io::stderr().lock(), "{}", line.trim_end());
        ExitCode::FAILURE
    }
}

/// A run as the admin API shows it.
#[derive(Debug, serde::Deserialize)]
struct RunView {
    id: i64,
    trigger: String,
    status: String,
    rows_read: u64,
    rows_written: u64,
    bytes: u64,
    error: Option<String>,
}
