//! The features of a GeoJSON FeatureCollection as the bytes of each feature object, read from
//! a stream without holding the file: each is then parsed from a slice, which serde_json does
//! several times faster than from a reader, byte by byte.
//!
//! A small scanner over the stream: it follows strings (with escapes) and nesting, finds the
//! top-level member `features`, and cuts out each object of that array. Everything else in the
//! file is skipped (but must nest correctly).

use std::io::BufRead;

/// The largest feature read (one feature is held in memory while it is parsed).
pub const MAX_FEATURE_BYTES: usize = 256 * 1024 * 1024;

/// An iterator over the feature objects of a FeatureCollection.
pub struct FeatureBytes<R> {
    reader: R,
    /// Nesting depth before the byte being read (1: inside the top object).
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// The key of the top object's member being read, once its string ended.
    key: Vec<u8>,
    /// Reading a key string of the top object.
    reading_key: bool,
    /// Whether the next string at depth 1 is a key.
    expect_key: bool,
    /// Inside the `features` array (at depth 2).
    in_features: bool,
    /// The feature being cut out.
    current: Option<Vec<u8>>,
    seen_features: bool,
    started: bool,
    done: bool,
    /// The offset in the file, for errors.
    offset: u64,
    /// The largest feature accepted, in bytes.
    limit: usize,
}

impl<R: BufRead> FeatureBytes<R> {
    /// Features from `reader`, each at most [`MAX_FEATURE_BYTES`].
    pub fn new(reader: R) -> Self {
        Self::with_limit(reader, MAX_FEATURE_BYTES)
    }

    /// Features from `reader`, each at most `limit` bytes.
    pub fn with_limit(reader: R, limit: usize) -> Self {
        Self {
            limit,
            reader,
            depth: 0,
            in_string: false,
            escaped: false,
            key: Vec::new(),
            reading_key: false,
            expect_key: false,
            in_features: false,
            current: None,
            seen_features: false,
            started: false,
            done: false,
            offset: 0,
        }
    }

    fn fail(&mut self, what: &str) -> Option<Result<Vec<u8>, String>> {
        self.done = true;
        Some(Err(format!("{what} (at byte {})", self.offset)))
    }
}

impl<R: BufRead> Iterator for FeatureBytes<R> {
    type Item = Result<Vec<u8>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            let buffer = match self.reader.fill_buf() {
                Ok(buffer) => buffer,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e.to_string()));
                }
            };
            if buffer.is_empty() {
                self.done = true;
                if self.depth != 0 || self.in_string || !self.started {
                    return Some(Err("the file ends before the GeoJSON does".to_owned()));
                }
                if !self.seen_features {
                    return Some(Err(
                        "not a FeatureCollection: no \"features\" array".to_owned()
                    ));
                }
                return None;
            }
            let mut used = 0;
            let mut finished: Option<Vec<u8>> = None;
            let mut error: Option<&'static str> = None;
            // Where the bytes of the feature being cut out start in this buffer.
            let mut start = 0;
            while used < buffer.len() {
                if self.in_string {
                    // Straight to the next quote or backslash.
                    let rest = &buffer[used..];
                    if self.escaped {
                        self.escaped = false;
                        if self.reading_key {
                            self.key.push(rest[0]);
                        }
                        used += 1;
                        continue;
                    }
                    match memchr::memchr2(b'"', b'\\', rest) {
                        None => {
                            if self.reading_key {
                                self.key.extend_from_slice(rest);
                            }
                            used = buffer.len();
                        }
                        Some(at) => {
                            if self.reading_key {
                                self.key.extend_from_slice(&rest[..at]);
                            }
                            if rest[at] == b'\\' {
                                self.escaped = true;
                            } else {
                                self.in_string = false;
                                self.reading_key = false;
                            }
                            used += at + 1;
                        }
                    }
                    continue;
                }
                if self.current.is_some() {
                    // Inside a feature only strings and braces matter here: serde_json checks
                    // everything else when the feature is parsed.
                    let rest = &buffer[used..];
                    let Some(at) = memchr::memchr3(b'"', b'{', b'}', rest) else {
                        used = buffer.len();
                        continue;
                    };
                    used += at + 1;
                    match rest[at] {
                        b'"' => self.in_string = true,
                        b'{' => {
                            self.depth += 1;
                            if self.depth > 4096 {
                                error = Some("the document nests too deeply");
                                break;
                            }
                        }
                        _ => {
                            self.depth -= 1;
                            if self.depth == 2 {
                                if let Some(mut current) = self.current.take() {
                                    current.extend_from_slice(&buffer[start..used]);
                                    finished = Some(current);
                                }
                                break;
                            }
                        }
                    }
                    continue;
                }
                let byte = buffer[used];
                used += 1;
                if self.depth == 2
                    && self.in_features
                    && !matches!(byte, b'{' | b']' | b',' | b' ' | b'\n' | b'\r' | b'\t')
                {
                    error = Some("a member of \"features\" is not an object");
                    break;
                }
                match byte {
                    b'"' => {
                        self.in_string = true;
                        if self.depth == 1 && self.expect_key {
                            self.reading_key = true;
                            self.expect_key = false;
                            self.key.clear();
                        }
                    }
                    b'{' | b'[' => {
                        if self.depth == 0 {
                            if byte != b'{' {
                                error = Some("not a GeoJSON object");
                                break;
                            }
                            self.started = true;
                            self.expect_key = true;
                        } else if self.depth == 1 && byte == b'[' && self.key == b"features" {
                            self.in_features = true;
                            self.seen_features = true;
                        } else if self.depth == 2 && self.in_features {
                            self.current = Some(Vec::with_capacity(256));
                            start = used - 1;
                        }
                        self.depth += 1;
                        if self.depth > 4096 {
                            error = Some("the document nests too deeply");
                            break;
                        }
                    }
                    b'}' | b']' => {
                        if self.depth == 0 {
                            error = Some("unbalanced brackets");
                            break;
                        }
                        self.depth -= 1;
                        if self.depth == 2 && self.in_features && byte == b'}' {
                            if let Some(mut current) = self.current.take() {
                                current.extend_from_slice(&buffer[start..used]);
                                finished = Some(current);
                            }
                            break;
                        }
                        if self.depth == 1 {
                            self.in_features = false;
                        }
                        if self.depth == 0 {
                            self.done = true;
                            break;
                        }
                    }
                    b',' if self.depth == 1 => self.expect_key = true,
                    b'n' | b't' | b'f' | b'0'..=b'9' | b'-' | b'.' | b'e' | b'E' | b'+' | b':' => {}
                    b' ' | b'\n' | b'\r' | b'\t' | b',' => {}
                    // A byte-order mark before the document.
                    0xEF | 0xBB | 0xBF if self.depth == 0 => {}
                    _ if self.depth == 0 => {
                        error = Some("not a GeoJSON object");
                        break;
                    }
                    _ => {}
                }
            }
            if finished.is_none()
                && let Some(current) = self.current.as_mut()
            {
                current.extend_from_slice(&buffer[start..used]);
                if current.len() > self.limit {
                    self.current = None;
                    self.reader.consume(used);
                    self.offset += used as u64;
                    return self.fail("a feature is larger than the largest read (256 MiB)");
                }
            }
            self.reader.consume(used);
            self.offset += used as u64;
            if let Some(what) = error {
                return self.fail(what);
            }
            if let Some(feature) = finished {
                return Some(Ok(feature));
            }
            if self.done {
                if !self.seen_features {
                    return Some(Err(
                        "not a FeatureCollection: no \"features\" array".to_owned()
                    ));
                }
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<Result<String, String>> {
        FeatureBytes::new(std::io::BufReader::with_capacity(7, text.as_bytes()))
            .map(|r| r.map(|b| String::from_utf8_lossy(&b).into_owned()))
            .collect()
    }

    #[test]
    fn features_are_cut_out_whatever_the_strings_and_members_around_them() {
        let text = r#"{"type": "FeatureCollection", "name": "x{[\"", "bbox": [1, 2, 3, 4],
            "crs": {"features": [{"no": 1}]},
            "features": [ {"type": "Feature", "properties": {"a": "}]\\\"{", "features": [1]}, "geometry": null},
                          {"type":"Feature","properties":{},"geometry":{"type":"Point","coordinates":[1,2]}} ],
            "after": {"x": [1]}}"#;
        let found = split(text);
        assert_eq!(found.len(), 2, "{found:?}");
        let first: serde_json::Value =
            serde_json::from_str(found[0].as_ref().unwrap_or_else(|e| panic!("{e}")))
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first["properties"]["a"], "}]\\\"{");
        let second: serde_json::Value =
            serde_json::from_str(found[1].as_ref().unwrap_or_else(|e| panic!("{e}")))
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(second["geometry"]["coordinates"][1], 2);
    }

    #[test]
    fn what_is_not_a_feature_collection_is_refused() {
        for bad in [
            "<html>",
            "[1, 2]",
            r#"{"type": "Feature"}"#,
            r#"{"features": [1]}"#,
            r#"{"features": [{"a": 1}"#,
            "",
        ] {
            let found = split(bad);
            assert!(found.iter().any(Result::is_err), "{bad}: {found:?}");
        }
        assert!(split(r#"{"type": "FeatureCollection", "features": []}"#).is_empty());
    }

    #[test]
    fn a_feature_past_the_limit_is_refused_without_being_held() {
        let big = format!(
            r#"{{"features": [{{"a": 1}}, {{"properties": {{"text": "{}"}}}}]}}"#,
            "x".repeat(1000)
        );
        let found: Vec<_> =
            FeatureBytes::with_limit(std::io::BufReader::with_capacity(64, big.as_bytes()), 100)
                .collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].is_ok());
        assert!(
            found[1].as_ref().is_err_and(|e| e.contains("larger than")),
            "{found:?}"
        );
    }
}
