//! Host to folder: the `Host` header picks `userdata/<folder>`, with `local` as the fallback.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Maps request hosts to the folders searched for their files.
#[derive(Debug, Clone)]
pub struct HostFolders {
    userdata: PathBuf,
    explicit: BTreeMap<String, String>,
}

/// The folder every host falls back to.
pub const FALLBACK: &str = "local";

impl HostFolders {
    /// Folders under `userdata`, with an explicit host map (keys compared case-insensitively).
    #[must_use]
    pub fn new(userdata: &Path, explicit: &BTreeMap<String, String>) -> Self {
        Self {
            userdata: userdata.to_owned(),
            explicit: explicit
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
        }
    }

    /// The folder name for a `Host` value (port ignored): the explicit map, else the first DNS
    /// label when it is a plain name with a folder, else `local`.
    #[must_use]
    pub fn folder_name(&self, host: Option<&str>) -> String {
        let Some(host) = host else {
            return FALLBACK.to_owned();
        };
        let host = host.to_ascii_lowercase();
        let name = strip_port(&host);
        if let Some(folder) = self.explicit.get(name) {
            return folder.clone();
        }
        let label = name.split('.').next().unwrap_or_default();
        let plain = !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && name.parse::<std::net::IpAddr>().is_err();
        if plain && self.userdata.join(label).is_dir() {
            label.to_owned()
        } else {
            FALLBACK.to_owned()
        }
    }

    /// Folders searched for a host's static files, in order: its own, then `local`.
    #[must_use]
    pub fn search_path(&self, host: Option<&str>) -> Vec<PathBuf> {
        let name = self.folder_name(host);
        let mut folders = vec![self.userdata.join(&name)];
        if name != FALLBACK {
            folders.push(self.userdata.join(FALLBACK));
        }
        folders
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    host.rsplit_once(':').map_or(host, |(name, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            name
        } else {
            host
        }
    })
}
