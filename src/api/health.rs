//! `GET /health`: the health document as `application/health+json`, never cached.

use http::header::{self, HeaderValue};

use super::reply::{Response, json};
use crate::ops::health::Health;

/// The health document as a response: 200 for pass and warn, 503 for fail.
#[must_use]
pub fn answer(health: &Health) -> Response {
    let (status, document) = health.document();
    let mut response = json(status, &document, "application/health+json");
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
