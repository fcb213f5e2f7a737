//! `GET /health`: the health document as `application/health+json`, never cached; `/health/live`
//! (the process answers) and `/health/ready` (no component failed) for load balancers and
//! service managers.

use http::header::{self, HeaderValue};

use super::reply::{Response, json};
use crate::ops::health::Health;

/// The health document as a response: 200 for pass and warn, 503 for fail.
#[must_use]
pub fn answer(health: &Health) -> Response {
    let (status, document) = health.document();
    reply(status, &document)
}

/// `/health/live`: the process answers.
#[must_use]
pub fn live() -> Response {
    reply(http::StatusCode::OK, &serde_json::json!({"status": "pass"}))
}

/// `/health/ready`: 200 while no component has failed, else 503.
#[must_use]
pub fn ready(health: &Health) -> Response {
    let (status, document) = health.ready();
    reply(status, &document)
}

fn reply(status: http::StatusCode, document: &serde_json::Value) -> Response {
    let mut response = json(status, document, "application/health+json");
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `/metrics`: the Prometheus text format, never cached.
#[must_use]
pub fn metrics() -> Response {
    let text = crate::ops::metrics::global()
        .map(crate::ops::metrics::Metrics::render)
        .unwrap_or_default();
    uncached(text, "text/plain; version=0.0.4; charset=utf-8")
}

/// The status page's HTML, never cached.
#[must_use]
pub fn html(page: String) -> Response {
    uncached(page, "text/html; charset=utf-8")
}

fn uncached(body: String, content_type: &'static str) -> Response {
    let mut response = http::Response::new(super::reply::Body::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
