//! The checks `/health` adds to the components': the caches, the disk under the root, and each
//! sync job. Each reads counters or one small query, never an actor.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use serde_json::json;

use super::health::{CheckStatus, ExtraCheck, NamedCheck, hide_root};
use crate::config::Config;
use crate::gis::store::Catalog;

fn rate(hits: u64, misses: u64) -> Option<f64> {
    let total = hits + misses;
    (total > 0).then(|| hits as f64 / total as f64)
}

/// The response and feature caches: entries, bytes and hit rate (always `pass`).
#[must_use]
pub fn caches(catalog: Arc<Catalog>) -> ExtraCheck {
    Arc::new(move || {
        let responses = catalog.responses.stats();
        let features = catalog.features.stats();
        vec![
            NamedCheck {
                key: "responses:cache".to_owned(),
                status: CheckStatus::Pass,
                value: json!({
                    "componentType": "datastore",
                    "entries": responses.entries,
                    "bytes": responses.bytes,
                    "hits": responses.hits,
                    "misses": responses.misses,
                    "hitRate": rate(responses.hits, responses.misses),
                }),
            },
            NamedCheck {
                key: "features:cache".to_owned(),
                status: CheckStatus::Pass,
                value: json!({
                    "componentType": "datastore",
                    "entries": features.features,
                    "bytes": features.bytes,
                    "hits": features.hits,
                    "misses": features.misses,
                    "hitRate": rate(features.hits, features.misses),
                }),
            },
        ]
    })
}

/// Free disk space under the root: `warn` below `warn_mb` (MiB).
#[must_use]
pub fn disk(root: PathBuf, warn_mb: u64) -> ExtraCheck {
    Arc::new(move || {
        let Some(free) = free_bytes(&root) else {
            return Vec::new();
        };
        let free_mb = free / (1024 * 1024);
        let low = free_mb < warn_mb;
        vec![NamedCheck {
            key: "disk:free".to_owned(),
            status: if low {
                CheckStatus::Warn
            } else {
                CheckStatus::Pass
            },
            value: json!({
                "componentType": "system",
                "observedValue": free_mb,
                "observedUnit": "MiB",
                "output": low.then(|| format!("{free_mb} MiB free under the root, below health.disk_warn_mb ({warn_mb})")),
            }),
        }]
    })
}

/// Bytes free for this process on the file system holding `path`.
#[cfg(unix)]
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(not(unix))]
fn free_bytes(_: &std::path::Path) -> Option<u64> {
    None
}

/// Each sync job: its last success, last failure and next run; `warn` when its newest finished
/// run failed.
#[must_use]
pub fn sync_jobs(
    config: Arc<Config>,
    journal: Arc<crate::sync::journal::Journal>,
    root: PathBuf,
) -> ExtraCheck {
    Arc::new(move || {
        let now = Utc::now();
        config
            .sync
            .jobs
            .iter()
            .map(|job| {
                let runs = journal.runs(&job.name, 50).unwrap_or_default();
                let finished = runs.iter().find(|r| r.status != "running");
                let success = runs
                    .iter()
                    .find(|r| r.status == "ok" || r.status == "unchanged");
                let failure = runs
                    .iter()
                    .find(|r| matches!(r.status.as_str(), "failed" | "timed_out"));
                let failing =
                    finished.is_some_and(|r| matches!(r.status.as_str(), "failed" | "timed_out"));
                let next = crate::runtime::next_run(&config, job, now);
                NamedCheck {
                    key: format!("sync:{}", job.name),
                    status: if failing {
                        CheckStatus::Warn
                    } else {
                        CheckStatus::Pass
                    },
                    value: json!({
                        "componentId": job.name,
                        "componentType": "job",
                        "running": runs.first().is_some_and(|r| r.status == "running"),
                        "lastSuccess": success.and_then(|r| r.ended.clone()),
                        "lastFailure": failure.map(|r| json!({"time": r.ended, "error": r.error.as_deref().map(|e| hide_root(&root, e))})),
                        "nextRun": next.map(|t| t.to_rfc3339()),
                        "output": failing.then(|| finished.and_then(|r| r.error.as_deref()).map(|e| hide_root(&root, e))).flatten(),
                    }),
                }
            })
            .collect()
    })
}
