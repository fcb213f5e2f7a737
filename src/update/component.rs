//! The `updater` component: polls the channel's manifest every `interval_secs` (plus jitter),
//! backing off after network errors, and on request (`POST /admin/update/check`, `…/apply`).
//! A check verifies and judges the manifest; an apply also downloads, verifies, installs and
//! self-tests the artifact, then asks the runtime to switch ([`super::SwitchRequest`]).
//! Health and the admin API read [`View`], never the actor, so they answer while a check runs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use serde_json::json;

use super::channel::{self, Channel};
use super::install::{TrialMarker, Versions};
use super::journal::{Event, Journal};
use super::manifest::{self, Verdict};
use super::{SwitchPlan, SwitchRequest, UpdateError, fetch};
use crate::config::UpdateConfig;

/// The name the updater has in the actor directory.
pub const ACTOR_NAME: &str = "updater";

/// What a check found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `up-to-date`, `available`, `switching`, `refused`, `unreachable` or `error`.
    pub outcome: &'static str,
    /// The channel polled.
    pub channel: Option<String>,
    /// The manifest's version, when one was read.
    pub version: Option<String>,
    /// The running version.
    pub running: &'static str,
    /// What happened, in words.
    pub detail: String,
}

/// What health, the status page and the admin API show of the updater.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ViewState {
    /// When the release server was last tried (RFC 3339).
    pub last_poll: Option<String>,
    /// Why it could not be reached at the last poll (`None`: it could, or not tried yet).
    pub unreachable: Option<String>,
    /// Why the last check refused what it was offered (`None`: it did not).
    pub refused: Option<String>,
    /// The latest journaled event.
    pub last_event: Option<Event>,
    /// The channel at the last poll.
    pub channel: Option<String>,
}

/// Shared, cheap to read view of the updater.
pub type View = Arc<Mutex<ViewState>>;

/// What a check needs.
#[derive(Debug, Clone)]
pub struct Context {
    /// The installation root.
    pub root: PathBuf,
    /// The running config file (the new version's `check-config` must accept it).
    pub config_file: PathBuf,
    /// The updater's settings.
    pub config: UpdateConfig,
    /// `state/update.sqlite`.
    pub journal: Arc<Journal>,
    /// Where a verified, installed version is handed to the runtime (`None`: check only, as
    /// the command line without a server does).
    pub switch: Option<SwitchRequest>,
    /// What health reads.
    pub view: View,
}

impl Context {
    fn record(&self, event: &str, channel: Option<&str>, version: Option<&str>, detail: &str) {
        self.journal.record(event, channel, version, detail);
        if let Ok(mut view) = self.view.lock() {
            match event {
                "refused" => view.refused = Some(detail.to_owned()),
                "checked" | "available" | "switching" => view.refused = None,
                _ => {}
            }
            view.last_event = Some(Event {
                at: Utc::now().to_rfc3339(),
                event: event.to_owned(),
                channel: channel.map(str::to_owned),
                version: version.map(str::to_owned),
                detail: detail.to_owned(),
            });
        }
    }

    fn report(
        &self,
        outcome: &'static str,
        channel: Option<&Channel>,
        version: Option<&str>,
        detail: String,
    ) -> Report {
        Report {
            outcome,
            channel: channel.map(|c| c.name.clone()),
            version: version.map(str::to_owned),
            running: crate::version::current().version,
            detail,
        }
    }
}

/// The health check of the updater: warn when the release server was out of reach at the last
/// poll, or when the last check refused what it was offered (a tampered or stale release, or
/// one that failed), with the reason; else pass. The last event is shown either way.
#[must_use]
pub fn health_check(view: View) -> crate::ops::health::ExtraCheck {
    use crate::ops::health::{CheckStatus, NamedCheck};
    Arc::new(move || {
        let state = view.lock().map(|v| v.clone()).unwrap_or_default();
        let output = match (&state.unreachable, &state.refused) {
            (Some(reason), _) => Some(format!("release server unreachable: {reason}")),
            (None, Some(reason)) => Some(format!("the last update check refused: {reason}")),
            (None, None) => None,
        };
        let status = if output.is_some() {
            CheckStatus::Warn
        } else {
            CheckStatus::Pass
        };
        vec![NamedCheck {
            key: "updater".to_owned(),
            status,
            value: json!({
                "componentId": "release server",
                "time": state.last_poll,
                "output": output,
                "channel": state.channel,
                "lastEvent": state.last_event,
            }),
        }]
    })
}

/// Checks the channel now; with `apply`, installs what it finds and asks for the switch.
pub async fn check(ctx: &Context, apply: bool) -> Report {
    match check_inner(ctx, apply).await {
        Ok(report) => report,
        Err((channel, UpdateError::Unreachable(reason))) => {
            if let Ok(mut view) = ctx.view.lock() {
                view.unreachable = Some(reason.clone());
            }
            ctx.record(
                "unreachable",
                channel.as_ref().map(|c| c.name.as_str()),
                None,
                &reason,
            );
            ctx.report("unreachable", channel.as_ref(), None, reason)
        }
        Err((channel, e)) => {
            let detail = e.to_string();
            let name = channel.as_ref().map(|c| c.name.as_str());
            let outcome = if matches!(e, UpdateError::Refused(_)) {
                "refused"
            } else {
                "error"
            };
            ctx.record(
                if outcome == "refused" {
                    "refused"
                } else {
                    "error"
                },
                name,
                None,
                &detail,
            );
            ctx.report(outcome, channel.as_ref(), None, detail)
        }
    }
}

type Failure = (Option<Channel>, UpdateError);

async fn check_inner(ctx: &Context, apply: bool) -> Result<Report, Failure> {
    let channel = channel::read(&ctx.root).map_err(|e| (None, e))?;
    let at = |e: UpdateError| (Some(channel.clone()), e);
    if let Ok(mut view) = ctx.view.lock() {
        view.last_poll = Some(Utc::now().to_rfc3339());
        view.channel = Some(channel.name.clone());
    }
    let base = ctx.config.manifest_base_url.as_deref().unwrap_or_default();
    let url = manifest_url(base, &channel.file).ok_or_else(|| {
        at(UpdateError::Refused(format!(
            "cannot make a URL of {base:?} and {:?}",
            channel.file
        )))
    })?;
    let client = fetch::client(Duration::from_secs(ctx.config.request_timeout_secs)).map_err(at)?;
    let cached = ctx.journal.cached(url.as_str()).map_err(|e| at(e.into()))?;
    let fetched = fetch::manifest(&client, &url, cached.as_ref())
        .await
        .map_err(at)?;
    if let Ok(mut view) = ctx.view.lock() {
        view.unreachable = None;
    }
    let verified = manifest::verify(
        &fetched.cached.body,
        fetched.cached.signature.as_deref(),
        &ctx.config.public_keys,
        Utc::now(),
    )
    .map_err(|r| at(UpdateError::Refused(r)))?;
    let version = verified.version.to_string();
    let running_text = crate::version::current().version;
    let running =
        semver::Version::parse(running_text).unwrap_or_else(|_| semver::Version::new(0, 0, 0));
    let history = ctx
        .journal
        .history(&channel.name, running_text)
        .map_err(|e| at(e.into()))?;
    let platform = crate::version::platform();
    let verdict = manifest::judge(&verified, &channel.name, platform, &running, &history);
    let refused = |reason: String| {
        ctx.record("refused", Some(&channel.name), Some(&version), &reason);
        ctx.report("refused", Some(&channel), Some(&version), reason)
    };
    let downgrade = match verdict {
        Verdict::Refused(reason) => return Ok(refused(reason)),
        Verdict::UpToDate => {
            accept(ctx, &channel, &verified, &url, &fetched);
            let detail = format!(
                "{running_text} is up to date on the {} channel (manifest {version})",
                channel.name
            );
            ctx.record("checked", Some(&channel.name), Some(&version), &detail);
            return Ok(ctx.report("up-to-date", Some(&channel), Some(&version), detail));
        }
        Verdict::Install { downgrade } => downgrade,
    };
    accept(ctx, &channel, &verified, &url, &fetched);
    if !apply {
        let detail = format!(
            "release {version} is available on the {} channel (running {running_text})",
            channel.name
        );
        ctx.record("available", Some(&channel.name), Some(&version), &detail);
        return Ok(ctx.report("available", Some(&channel), Some(&version), detail));
    }
    if ctx.switch.as_ref().is_some_and(SwitchRequest::busy) {
        let detail =
            "a switch to a new version is under way; nothing else is installed until it ends"
                .to_owned();
        return Ok(ctx.report("switching", Some(&channel), Some(&version), detail));
    }
    let Some(artifact) = verified.manifest.artifacts.get(platform) else {
        return Ok(refused(format!(
            "release {version} has no artifact for {platform}"
        )));
    };
    if artifact.size > ctx.config.max_artifact_bytes {
        return Ok(refused(format!(
            "the {platform} artifact is {} bytes, over update.max_artifact_bytes ({})",
            artifact.size, ctx.config.max_artifact_bytes
        )));
    }
    let Some(artifact_url) = url
        .join(&artifact.url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
    else {
        return Ok(refused(format!(
            "the artifact URL {:?} is not an http or https URL",
            artifact.url
        )));
    };
    let versions = Versions::new(&ctx.root);
    let partial = versions.partial(&version);
    std::fs::create_dir_all(ctx.root.join("versions"))
        .map_err(|e| at(UpdateError::io("cannot create", &ctx.root.join("versions"))(e)))?;
    let download_client =
        fetch::client(Duration::from_secs(ctx.config.download_timeout_secs)).map_err(at)?;
    match fetch::artifact(
        &download_client,
        &artifact_url,
        artifact.size,
        &artifact.sha256,
        &partial,
    )
    .await
    {
        Ok(()) => {}
        Err(UpdateError::Refused(reason)) => return Ok(refused(reason)),
        Err(e) => return Err(at(e)),
    }
    ctx.record(
        "downloaded",
        Some(&channel.name),
        Some(&version),
        &format!(
            "{} bytes from {artifact_url}; size and SHA-256 match the signed manifest",
            artifact.size
        ),
    );
    let binary = versions.install(&version, &partial).map_err(at)?;
    if let Err(reason) = super::install::self_test(&binary, &version, &ctx.config_file).await {
        if let Err(e) = ctx.journal.fail(&version, &reason) {
            tracing::error!(component = "updater", error = %e, "cannot remember the failed version: it will be tried again");
        }
        return Ok(refused(reason));
    }
    ctx.record(
        "verified",
        Some(&channel.name),
        Some(&version),
        "self-test passed: it reports this version and platform, and accepts the running config",
    );
    let Some(switch) = &ctx.switch else {
        let detail = format!(
            "release {version} is installed in versions/{version}/; a running server switches to it"
        );
        return Ok(ctx.report("available", Some(&channel), Some(&version), detail));
    };
    if let Err(e) = ctx.journal.installed(&version, &channel.name) {
        tracing::warn!(component = "updater", error = %e, "cannot remember the installed version's channel");
    }
    let previous = versions.current();
    versions
        .begin_trial(&TrialMarker {
            version: version.clone(),
            previous: previous.clone(),
            started: Utc::now().to_rfc3339(),
            stage: super::install::Stage::Trial,
            previous_binary: std::env::current_exe().ok(),
        })
        .map_err(at)?;
    if let Err(e) = versions.set_current(Some(&version)) {
        versions.end_trial();
        return Err(at(e));
    }
    let installed = ctx.journal.installed_versions().unwrap_or_else(|e| {
        tracing::warn!(component = "updater", error = %e, "cannot list installed versions; none pruned");
        Vec::new()
    });
    for removed in versions.prune(
        &installed,
        ctx.config.keep_versions,
        &[previous.clone(), Some(version.clone())],
    ) {
        if let Err(e) = ctx.journal.forget_installed(&removed) {
            tracing::warn!(component = "updater", error = %e, "cannot forget a pruned version");
        }
        tracing::info!(component = "updater", version = %removed, "removed an old installed version");
    }
    let detail = format!(
        "switching from {running_text} to {version}{}: the listener drains and the new version runs on trial",
        if downgrade {
            " (a lower version: the channel changed)"
        } else {
            ""
        }
    );
    ctx.record("switching", Some(&channel.name), Some(&version), &detail);
    switch.ask(SwitchPlan {
        version: version.clone(),
        binary,
        channel: channel.name.clone(),
        previous,
        health_timeout_secs: ctx.config.health_timeout_secs,
    });
    Ok(ctx.report("switching", Some(&channel), Some(&version), detail))
}

/// Remembers a verified manifest as the newest accepted on its channel, and caches it.
fn accept(
    ctx: &Context,
    channel: &Channel,
    verified: &manifest::Verified,
    url: &reqwest::Url,
    fetched: &fetch::Fetched,
) {
    let _ = ctx.journal.accept(
        &channel.name,
        &verified.version.to_string(),
        &verified.date.to_rfc3339(),
    );
    if !fetched.unchanged {
        let _ = ctx.journal.cache(url.as_str(), &fetched.cached);
    }
}

/// `base` (with a `/` added when it lacks one) joined with the manifest file name.
#[must_use]
pub fn manifest_url(base: &str, file: &str) -> Option<reqwest::Url> {
    let mut base = reqwest::Url::parse(base).ok()?;
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    base.join(file).ok()
}

/// The updater actor.
#[derive(Debug, Clone, Copy)]
pub struct Updater;

/// Messages to the updater.
#[derive(Debug)]
pub enum UpdaterMsg {
    /// The poll timer fired.
    Tick,
    /// Check now (and apply when `apply`, or when the config auto-applies and `apply` is
    /// `None`); the report is sent back.
    Check {
        /// Whether to install what is found.
        apply: Option<bool>,
        /// Where the report goes.
        reply: RpcReplyPort<Report>,
    },
}

/// The updater's state: its context and the current backoff after network errors.
#[derive(Debug)]
pub struct UpdaterState {
    ctx: Context,
    backoff: Option<Duration>,
}

fn jitter(max_secs: u64) -> Duration {
    Duration::from_millis(fastrand::u64(0..=max_secs.saturating_mul(1000)))
}

impl UpdaterState {
    fn arm(&self, myself: &ActorRef<UpdaterMsg>) {
        let config = &self.ctx.config;
        let wait = match self.backoff {
            Some(backoff) => backoff,
            None => Duration::from_secs(config.interval_secs) + jitter(config.jitter_secs),
        };
        myself.send_after(wait, || UpdaterMsg::Tick);
    }

    fn after(&mut self, report: &Report) {
        self.backoff = next_backoff(
            self.backoff,
            report.outcome == "unreachable",
            Duration::from_secs(self.ctx.config.interval_secs),
        );
    }
}

/// The wait before the next poll after an unreachable release server: 1, 2, 4 … minutes, never
/// past the interval; `None` (the interval) once it answers.
fn next_backoff(
    previous: Option<Duration>,
    unreachable: bool,
    interval: Duration,
) -> Option<Duration> {
    unreachable.then(|| {
        previous
            .map_or(Duration::from_secs(60), |b| b * 2)
            .min(interval)
    })
}

impl Actor for Updater {
    type Msg = UpdaterMsg;
    type State = UpdaterState;
    type Arguments = Context;

    #[tracing::instrument(name = "component", fields(component = "updater"), skip_all)]
    async fn pre_start(
        &self,
        myself: ActorRef<UpdaterMsg>,
        ctx: Context,
    ) -> Result<UpdaterState, ActorProcessingErr> {
        let first = Duration::from_secs(60.min(ctx.config.interval_secs))
            + jitter(ctx.config.jitter_secs.min(60));
        myself.send_after(first, || UpdaterMsg::Tick);
        tracing::info!(
            first_check_secs = first.as_secs(),
            interval_secs = ctx.config.interval_secs,
            "updater polling"
        );
        Ok(UpdaterState { ctx, backoff: None })
    }

    #[tracing::instrument(name = "component", fields(component = "updater"), skip_all)]
    async fn handle(
        &self,
        myself: ActorRef<UpdaterMsg>,
        message: UpdaterMsg,
        state: &mut UpdaterState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            UpdaterMsg::Tick => {
                let report = check(&state.ctx, state.ctx.config.auto_apply).await;
                state.after(&report);
                state.arm(&myself);
            }
            UpdaterMsg::Check { apply, reply } => {
                let report = check(&state.ctx, apply.unwrap_or(state.ctx.config.auto_apply)).await;
                state.after(&report);
                let _ = reply.send(report);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_errors_back_off_up_to_the_interval_and_reset_on_an_answer() {
        let hour = Duration::from_secs(3600);
        let mut backoff = None;
        let mut waits = Vec::new();
        for _ in 0..8 {
            backoff = next_backoff(backoff, true, hour);
            waits.push(backoff.map(|b| b.as_secs()));
        }
        let minutes = [60, 120, 240, 480, 960, 1920, 3600, 3600].map(Some);
        assert_eq!(waits, minutes);
        assert_eq!(next_backoff(backoff, false, hour), None);
    }

    #[test]
    fn the_manifest_url_is_the_base_and_the_channel_file() {
        let url =
            |base: &str| manifest_url(base, "manifest-server-dev.json").map(|u| u.to_string());
        let expected =
            Some("https://connect.pozi.com/releases/manifest-server-dev.json".to_owned());
        assert_eq!(url("https://connect.pozi.com/releases/"), expected);
        assert_eq!(url("https://connect.pozi.com/releases"), expected);
    }
}
