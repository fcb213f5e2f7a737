//! Requests that come through a trusted proxy (`http.trusted_proxies`): the client's address,
//! scheme, host and path prefix are taken from `Forwarded` (RFC 7239) or, without it, from
//! `X-Forwarded-For/Proto/Host/Prefix`. From any other peer those headers are ignored.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderValue};

use crate::api::access::plain_host;

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct Trusted(crate::config::admin::IpRanges);

/// What a trusted proxy said about the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// The client's address (the nearest one that is not itself a trusted proxy).
    pub client: Option<IpAddr>,
    /// `https` or `http`, as the client used.
    pub https: Option<bool>,
    /// The `Host` the client asked for.
    pub host: Option<HeaderValue>,
    /// The path prefix the proxy serves this server under (`/gis`), without a trailing slash.
    pub prefix: Option<String>,
}

/// A path prefix as a request may carry it: `/` and then letters, digits, `-`, `_`, `.`, `/`,
/// with no `..` segment.
fn safe_prefix(text: &str) -> Option<String> {
    let text = text.trim().trim_end_matches('/');
    let plain = text.starts_with('/')
        && text.len() <= 256
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
        && !text.split('/').any(|s| s == ".." || s == ".");
    plain.then(|| text.to_owned())
}

/// An address from a `for=` or `X-Forwarded-For` item (`192.0.2.4`, `192.0.2.4:80`,
/// `[2001:db8::1]:4711`, `2001:db8::1`), or `None` (`unknown`, an obfuscated name).
fn address(item: &str) -> Option<IpAddr> {
    let item = item.trim().trim_matches('"');
    if let Ok(ip) = item.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = item.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    item.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
}

fn all<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

impl Trusted {
    /// The proxies in `ranges` (validated: unparsable ones are left out).
    #[must_use]
    pub fn new(ranges: &[String]) -> Self {
        Self(crate::config::admin::IpRanges::new(ranges))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.contains(ip)
    }

    /// What the proxy said, when `peer` is trusted; `None` otherwise.
    #[must_use]
    pub fn read(&self, peer: IpAddr, headers: &HeaderMap) -> Option<Forwarded> {
        if !self.trusts(peer) {
            return None;
        }
        let mut fors = Vec::new();
        let (mut proto, mut host) = (None, None);
        // `X-Forwarded-For` first: a proxy that sets it (nginx, IIS) may pass a client's own
        // `Forwarded` on untouched. `Forwarded` only when there is no `X-Forwarded-For`.
        if !headers.contains_key("x-forwarded-for") && headers.contains_key(header::FORWARDED) {
            // RFC 7239: elements separated by commas, pairs by semicolons. Every `for=` makes
            // the chain; scheme and host are the nearest proxy's, the last element's.
            let elements: Vec<&str> = all(headers, "forwarded").collect();
            for (i, element) in elements.iter().enumerate() {
                let last = i + 1 == elements.len();
                for pair in element.split(';') {
                    let Some((name, value)) = pair.split_once('=') else {
                        continue;
                    };
                    let value = value.trim().trim_matches('"');
                    match name.trim().to_ascii_lowercase().as_str() {
                        "for" => fors.push(address(value)),
                        "proto" if last => proto = Some(value.to_ascii_lowercase()),
                        "host" if last => host = Some(value.to_owned()),
                        _ => {}
                    }
                }
            }
        } else {
            fors = all(headers, "x-forwarded-for").map(address).collect();
            proto = all(headers, "x-forwarded-proto")
                .last()
                .map(str::to_ascii_lowercase);
            host = all(headers, "x-forwarded-host").last().map(str::to_owned);
        }
        // From the nearest: proxies this server trusts are passed over; the first other
        // address is the client.
        let mut client = None;
        for ip in fors.iter().rev() {
            match ip {
                Some(ip) if self.trusts(*ip) => client = Some(*ip),
                Some(ip) => {
                    client = Some(*ip);
                    break;
                }
                None => break,
            }
        }
        Some(Forwarded {
            client,
            https: match proto.as_deref() {
                Some("https") => Some(true),
                Some("http") => Some(false),
                _ => None,
            },
            host: host
                .filter(|h| plain_host(h))
                .and_then(|h| HeaderValue::from_str(&h).ok()),
            prefix: all(headers, "x-forwarded-prefix")
                .last()
                .and_then(safe_prefix),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                *name,
                HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn only_trusted_peers_are_believed_and_the_client_is_the_nearest_untrusted_address() {
        let trusted = Trusted::new(&["127.0.0.1/32".to_owned(), "10.0.0.0/8".to_owned()]);
        let sent = headers(&[
            ("x-forwarded-for", "198.51.100.1, 203.0.113.9, 10.1.2.3"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "maps.example.org"),
            ("x-forwarded-prefix", "/gis/"),
        ]);
        assert_eq!(trusted.read(ip("192.0.2.1"), &sent), None);
        let seen = trusted.read(ip("127.0.0.1"), &sent);
        assert_eq!(
            seen,
            Some(Forwarded {
                client: Some(ip("203.0.113.9")),
                https: Some(true),
                host: Some(HeaderValue::from_static("maps.example.org")),
                prefix: Some("/gis".to_owned()),
            })
        );
    }

    #[test]
    fn forwarded_is_read_as_rfc_7239_writes_it_and_bad_values_are_dropped() {
        let trusted = Trusted::new(&["127.0.0.1".to_owned()]);
        let sent = headers(&[
            (
                "forwarded",
                r#"for="[2001:db8::7]:4711";proto=https;host=maps.example.org"#,
            ),
            ("x-forwarded-prefix", "/../etc"),
        ]);
        let seen = trusted.read(ip("127.0.0.1"), &sent).unwrap_or_default();
        assert_eq!(seen.client, Some(ip("2001:db8::7")));
        assert_eq!(seen.https, Some(true));
        assert_eq!(
            seen.host,
            Some(HeaderValue::from_static("maps.example.org"))
        );
        assert_eq!(seen.prefix, None);
        let bad = headers(&[
            ("x-forwarded-host", "evil/path"),
            ("x-forwarded-proto", "gopher"),
        ]);
        let seen = trusted.read(ip("127.0.0.1"), &bad).unwrap_or_default();
        assert_eq!((seen.host, seen.https), (None, None));
    }
}
