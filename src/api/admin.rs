//! `/admin/`: the operators' API, for the addresses in `admin.allow` (this machine by default)
//! and, when `admin.token_hash` is set, only with that bearer token (`api::access`); the
//! server's own command line uses the token in `state/admin.token`.
//!
//! - `GET /admin/jobs`: each sync job, its schedule, next run, and last run.
//! - `GET /admin/jobs/{name}/runs`: the job's journaled runs, newest first (`?limit=`).
//! - `POST /admin/jobs/{name}/run`: start a run now; 202 with its id, 409 while one runs. A
//!   POST must carry `X-Pozi-Admin: 1`, which a web page cannot add without a CORS preflight.
//! - `GET /admin/update`: running version, channel, installed pointer, the poller's view and
//!   the latest updater events.
//! - `POST /admin/update/check`: check the channel now (never installs); `POST
//!   /admin/update/apply`: check and install what is found, then switch to it.
//! - `POST /admin/components/{name}/restart`: restart a component (202 at once).
//! - `GET /admin/log?lines=200`: the last lines of the server log (up to 10,000).
//! - `POST /admin/reload`: reload `config.json` (400 listing every problem of an invalid one).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use http::{Method, StatusCode};
use ractor::{ActorRef, RpcReplyPort};
use serde_json::json;

use super::error::ApiError;
use super::reply::{Response, json};
use crate::config::Config;
use crate::sync::component::{JobMsg, actor_name};
use crate::sync::journal::Journal;

/// The header every `POST` to `/admin/` must carry (`X-Pozi-Admin: 1`).
pub const ADMIN_HEADER: &str = "x-pozi-admin";

/// What the admin API reads.
#[derive(Debug)]
pub struct Admin {
    /// The running config (jobs and their schedules).
    pub config: Arc<Config>,
    /// The sync journal, opened once at start (`None` without jobs).
    pub journal: Option<std::sync::Arc<Journal>>,
    /// The tree's named actors, where each job's actor (and the updater) is found.
    pub directory: actors::Directory,
    /// The updater, when it is configured.
    pub update: Option<UpdateAdmin>,
    /// Who may use these endpoints.
    pub access: super::access::AdminAccess,
    /// The installation root (the log folder is resolved against it).
    pub root: std::path::PathBuf,
    /// Reloads the config.
    pub reloader: Option<Arc<crate::ops::reload::Reloader>>,
}

/// What the admin API needs of a request besides its path.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// What the access rules look at.
    pub access: super::access::Caller<'a>,
    /// Whether it carries `X-Pozi-Admin: 1`.
    pub marked: bool,
}

fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

fn method_not_allowed(allow: &'static str, path: &str, method: &Method) -> ApiError {
    ApiError {
        allow: Some(allow),
        ..ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
            Some(format!("{path} answers {allow}, not {method}")),
        )
    }
}

/// Answers an `/admin/` request from `caller`.
///
/// # Errors
/// 403 for a caller the access rules refuse, 404 for an unknown path or job, 405, 409 for a
/// job already running, 503 when the job's actor does not answer.
pub async fn answer(
    admin: &Admin,
    caller: Caller<'_>,
    method: &Method,
    path: &str,
    limit: Option<&str>,
) -> Result<Response, ApiError> {
    let admitted = admin.access.check(&caller.access)?;
    // A request with a token cannot come from a web page; one without must be marked.
    let marked = caller.marked || admitted == super::access::Admitted::ByToken;
    let rest = path.trim_start_matches("/admin").trim_end_matches('/');
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let read = *method == Method::GET || *method == Method::HEAD;
    match parts.as_slice() {
        ["jobs"] if read => Ok(no_store(json(
            StatusCode::OK,
            &jobs(admin)?,
            "application/json",
        ))),
        ["jobs"] => Err(method_not_allowed("GET, HEAD", path, method)),
        ["jobs", name, "runs"] if read => {
            job(admin, name)?;
            let limit = match limit {
                None => 50,
                Some(text) => text
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request("bad limit", "limit must be 1 to 10000")
                    })?,
            };
            let runs = admin
                .journal
                .as_ref()
                .map(|j| j.runs(name, limit))
                .transpose()
                .map_err(journal_error)?
                .unwrap_or_default();
            Ok(no_store(json(
                StatusCode::OK,
                &json!({ "job": name, "runs": runs }),
                "application/json",
            )))
        }
        ["jobs", _, "runs"] => Err(method_not_allowed("GET, HEAD", path, method)),
        ["jobs", name, "run"] if *method == Method::POST => {
            job(admin, name)?;
            require_mark(marked)?;
            run_now(&admin.directory, name).await
        }
        ["jobs", _, "run"] => Err(method_not_allowed("POST", path, method)),
        ["update"] if read => Ok(no_store(json(
            StatusCode::OK,
            &update_status(admin)?,
            "application/json",
        ))),
        ["update"] => Err(method_not_allowed("GET, HEAD", path, method)),
        ["update", action @ ("check" | "apply")] if *method == Method::POST => {
            require_mark(marked)?;
            update_check(admin, *action == "apply").await
        }
        ["update", "check" | "apply"] => Err(method_not_allowed("POST", path, method)),
        ["components", name, "restart"] if *method == Method::POST => {
            require_mark(marked)?;
            restart(&admin.directory, name)
        }
        ["components", _, "restart"] => Err(method_not_allowed("POST", path, method)),
        ["log"] if read => {
            let lines = match limit {
                None => 200,
                Some(text) => text
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LOG_LINES).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request("bad lines", "lines must be 1 to 10000")
                    })?,
            };
            let log_dir = admin.root.join(&admin.config.log.directory);
            let tail = tokio::task::spawn_blocking(move || log_tail(&log_dir, lines))
                .await
                .unwrap_or_default();
            Ok(no_store(json(
                StatusCode::OK,
                &json!({ "lines": tail }),
                "application/json",
            )))
        }
        ["log"] => Err(method_not_allowed("GET, HEAD", path, method)),
        ["reload"] if *method == Method::POST => {
            require_mark(marked)?;
            let reloader = admin.reloader.as_ref().ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "reload unavailable",
                    Some("this process cannot reload its config".to_owned()),
                )
            })?;
            match reloader.reload("POST /admin/reload").await {
                Ok(report) => Ok(no_store(json(
                    StatusCode::OK,
                    &serde_json::to_value(&report).unwrap_or_default(),
                    "application/json",
                ))),
                Err(problems) => Err(ApiError::bad_request("invalid config", problems)),
            }
        }
        ["reload"] => Err(method_not_allowed("POST", path, method)),
        _ => Err(ApiError::not_found(
            "not found",
            format!("no such path: {path}"),
        )),
    }
}

/// Most lines `GET /admin/log` returns.
const MAX_LOG_LINES: usize = 10_000;

/// Bytes read from the end of the log for its last lines.
const LOG_TAIL_BYTES: u64 = 4 * 1024 * 1024;

/// The last `lines` lines of the newest server log in `dir` (read from at most its last
/// [`LOG_TAIL_BYTES`]).
pub(crate) fn log_tail(dir: &std::path::Path, lines: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let newest = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("server.log"))
        .max_by_key(|e| e.file_name());
    let Some(file) = newest.and_then(|e| std::fs::File::open(e.path()).ok()) else {
        return Vec::new();
    };
    let mut file = file;
    let length = file.metadata().map_or(0, |m| m.len());
    let start = length.saturating_sub(LOG_TAIL_BYTES);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err()
        || file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes).is_err()
    {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if start > 0 && !all.is_empty() {
        // The first line read may be cut.
        all.remove(0);
    }
    let skip = all.len().saturating_sub(lines);
    all[skip..].iter().map(|l| (*l).to_owned()).collect()
}

/// `POST /admin/components/{name}/restart`: asks the root supervisor to restart a component
/// (stop gracefully, start again; not counted as a failure). Answered at once with 202, since
/// the component restarted may be the listener serving this request.
fn restart(directory: &actors::Directory, name: &str) -> Result<Response, ApiError> {
    if !crate::config::COMPONENTS.contains(&name) {
        return Err(ApiError::not_found(
            "no such component",
            format!(
                "no component named {name:?}; components: {}",
                crate::config::COMPONENTS.join(", ")
            ),
        ));
    }
    let rx = crate::runtime::request_restart(directory, name).map_err(|why| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "supervisor unavailable",
            Some(why.to_owned()),
        )
    })?;
    let component = name.to_owned();
    tokio::spawn(async move {
        match rx.await {
            Ok(Ok(())) => tracing::info!(component, "component restarted (asked through /admin/)"),
            Ok(Err(e)) => {
                tracing::error!(component, error = %e, "restart asked through /admin/ failed")
            }
            Err(_) => {}
        }
    });
    tracing::info!(component = name, "restart asked through /admin/");
    Ok(no_store(json(
        StatusCode::ACCEPTED,
        &json!({ "component": name, "status": "restarting" }),
        "application/json",
    )))
}

/// A web page open in a browser on this machine can send a plain POST to `/admin/`; it cannot
/// add a header without the CORS preflight that the server refuses it.
fn require_mark(marked: bool) -> Result<(), ApiError> {
    if marked {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        Some(
            "a POST to /admin/ needs the header X-Pozi-Admin: 1 (so that no web page can start a run or an update)"
                .to_owned(),
        ),
    ))
}

/// The updater's parts the admin API reads.
#[derive(Debug, Clone)]
pub struct UpdateAdmin {
    /// `state/update.sqlite`.
    pub journal: Arc<crate::update::journal::Journal>,
    /// What the poller last saw.
    pub view: crate::update::component::View,
    /// The installation root (for `versions/` and the channel file).
    pub root: std::path::PathBuf,
}

fn updater_off() -> ApiError {
    ApiError::not_found(
        "updater off",
        "the updater is off: set update.manifest_base_url and update.public_keys in config.json"
            .to_owned(),
    )
}

/// `GET /admin/update`: versions, channel, what the poller saw, and the latest events.
fn update_status(admin: &Admin) -> Result<serde_json::Value, ApiError> {
    let update = admin.update.as_ref().ok_or_else(updater_off)?;
    let events = update.journal.events(50).map_err(|e| {
        tracing::error!(error = %e, "cannot read the update journal");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "journal unavailable",
            Some("the update journal cannot be read; see the server log".to_owned()),
        )
    })?;
    let view = update.view.lock().map(|v| v.clone()).unwrap_or_default();
    let channel = crate::update::channel::read(&update.root)
        .map(|c| json!({"name": c.name, "manifest": c.file}))
        .unwrap_or_else(|e| json!({"error": e.to_string()}));
    let version = crate::version::current();
    Ok(json!({
        "running": version.version,
        "platform": version.platform,
        "current": crate::update::install::Versions::new(&update.root).current(),
        "channel": channel,
        "poller": view,
        "events": events,
    }))
}

/// `POST /admin/update/check` and `…/apply`: asks the updater to check (and install) now.
async fn update_check(admin: &Admin, apply: bool) -> Result<Response, ApiError> {
    use crate::update::component::{ACTOR_NAME, UpdaterMsg};
    if admin.update.is_none() {
        return Err(updater_off());
    }
    let unavailable = |detail: &str| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "updater unavailable",
            Some(detail.to_owned()),
        )
    };
    let cell = admin
        .directory
        .get(ACTOR_NAME)
        .ok_or_else(|| unavailable("the updater is not running (restarting, or on trial)"))?;
    let actor: ActorRef<UpdaterMsg> = cell.into();
    let (tx, rx) = ractor::concurrency::oneshot();
    actor
        .send_message(UpdaterMsg::Check {
            apply: Some(apply),
            reply: RpcReplyPort::from(tx),
        })
        .map_err(|_| unavailable("the updater is stopping"))?;
    // A check waits behind one already running; an apply includes a download.
    let report = rx
        .await
        .map_err(|_| unavailable("the updater stopped before it answered"))?;
    Ok(no_store(json(
        StatusCode::OK,
        &serde_json::to_value(&report).unwrap_or_default(),
        "application/json",
    )))
}

fn journal_error(e: crate::sync::journal::JournalError) -> ApiError {
    tracing::error!(error = %e, "cannot read the sync journal");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "journal unavailable",
        Some("the sync journal cannot be read; see the server log".to_owned()),
    )
}

fn job<'a>(admin: &'a Admin, name: &str) -> Result<&'a crate::config::sync::SyncJob, ApiError> {
    admin
        .config
        .sync
        .jobs
        .iter()
        .find(|j| j.name == name)
        .ok_or_else(|| ApiError::not_found("no such job", format!("no sync job named {name:?}")))
}

fn jobs(admin: &Admin) -> Result<serde_json::Value, ApiError> {
    let journal = admin.journal.as_deref();
    let now = Utc::now();
    let list: Vec<serde_json::Value> = admin
        .config
        .sync
        .jobs
        .iter()
        .map(|job| {
            let next = crate::runtime::next_run(&admin.config, job, now);
            let last = journal
                .and_then(|j| j.runs(&job.name, 1).ok())
                .and_then(|r| r.into_iter().next());
            json!({
                "name": job.name,
                "enabled": job.enabled,
                "schedule": job.schedule,
                "source": source_kind(&job.source),
                "target": job.target.dataset,
                "next_run": next.map(|t| t.to_rfc3339()),
                "last_run": last,
            })
        })
        .collect();
    Ok(json!({ "jobs": list }))
}

/// The source type's name, as the config writes it.
#[must_use]
pub fn source_kind(source: &crate::config::sync::SyncSource) -> &'static str {
    use crate::config::sync::SyncSource;
    match source {
        SyncSource::File { .. } => "file",
        SyncSource::Http { .. } => "http",
        SyncSource::Arcgis { .. } => "arcgis",
        SyncSource::Wfs { .. } => "wfs",
        SyncSource::Sqlite { .. } => "sqlite",
        SyncSource::Ogr { .. } => "ogr",
        SyncSource::Catalogue { .. } => "catalogue",
    }
}

async fn run_now(directory: &actors::Directory, name: &str) -> Result<Response, ApiError> {
    let unavailable = |detail: String| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "job unavailable",
            Some(detail),
        )
    };
    // Right after a start or a restart of `sync`, its jobs take a moment to come up.
    let waited = tokio::time::Instant::now() + Duration::from_secs(5);
    let cell = loop {
        if let Some(cell) = directory.get(&actor_name(name)) {
            break cell;
        }
        if tokio::time::Instant::now() >= waited {
            return Err(unavailable(format!(
                "job {name:?} is not running in this server (restarting, or sync is stopped)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let actor: ActorRef<JobMsg> = cell.into();
    let (tx, rx) = ractor::concurrency::oneshot();
    actor
        .send_message(JobMsg::Run {
            trigger: crate::sync::Trigger::Manual,
            reply: Some(RpcReplyPort::from(tx)),
        })
        .map_err(|_| unavailable(format!("job {name:?} is stopping")))?;
    match tokio::time::timeout(Duration::from_secs(5), rx).await {
        Ok(Ok(Ok(id))) => Ok(no_store(json(
            StatusCode::ACCEPTED,
            &json!({ "job": name, "run": id, "status": "running" }),
            "application/json",
        ))),
        Ok(Ok(Err(reason))) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not started",
            Some(reason),
        )),
        _ => Err(unavailable(format!("job {name:?} did not answer"))),
    }
}
