//! Binding the listeners, and the note (`state/server.json`) that tells the command line and the
//! updater which process listens where.
//!
//! On Unix every listener is bound with `SO_REUSEPORT`, so that during an update the new
//! version can listen on the same addresses beside this one and take over without a refused
//! connection. So that two servers are never started on one address by mistake, a server that
//! is not taking over from its predecessor first checks each address with a plain bind, which
//! fails when anything listens there. A new version on trial listens only on a private loopback
//! port until the old one asks it to serve (see `docs/updates.md`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// The file (in `state/`) naming the running server's process and addresses, which the
/// command line reads to reach it (`poziserver sync run` asks a running server to run a job).
pub const SERVER_NOTE: &str = "server.json";

/// The note of a new version on trial (in `state/`): its private port, and whether it listens
/// on the configured addresses yet. The running server's note is not touched by it.
pub const TRIAL_NOTE: &str = "server-trial.json";

/// This process's note file: the trial's when on trial.
fn own_note() -> &'static str {
    if crate::update::on_trial() {
        TRIAL_NOTE
    } else {
        SERVER_NOTE
    }
}

/// A running server's note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerNote {
    /// Its process id.
    pub pid: u32,
    /// `https` or `http`.
    pub scheme: String,
    /// The addresses it listens on.
    pub listen: Vec<SocketAddr>,
    /// Whether it listens on the configured addresses (a new version on trial does not until
    /// it is asked to).
    #[serde(default = "yes")]
    pub public: bool,
    /// Why a new version on trial could not bind the configured addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_error: Option<String>,
}

fn yes() -> bool {
    true
}

impl ServerNote {
    /// Its addresses reachable over loopback (an unspecified address is asked on loopback), with
    /// the scheme.
    #[must_use]
    pub fn loopback(&self) -> Vec<(String, SocketAddr)> {
        self.listen
            .iter()
            .map(|&address| {
                let mut address = address;
                if address.ip().is_unspecified() {
                    address.set_ip(if address.is_ipv4() {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                (self.scheme.clone(), address)
            })
            .filter(|(_, a)| a.ip().is_loopback())
            .collect()
    }

    /// Writes the note of this process into `root`'s `state/` ([`TRIAL_NOTE`] on trial); a
    /// failure only costs the command line its way to this server.
    pub fn write(&self, root: &crate::root::Root) {
        let path = root.state_dir().join(own_note());
        let temporary = path.with_extension(format!("json.{}.tmp", self.pid));
        let text = serde_json::to_vec(self).unwrap_or_default();
        let written =
            std::fs::write(&temporary, text).and_then(|()| std::fs::rename(&temporary, &path));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "cannot note the listening addresses for the command line");
        }
    }
}

fn read_note(root: &crate::root::Root, file: &str) -> Option<ServerNote> {
    let text = std::fs::read(root.state_dir().join(file)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The note of the server running on `root`, when there is one.
#[must_use]
pub fn running_server(root: &crate::root::Root) -> Option<ServerNote> {
    read_note(root, SERVER_NOTE)
}

/// The note of a new version on trial on `root`, when there is one.
#[must_use]
pub fn trial_server(root: &crate::root::Root) -> Option<ServerNote> {
    read_note(root, TRIAL_NOTE)
}

/// Removes this process's note when it is still its own (a successor's is left alone).
pub fn remove_own_note(root: &crate::root::Root) {
    let file = own_note();
    if read_note(root, file).is_some_and(|note| note.pid == std::process::id()) {
        let _ = std::fs::remove_file(root.state_dir().join(file));
    }
}

fn bind_error(address: SocketAddr, e: &std::io::Error) -> String {
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => " (another program is using this port)",
        std::io::ErrorKind::PermissionDenied if address.port() < 1024 => {
            " (ports below 1024 need administrator rights or CAP_NET_BIND_SERVICE)"
        }
        _ => "",
    };
    format!("cannot listen on {address}: {e}{hint}")
}

/// Checks that nothing listens on `address` yet (a bind without `SO_REUSEPORT`, released at
/// once).
///
/// # Errors
/// Why it cannot be listened on.
pub fn check_free(address: SocketAddr) -> Result<(), String> {
    if address.port() == 0 {
        return Ok(());
    }
    std::net::TcpListener::bind(address)
        .map(drop)
        .map_err(|e| bind_error(address, &e))
}

/// Binds `address`, shared with a successor on Unix (`SO_REUSEPORT`).
///
/// # Errors
/// Why it cannot be listened on.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, String> {
    #[cfg(unix)]
    {
        let socket = if address.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        };
        let socket = socket
            .and_then(|s| {
                s.set_reuseaddr(true)?;
                s.set_reuseport(true)?;
                Ok(s)
            })
            .map_err(|e| bind_error(address, &e))?;
        socket.bind(address).map_err(|e| bind_error(address, &e))?;
        socket.listen(1024).map_err(|e| bind_error(address, &e))
    }
    #[cfg(not(unix))]
    {
        TcpListener::bind(address)
            .await
            .map_err(|e| bind_error(address, &e))
    }
}

/// Whether this start takes over from a trial process (the first listener start of a process
/// an old version re-executed into: the trial process still listens on the same addresses until
/// this one does). Later starts of the listener check their addresses as usual.
#[must_use]
pub fn taking_over() -> bool {
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    crate::update::switch::is_successor() && !TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst)
}
