//! `admin`: who may use `/admin/` (and the other operator endpoints): the addresses allowed, and
//! the hash of a bearer token when one is required.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Access to the operators' endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Client addresses allowed, as CIDR ranges (`10.1.0.0/16`) or single addresses; anything
    /// else gets 403. Default: this machine (loopback) only.
    pub allow: Vec<String>,
    /// When set, every request must also carry `Authorization: Bearer <token>` whose salted
    /// SHA-256 this is (`sha256:<salt hex>:<digest hex>`, as `poziserver admin token` prints).
    /// The server's own command line uses a token of its own, from `state/`.
    pub token_hash: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            allow: vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()],
            token_hash: None,
        }
    }
}

/// A CIDR range or a single address.
///
/// # Errors
/// A message when it is neither.
pub fn parse_range(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or a CIDR range such as 10.1.0.0/16"))
}

/// Reports each entry of the list at `path` that is not an address or a CIDR range.
fn range_issues(
    value: &serde_json::Value,
    path: &[&str],
    report: &mut dyn FnMut(&[super::Segment], String),
) {
    use super::Segment;
    let pointer: String = path.iter().map(|k| format!("/{k}")).collect();
    let ranges = value.pointer(&pointer).and_then(|v| v.as_array());
    for (i, range) in ranges.into_iter().flatten().enumerate() {
        if let Some(text) = range.as_str()
            && let Err(e) = parse_range(text)
        {
            let mut at: Vec<Segment> = path.iter().map(|k| Segment::Key((*k).to_owned())).collect();
            at.push(Segment::Index(i));
            report(&at, e);
        }
    }
}

/// Addresses and CIDR ranges of the config (`admin.allow`, `http.trusted_proxies`), matched
/// with IPv4-mapped IPv6 addresses taken as the IPv4 addresses they are.
#[derive(Debug, Clone, Default)]
pub struct IpRanges(Vec<ipnet::IpNet>);

impl IpRanges {
    /// The ranges of `texts` (validated: unparsable ones are left out).
    #[must_use]
    pub fn new(texts: &[String]) -> Self {
        Self(texts.iter().filter_map(|r| parse_range(r).ok()).collect())
    }

    /// Whether `ip` is in one of the ranges.
    #[must_use]
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|range| range.contains(&ip))
    }
}

/// A token hash as the config writes it: (salt, digest).
///
/// # Errors
/// A message when it is not `sha256:<salt hex>:<64 hex digits>`.
pub fn parse_token_hash(text: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
    let bad = || {
        "not a token hash: use the line `poziserver admin token` prints (sha256:<salt>:<digest>)"
            .to_owned()
    };
    let mut parts = text.trim().split(':');
    let (Some("sha256"), Some(salt), Some(digest), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let salt = from_hex(salt).filter(|s| s.len() >= 8).ok_or_else(bad)?;
    let digest = from_hex(digest).filter(|d| d.len() == 32).ok_or_else(bad)?;
    Ok((salt, digest))
}

/// Bytes as lower-case hexadecimal.
#[must_use]
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hexadecimal string.
#[must_use]
fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Checks the address ranges (`admin.allow`, `http.trusted_proxies`) and the token hash.
pub(super) fn issues(value: &serde_json::Value, report: &mut dyn FnMut(&[super::Segment], String)) {
    use super::Segment;
    let key = |k: &str| Segment::Key(k.to_owned());
    range_issues(value, &["admin", "allow"], report);
    range_issues(value, &["http", "trusted_proxies"], report);
    if let Some(text) = value.pointer("/admin/token_hash").and_then(|v| v.as_str())
        && let Err(e) = parse_token_hash(text)
    {
        report(&[key("admin"), key("token_hash")], e);
    }
}
