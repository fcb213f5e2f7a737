//! The status page (`/`, or `/status` when the host folder has its own `index.html`): what an
//! operator opens first. Server-rendered with maud, no external assets, readable on a phone; a
//! few lines of script fetch the page's main part again every five seconds instead of reloading
//! it. The "run now" buttons and the log's latest warnings and errors are shown only to viewers
//! the admin rules let in.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use actors::HealthRegistry;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::config::Config;
use crate::ops::health::CheckStatus;

/// What the page reads.
#[derive(Clone)]
pub struct StatusPage {
    /// Component states.
    pub registry: HealthRegistry,
    /// The running config (jobs, the log folder).
    pub config: Arc<Config>,
    /// The installation root.
    pub root: PathBuf,
    /// The certificate served, when serving HTTPS.
    pub cert: Option<Arc<crate::http::tls::CertStore>>,
    /// The sync journal, when there are jobs.
    pub journal: Option<Arc<crate::sync::journal::Journal>>,
    /// The updater's view, when it is configured.
    pub update: Option<crate::update::component::View>,
    /// The data folders' dataset counts and when they were taken.
    pub folders: FolderCounts,
}

/// Data folders' dataset counts, shared by the page's renders.
pub type FolderCounts = Arc<std::sync::Mutex<Option<(std::time::Instant, Vec<(String, usize)>)>>>;

impl std::fmt::Debug for StatusPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusPage")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// Warnings and errors shown from the log.
const LOG_LINES: usize = 20;

fn when(t: SystemTime) -> String {
    DateTime::<Utc>::from(t)
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string()
}

fn uptime() -> String {
    let s = super::health::started().elapsed().as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

const STYLE: &str = r"
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f5f6f8;color:#1d2430}
header{background:#1d3b5a;color:#fff;padding:12px 16px}
header h1{font-size:1.2em;margin:0}
header p{margin:4px 0 0;opacity:.85;font-size:.9em}
main{max-width:960px;margin:0 auto;padding:8px 12px 24px}
section{background:#fff;border-radius:8px;margin:12px 0;padding:8px 12px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
h2{font-size:1em;margin:6px 0 8px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.9em}
td,th{text-align:left;padding:4px 6px;border-bottom:1px solid #e4e7ec;vertical-align:top}
.pass{color:#1a7f37}.warn{color:#9a6700}.fail{color:#cf222e}
pre{white-space:pre-wrap;word-break:break-all;font-size:.8em;margin:0}
button{font:inherit;padding:2px 10px;border-radius:6px;border:1px solid #1d3b5a;background:#fff;cursor:pointer}
";

const SCRIPT: &str = r#"
async function refresh(){
  try{
    const r=await fetch(location.pathname+"?fragment=1",{cache:"no-store"});
    if(r.ok){document.getElementById("main").innerHTML=await r.text();}
  }catch(e){}
}
setInterval(refresh,5000);
document.addEventListener("click",async e=>{
  const b=e.target.closest("button[data-job]");
  if(!b)return;
  b.disabled=true;
  const r=await fetch("/admin/jobs/"+encodeURIComponent(b.dataset.job)+"/run",{method:"POST",headers:{"X-Pozi-Admin":"1"}});
  b.textContent=r.status===202?"started":"refused ("+r.status+")";
  setTimeout(refresh,1000);
});
"#;

impl StatusPage {
    /// The whole page, or only its main part (`fragment`) for the refresh; `admin`: the viewer
    /// is let in by the admin rules.
    #[must_use]
    pub fn render(&self, admin: bool, fragment: bool) -> String {
        let main = self.main(admin);
        if fragment {
            return main.into_string();
        }
        let version = crate::version::current();
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { "Pozi Server status" }
                    style { (PreEscaped(STYLE)) }
                }
                body {
                    header {
                        h1 { "Pozi Server" }
                        p { "version " (version.version) " · " (version.platform) " · commit " (version.commit) }
                    }
                    main #main { (main) }
                    script { (PreEscaped(SCRIPT)) }
                }
            }
        }
        .into_string()
    }

    fn main(&self, admin: bool) -> Markup {
        html! {
            section #overview {
                h2 { "Server" }
                p { "Up " (uptime()) " · refreshed " (when(SystemTime::now())) }
            }
            (self.components())
            (self.jobs(admin))
            (self.certificate())
            (self.folders())
            (self.updates())
            @if admin { (self.log()) }
        }
    }

    fn components(&self) -> Markup {
        let snapshot = self.registry.snapshot();
        html! {
            section #components {
                h2 { "Components" }
                div.scroll { table {
                    tr { th { "component" } th { "state" } th { "restarts (window / total / planned)" } th { "last error" } }
                    @for (name, h) in snapshot.iter() {
                        @let class = CheckStatus::of(h.state).as_str();
                        tr {
                            td { (name) }
                            td class=(class) { (h.state.as_str()) }
                            td { (h.restarts_in_window(SystemTime::now())) " / " (h.total_restarts) " / " (h.planned_restarts) }
                            td { @if let Some(e) = &h.last_error { (super::health::hide_root(&self.root, &e.message)) " (" (when(e.at)) ")" } }
                        }
                    }
                } }
            }
        }
    }

    fn jobs(&self, admin: bool) -> Markup {
        let jobs = &self.config.sync.jobs;
        let now = Utc::now();
        html! {
            @if !jobs.is_empty() {
                section #jobs {
                    h2 { "Sync jobs" }
                    div.scroll { table {
                        tr { th { "job" } th { "last run" } th { "next run" } @if admin { th {} } }
                        @for job in jobs {
                            @let last = self.journal.as_ref().and_then(|j| j.runs(&job.name, 1).ok()).and_then(|r| r.into_iter().next());
                            @let next = crate::runtime::next_run(&self.config, job, now);
                            tr {
                                td { (job.name) }
                                td {
                                    @if let Some(run) = &last {
                                        @let class = match run.status.as_str() { "ok" | "unchanged" => "pass", "running" => "warn", _ => "fail" };
                                        span class=(class) { (run.status) } " " (run.ended.as_deref().unwrap_or(&run.started))
                                        @if let Some(error) = &run.error { br; small { (super::health::hide_root(&self.root, error)) } }
                                    } @else { "never" }
                                }
                                td { @if let Some(next) = next { (next.format("%Y-%m-%d %H:%M UTC")) } @else { "when asked" } }
                                @if admin { td { button type="button" data-job=(job.name) { "Run now" } } }
                            }
                        }
                    } }
                }
            }
        }
    }

    fn certificate(&self) -> Markup {
        html! {
            @if let Some(cert) = &self.cert {
                @let info = cert.info();
                @let days = info.not_after.duration_since(SystemTime::now()).map_or(0, |d| d.as_secs() / 86_400);
                section #certificate {
                    h2 { "Certificate" }
                    p {
                        (info.subject) @if info.self_signed && !info.subject.contains("self-signed") { " (self-signed)" }
                        br;
                        span class=(if info.expires_soon(SystemTime::now()) { "warn" } else { "pass" }) {
                            "expires " (when(info.not_after)) " (" (days) " days)"
                        }
                    }
                }
            }
        }
    }

    fn folders(&self) -> Markup {
        let folders = self.folder_counts();
        html! {
            section #folders {
                h2 { "Data folders" }
                div.scroll { table {
                    tr { th { "folder" } th { "datasets" } }
                    @for (name, count) in &folders { tr { td { (name) } td { (count) } } }
                } }
            }
        }
    }

    /// Each data folder and its datasets, counted at most once a minute (every open page asks
    /// every five seconds).
    fn folder_counts(&self) -> Vec<(String, usize)> {
        let Ok(mut cached) = self.folders.lock() else {
            return Vec::new();
        };
        if let Some((at, counts)) = &*cached
            && at.elapsed() < std::time::Duration::from_secs(60)
        {
            return counts.clone();
        }
        let userdata = self.root.join("userdata");
        let mut folders: Vec<(String, usize)> = std::fs::read_dir(&userdata)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| {
                let count = super::metrics::count_datasets(&e.path()).0;
                (
                    e.file_name().to_string_lossy().into_owned(),
                    usize::try_from(count).unwrap_or(0),
                )
            })
            .collect();
        folders.sort();
        *cached = Some((std::time::Instant::now(), folders.clone()));
        folders
    }

    fn updates(&self) -> Markup {
        let hide = |text: &str| super::health::hide_root(&self.root, text);
        let channel = crate::update::channel::read(&self.root).map(|c| c.name);
        let view = self
            .update
            .as_ref()
            .and_then(|v| v.lock().ok().map(|v| v.clone()));
        html! {
            section #updates {
                h2 { "Updates" }
                p {
                    "Channel: " (channel.unwrap_or_else(|e| hide(&e.to_string())))
                    @if let Some(view) = &view {
                        @if let Some(event) = &view.last_event { br; "Last: " (event.event) " " (event.version.as_deref().unwrap_or("")) " — " (hide(&event.detail)) }
                        @if let Some(reason) = &view.unreachable { br; span.warn { "Release server unreachable: " (hide(reason)) } }
                    } @else { br; "The updater is off." }
                }
            }
        }
    }

    fn log(&self) -> Markup {
        let dir = self.root.join(&self.config.log.directory);
        let lines: Vec<String> = crate::api::admin::log_tail(&dir, 5_000)
            .into_iter()
            .filter(|l| {
                l.contains(" WARN ")
                    || l.contains(" ERROR ")
                    || l.contains("\"level\":\"WARN\"")
                    || l.contains("\"level\":\"ERROR\"")
            })
            .collect();
        let start = lines.len().saturating_sub(LOG_LINES);
        html! {
            section #log {
                h2 { "Latest warnings and errors" }
                @if lines.is_empty() { p { "None." } }
                @for line in &lines[start..] {
                    pre class=(if line.contains("ERROR") { "fail" } else { "warn" }) { (line) }
                }
            }
        }
    }
}
