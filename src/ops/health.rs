//! `GET /health`: `application/health+json` from the health registry and the certificate.

use std::sync::Arc;
use std::time::SystemTime;

use actors::{ComponentState, HealthRegistry};
use chrono::{DateTime, Utc};
use http::StatusCode;
use serde_json::{Value, json};

use crate::http::tls::CertStore;

/// Builds the health document.
#[derive(Clone)]
pub struct Health {
    registry: HealthRegistry,
    cert: Option<Arc<CertStore>>,
    /// The installation root, never shown: paths under it are shown relative to it.
    root: Option<std::path::PathBuf>,
    /// Checks of other parts (the updater, sync jobs, caches, disk space), read per request.
    extra: Vec<ExtraCheck>,
}

/// `text` with paths under `root` shown relative to it (what anyone who can reach the server
/// reads must not show where it is installed).
#[must_use]
pub fn hide_root(root: &std::path::Path, text: &str) -> String {
    let root = root.display().to_string();
    text.replace(&format!("{root}{}", std::path::MAIN_SEPARATOR), "")
        .replace(&root, ".")
}

/// A check's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckStatus {
    /// Fine.
    Pass,
    /// Healthy, with a concern (shown, and the document says `warn`; still HTTP 200).
    Warn,
    /// Unhealthy (the document says `fail`; HTTP 503).
    Fail,
}

/// One entry of `checks`: its key (`component:measurement`), status, and its JSON object
/// (whose `status` is filled in).
#[derive(Debug, Clone)]
pub struct NamedCheck {
    /// The key in `checks`.
    pub key: String,
    /// Its status.
    pub status: CheckStatus,
    /// The check object.
    pub value: Value,
}

/// Reads some checks; called for every health request, so it must be quick and never wait on
/// an actor.
pub type ExtraCheck = Arc<dyn Fn() -> Vec<NamedCheck> + Send + Sync>;

/// When the process started (set at its first use, early in `run`).
pub fn started() -> std::time::Instant {
    static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *STARTED.get_or_init(std::time::Instant::now)
}

impl CheckStatus {
    /// As the health document writes it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }

    /// A component's: running (or stopped on purpose) passes, failed fails, anything on its
    /// way warns.
    #[must_use]
    pub fn of(state: ComponentState) -> Self {
        match state {
            ComponentState::Running | ComponentState::Stopped => Self::Pass,
            ComponentState::Starting | ComponentState::BackingOff | ComponentState::Stopping => {
                Self::Warn
            }
            ComponentState::Failed => Self::Fail,
        }
    }
}

fn time(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339()
}

impl Health {
    /// Reads `registry`, and the certificate in `cert` when serving HTTPS.
    #[must_use]
    pub fn new(registry: HealthRegistry, cert: Option<Arc<CertStore>>) -> Self {
        Self {
            registry,
            cert,
            root: None,
            extra: Vec::new(),
        }
    }

    /// Adds checks of other parts.
    #[must_use]
    pub fn with_checks(mut self, checks: impl IntoIterator<Item = ExtraCheck>) -> Self {
        self.extra.extend(checks);
        self
    }

    /// `GET /health/ready`: 200 while no component has failed (the listener is up, as it
    /// answers), else 503 naming the failed ones.
    #[must_use]
    pub fn ready(&self) -> (StatusCode, Value) {
        let failed: Vec<String> = self
            .registry
            .snapshot()
            .iter()
            .filter(|(_, h)| h.state == ComponentState::Failed)
            .map(|(name, _)| name.to_string())
            .collect();
        if failed.is_empty() {
            (StatusCode::OK, json!({"status": "pass"}))
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "fail", "output": format!("failed: {}", failed.join(", "))}),
            )
        }
    }

    /// Shows paths under `root` relative to it (a health document is readable by anyone who
    /// can reach the server).
    #[must_use]
    pub fn with_root(mut self, root: &std::path::Path) -> Self {
        self.root = Some(root.to_owned());
        self
    }

    fn hide_root(&self, text: &str) -> String {
        match &self.root {
            Some(root) => hide_root(root, text),
            None => text.to_owned(),
        }
    }

    /// The document and its overall status.
    #[must_use]
    pub fn document(&self) -> (StatusCode, Value) {
        let now = SystemTime::now();
        let mut overall = CheckStatus::Pass;
        let mut checks = serde_json::Map::new();
        for (name, h) in self.registry.snapshot().iter() {
            let status = CheckStatus::of(h.state);
            overall = overall.max(status);
            checks.insert(
                format!("{name}:state"),
                json!([{
                    "componentId": name,
                    "componentType": "component",
                    "status": status.as_str(),
                    "observedValue": h.state.as_str(),
                    "restartsInWindow": h.restarts_in_window(now),
                    "totalRestarts": h.total_restarts,
                    "plannedRestarts": h.planned_restarts,
                    "lastStart": h.last_start.map(time),
                    "lastError": h.last_error.as_ref().map(|e| json!({"message": self.hide_root(&e.message), "time": time(e.at)})),
                }]),
            );
        }
        if let Some(cert) = &self.cert {
            let info = cert.info();
            let days = info
                .not_after
                .duration_since(now)
                .map_or(0, |d| d.as_secs() / 86_400);
            let problem = cert.problem();
            let status = if info.expires_soon(now) || problem.is_some() {
                CheckStatus::Warn
            } else {
                CheckStatus::Pass
            };
            overall = overall.max(status);
            let output = match problem {
                Some(problem) => Some(format!(
                    "the organisation's certificate is not usable, so {} is served instead: {problem}",
                    cert.shown(&info.path)
                )),
                None => info
                    .expires_soon(now)
                    .then(|| "certificate expires within 30 days".to_owned()),
            };
            checks.insert(
                "certificate:expiry".to_owned(),
                json!([{
                    "componentId": cert.shown(&info.path),
                    "status": status.as_str(),
                    "observedValue": days,
                    "observedUnit": "days",
                    "subject": info.subject,
                    "selfSigned": info.self_signed,
                    "time": time(info.not_after),
                    "output": output,
                }]),
            );
        }
        let failing_on_purpose = match crate::version::misbehaviour() {
            Some(crate::version::Misbehaviour::Fail) => true,
            Some(crate::version::Misbehaviour::FailAfterSwitch) => {
                crate::update::switch::is_successor()
            }
            _ => false,
        };
        if failing_on_purpose {
            // A debug test copy built to fail its health gate.
            overall = CheckStatus::Fail;
            checks.insert(
                "selftest".to_owned(),
                json!([{"status": "fail", "output": "test copy reporting fail on purpose"}]),
            );
        }
        for extra in &self.extra {
            for NamedCheck {
                key,
                status,
                mut value,
            } in extra()
            {
                overall = overall.max(status);
                value["status"] = json!(status.as_str());
                let entry = checks.entry(key).or_insert_with(|| json!([]));
                if let Some(list) = entry.as_array_mut() {
                    list.push(value);
                }
            }
        }
        let uptime = started().elapsed();
        checks.insert(
            "uptime".to_owned(),
            json!([{
                "componentType": "system",
                "status": "pass",
                "observedValue": uptime.as_secs_f64(),
                "observedUnit": "s",
                "time": time(now),
            }]),
        );
        let document = json!({
            "status": overall.as_str(),
            "version": crate::version::current().version,
            "releaseId": crate::version::current().commit,
            "serviceId": "poziserver",
            "description": "Pozi Server",
            "checks": checks,
        });
        let code = if overall == CheckStatus::Fail {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        (code, document)
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("root", &self.root)
            .field("extra", &self.extra.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use actors::{
        ChildSpec, ComponentState, HealthRegistry, RestartType, Supervisor, SupervisorSpec,
    };
    use ractor::{Actor, ActorProcessingErr, ActorRef};

    use super::Health;

    struct Broken;

    impl Actor for Broken {
        type Msg = ();
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<()>, (): ()) -> Result<(), ActorProcessingErr> {
            Err("cannot open the dataset".into())
        }
    }

    #[tokio::test]
    async fn a_failed_component_makes_health_503_with_its_error() {
        let registry = HealthRegistry::new();
        let spec = SupervisorSpec::new("root", registry.clone()).child(ChildSpec::actor(
            "sync",
            RestartType::Temporary,
            || (Broken, ()),
        ));
        let root = Supervisor::start_root(spec)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..500 {
            if registry
                .get("sync")
                .is_some_and(|h| h.state == ComponentState::Failed)
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let (ready, why) = Health::new(registry.clone(), None).ready();
        assert_eq!(ready, 503);
        assert!(why["output"].as_str().unwrap_or_default().contains("sync"));
        let (status, doc) = Health::new(registry, None).document();
        assert_eq!(status, 503);
        assert_eq!(doc["status"], "fail");
        let check = &doc["checks"]["sync:state"][0];
        assert_eq!(check["observedValue"], "failed");
        assert!(
            check["lastError"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("cannot open the dataset")
        );
        root.shutdown().await;
    }
}
