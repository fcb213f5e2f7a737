//! The real `poziserver` binary on a temporary root: started with `run`, read through its log,
//! its memory and child processes read from `/proc`, stopped with SIGTERM.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "shared test helpers"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_poziserver");

/// A running server process.
pub struct Process {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub url: String,
    child: Option<Child>,
}

/// Everything the log files of `root` say so far.
pub fn log_of(root: &Path) -> String {
    let mut all = String::new();
    if let Ok(entries) = std::fs::read_dir(root.join("logs")) {
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            all.push_str(&std::fs::read_to_string(path).unwrap_or_default());
        }
    }
    all
}

/// Waits up to `within` for the log of `root` to say `needle`; returns the whole log.
pub async fn wait_for_log(root: &Path, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let log = log_of(root);
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "the log never said {needle:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A temporary folder holding `root/` with `config` as its `config.json`.
fn new_root(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("userdata/local")).unwrap();
    std::fs::create_dir_all(root.join("state")).unwrap();
    std::fs::write(root.join("config.json"), config).unwrap();
    dir
}

impl Process {
    /// Writes `config` as the root's `config.json`, lets `prepare` put files in the root, and
    /// runs the binary on it listening on a free loopback port.
    pub async fn start(config: &str, prepare: impl FnOnce(&Path)) -> Self {
        let dir = new_root(config);
        Self::start_in(dir, prepare).await
    }

    /// Stops the process and hands back its folder, for a start on the same root.
    pub fn into_dir(mut self) -> tempfile::TempDir {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let placeholder = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, placeholder)
    }

    /// Runs the binary on the root in `dir` (as left by an earlier process), after `prepare`.
    pub async fn start_in(dir: tempfile::TempDir, prepare: impl FnOnce(&Path)) -> Self {
        Self::start_in_with(dir, &[], "127.0.0.1:0", prepare).await
    }

    /// [`Process::start`] on a given `listen` address (one that must stay the same across a
    /// re-execution, as an update's).
    pub async fn start_listening(config: &str, listen: &str, prepare: impl FnOnce(&Path)) -> Self {
        let dir = new_root(config);
        Self::start_in_with(dir, &[], listen, prepare).await
    }

    /// [`Process::start`] with extra environment variables.
    pub async fn start_with(
        config: &str,
        env: &[(&str, &str)],
        prepare: impl FnOnce(&Path),
    ) -> Self {
        let dir = new_root(config);
        Self::start_in_with(dir, env, "127.0.0.1:0", prepare).await
    }

    async fn start_in_with(
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
        listen: &str,
        prepare: impl FnOnce(&Path),
    ) -> Self {
        let root = dir.path().join("root");
        prepare(&root);
        // The earlier process's lines are not this one's.
        let _ = std::fs::remove_dir_all(root.join("logs"));
        let child = Command::new(BIN)
            .args(["run", "--root"])
            .arg(&root)
            .args(["--listen", listen])
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut process = Self {
            dir,
            root,
            url: String::new(),
            child: Some(child),
        };
        let log = wait_for_log(&process.root, "listening on ", Duration::from_secs(30)).await;
        process.url = log
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '"').next())
            .unwrap()
            .to_owned();
        process
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The loopback address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.url
            .rsplit("://")
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap()
    }

    pub fn log(&self) -> String {
        log_of(&self.root)
    }

    /// The certificate a client should trust: the organisation's when it is there and good,
    /// else the self-signed one.
    pub fn cert_pem(&self) -> Vec<u8> {
        let org = self.root.join("certificate.cer");
        std::fs::read(&org)
            .ok()
            .filter(|pem| reqwest::Certificate::from_pem(pem).is_ok() && pem.starts_with(b"-----"))
            .unwrap_or_else(|| std::fs::read(self.root.join("state/self-signed.cer")).unwrap())
    }

    /// A client trusting the server's certificate (HTTP/2 when offered).
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().unwrap()
    }

    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let cert = reqwest::Certificate::from_pem(&self.cert_pem()).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([cert])
            .no_proxy()
            .timeout(Duration::from_secs(60))
    }

    /// POST to an `/admin/` `path` with `X-Pozi-Admin: 1`, as the admin API asks of a POST.
    pub async fn post_admin(&self, path: &str) -> reqwest::Response {
        self.client()
            .post(self.url(path))
            .header("x-pozi-admin", "1")
            .send()
            .await
            .unwrap()
    }

    /// GET `path`: status, headers and body text.
    pub async fn get(
        &self,
        path: &str,
    ) -> (reqwest::StatusCode, reqwest::header::HeaderMap, String) {
        get_with(&self.client(), &self.url(path)).await
    }

    /// `(VmRSS, VmHWM)` in KiB: resident memory now and at its peak.
    pub fn memory_kb(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// The processes this server started that are still running, as (pid, command name).
    pub fn children(&self) -> Vec<(u32, String)> {
        let me = self.pid().to_string();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid …; comm may hold spaces, so split after its ')'.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let comm = head
                .split_once('(')
                .map(|(_, c)| c.to_owned())
                .unwrap_or_default();
            let mut fields = rest.split_whitespace();
            let state = fields.next().unwrap_or_default();
            if fields.next() == Some(me.as_str()) && state != "Z" {
                found.push((pid, comm));
            }
        }
        found
    }

    /// Sends SIGTERM, waits up to `within` for the process to exit, and hands back its folder.
    pub async fn terminate_keeping(
        mut self,
        within: Duration,
    ) -> (Option<ExitStatus>, tempfile::TempDir) {
        let placeholder = tempfile::tempdir().unwrap();
        let dir = std::mem::replace(&mut self.dir, placeholder);
        (self.terminate(within).await, dir)
    }

    /// Sends SIGTERM and waits up to `within` for the process to exit.
    pub async fn terminate(mut self, within: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// GET `url` with `client`: status, headers and body text (a broken body panics).
pub async fn get_with(
    client: &reqwest::Client,
    url: &str,
) -> (reqwest::StatusCode, reqwest::header::HeaderMap, String) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap();
    (status, headers, body)
}

/// Polls until `condition` holds, up to `within`.
pub async fn eventually(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback address, for a server that must keep its address across a restart of its
/// listener or a re-execution.
pub fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}
