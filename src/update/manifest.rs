//! The release manifest (`docs/update-manifest.schema.json`), its minisign signature (the
//! `<manifest>.minisig` file beside it, made with `minisign -Sm manifest-server.json`), and the
//! rules that decide whether a verified manifest is installed, skipped or refused.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use semver::Version;
use serde::{Deserialize, Serialize};

/// The manifest format version this build reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Largest manifest read.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;

/// Largest signature file read.
pub const MAX_SIGNATURE_BYTES: usize = 16 * 1024;

/// A release manifest: one release of one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version; this server reads 1.
    #[schemars(range(min = 1, max = 1))]
    pub schema_version: u32,
    /// The channel it is published on (`production`, `testing`, `dev`, …), signed with it so
    /// that a manifest of one channel cannot be served as another's.
    pub channel: String,
    /// The release's version (semver; pre-releases such as `1.4.0-beta.2` allowed).
    pub version: String,
    /// When the release was published (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub date: String,
    /// Release notes, shown to operators.
    #[serde(default)]
    pub notes: String,
    /// After this time (RFC 3339) the manifest is refused, so an old manifest replayed by an
    /// attacker cannot freeze a server on an old release. Publishers re-sign before it.
    #[schemars(extend("format" = "date-time"))]
    pub expires: String,
    /// Per platform (`linux-x86_64`, `windows-x86_64`, `macos-aarch64`, …): the artifact.
    pub artifacts: BTreeMap<String, Artifact>,
}

/// One platform's artifact: the `poziserver` executable itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Where to download it: absolute, or relative to the manifest's URL.
    pub url: String,
    /// Its exact size in bytes.
    pub size: u64,
    /// Its SHA-256, 64 hexadecimal digits.
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub sha256: String,
}

/// The JSON Schema of a manifest, as committed in `docs/update-manifest.schema.json`.
#[must_use]
pub fn schema() -> serde_json::Value {
    schemars::schema_for!(Manifest).to_value()
}

/// A manifest whose signature, format and dates have been checked.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The manifest.
    pub manifest: Manifest,
    /// Its version.
    pub version: Version,
    /// Its date.
    pub date: DateTime<Utc>,
    /// Its expiry.
    pub expires: DateTime<Utc>,
}

fn time(field: &str, text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("manifest {field} {text:?} is not an RFC 3339 time: {e}"))
}

/// Checks `body` against its minisign `signature` (`None`: there was none) with any of the
/// trusted `keys`, then its format and expiry at `now`.
///
/// # Errors
/// Why it is refused: unsigned, a bad or untrusted signature, malformed, or expired.
pub fn verify(
    body: &[u8],
    signature: Option<&str>,
    keys: &[String],
    now: DateTime<Utc>,
) -> Result<Verified, String> {
    let Some(signature) = signature else {
        return Err("the manifest is unsigned (no .minisig file beside it)".to_owned());
    };
    let signature = minisign_verify::Signature::decode(signature)
        .map_err(|e| format!("the manifest's signature file is not a minisign signature: {e}"))?;
    let mut last = "no trusted public key is configured".to_owned();
    let mut good = false;
    for key in keys {
        let Ok(key) = minisign_verify::PublicKey::from_base64(key.trim()) else {
            continue;
        };
        match key.verify(body, &signature, false) {
            Ok(()) => {
                good = true;
                break;
            }
            Err(minisign_verify::Error::UnexpectedKeyId) => {
                "the manifest is signed with a key that is not trusted".clone_into(&mut last);
            }
            Err(e) => last = format!("bad signature: {e}"),
        }
    }
    if !good {
        return Err(last);
    }
    let manifest: Manifest = serde_json::from_slice(body)
        .map_err(|e| format!("the manifest is not a valid manifest: {e}"))?;
    if manifest.schema_version != SCHEMA_VERSION {
        return Err(format!(
            "manifest schema_version {} is not {SCHEMA_VERSION}, the one this server reads",
            manifest.schema_version
        ));
    }
    let version = Version::parse(&manifest.version).map_err(|e| {
        format!(
            "manifest version {:?} is not a semver version: {e}",
            manifest.version
        )
    })?;
    let date = time("date", &manifest.date)?;
    let expires = time("expires", &manifest.expires)?;
    if expires <= now {
        return Err(format!(
            "the manifest expired at {} (an old manifest replayed would freeze this server on an old release)",
            expires.to_rfc3339()
        ));
    }
    for (platform, artifact) in &manifest.artifacts {
        let hex =
            artifact.sha256.len() == 64 && artifact.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex {
            return Err(format!(
                "the {platform} artifact's sha256 is not 64 hexadecimal digits"
            ));
        }
    }
    Ok(Verified {
        manifest,
        version,
        date,
        expires,
    })
}

/// What to do with a verified manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Install it (a `downgrade` only on an explicit channel change).
    Install {
        /// Lower than the running version (moving from dev or testing back to production).
        downgrade: bool,
    },
    /// Nothing to do: it is the running version, or older on the same channel.
    UpToDate,
    /// Refused, and why.
    Refused(String),
}

/// What the journal remembers that bears on a verdict.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// The newest manifest accepted on this channel: its version and date.
    pub last_accepted: Option<(Version, DateTime<Utc>)>,
    /// The channel the running version was installed from, when the updater installed it.
    pub running_channel: Option<String>,
    /// Versions that failed their health check, and why.
    pub failed: BTreeMap<String, String>,
}

/// Decides what to do with `verified` from `channel`, for this `platform`, with `running` the
/// running version.
#[must_use]
pub fn judge(
    verified: &Verified,
    channel: &str,
    platform: &str,
    running: &Version,
    history: &History,
) -> Verdict {
    let version = &verified.version;
    if verified.manifest.channel != channel {
        return Verdict::Refused(format!(
            "the manifest is signed for the {:?} channel, but was served as the {channel} channel's (a manifest replayed from another channel)",
            verified.manifest.channel
        ));
    }
    if let Some((last, date)) = &history.last_accepted
        && (version < last || (version == last && verified.date < *date))
    {
        return Verdict::Refused(format!(
            "manifest {version} ({}) is older than {last} ({}), the last accepted on the {channel} channel (a rollback attack, or a stale mirror)",
            verified.date.to_rfc3339(),
            date.to_rfc3339()
        ));
    }
    if !verified.manifest.artifacts.contains_key(platform) {
        let offered: Vec<&str> = verified
            .manifest
            .artifacts
            .keys()
            .map(String::as_str)
            .collect();
        return Verdict::Refused(format!(
            "release {version} has no artifact for {platform} (it offers: {})",
            if offered.is_empty() {
                "none".to_owned()
            } else {
                offered.join(", ")
            }
        ));
    }
    if version == running {
        return Verdict::UpToDate;
    }
    if let Some(reason) = history.failed.get(&version.to_string()) {
        return Verdict::Refused(format!(
            "release {version} failed before ({reason}) and is not retried"
        ));
    }
    if version > running {
        return Verdict::Install { downgrade: false };
    }
    // Lower than the running version: only when going back to production from another channel
    // (or from a pre-release installed by hand, whose channel is not known).
    let leaving_other_channel = match &history.running_channel {
        Some(installed_from) => installed_from != channel,
        None => !running.pre.is_empty(),
    };
    if channel == "production" && leaving_other_channel {
        Verdict::Install { downgrade: true }
    } else {
        Verdict::UpToDate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(version: &str, date: &str, platforms: &[&str]) -> Verified {
        let manifest = Manifest {
            schema_version: 1,
            channel: "production".to_owned(),
            version: version.to_owned(),
            date: date.to_owned(),
            notes: String::new(),
            expires: "2999-01-01T00:00:00Z".to_owned(),
            artifacts: platforms
                .iter()
                .map(|p| {
                    (
                        (*p).to_owned(),
                        Artifact {
                            url: "x".to_owned(),
                            size: 1,
                            sha256: "0".repeat(64),
                        },
                    )
                })
                .collect(),
        };
        Verified {
            version: Version::parse(version).unwrap_or_else(|e| panic!("{e}")),
            date: time("date", date).unwrap_or_else(|e| panic!("{e}")),
            expires: time("expires", &manifest.expires).unwrap_or_else(|e| panic!("{e}")),
            manifest,
        }
    }

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn newer_installs_same_is_up_to_date_older_is_refused_or_skipped() {
        let p = "linux-x86_64";
        let new = verified("0.2.0", "2026-12-01T00:00:00Z", &[p]);
        let none = History::default();
        let running = v("0.1.0");
        assert_eq!(
            judge(&new, "production", p, &running, &none),
            Verdict::Install { downgrade: false }
        );
        assert_eq!(
            judge(&new, "production", p, &v("0.2.0"), &none),
            Verdict::UpToDate
        );
        // Older than running, same channel: nothing to do.
        assert_eq!(
            judge(&new, "production", p, &v("0.3.0"), &none),
            Verdict::UpToDate
        );
        // Older than the last accepted on this channel: refused.
        let seen = History {
            last_accepted: Some((
                v("0.3.0"),
                time("d", "2026-12-02T00:00:00Z").unwrap_or_default(),
            )),
            ..History::default()
        };
        assert!(matches!(
            judge(&new, "production", p, &running, &seen),
            Verdict::Refused(r) if r.contains("rollback attack")
        ));
        // No artifact for this platform.
        let other = verified("0.2.0", "2026-12-01T00:00:00Z", &["windows-x86_64"]);
        assert!(matches!(
            judge(&other, "production", p, &running, &none),
            Verdict::Refused(r) if r.contains("no artifact for linux-x86_64")
        ));
    }

    #[test]
    fn a_channel_change_installs_a_lower_version_and_failed_versions_are_not_retried() {
        let p = "linux-x86_64";
        let production = verified("0.2.0", "2026-12-01T00:00:00Z", &[p]);
        let from_dev = History {
            running_channel: Some("dev".to_owned()),
            ..History::default()
        };
        assert_eq!(
            judge(&production, "production", p, &v("0.3.0-dev.1"), &from_dev),
            Verdict::Install { downgrade: true }
        );
        // A pre-release installed by hand, going to production.
        assert_eq!(
            judge(
                &production,
                "production",
                p,
                &v("0.3.0-dev.1"),
                &History::default()
            ),
            Verdict::Install { downgrade: true }
        );
        // Never lower when moving to a channel other than production.
        let mut testing = production.clone();
        testing.manifest.channel = "testing".to_owned();
        let from_production = History {
            running_channel: Some("production".to_owned()),
            ..History::default()
        };
        assert_eq!(
            judge(&testing, "testing", p, &v("0.3.0"), &from_production),
            Verdict::UpToDate
        );
        // A manifest of another channel served as this one's.
        let mut dev = production.clone();
        dev.manifest.channel = "dev".to_owned();
        assert!(matches!(
            judge(&dev, "production", p, &v("0.1.0"), &History::default()),
            Verdict::Refused(r) if r.contains("another channel")
        ));
        let failed = History {
            failed: [("0.2.0".to_owned(), "exited".to_owned())].into(),
            ..History::default()
        };
        assert!(matches!(
            judge(&production, "production", p, &v("0.1.0"), &failed),
            Verdict::Refused(r) if r.contains("not retried")
        ));
    }
}
