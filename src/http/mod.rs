//! The HTTPS listener and everything a browser reads from it.
//!
//! One request pipeline, in this order (each step a module):
//! 1. `serve`: accept, TLS handshake in the connection's own task, HTTP/1.1 or HTTP/2 by ALPN,
//!    limits (connections, handshake, header read, idle, header size).
//! 2. `service`: CORS preflight answered; GET/HEAD of a non-API path straight to static files
//!    (steps 4–6), anything else to the router; panics caught (500 to that request alone); CORS
//!    headers added; access log.
//! 3. `routes` (warp): `/health`, the dataset APIs, reverse-proxy prefixes, then files (405 for
//!    other methods); rejections become JSON errors.
//! 4. `host`: the `Host` header picks `userdata/<folder>`, falling back to `userdata/local`.
//! 5. `safe_path`: the request path becomes segments that cannot leave the folder.
//! 6. `static_files`: content type, validators, ranges, compression, caching headers.

mod component;
mod cors;
mod host;
mod proxy;
mod routes;
mod serve;
mod service;
mod static_files;
pub mod tls;

pub use component::{HttpArgs, HttpComponent, Listening};

use http::StatusCode;
use http::header::{self, HeaderValue};
use warp::reply::Response;

/// A JSON error response: `{"error": …, "status": …, "detail": …}`.
#[must_use]
pub fn error_body(status: StatusCode, error: &str, detail: Option<&str>) -> Response {
    let mut body = serde_json::json!({ "status": status.as_u16(), "error": error });
    if let Some(detail) = detail {
        body["detail"] = serde_json::Value::from(detail);
    }
    let mut response = Response::new(body.to_string().into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
