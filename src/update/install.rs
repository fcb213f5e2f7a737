//! `<root>/versions/`: each installed release in `versions/<version>/poziserver`, the pointer
//! `versions/current` naming the one to run, and the trial marker `state/update-trial.json`
//! that lets a start after a crash mid-switch put the previous version back. Nothing outside
//! `versions/` and that marker is ever written, moved or deleted by an update or a rollback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::UpdateError;

/// The executable's file name inside a version's folder.
#[must_use]
pub fn executable_name() -> String {
    format!("poziserver{}", std::env::consts::EXE_SUFFIX)
}

/// The `versions/` folder of a root.
#[derive(Debug, Clone)]
pub struct Versions {
    dir: PathBuf,
    state: PathBuf,
}

/// Written before a switch, removed when it ends either way: a start that finds it knows a
/// switch was cut short and restores `previous`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrialMarker {
    /// The version on trial.
    pub version: String,
    /// What `versions/current` named before.
    pub previous: Option<String>,
    /// When the trial started (RFC 3339).
    pub started: String,
    /// Where the switch is.
    #[serde(default)]
    pub stage: Stage,
    /// The executable that ran before the switch (where a failed handover goes back to).
    #[serde(default)]
    pub previous_binary: Option<PathBuf>,
}

/// Where a switch is, as its marker says (`"trial"`, `"handover"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Until the new version passed its trial.
    #[default]
    Trial,
    /// Once the old process re-executes into it, until the new process listens and is
    /// healthy.
    Handover,
}

/// Whether `name` is a version folder name (semver, so no path separators or dots alone).
#[must_use]
pub fn is_version(name: &str) -> bool {
    semver::Version::parse(name).is_ok()
}

impl Versions {
    /// The versions folder of `root` (created on use).
    #[must_use]
    pub fn new(root: &Path) -> Self {
        Self {
            dir: root.join("versions"),
            state: root.join("state"),
        }
    }

    /// The folder of `version`.
    #[must_use]
    pub fn folder(&self, version: &str) -> PathBuf {
        self.dir.join(version)
    }

    /// The executable of `version`.
    #[must_use]
    pub fn binary(&self, version: &str) -> PathBuf {
        self.folder(version).join(executable_name())
    }

    /// Where a download of `version` is written before it is verified (hidden, beside).
    #[must_use]
    pub fn partial(&self, version: &str) -> PathBuf {
        self.dir.join(format!(".{version}.download"))
    }

    fn pointer(&self) -> PathBuf {
        self.dir.join("current")
    }

    /// The version `versions/current` names, when it names an installed one.
    #[must_use]
    pub fn current(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.pointer()).ok()?;
        let name = text.trim();
        (is_version(name) && self.binary(name).is_file()).then(|| name.to_owned())
    }

    /// Points `versions/current` at `version` (`None`: back to the installed binary), replacing
    /// the pointer atomically.
    ///
    /// # Errors
    /// When the pointer cannot be written.
    pub fn set_current(&self, version: Option<&str>) -> Result<(), UpdateError> {
        let pointer = self.pointer();
        match version {
            None => match std::fs::remove_file(&pointer) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(UpdateError::io("cannot remove", &pointer)(e))
                }
                _ => Ok(()),
            },
            Some(version) => {
                std::fs::create_dir_all(&self.dir)
                    .map_err(UpdateError::io("cannot create", &self.dir))?;
                write_atomically(&pointer, format!("{version}\n").as_bytes())
            }
        }
    }

    /// Moves a verified download into `versions/<version>/`, executable.
    ///
    /// # Errors
    /// When the folder or file cannot be made.
    pub fn install(&self, version: &str, download: &Path) -> Result<PathBuf, UpdateError> {
        let folder = self.folder(version);
        std::fs::create_dir_all(&folder).map_err(UpdateError::io("cannot create", &folder))?;
        let binary = self.binary(version);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(download, std::fs::Permissions::from_mode(0o755))
                .map_err(UpdateError::io("cannot make executable", download))?;
        }
        std::fs::rename(download, &binary)
            .map_err(UpdateError::io("cannot move into place", &binary))?;
        sync_folder(&folder);
        Ok(binary)
    }

    fn marker(&self) -> PathBuf {
        self.state.join("update-trial.json")
    }

    /// Writes the trial marker.
    ///
    /// # Errors
    /// When it cannot be written.
    pub fn begin_trial(&self, marker: &TrialMarker) -> Result<(), UpdateError> {
        let text = serde_json::to_vec(marker).unwrap_or_default();
        write_atomically(&self.marker(), &text)
    }

    /// Removes the trial marker (loudly when it cannot: a start would then undo the switch).
    pub fn end_trial(&self) {
        match std::fs::remove_file(self.marker()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::error!(component = "updater", file = %self.marker().display(), error = %e, "cannot remove the trial marker: the next start will go back to the previous version");
            }
            _ => {}
        }
    }

    /// The marker of a switch cut short, if there is one.
    #[must_use]
    pub fn interrupted_trial(&self) -> Option<TrialMarker> {
        let text = std::fs::read(self.marker()).ok()?;
        let marker = serde_json::from_slice(&text).ok();
        if marker.is_none() {
            // Unreadable: it can only mislead a later start.
            self.end_trial();
        }
        marker
    }

    /// Removes installed versions beyond the newest `keep`, never `current` or `previous`, and
    /// only those in `installed` (folders an operator put here are not touched). Returns the
    /// versions removed.
    #[must_use]
    pub fn prune(
        &self,
        installed: &[String],
        keep: usize,
        protect: &[Option<String>],
    ) -> Vec<String> {
        let mut candidates: Vec<semver::Version> = installed
            .iter()
            .filter(|v| !protect.iter().flatten().any(|p| p == *v))
            .filter_map(|v| semver::Version::parse(v).ok())
            .collect();
        candidates.sort();
        let excess = candidates.len().saturating_sub(keep);
        let mut removed = Vec::new();
        for version in candidates.into_iter().take(excess) {
            let name = version.to_string();
            if std::fs::remove_dir_all(self.folder(&name)).is_ok() || !self.folder(&name).exists() {
                removed.push(name);
            }
        }
        removed
    }
}

/// Writes `path` through a temporary file beside it, flushed, then renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), UpdateError> {
    use std::io::Write;
    let temporary = path.with_extension("tmp");
    let written = std::fs::File::create(&temporary).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    written.map_err(UpdateError::io("cannot write", &temporary))?;
    std::fs::rename(&temporary, path).map_err(UpdateError::io("cannot replace", path))?;
    if let Some(parent) = path.parent() {
        sync_folder(parent);
    }
    Ok(())
}

/// Flushes a folder's entries (a rename is durable only then); best effort.
fn sync_folder(folder: &Path) {
    #[cfg(unix)]
    if let Ok(dir) = std::fs::File::open(folder) {
        let _ = dir.sync_all();
    }
    #[cfg(not(unix))]
    let _ = folder;
}

/// Largest output of a self-test command kept.
const MAX_OUTPUT: u64 = 64 * 1024;

/// Runs `binary` with `args`, bounded in time and output; its exit status, standard output and
/// standard error.
async fn run_bounded(
    binary: &Path,
    args: &[&std::ffi::OsStr],
) -> Result<(bool, String, String), String> {
    use tokio::io::AsyncReadExt;
    let mut child = tokio::process::Command::new(binary)
        .args(args)
        .env_remove(super::TRIAL_ENV)
        .env_remove(super::SUCCESSOR_ENV)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("no output pipes".to_owned());
    };
    let read = |pipe: Box<dyn tokio::io::AsyncRead + Unpin + Send>| async move {
        let mut text = Vec::new();
        let _ = pipe.take(MAX_OUTPUT).read_to_end(&mut text).await;
        String::from_utf8_lossy(&text).trim().to_owned()
    };
    let finished = async {
        let (out, err) = tokio::join!(read(Box::new(stdout)), read(Box::new(stderr)));
        let status = child.wait().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((status.success(), out, err))
    };
    tokio::time::timeout(Duration::from_secs(30), finished)
        .await
        .map_err(|_| "did not finish within 30 s".to_owned())?
}

/// The new binary's self-test: `version --json` must report `version` and this platform, and
/// `check-config` must accept the running config.
///
/// # Errors
/// What failed, in words.
pub async fn self_test(binary: &Path, version: &str, config_file: &Path) -> Result<(), String> {
    let (ok, out, err) = run_bounded(binary, &["version".as_ref(), "--json".as_ref()])
        .await
        .map_err(|e| format!("self-test `version --json`: {e}"))?;
    if !ok {
        return Err(format!("self-test `version --json` failed: {err}"));
    }
    let reported: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| format!("self-test `version --json` printed no JSON ({e}): {out:.200}"))?;
    let said = |key: &str| {
        reported
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned()
    };
    if said("version") != version {
        return Err(format!(
            "self-test: the binary reports version {:?}, the manifest says {version:?}",
            said("version")
        ));
    }
    let platform = crate::version::platform();
    if said("platform") != platform {
        return Err(format!(
            "self-test: the binary reports platform {:?}, this server is {platform}",
            said("platform")
        ));
    }
    let (ok, _, err) = run_bounded(binary, &["check-config".as_ref(), config_file.as_os_str()])
        .await
        .map_err(|e| format!("self-test `check-config`: {e}"))?;
    if !ok {
        return Err(format!(
            "self-test: the new version refuses the running config: {err}"
        ));
    }
    Ok(())
}
