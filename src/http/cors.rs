//! CORS for the Pozi web app: allowed origins with wildcard subdomains, preflights, credentials
//! opt-in, and Chrome's Private Network Access preflight.

use crate::api::reply::Response;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use crate::config::CorsConfig;

/// Methods a preflight may ask for.
const METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS";
/// Response headers scripts may read.
const EXPOSED: &str = "Content-Length, Content-Range, Content-Encoding, ETag, Last-Modified";

/// The CORS policy.
#[derive(Debug, Clone)]
pub struct Cors {
    exact: Vec<String>,
    /// (scheme://, .domain) for `scheme://*.domain` patterns.
    wildcard: Vec<(String, String)>,
    credentials: bool,
    allowed_headers: HeaderValue,
    max_age: HeaderValue,
}

impl Cors {
    /// From the config.
    #[must_use]
    pub fn new(config: &CorsConfig) -> Self {
        let mut exact = Vec::new();
        let mut wildcard = Vec::new();
        for origin in &config.allowed_origins {
            let origin = origin.trim_end_matches('/').to_ascii_lowercase();
            match origin.split_once("://*.") {
                Some((scheme, domain)) => {
                    wildcard.push((format!("{scheme}://"), format!(".{domain}")))
                }
                None => exact.push(origin),
            }
        }
        Self {
            exact,
            wildcard,
            credentials: config.allow_credentials,
            allowed_headers: HeaderValue::from_str(&config.allowed_headers.join(", "))
                .unwrap_or(HeaderValue::from_static("")),
            max_age: HeaderValue::from(config.max_age_secs),
        }
    }

    /// Whether `origin` (as sent by a browser) may read responses.
    #[must_use]
    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        if self.exact.contains(&origin) {
            return true;
        }
        self.wildcard.iter().any(|(scheme, domain)| {
            origin.strip_prefix(scheme.as_str()).is_some_and(|host| {
                let (name, port) = host.split_once(':').unwrap_or((host, ""));
                // A host name (letters, digits, hyphens, dots) and a numeric port: nothing that
                // would end the host early (`evil.com?.pozi.com`, `evil.com#.pozi.com`).
                name.len() > domain.len()
                    && name.ends_with(domain.as_str())
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                    && port.bytes().all(|b| b.is_ascii_digit())
            })
        })
    }

    fn allowed<'a>(&self, origin: Option<&'a HeaderValue>) -> Option<&'a HeaderValue> {
        let origin = origin?;
        origin
            .to_str()
            .ok()
            .filter(|o| self.allows(o))
            .map(|_| origin)
    }

    /// The answer to a preflight, if `method`/`headers` make one.
    #[must_use]
    pub fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<Response> {
        if method != Method::OPTIONS || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let mut response = Response::default();
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(
            header::VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        if let Some(origin) = self.allowed(headers.get(header::ORIGIN)) {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            out.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(METHODS),
            );
            out.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                self.allowed_headers.clone(),
            );
            out.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
            if self.credentials {
                out.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            if headers.contains_key("access-control-request-private-network") {
                out.insert(
                    "access-control-allow-private-network",
                    HeaderValue::from_static("true"),
                );
            }
        }
        Some(response)
    }

    /// Adds CORS headers to an actual response for an allowed origin, and `Vary: Origin`.
    pub fn decorate(&self, origin: Option<&HeaderValue>, response: &mut Response) {
        let out = response.headers_mut();
        out.append(header::VARY, HeaderValue::from_static("Origin"));
        if let Some(origin) = self.allowed(origin) {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            out.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSED),
            );
            if self.credentials {
                out.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_subdomains_and_exact_origins() {
        let cors = Cors::new(&CorsConfig::default());
        assert!(cors.allows("https://gis01.pozi.com"));
        assert!(cors.allows("https://a.b.pozi.com"));
        assert!(cors.allows("http://localhost:3000"));
        assert!(!cors.allows("https://pozi.com"));
        assert!(!cors.allows("http://gis01.pozi.com"));
        assert!(!cors.allows("https://evilpozi.com"));
        assert!(!cors.allows("https://gis01.pozi.com.evil.com"));
        assert!(!cors.allows("http://localhost:3001"));
        for evil in [
            "https://evil.com?.pozi.com",
            "https://evil.com#.pozi.com",
            "https://evil.com/.pozi.com",
            "https://user@x.pozi.com",
            "https://x.pozi.com:443x",
        ] {
            assert!(!cors.allows(evil), "{evil} allowed");
        }
        assert!(cors.allows("https://x.pozi.com:8443"));
    }
}
