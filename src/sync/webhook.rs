//! The failure and recovery webhook: a small JSON document POSTed when a job fails and when it
//! next succeeds, in the background, bounded in time; its own failures are only logged.

use std::time::Duration;

use serde::Serialize;

/// What is POSTed.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `failed` or `recovered`.
    pub event: &'static str,
    /// The job.
    pub job: String,
    /// The run's journal id.
    pub run: i64,
    /// The run's status.
    pub status: &'static str,
    /// Why it failed.
    pub error: Option<String>,
    /// When (RFC 3339, UTC).
    pub at: String,
}

/// POSTs `event` to `url` in the background (10 s at most).
pub fn send(url: String, event: Event) {
    tokio::spawn(async move {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
        {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(error = %e, "cannot make an HTTP client for the webhook");
                return;
            }
        };
        let body = serde_json::to_vec(&event).unwrap_or_default();
        let request = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        match request.send().await {
            Ok(r) if r.status().is_success() => {
                tracing::info!(job = %event.job, event = event.event, "webhook sent");
            }
            Ok(r) => {
                tracing::warn!(job = %event.job, status = %r.status(), "webhook refused");
            }
            Err(e) => {
                tracing::warn!(job = %event.job, error = %e.without_url(), "webhook not sent");
            }
        }
    });
}
