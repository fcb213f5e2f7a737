//! `poziserver update check | apply | status`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::component::{Context, View};
use super::journal::Journal;
use crate::api::access::JsonBody;
use crate::config::Config;
use crate::root::Root;

use crate::cli::{fail, out as say};

fn load(root: &Path, config: Option<&Path>) -> Result<(Root, Config, std::path::PathBuf), String> {
    let root = Root::new(root).map_err(|e| e.to_string())?;
    let file = config.map_or_else(|| root.config_file(), Path::to_owned);
    let config = Config::load(&file).map_err(|e| e.to_string())?;
    Ok((root, config, file))
}

fn journal(root: &Root) -> Result<Journal, String> {
    std::fs::create_dir_all(root.state_dir()).map_err(|e| e.to_string())?;
    Journal::open_in(root).map_err(|e| e.to_string())
}

/// Asks the running server (`POST /admin/update/<action>`); `None` when none answers.
fn ask_server(
    root: &Root,
    action: &str,
    wait: Duration,
) -> Option<Result<serde_json::Value, String>> {
    let addresses = crate::http::running_server(root)?.loopback();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        let client = crate::api::access::local_client(root.path(), wait)?;
        for (scheme, address) in addresses {
            let Ok(response) = client
                .post(format!("{scheme}://{address}/admin/update/{action}"))
                .header(crate::api::admin::ADMIN_HEADER, "1")
                .send()
                .await
            else {
                continue;
            };
            let status = response.status();
            let body = response.json_body().await;
            if !status.is_success() {
                let detail = body.get("detail").and_then(|d| d.as_str()).unwrap_or("");
                return Some(Err(format!(
                    "the server at {address} answered {status}: {detail}"
                )));
            }
            return Some(Ok(body));
        }
        None
    })
}

fn print_report(report: &serde_json::Value) -> ExitCode {
    let text = |k: &str| {
        report
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("-")
            .to_owned()
    };
    let code = say(&format!(
        "{}: {}\n  channel {}, running {}, manifest {}\n",
        text("outcome"),
        text("detail"),
        text("channel"),
        text("running"),
        text("version")
    ));
    match text("outcome").as_str() {
        "refused" | "unreachable" | "error" => ExitCode::FAILURE,
        _ => code,
    }
}

/// How long the command line waits for a server's check or apply.
fn wait(config: &Config, apply: bool) -> Duration {
    let u = &config.update;
    let download = if apply {
        u.download_timeout_secs + 120
    } else {
        0
    };
    Duration::from_secs(u.request_timeout_secs * 2 + download + 10)
}

/// `update check`: what the channel offers, through the server or here.
#[must_use]
pub fn check(root: &Path, config: Option<&Path>) -> ExitCode {
    let (root, config, file) = match load(root, config) {
        Ok(loaded) => loaded,
        Err(e) => return fail(&e),
    };
    if !config.update.enabled() {
        return fail(
            "the updater is off: set update.manifest_base_url and update.public_keys in the config",
        );
    }
    if let Some(answer) = ask_server(&root, "check", wait(&config, false)) {
        return match answer {
            Ok(report) => print_report(&report),
            Err(e) => fail(&e),
        };
    }
    let journal = match journal(&root) {
        Ok(j) => Arc::new(j),
        Err(e) => return fail(&format!("cannot open the update journal: {e}")),
    };
    let ctx = Context {
        root: root.path().to_owned(),
        config_file: file,
        config: config.update.clone(),
        journal,
        switch: None,
        view: View::default(),
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return fail("cannot start a runtime");
    };
    let report = runtime.block_on(super::component::check(&ctx, false));
    print_report(&serde_json::to_value(&report).unwrap_or_default())
}

/// `update apply`: asks the running server to install and switch.
#[must_use]
pub fn apply(root: &Path, config: Option<&Path>) -> ExitCode {
    let (root, config, _) = match load(root, config) {
        Ok(loaded) => loaded,
        Err(e) => return fail(&e),
    };
    if !config.update.enabled() {
        return fail(
            "the updater is off: set update.manifest_base_url and update.public_keys in the config",
        );
    }
    match ask_server(&root, "apply", wait(&config, true)) {
        Some(Ok(report)) => print_report(&report),
        Some(Err(e)) => fail(&e),
        None => fail(
            "no running server answers on this root: start it; the running server applies updates so that it can health-check the new version and roll back by itself",
        ),
    }
}

/// `update status`: versions, channel and the latest events, from the journal.
#[must_use]
pub fn status(root: &Path, config: Option<&Path>, limit: usize) -> ExitCode {
    let (root, config, _) = match load(root, config) {
        Ok(loaded) => loaded,
        Err(e) => return fail(&e),
    };
    let version = crate::version::current();
    let current = super::install::Versions::new(root.path()).current();
    let channel = super::channel::read(root.path()).map_or_else(
        |e| format!("unreadable ({e})"),
        |c| format!("{} ({})", c.name, c.file),
    );
    let mut text = format!(
        "updater:  {}\nthis binary: {} ({})\ncurrent:  {}\nchannel:  {channel}\n",
        if config.update.enabled() {
            "on"
        } else {
            "off (no manifest_base_url or public_keys)"
        },
        version.version,
        version.platform,
        current
            .as_deref()
            .unwrap_or("the installed binary (no versions/current)"),
    );
    if let Some(note) = crate::http::running_server(&root) {
        text.push_str(&format!("server:   running, pid {}\n", note.pid));
    }
    let path = root.state_dir().join("update.sqlite");
    if path.exists() {
        match journal(&root).and_then(|j| j.events(limit).map_err(|e| e.to_string())) {
            Ok(events) if events.is_empty() => text.push_str("no updater events yet\n"),
            Ok(events) => {
                text.push_str("latest events, newest first:\n");
                for e in events {
                    text.push_str(&format!(
                        "  {}  {:<11} {:<10} {:<14} {}\n",
                        e.at,
                        e.event,
                        e.channel.unwrap_or_default(),
                        e.version.unwrap_or_default(),
                        e.detail
                    ));
                }
            }
            Err(e) => return fail(&format!("cannot read the update journal: {e}")),
        }
    } else {
        text.push_str("no updater events yet\n");
    }
    say(&text)
}
