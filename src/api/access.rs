//! Who may use the operators' endpoints: a client address in `admin.allow`, and, when
//! `admin.token_hash` is set, `Authorization: Bearer <token>` with that token. The server's own
//! command line, on this machine, uses a token the server writes at start to
//! `state/admin.token` (readable by the server's account only), which is accepted from loopback
//! addresses. Tokens are compared by their salted SHA-256, in constant time.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SecureRandom;
use http::StatusCode;

use super::error::ApiError;
use crate::config::AdminConfig;
use crate::config::admin::{parse_token_hash, to_hex};

/// A token's salted digest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TokenHash {
    salt: Vec<u8>,
    digest: Vec<u8>,
}

impl TokenHash {
    fn of(token: &str, salt: Vec<u8>) -> Self {
        Self {
            digest: digest(&salt, token),
            salt,
        }
    }

    fn matches(&self, token: &str) -> bool {
        if self.digest.is_empty() {
            return false;
        }
        aws_lc_rs::constant_time::verify_slices_are_equal(&digest(&self.salt, token), &self.digest)
            .is_ok()
    }

    fn line(&self) -> String {
        format!("sha256:{}:{}", to_hex(&self.salt), to_hex(&self.digest))
    }
}

/// SHA-256 of `salt` then `token`.
fn digest(salt: &[u8], token: &str) -> Vec<u8> {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(salt);
    context.update(token.as_bytes());
    context.finish().as_ref().to_vec()
}

fn random_bytes(count: usize) -> Option<Vec<u8>> {
    let mut buffer = vec![0u8; count];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut buffer)
        .ok()?;
    Some(buffer)
}

fn random_hex(bytes: usize) -> Option<String> {
    random_bytes(bytes).map(|b| to_hex(&b))
}

/// A new token and the `token_hash` line for the config (`poziserver admin token`).
#[must_use]
pub fn new_token() -> Option<(String, String)> {
    let token = random_hex(32)?;
    let salt = random_bytes(16)?;
    let line = TokenHash::of(&token, salt).line();
    Some((token, line))
}

/// The file the running server writes its command-line token to.
#[must_use]
pub fn local_token_file(root: &Path) -> PathBuf {
    root.join("state").join("admin.token")
}

/// The command line's token for the server running on `root`, when it can read it.
#[must_use]
pub fn read_local_token(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(local_token_file(root)).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

/// The command line's client for the server running on `root`: over loopback to this machine's
/// own server, whose certificate is for its public name (or self-signed), so it is not
/// verified; with the command line's token on every request when it can be read.
#[must_use]
pub fn local_client(root: &Path, timeout: std::time::Duration) -> Option<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = read_local_token(root)
        && let Ok(value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
    {
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    loopback_client_builder(timeout)
        .default_headers(headers)
        .build()
        .ok()
}

/// A client for a server of this root on loopback (a trial or re-executed version's health),
/// without the command line's token.
///
/// # Errors
/// When the TLS stack cannot be set up.
pub fn loopback_client(timeout: std::time::Duration) -> reqwest::Result<reqwest::Client> {
    loopback_client_builder(timeout).build()
}

/// This server on loopback: its certificate is for its public name (or self-signed), so it is
/// not verified.
fn loopback_client_builder(timeout: std::time::Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .timeout(timeout)
}

/// An answer's body as JSON: `Null` when it is not JSON or cannot be read.
pub(crate) trait JsonBody {
    /// The body as JSON.
    async fn json_body(self) -> serde_json::Value;
}

impl JsonBody for reqwest::Response {
    async fn json_body(self) -> serde_json::Value {
        self.bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
}

/// Whether `host` is a plain host (letters, digits, `-`, `.`) or a bracketed IPv6 address, with
/// an optional port: nothing that could change a URL or a document it is written into.
#[must_use]
pub fn plain_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, port)) if v6.parse::<std::net::Ipv6Addr>().is_ok() => ("v6", port),
            _ => return false,
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, port),
            None => (host, ""),
        }
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .or(if name == "v6" { None } else { Some(port) })
            .is_some_and(|p| {
                !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
            });
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
    port_ok && name_ok
}

/// The name in a `Host` value, lowercase, without its port, brackets or trailing dot; `None`
/// when it is not a plain host.
#[must_use]
pub fn host_name(host: &str) -> Option<String> {
    if !plain_host(host) {
        return None;
    }
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(v6, _)| v6),
        None => host.split_once(':').map_or(host, |(name, _)| name),
    };
    Some(name.trim_end_matches('.').to_ascii_lowercase())
}

/// The access rules of the operators' endpoints.
#[derive(Debug, Clone)]
pub struct AdminAccess {
    /// Names the server answers the operators' endpoints under (`http.host_names`).
    names: Vec<String>,
    allow: crate::config::admin::IpRanges,
    token: Option<TokenHash>,
    local: Option<TokenHash>,
}

/// How a request was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// By address only (no token is configured); a state-changing request must also carry
    /// `X-Pozi-Admin: 1`.
    ByAddress,
    /// With a bearer token (a web page cannot send one).
    ByToken,
}

impl AdminAccess {
    /// The rules of `config` (validated), and the command line's token when the server wrote
    /// one.
    #[must_use]
    pub fn new(config: &AdminConfig, names: &[String], local: Option<&str>) -> Self {
        Self {
            names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
            allow: crate::config::admin::IpRanges::new(&config.allow),
            // A hash that does not parse (validation refuses it first) lets no token in.
            token: config.token_hash.as_deref().map(|t| {
                parse_token_hash(t).map_or_else(
                    |_| TokenHash {
                        salt: Vec::new(),
                        digest: Vec::new(),
                    },
                    |(salt, digest)| TokenHash { salt, digest },
                )
            }),
            local: local.and_then(|token| {
                let salt = random_bytes(16)?;
                Some(TokenHash::of(token, salt))
            }),
        }
    }

    /// Only loopback, no token: the rules when nothing is configured.
    #[must_use]
    pub fn loopback_only() -> Self {
        Self::new(&AdminConfig::default(), &[], None)
    }

    /// Whether `host` (a `Host` header) is one of the server's names, an address or localhost.
    fn trusted_host(&self, host: &str) -> bool {
        host_name(host).is_some_and(|name| {
            name == "localhost" || name.parse::<IpAddr>().is_ok() || self.names.contains(&name)
        })
    }

    /// Writes a new command-line token to `state/admin.token` (only the server's account can
    /// read it) and returns it; `None`, loudly, when it cannot.
    #[must_use]
    pub fn create_local_token(root: &Path) -> Option<String> {
        let token = random_hex(32)?;
        let path = local_token_file(root);
        let written = write_private(&path, token.as_bytes());
        match written {
            Ok(()) => Some(token),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot write the command line's admin token; `poziserver sync run` and `update` cannot reach this server");
                None
            }
        }
    }

    /// Lets a request from `peer` with `authorization` in, or says why not (403, logged with the
    /// address).
    ///
    /// # Errors
    /// A 403 naming what is missing: an allowed address, or the right token.
    pub fn check(&self, request: &Caller<'_>) -> Result<Admitted, ApiError> {
        self.decide(request).map_err(|why| {
            log_refusal(request.peer.to_canonical(), &why);
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", Some(why))
        })
    }

    /// Whether the rules let a viewer in (for what a page shows; nothing is logged).
    #[must_use]
    pub fn admits(&self, request: &Caller<'_>) -> bool {
        self.decide(request).is_ok()
    }

    fn decide(&self, request: &Caller<'_>) -> Result<Admitted, String> {
        let peer = request.peer.to_canonical();
        let authorization = request.authorization;
        let bearer = authorization
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        // The command line on this machine, which could read the server's state/.
        if let (Some(token), Some(local)) = (bearer, &self.local)
            && peer.is_loopback()
            && local.matches(token)
        {
            return Ok(Admitted::ByToken);
        }
        if !self.allow.contains(peer) {
            return Err(format!(
                "{peer} is not allowed to use the operators' endpoints (admin.allow)"
            ));
        }
        // A proxy on this machine makes every client look local: what it forwards is not let in
        // by address.
        let by_address = if request.forwarded {
            Err("a request through a proxy needs the admin token (admin.token_hash)".to_owned())
        } else {
            Ok(Admitted::ByAddress)
        };
        // A page served under another name (DNS rebinding) must not reach these endpoints.
        if let Some(host) = request.host
            && !self.trusted_host(host)
        {
            return Err(format!(
                "the operators' endpoints answer only under this server's names (http.host_names), an address or localhost, not {host:?}"
            ));
        }
        match (&self.token, bearer) {
            (None, Some(_) | None) => by_address,
            (Some(hash), Some(token)) if hash.matches(token) => Ok(Admitted::ByToken),
            (Some(_), Some(_)) => Err("the bearer token is not the configured one".to_owned()),
            (Some(_), None) => Err(
                "a token is required: send Authorization: Bearer <token> (admin.token_hash)"
                    .to_owned(),
            ),
        }
    }
}

/// Logs a refused request, at most one a second (a client retrying must not flood the log); the
/// ones left out are counted in the next line.
fn log_refusal(peer: IpAddr, why: &str) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static LAST: AtomicU64 = AtomicU64::new(0);
    static SKIPPED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST.swap(now, Relaxed) == now {
        SKIPPED.fetch_add(1, Relaxed);
        return;
    }
    let skipped = SKIPPED.swap(0, Relaxed);
    tracing::warn!(client = %peer, more_refused = skipped, "admin request refused: {why}");
}

/// What the access rules look at in a request.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The client's address.
    pub peer: IpAddr,
    /// Its `Authorization` header.
    pub authorization: Option<&'a [u8]>,
    /// Its `Host` (or `:authority`).
    pub host: Option<&'a str>,
    /// Whether it carries `Forwarded` or `X-Forwarded-For` (it came through a proxy).
    pub forwarded: bool,
}

impl<'a> Caller<'a> {
    /// The access facts of a request from `peer` with `headers` (`via_trusted_proxy`: it came
    /// through a proxy in `http.trusted_proxies`, which gave `peer` as the client).
    #[must_use]
    pub fn of(peer: IpAddr, headers: &'a http::HeaderMap, via_trusted_proxy: bool) -> Self {
        Self {
            peer,
            authorization: headers
                .get(http::header::AUTHORIZATION)
                .map(http::HeaderValue::as_bytes),
            host: headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok()),
            forwarded: via_trusted_proxy
                || headers.contains_key(http::header::FORWARDED)
                || headers.contains_key("x-forwarded-for"),
        }
    }
}

/// Writes `bytes` to `path` readable by this account only (on Unix), replacing it.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temporary = path.with_extension("token.tmp");
    let _ = std::fs::remove_file(&temporary);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn caller<'a>(peer: &str, authorization: Option<&'a [u8]>) -> Caller<'a> {
        Caller {
            peer: ip(peer),
            authorization,
            host: None,
            forwarded: false,
        }
    }

    #[test]
    fn addresses_outside_the_allow_list_are_refused() {
        let config = AdminConfig {
            allow: vec!["127.0.0.1/32".to_owned(), "10.1.0.0/16".to_owned()],
            token_hash: None,
        };
        let access = AdminAccess::new(&config, &[], None);
        assert_eq!(
            access.check(&caller("127.0.0.1", None)).ok(),
            Some(Admitted::ByAddress)
        );
        assert_eq!(
            access.check(&caller("::ffff:10.1.2.3", None)).ok(),
            Some(Admitted::ByAddress)
        );
        assert!(access.check(&caller("127.0.0.2", None)).is_err());
        assert!(access.check(&caller("10.2.0.1", None)).is_err());
    }

    #[test]
    fn a_configured_token_is_required_and_compared_by_hash() {
        let Some((token, line)) = new_token() else {
            panic!("no randomness")
        };
        let config = AdminConfig {
            allow: vec!["0.0.0.0/0".to_owned()],
            token_hash: Some(line),
        };
        let access = AdminAccess::new(&config, &[], Some("local-secret"));
        let bearer = |t: &str| format!("Bearer {t}");
        let (nope, right, local) = (bearer("nope"), bearer(&token), bearer("local-secret"));
        assert!(access.check(&caller("192.0.2.7", None)).is_err());
        assert!(
            access
                .check(&caller("192.0.2.7", Some(nope.as_bytes())))
                .is_err()
        );
        assert_eq!(
            access
                .check(&caller("192.0.2.7", Some(right.as_bytes())))
                .ok(),
            Some(Admitted::ByToken)
        );
        // The command line's token: from loopback only.
        assert!(
            access
                .check(&caller("192.0.2.7", Some(local.as_bytes())))
                .is_err()
        );
        assert_eq!(
            access
                .check(&caller("127.0.0.1", Some(local.as_bytes())))
                .ok(),
            Some(Admitted::ByToken)
        );
    }

    #[test]
    fn proxied_requests_foreign_hosts_and_bad_hashes_are_refused() {
        let names = vec!["local.pozi.com".to_owned()];
        let access = AdminAccess::new(&AdminConfig::default(), &names, None);
        let mut request = caller("127.0.0.1", None);
        // Through a proxy on this machine: not let in by address.
        request.forwarded = true;
        assert!(access.check(&request).is_err());
        request.forwarded = false;
        for host in [
            "local.pozi.com",
            "LOCAL.pozi.com:8443",
            "127.0.0.1:8443",
            "[::1]:443",
            "localhost",
        ] {
            request.host = Some(host);
            assert!(access.check(&request).is_ok(), "{host}");
        }
        // A name rebound to this machine by someone else's DNS.
        request.host = Some("evil.example:443");
        assert!(access.check(&request).is_err());
        // A token hash that does not parse lets nothing in.
        let broken = AdminConfig {
            allow: vec!["127.0.0.0/8".to_owned()],
            token_hash: Some("sha256:zz".to_owned()),
        };
        let access = AdminAccess::new(&broken, &[], None);
        let any = b"Bearer anything".as_slice();
        assert!(access.check(&caller("127.0.0.1", Some(any))).is_err());
        assert!(access.check(&caller("127.0.0.1", None)).is_err());
    }
}
