//! Host to folder: the `Host` header picks `userdata/<folder>`, with `local` as the fallback.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long "does `userdata/<label>` exist" is trusted: a new site folder is used within this.
const FOLDER_CHECK_TTL: Duration = Duration::from_secs(1);

/// Maps request hosts to the folders searched for their files.
#[derive(Debug)]
pub struct HostFolders {
    userdata: PathBuf,
    explicit: BTreeMap<String, String>,
    /// Whether each label's folder exists, and when that was checked.
    exists: Mutex<HashMap<String, (Instant, bool)>>,
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
            exists: Mutex::new(HashMap::new()),
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
        if plain && self.folder_exists(label) {
            label.to_owned()
        } else {
            FALLBACK.to_owned()
        }
    }

    fn folder_exists(&self, label: &str) -> bool {
        let mut known = self
            .exists
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, exists)) = known.get(label)
            && at.elapsed() < FOLDER_CHECK_TTL
        {
            return *exists;
        }
        let exists = self.userdata.join(label).is_dir();
        known.insert(label.to_owned(), (Instant::now(), exists));
        exists
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
