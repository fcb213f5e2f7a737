//! `update`: where releases are published, which keys sign them, and how the updater polls,
//! installs and health-checks them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The updater. It runs only when `manifest_base_url` and at least one public key are set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// Base URL the channel's manifest file name is appended to (e.g.
    /// `https://connect.pozi.com/releases/`); `null` turns the updater off.
    pub manifest_base_url: Option<String>,
    /// Trusted minisign public keys (the base64 line of a `minisign.pub` file). A manifest must
    /// carry a good signature from one of them; list two while rotating keys.
    pub public_keys: Vec<String>,
    /// Seconds between polls.
    #[schemars(range(min = 60, max = 604_800))]
    pub interval_secs: u64,
    /// Up to this many seconds added at random to each interval, so that many servers do not
    /// poll at once.
    #[schemars(range(max = 86_400))]
    pub jitter_secs: u64,
    /// Install a new release as soon as a poll finds it; `false` only checks (install with
    /// `poziserver update apply` or `POST /admin/update/apply`).
    pub auto_apply: bool,
    /// Seconds a new version has to answer `/health` with `pass` or `warn` after a switch,
    /// before it is rolled back.
    #[schemars(range(min = 1, max = 3600))]
    pub health_timeout_secs: u64,
    /// Seconds a manifest or signature request may take.
    #[schemars(range(min = 1, max = 600))]
    pub request_timeout_secs: u64,
    /// Seconds an artifact download may take.
    #[schemars(range(min = 1, max = 86_400))]
    pub download_timeout_secs: u64,
    /// Largest artifact downloaded, in bytes, whatever a manifest says.
    #[schemars(range(min = 1024, max = 4_294_967_296_u64))]
    pub max_artifact_bytes: u64,
    /// Installed versions kept under `versions/` besides the current and the previous one.
    #[schemars(range(max = 100))]
    pub keep_versions: usize,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            manifest_base_url: None,
            public_keys: Vec::new(),
            interval_secs: 3600,
            jitter_secs: 600,
            auto_apply: true,
            health_timeout_secs: 30,
            request_timeout_secs: 30,
            download_timeout_secs: 900,
            max_artifact_bytes: 512 * 1024 * 1024,
            keep_versions: 2,
        }
    }
}

impl UpdateConfig {
    /// Whether the updater runs: a base URL and at least one key.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.manifest_base_url.is_some() && !self.public_keys.is_empty()
    }
}

/// Checks what the schema cannot: the URL, and that each key is a minisign public key.
pub(super) fn issues(value: &serde_json::Value, report: &mut dyn FnMut(&[super::Segment], String)) {
    use super::Segment;
    let key = |k: &str| Segment::Key(k.to_owned());
    let url = value
        .pointer("/update/manifest_base_url")
        .and_then(|v| v.as_str());
    if let Some(url) = url {
        let parsed = reqwest::Url::parse(url).ok().filter(|u| {
            matches!(u.scheme(), "http" | "https") && u.host().is_some() && !u.cannot_be_a_base()
        });
        match parsed {
            None => report(
                &[key("update"), key("manifest_base_url")],
                format!("{url:?} is not an http or https URL"),
            ),
            Some(u) if u.query().is_some() || u.fragment().is_some() => report(
                &[key("update"), key("manifest_base_url")],
                "must not have a query or fragment: the manifest's file name is appended to it"
                    .to_owned(),
            ),
            Some(_) => {}
        }
    }
    let keys = value
        .pointer("/update/public_keys")
        .and_then(|v| v.as_array());
    for (i, k) in keys.into_iter().flatten().enumerate() {
        if let Some(text) = k.as_str()
            && minisign_verify::PublicKey::from_base64(text.trim()).is_err()
        {
            report(
                &[key("update"), key("public_keys"), Segment::Index(i)],
                "not a minisign public key (the base64 line of a minisign.pub file, starting RW)"
                    .to_owned(),
            );
        }
    }
    if url.is_some() && keys.is_none_or(Vec::is_empty) {
        report(
            &[key("update"), key("public_keys")],
            "a manifest URL needs at least one trusted public key: updates are never installed unsigned"
                .to_owned(),
        );
    }
}
