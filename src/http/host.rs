//! Host to folder: the `Host` header picks `userdata/<folder>`, with `local` as the fallback.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long the list of site folders is trusted: a new site folder is used within this.
const FOLDER_LIST_TTL: Duration = Duration::from_secs(1);
/// A DNS label is at most this long; a longer first label names no folder.
const MAX_LABEL: usize = 63;

/// The folders in `userdata`, by lower-case name, and when they were listed.
type FolderList = (Instant, Arc<HashMap<String, String>>);

/// Maps request hosts to the folders searched for their files. Nothing here grows with the
/// hosts clients send: a host is looked up in the list of folders that exist (re-read at most
/// once a second), never remembered.
#[derive(Debug)]
pub struct HostFolders {
    userdata: PathBuf,
    explicit: BTreeMap<String, String>,
    folders: RwLock<Option<FolderList>>,
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
            folders: RwLock::new(None),
        }
    }

    /// The folder name for a `Host` value (port ignored): the explicit map, else the first DNS
    /// label when it is a plain name with a folder (compared case-insensitively), else `local`.
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
            && label.len() <= MAX_LABEL
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && name.parse::<std::net::IpAddr>().is_err();
        if !plain {
            return FALLBACK.to_owned();
        }
        self.folders()
            .get(label)
            .cloned()
            .unwrap_or_else(|| FALLBACK.to_owned())
    }

    /// The site folders that exist, listed again when the list is older than a second.
    fn folders(&self) -> Arc<HashMap<String, String>> {
        if let Ok(guard) = self.folders.read()
            && let Some((at, list)) = guard.as_ref()
            && at.elapsed() < FOLDER_LIST_TTL
        {
            return list.clone();
        }
        let mut list = HashMap::new();
        if let Ok(entries) = std::fs::read_dir(&self.userdata) {
            for entry in entries.flatten() {
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                // Symlinked folders count: operators link network shares in.
                if entry.path().is_dir() {
                    list.insert(name.to_ascii_lowercase(), name);
                }
            }
        }
        let list = Arc::new(list);
        if let Ok(mut guard) = self.folders.write() {
            *guard = Some((Instant::now(), list.clone()));
        }
        list
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
