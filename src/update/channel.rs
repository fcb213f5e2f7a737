//! The release channel, from `<root>/updater/updater-config.json` as the original updater
//! reads it: `{"serverManifestFile": "manifest-server-testing.json"}` is testing,
//! `manifest-server-dev.json` dev; an absent or empty file, an empty object or an empty name is
//! production (`manifest-server.json`). Read at every poll, so a change needs no restart.

use std::path::Path;

use super::UpdateError;

/// The production manifest's file name.
pub const PRODUCTION_FILE: &str = "manifest-server.json";

/// Largest channel file read.
const MAX_BYTES: u64 = 64 * 1024;

/// A channel: the manifest file polled, and a name for logs and the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// The manifest's file name, appended to `update.manifest_base_url`.
    pub file: String,
    /// `production`, `testing`, `dev`, or the file's own stem.
    pub name: String,
}

impl Channel {
    /// The channel of a manifest file name (which must be a plain `.json` file name).
    ///
    /// # Errors
    /// A reason when the name could reach another folder or is not a `.json` file.
    pub fn from_file(file: &str) -> Result<Self, String> {
        let plain = !file.starts_with('.')
            && file.len() <= 128
            && file
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !plain || !file.ends_with(".json") {
            return Err(format!(
                "serverManifestFile {file:?} must be a plain file name ending in .json (letters, digits, '-', '_', '.')"
            ));
        }
        let stem = file.trim_end_matches(".json");
        let name = match stem.strip_prefix("manifest-server") {
            Some("") => "production".to_owned(),
            Some(rest) if rest.starts_with('-') && rest.len() > 1 => rest[1..].to_owned(),
            _ => stem.to_owned(),
        };
        Ok(Self {
            file: file.to_owned(),
            name,
        })
    }

    /// The production channel.
    #[must_use]
    pub fn production() -> Self {
        Self {
            file: PRODUCTION_FILE.to_owned(),
            name: "production".to_owned(),
        }
    }
}

/// `<root>/updater/updater-config.json`.
#[must_use]
pub fn file(root: &Path) -> std::path::PathBuf {
    root.join("updater").join("updater-config.json")
}

/// Reads the channel file under `root`.
///
/// # Errors
/// When the file exists but cannot be read, is not JSON (an empty file is fine), or names an
/// unsafe file.
pub fn read(root: &Path) -> Result<Channel, UpdateError> {
    use std::io::Read;
    let path = file(root);
    let fail = |reason: String| UpdateError::Channel {
        path: path.clone(),
        reason,
    };
    let mut text = String::new();
    match std::fs::File::open(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Channel::production()),
        Err(e) => return Err(fail(e.to_string())),
        Ok(f) => {
            f.take(MAX_BYTES + 1)
                .read_to_string(&mut text)
                .map_err(|e| fail(e.to_string()))?;
        }
    }
    if text.len() as u64 > MAX_BYTES {
        return Err(fail(format!("larger than {MAX_BYTES} bytes")));
    }
    // Notepad saves UTF-8 with a byte order mark.
    let text = text.trim_start_matches('\u{feff}').trim();
    if text.is_empty() {
        return Ok(Channel::production());
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| fail(format!("not valid JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(fail("must be a JSON object".to_owned()));
    };
    match object.get("serverManifestFile") {
        None | Some(serde_json::Value::Null) => Ok(Channel::production()),
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(Channel::production()),
        Some(serde_json::Value::String(s)) => Channel::from_file(s.trim()).map_err(fail),
        Some(_) => Err(fail("serverManifestFile must be a string".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_original_files() {
        let name = |f: &str| Channel::from_file(f).map(|c| c.name);
        assert_eq!(name("manifest-server.json").as_deref(), Ok("production"));
        assert_eq!(
            name("manifest-server-testing.json").as_deref(),
            Ok("testing")
        );
        assert_eq!(name("manifest-server-dev.json").as_deref(), Ok("dev"));
        assert_eq!(name("beta.json").as_deref(), Ok("beta"));
        for bad in [
            "../x.json",
            "a/b.json",
            ".hidden.json",
            "manifest",
            "x.json?q=1",
        ] {
            assert!(Channel::from_file(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn absent_empty_and_empty_object_are_production() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read(dir.path()).ok(), Some(Channel::production()));
        std::fs::create_dir_all(dir.path().join("updater")).unwrap_or_else(|e| panic!("{e}"));
        for text in [
            "",
            "  \n",
            "{}",
            "\u{feff}{}",
            "{\"serverManifestFile\": \"\"}",
        ] {
            std::fs::write(file(dir.path()), text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                read(dir.path()).ok(),
                Some(Channel::production()),
                "{text:?}"
            );
        }
        std::fs::write(
            file(dir.path()),
            "{\"serverManifestFile\": \"manifest-server-dev.json\"}",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            read(dir.path()).map(|c| c.name).ok().as_deref(),
            Some("dev")
        );
        std::fs::write(file(dir.path()), "[1]").unwrap_or_else(|e| panic!("{e}"));
        assert!(read(dir.path()).is_err());
    }
}
