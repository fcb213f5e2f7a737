//! Turning a request path into segments that can only name files inside a folder.
//!
//! The check is lexical: after one percent-decoding, every segment must be a plain file or
//! folder name. Symlinks that operators place inside `userdata` are then followed (they link
//! network shares in); a request path itself can never climb out.

use percent_encoding::percent_decode_str;

/// Why a request path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnsafePath(pub &'static str);

/// Windows device names, refused with or without an extension.
const DEVICES: &[&str] = &[
    "con", "prn", "aux", "nul", "com1", "com2", "com3", "com4", "com5", "com6", "com7", "com8",
    "com9", "lpt1", "lpt2", "lpt3", "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9", "conin$",
    "conout$",
];

/// Splits a raw (percent-encoded) URI path into safe segments.
///
/// # Errors
/// When the path is not valid UTF-8 after decoding, or any segment could escape the folder or
/// name something other than a plain file on Windows or Unix.
pub fn segments(raw: &str) -> Result<Vec<String>, UnsafePath> {
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| UnsafePath("path is not UTF-8"))?;
    let Some(rest) = decoded.strip_prefix('/') else {
        return Err(UnsafePath("path must start with /"));
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let parts: Vec<&str> = rest.split('/').collect();
    for (i, segment) in parts.iter().enumerate() {
        if segment.is_empty() {
            // A trailing slash names a folder (never listed); an empty segment elsewhere is `//`.
            if i == parts.len() - 1 {
                break;
            }
            return Err(UnsafePath("empty path segment"));
        }
        check(segment)?;
        out.push((*segment).to_owned());
    }
    Ok(out)
}

fn check(segment: &str) -> Result<(), UnsafePath> {
    if segment == "." || segment == ".." {
        return Err(UnsafePath("dot segments are not allowed"));
    }
    if segment.chars().any(|c| c.is_control()) {
        return Err(UnsafePath("control characters are not allowed"));
    }
    if segment.contains('\\') {
        return Err(UnsafePath("backslashes are not allowed"));
    }
    if segment.contains(':') {
        return Err(UnsafePath(
            "colons are not allowed (drive letters, alternate data streams)",
        ));
    }
    let lower = segment.to_ascii_lowercase();
    if lower.contains("%2e")
        || lower.contains("%2f")
        || lower.contains("%5c")
        || lower.contains("%00")
    {
        return Err(UnsafePath("double-encoded characters are not allowed"));
    }
    if segment.ends_with('.') || segment.ends_with(' ') || segment.starts_with(' ') {
        return Err(UnsafePath("names may not end with a dot or space"));
    }
    let stem = lower.split('.').next().unwrap_or_default().trim_end();
    if DEVICES.contains(&stem) {
        return Err(UnsafePath("device names are not allowed"));
    }
    if segment.contains(['<', '>', '"', '|', '?', '*']) {
        return Err(UnsafePath("characters reserved on Windows are not allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_split_into_segments() {
        assert_eq!(
            segments("/a/b%20c.json").unwrap_or_default(),
            ["a", "b c.json"]
        );
        assert_eq!(segments("/").unwrap_or_default(), Vec::<String>::new());
        assert_eq!(segments("/images/").unwrap_or_default(), ["images"]);
        assert_eq!(
            segments("/Ünïcode/名前.geojson").unwrap_or_default(),
            ["Ünïcode", "名前.geojson"]
        );
    }

    #[test]
    fn escapes_are_refused() {
        for bad in [
            "/../x",
            "/a/../../x",
            "/%2e%2e/x",
            "/%252e%252e/x",
            "/a%2f..%2fb",
            "/a\\\\b",
            "/a%5cb",
            "/C:/x",
            "/c:x",
            "/x.json::$DATA",
            "/CON",
            "/nul.txt",
            "/com1.json",
            "/a%00b",
            "//etc/passwd",
            "/x.",
            "/x%20",
            "/a/./b",
        ] {
            assert!(segments(bad).is_err(), "{bad} accepted");
        }
    }
}
