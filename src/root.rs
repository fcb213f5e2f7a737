//! The installation root: its folders, and the embedded sample laid out on first start.

use std::path::{Path, PathBuf};

/// Files written into an empty root so the server is useful at once, as (path, bytes).
const SAMPLE: &[(&str, &[u8])] = &[
    (
        "userdata/local/resourcecheck/local.json",
        include_bytes!("../sample/userdata/local/resourcecheck/local.json"),
    ),
    (
        "userdata/local/naturalearth_cities.geojson",
        include_bytes!("../sample/userdata/local/naturalearth_cities.geojson"),
    ),
    (
        "userdata/local/naturalearth_lowres.gpkg",
        include_bytes!("../sample/userdata/local/naturalearth_lowres.gpkg"),
    ),
    (
        "updater/updater-config.json",
        b"{\"serverManifestFile\": \"manifest-server.json\"}\n",
    ),
    ("config.json", include_bytes!("../config.example.json")),
];

/// Folders every root has.
const FOLDERS: &[&str] = &["userdata/local", "state", "logs", "versions", "updater"];

/// A root folder that could not be laid out.
#[derive(Debug, thiserror::Error)]
#[error("cannot prepare installation root {path}: {source}")]
pub struct RootError {
    /// The folder or file that failed.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// The installation root and the paths inside it.
#[derive(Debug, Clone)]
pub struct Root {
    path: PathBuf,
}

impl Root {
    /// A root at `path` (made absolute against the current directory).
    ///
    /// # Errors
    /// When the current directory cannot be read.
    pub fn new(path: &Path) -> Result<Self, RootError> {
        let path = std::path::absolute(path).map_err(|source| RootError {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self { path })
    }

    /// The root folder.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path from the config, resolved against the root when relative.
    #[must_use]
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.path.join(path)
    }

    /// `<root>/state`, the server's own SQLite state.
    #[must_use]
    pub fn state_dir(&self) -> PathBuf {
        self.path.join("state")
    }

    /// `<root>/config.json`.
    #[must_use]
    pub fn config_file(&self) -> PathBuf {
        self.path.join("config.json")
    }

    /// Holds `state/server.lock` for as long as the returned file lives: one server per root
    /// (a new version on trial runs beside the old one without it).
    ///
    /// # Errors
    /// A message when another process holds it, or the file cannot be opened.
    pub fn lock_for_server(&self) -> Result<std::fs::File, String> {
        let path = self.state_dir().join("server.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(format!(
                "another poziserver is running on the root {} (it holds {}); stop it first",
                self.path.display(),
                path.display()
            )),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(format!("cannot lock {}: {e}", path.display()))
            }
        }
    }

    /// Creates the folders, and writes each sample file that is missing. Existing files are
    /// never overwritten. Returns the files written.
    ///
    /// # Errors
    /// When a folder or file cannot be created.
    pub fn lay_out(&self) -> Result<Vec<PathBuf>, RootError> {
        let fail = |path: &Path| {
            let path = path.to_owned();
            move |source| RootError { path, source }
        };
        for folder in FOLDERS {
            let dir = self.path.join(folder);
            std::fs::create_dir_all(&dir).map_err(fail(&dir))?;
        }
        let mut written = Vec::new();
        // Only a root with no user data yet gets the sample data; config.json is always
        // provided when missing.
        let fresh = std::fs::read_dir(self.path.join("userdata/local"))
            .map_err(fail(&self.path.join("userdata/local")))?
            .next()
            .is_none();
        for (relative, bytes) in SAMPLE {
            let file = self.path.join(relative);
            let is_sample_data = relative.starts_with("userdata/");
            if file.exists() || (is_sample_data && !fresh) {
                continue;
            }
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).map_err(fail(parent))?;
            }
            std::fs::write(&file, bytes).map_err(fail(&file))?;
            written.push(file);
        }
        Ok(written)
    }
}
