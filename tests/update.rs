//! The updater against a release server on loopback, started by each test, serving real
//! minisign-signed manifests and real binaries: copies of the built binary (debug information
//! stripped) with their debug-build test slot patched to report another version, or to
//! misbehave on purpose. Each bad release is refused or rolled back with the old version still
//! answering and the reason journaled; a good one is switched to while requests keep coming.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::collections::HashMap;
use std::io::Cursor;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::process::{BIN, Process, free_address};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How the release server sends a file.
#[derive(Clone)]
enum Body {
    /// All of it, with its length, an `ETag`, and 304 for a matching `If-None-Match`.
    Whole(Vec<u8>),
    /// `Content-Length` of all of it, then only the first `usize` bytes and a close.
    Truncated(Vec<u8>, usize),
    /// No `Content-Length`: the bytes, then a close.
    Unbounded(Vec<u8>),
}

/// A release server on loopback.
struct Release {
    addr: SocketAddr,
    files: Arc<Mutex<HashMap<String, Body>>>,
    not_modified: Arc<AtomicUsize>,
}

fn etag(bytes: &[u8]) -> String {
    format!("\"{}\"", hex(bytes))
}

fn hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Release {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let files: Arc<Mutex<HashMap<String, Body>>> = Arc::default();
        let not_modified = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (files.clone(), not_modified.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (files, counted) = (served.clone(), counted.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                        if head == [0x16] {
                            // A TLS handshake on this plain HTTP port, answered as nginx does.
                            let _ = stream
                                .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let if_none_match = head.lines().find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("if-none-match")
                            .then(|| value.trim().to_owned())
                    });
                    let body = files.lock().unwrap().get(&path).cloned();
                    let (head, bytes): (String, &[u8]) = match &body {
                        None => (
                            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
                            &[],
                        ),
                        Some(Body::Whole(b)) if if_none_match.as_deref() == Some(&etag(b)) => {
                            counted.fetch_add(1, Ordering::SeqCst);
                            (
                                format!("HTTP/1.1 304 Not Modified\r\nETag: {}\r\nConnection: close\r\n\r\n", etag(b)),
                                &[],
                            )
                        }
                        Some(Body::Whole(b)) => (
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {}\r\nConnection: close\r\n\r\n",
                                b.len(),
                                etag(b)
                            ),
                            b,
                        ),
                        Some(Body::Truncated(b, sent)) => (
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", b.len()),
                            &b[..*sent],
                        ),
                        Some(Body::Unbounded(b)) => {
                            ("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_owned(), b)
                        }
                    };
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(bytes).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self {
            addr,
            files,
            not_modified,
        }
    }

    fn base(&self) -> String {
        format!("http://{}/releases/", self.addr)
    }

    fn put(&self, path: &str, body: Body) {
        self.files.lock().unwrap().insert(path.to_owned(), body);
    }

    fn remove(&self, path: &str) {
        self.files.lock().unwrap().remove(path);
    }

    /// Publishes `manifest` as the channel file `file`, signed by `key` (unsigned: `None`).
    fn publish(&self, file: &str, manifest: &[u8], key: Option<&minisign::KeyPair>) {
        self.put(&format!("/releases/{file}"), Body::Whole(manifest.to_vec()));
        let signature = format!("/releases/{file}.minisig");
        match key {
            Some(key) => self.put(&signature, Body::Whole(sign(key, manifest).into_bytes())),
            None => self.remove(&signature),
        }
    }
}

/// A minisign signature of `bytes`, made by the minisign crate.
fn sign(key: &minisign::KeyPair, bytes: &[u8]) -> String {
    minisign::sign(Some(&key.pk), &key.sk, Cursor::new(bytes), None, None)
        .unwrap()
        .into_string()
}

fn platform() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

/// A manifest for `version` offering `artifact` (url, size, sha256) for `platform`.
fn manifest(
    version: &str,
    date: &str,
    expires: &str,
    platform: &str,
    artifact: (&str, usize, &str),
) -> Vec<u8> {
    manifest_on("production", version, date, expires, platform, artifact)
}

/// [`manifest`] for `channel`.
fn manifest_on(
    channel: &str,
    version: &str,
    date: &str,
    expires: &str,
    platform: &str,
    artifact: (&str, usize, &str),
) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({
        "schema_version": 1,
        "channel": channel,
        "version": version,
        "date": date,
        "notes": format!("release {version}"),
        "expires": expires,
        "artifacts": { platform: { "url": artifact.0, "size": artifact.1, "sha256": artifact.2 } },
    }))
    .unwrap()
}

const LATER: &str = "2999-01-01T00:00:00Z";

/// The built binary without its debug information (a tenth of the size), made once.
fn stripped() -> &'static [u8] {
    static STRIPPED: OnceLock<Vec<u8>> = OnceLock::new();
    STRIPPED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("poziserver");
        let status = std::process::Command::new("objcopy")
            .arg("--strip-debug")
            .arg(BIN)
            .arg(&out)
            .status()
            .expect("objcopy (binutils) makes the test copies");
        assert!(status.success());
        std::fs::read(out).unwrap()
    })
}

/// A copy of the binary whose test slot says `slot` (`<version>[ exit|nobind|fail]`).
fn copy(slot: &str) -> Vec<u8> {
    let mut bytes = stripped().to_vec();
    let marker = b"POZI-TEST-SLOT:=";
    let found: Vec<usize> = bytes
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| w == marker)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(found.len(), 1, "the binary has one test slot");
    let at = found[0] + marker.len();
    let room = &mut bytes[at..at + 80];
    room.fill(0);
    room[..slot.len()].copy_from_slice(slot.as_bytes());
    bytes
}

fn config(release: &Release, key: &minisign::KeyPair, health_timeout: u64) -> String {
    json!({
        "update": {
            "manifest_base_url": release.base(),
            "public_keys": [key.pk.to_base64()],
            "auto_apply": false,
            "jitter_secs": 0,
            "health_timeout_secs": health_timeout,
        }
    })
    .to_string()
}

async fn post(server: &Process, path: &str) -> Value {
    let response = server.post_admin(path).await;
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

/// `/health`'s version, or `None` while nothing answers.
async fn running_version(server: &Process) -> Option<String> {
    let response = server
        .client()
        .get(server.url("/health"))
        .send()
        .await
        .ok()?;
    let body: Value = response.json().await.ok()?;
    body["version"].as_str().map(str::to_owned)
}

async fn wait_for_version(server: &Process, version: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if running_version(server).await.as_deref() == Some(version) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server never answered as {version}:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The updater events the admin API lists, newest first (none while the old version is not
/// the one answering, as during a switch).
async fn events(server: &Process) -> Vec<Value> {
    let Ok(response) = server
        .client()
        .get(server.url("/admin/update"))
        .send()
        .await
    else {
        return Vec::new();
    };
    // A new version on trial answers too, with its updater off.
    if response.status() != 200 {
        return Vec::new();
    }
    let body: Value = response.json().await.unwrap();
    body["events"].as_array().unwrap().clone()
}

/// Waits for an event `event` about `version`, and returns its detail.
async fn wait_for_event(server: &Process, event: &str, version: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = events(server)
            .await
            .into_iter()
            .find(|e| e["event"] == event && e["version"] == version)
        {
            return found["detail"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no {event} event for {version}:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cli(root: &Path, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(BIN)
        .args(args)
        .arg("--root")
        .arg(root)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A refusal case: what it is, the manifest, who signs it, the artifact as served, and words
/// the refusal must hold.
type Case<'a> = (
    &'a str,
    Vec<u8>,
    Option<&'a minisign::KeyPair>,
    Body,
    &'a str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_and_artifacts_are_refused_and_the_running_version_keeps_serving() {
    let release = Release::start().await;
    let trusted = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let stranger = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let server = Process::start(&config(&release, &trusted, 10), |_| {}).await;
    let file = "manifest-server.json";
    let good = copy("0.2.0");
    let sha = hex(&good);
    release.put("/releases/poziserver-0.2.0", Body::Whole(good.clone()));
    let date = "2026-12-01T00:00:00Z";
    let valid = manifest(
        "0.2.0",
        date,
        LATER,
        &platform(),
        ("poziserver-0.2.0", good.len(), &sha),
    );

    let mut tampered_manifest = valid.clone();
    let at = tampered_manifest.len() - 10;
    tampered_manifest[at] ^= 0x01;
    let mut tampered_artifact = good.clone();
    tampered_artifact[good.len() / 2] ^= 0xff;
    let mut oversized = good.clone();
    oversized.extend_from_slice(&[0u8; 65_536]);

    let cases: Vec<Case> = vec![
        (
            "unsigned manifest",
            valid.clone(),
            None,
            Body::Whole(good.clone()),
            "unsigned",
        ),
        (
            "signed by an untrusted key",
            valid.clone(),
            Some(&stranger),
            Body::Whole(good.clone()),
            "not trusted",
        ),
        (
            "bad signature",
            valid.clone(),
            Some(&trusted),
            Body::Whole(good.clone()),
            "bad signature",
        ),
        (
            "expired manifest",
            manifest(
                "0.2.0",
                date,
                "2020-01-01T00:00:00Z",
                &platform(),
                ("poziserver-0.2.0", good.len(), &sha),
            ),
            Some(&trusted),
            Body::Whole(good.clone()),
            "expired",
        ),
        (
            "a dev manifest served as production",
            manifest_on(
                "dev",
                "0.2.0",
                date,
                LATER,
                &platform(),
                ("poziserver-0.2.0", good.len(), &sha),
            ),
            Some(&trusted),
            Body::Whole(good.clone()),
            "another channel",
        ),
        (
            "no artifact for this platform",
            manifest(
                "0.2.0",
                date,
                LATER,
                "plan9-mips",
                ("poziserver-0.2.0", good.len(), &sha),
            ),
            Some(&trusted),
            Body::Whole(good.clone()),
            "no artifact for",
        ),
        (
            "wrong SHA-256",
            manifest(
                "0.2.0",
                date,
                LATER,
                &platform(),
                ("poziserver-0.2.0", good.len(), &"ab".repeat(32)),
            ),
            Some(&trusted),
            Body::Whole(good.clone()),
            "SHA-256",
        ),
        (
            "tampered artifact",
            valid.clone(),
            Some(&trusted),
            Body::Whole(tampered_artifact),
            "SHA-256",
        ),
        (
            "truncated download",
            valid.clone(),
            Some(&trusted),
            Body::Truncated(good.clone(), good.len() / 3),
            "broke off",
        ),
        (
            "oversized download",
            valid.clone(),
            Some(&trusted),
            Body::Unbounded(oversized),
            "larger than",
        ),
    ];
    for (what, body, key, artifact, words) in cases {
        release.publish(file, &body, key);
        if what == "bad signature" {
            // Signed as published, then changed by one byte on its way.
            release.put(
                &format!("/releases/{file}"),
                Body::Whole(tampered_manifest.clone()),
            );
        }
        release.put("/releases/poziserver-0.2.0", artifact);
        let report = post(&server, "/admin/update/apply").await;
        assert_eq!(report["outcome"], "refused", "{what}: {report}");
        let detail = report["detail"].as_str().unwrap();
        assert!(detail.contains(words), "{what}: {detail}");
        assert_eq!(
            running_version(&server).await.as_deref(),
            Some("0.1.0"),
            "{what}"
        );
        let journaled = events(&server).await;
        assert!(
            journaled
                .iter()
                .any(|e| e["event"] == "refused" && e["detail"].as_str().unwrap().contains(words)),
            "{what}: not journaled: {journaled:?}"
        );
        assert!(!server.root.join("versions/current").exists(), "{what}");
        assert!(!server.root.join("versions/0.2.0").exists(), "{what}");
    }
    // The last refusal is a health warning (not a failure), with its reason.
    let (status, _, body) = server.get("/health").await;
    assert_eq!(status, 200, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    let check = &health["checks"]["updater"][0];
    assert_eq!(check["status"], "warn", "{body}");
    assert!(
        check["output"].as_str().unwrap().contains("larger than"),
        "{body}"
    );
    // Nothing half-downloaded is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(server.root.join("versions"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A check (which never installs) accepts 0.3.0; the next check is a conditional GET.
    release.publish(
        file,
        &manifest(
            "0.3.0",
            "2026-12-02T00:00:00Z",
            LATER,
            &platform(),
            ("poziserver-0.2.0", 1, &sha),
        ),
        Some(&trusted),
    );
    let report = post(&server, "/admin/update/check").await;
    assert_eq!(report["outcome"], "available", "{report}");
    assert_eq!(report["version"], "0.3.0");
    let report = post(&server, "/admin/update/check").await;
    assert_eq!(report["outcome"], "available", "{report}");
    assert!(
        release.not_modified.load(Ordering::SeqCst) >= 1,
        "no 304 was answered"
    );
    // An older manifest on the same channel after that: a rollback attack.
    release.publish(file, &valid, Some(&trusted));
    let report = post(&server, "/admin/update/apply").await;
    assert_eq!(report["outcome"], "refused", "{report}");
    assert!(
        report["detail"]
            .as_str()
            .unwrap()
            .contains("older than 0.3.0"),
        "{report}"
    );
    assert!(!server.root.join("versions/current").exists());

    // The command line reads the same journal, and checks through the server.
    let (ok, text) = cli(&server.root, &["update", "status"]);
    assert!(ok, "{text}");
    for words in [
        "this binary: 0.1.0",
        "refused",
        "unsigned",
        "expired",
        "older than 0.3.0",
    ] {
        assert!(text.contains(words), "status lacks {words:?}:\n{text}");
    }
    let (ok, text) = cli(&server.root, &["update", "check"]);
    assert!(!ok, "a refused check exits non-zero: {text}");
    assert!(text.contains("refused"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_versions_that_exit_never_bind_or_report_fail_are_rolled_back() {
    let release = Release::start().await;
    let key = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let server =
        Process::start_listening(&config(&release, &key, 6), &free_address(), |_| {}).await;
    let pid = server.pid();
    let cases = [
        ("0.2.0", "exit", "exited"),
        ("0.3.0", "nobind", "did not answer /health"),
        ("0.4.0", "fail", "reports fail"),
        // Passes its trial, then fails once the old version has re-executed into it: the
        // process goes back to the previous executable by itself.
        (
            "0.5.0",
            "fail-after-switch",
            "did not listen and answer /health",
        ),
    ];
    for (n, (version, misbehaviour, words)) in cases.iter().enumerate() {
        let bytes = copy(&format!("{version} {misbehaviour}"));
        let name = format!("poziserver-{version}");
        let body = manifest(
            version,
            &format!("2026-12-0{}T00:00:00Z", n + 1),
            LATER,
            &platform(),
            (&name, bytes.len(), &hex(&bytes)),
        );
        release.put(&format!("/releases/{name}"), Body::Whole(bytes));
        release.publish("manifest-server.json", &body, Some(&key));
        let report = post(&server, "/admin/update/apply").await;
        assert_eq!(report["outcome"], "switching", "{version}: {report}");
        let detail = wait_for_event(&server, "rolled-back", version, Duration::from_secs(60)).await;
        assert!(detail.contains(words), "{version}: {detail}");
        wait_for_version(&server, "0.1.0", Duration::from_secs(30)).await;
        assert_eq!(server.pid(), pid);
        assert!(!server.root.join("versions/current").exists(), "{version}");
        assert!(!server.root.join("state/update-trial.json").exists());
    }
    assert!(
        events(&server)
            .await
            .iter()
            .any(|e| e["event"] == "healthy" && e["version"] == "0.5.0")
    );
    // A version that failed is not tried again.
    let report = post(&server, "/admin/update/apply").await;
    assert_eq!(report["outcome"], "refused", "{report}");
    assert!(
        report["detail"].as_str().unwrap().contains("not retried"),
        "{report}"
    );
    wait_for_version(&server, "0.1.0", Duration::from_secs(5)).await;
}

/// Requests sent one after another on fresh connections while `stop` is unset: (sent,
/// answered, versions seen in order).
async fn load(
    url: String,
    cert: Vec<u8>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (usize, usize, Vec<String>) {
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&cert).unwrap()])
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let (mut sent, mut answered, mut seen) = (0, 0, Vec::<String>::new());
    while !stop.load(Ordering::SeqCst) {
        sent += 1;
        if let Ok(response) = client.get(&url).send().await
            && let Ok(body) = response.json::<Value>().await
        {
            answered += 1;
            let version = body["version"].as_str().unwrap_or_default().to_owned();
            if seen.last() != Some(&version) {
                seen.push(version);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (sent, answered, seen)
}

/// Processes whose parent is `pid`, zombies included.
fn child_processes(pid: u32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            rest.split_whitespace().nth(1) == Some(&pid.to_string())
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_updates_itself_and_a_channel_change_installs_the_lower_production_release()
 {
    let release = Release::start().await;
    let key = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let server = Process::start_listening(&config(&release, &key, 30), &free_address(), |root| {
        std::fs::create_dir_all(root.join("updater")).unwrap();
        std::fs::write(
            root.join("updater/updater-config.json"),
            r#"{"serverManifestFile": "manifest-server-dev.json"}"#,
        )
        .unwrap();
        // A folder of the operator's own: never moved or deleted by an update.
        std::fs::create_dir_all(root.join("scripts")).unwrap();
        std::fs::write(root.join("scripts/backup.bat"), "rem mine").unwrap();
    })
    .await;
    let pid = server.pid();
    let dev = copy("0.3.0-dev.1");
    release.put("/releases/dev/poziserver", Body::Whole(dev.clone()));
    release.publish(
        "manifest-server-dev.json",
        &manifest_on(
            "dev",
            "0.3.0-dev.1",
            "2026-12-01T00:00:00Z",
            LATER,
            &platform(),
            ("dev/poziserver", dev.len(), &hex(&dev)),
        ),
        Some(&key),
    );
    let production = copy("0.2.0");
    release.put(
        "/releases/poziserver-0.2.0",
        Body::Whole(production.clone()),
    );
    release.publish(
        "manifest-server.json",
        &manifest(
            "0.2.0",
            "2026-11-20T00:00:00Z",
            LATER,
            &platform(),
            ("poziserver-0.2.0", production.len(), &hex(&production)),
        ),
        Some(&key),
    );

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn(load(server.url("/health"), server.cert_pem(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = post(&server, "/admin/update/apply").await;
    assert_eq!(report["outcome"], "switching", "{report}");
    assert_eq!(report["channel"], "dev");
    wait_for_version(&server, "0.3.0-dev.1", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (sent, answered, seen) = traffic.await.unwrap();
    eprintln!(
        "switch under load: {sent} requests sent one after another, {answered} answered, {} refused or cut during the switch",
        sent - answered
    );
    // For a moment both versions accept connections on the shared listeners, so answers may
    // alternate then; they start with the old version and end with the new, and no other.
    assert_eq!(seen.first().map(String::as_str), Some("0.1.0"), "{seen:?}");
    assert_eq!(
        seen.last().map(String::as_str),
        Some("0.3.0-dev.1"),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|v| v == "0.1.0" || v == "0.3.0-dev.1"),
        "{seen:?}"
    );
    // The same process, re-executed.
    assert_eq!(server.pid(), pid);
    // The trial process stops once its successor listens, and is reaped.
    common::process::eventually(
        "the trial process stopped and was reaped",
        Duration::from_secs(40),
        || child_processes(pid) == 0,
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(server.root.join("versions/current"))
            .unwrap()
            .trim(),
        "0.3.0-dev.1"
    );
    for event in ["downloaded", "verified", "switching", "healthy", "switched"] {
        wait_for_event(&server, event, "0.3.0-dev.1", Duration::from_secs(5)).await;
    }

    // Back to production (by the command line this time): its release is lower, and installed
    // all the same.
    std::fs::write(server.root.join("updater/updater-config.json"), "{}").unwrap();
    let root = server.root.clone();
    let (ok, text) = tokio::task::spawn_blocking(move || cli(&root, &["update", "apply"]))
        .await
        .unwrap();
    assert!(ok, "{text}");
    assert!(text.starts_with("switching:"), "{text}");
    assert!(text.contains("channel production"), "{text}");
    assert!(text.contains("the channel changed"), "{text}");
    wait_for_version(&server, "0.2.0", Duration::from_secs(60)).await;
    assert_eq!(server.pid(), pid);
    wait_for_event(&server, "healthy", "0.2.0", Duration::from_secs(5)).await;
    let report = post(&server, "/admin/update/check").await;
    assert_eq!(report["outcome"], "up-to-date", "{report}");

    // Operator data is where it was; both versions are kept under versions/.
    assert_eq!(
        std::fs::read_to_string(server.root.join("scripts/backup.bat")).unwrap(),
        "rem mine"
    );
    assert!(server.root.join("config.json").is_file());
    assert!(
        server
            .root
            .join("versions/0.3.0-dev.1/poziserver")
            .is_file()
    );
    assert!(server.root.join("versions/0.2.0/poziserver").is_file());
    let (ok, text) = cli(&server.root, &["update", "status"]);
    assert!(ok && text.contains("current:  0.2.0"), "{text}");

    // A restart by the service manager starts the installed binary, which runs the current
    // version.
    let (_, dir) = server.terminate_keeping(Duration::from_secs(30)).await;
    let again = Process::start_in(dir, |_| {}).await;
    assert_eq!(running_version(&again).await.as_deref(), Some("0.2.0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_after_a_switch_cut_short_puts_the_previous_version_back() {
    let server = Process::start("{}", |root| {
        // What a server killed during a trial leaves: the pointer at the new version, and the
        // trial marker.
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(root.join("versions/0.2.0")).unwrap();
        let binary = root.join("versions/0.2.0/poziserver");
        std::fs::write(&binary, copy("0.2.0")).unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(root.join("versions/current"), "0.2.0\n").unwrap();
        std::fs::write(
            root.join("state/update-trial.json"),
            r#"{"version": "0.2.0", "previous": null, "started": "2026-12-03T01:00:00Z"}"#,
        )
        .unwrap();
    })
    .await;
    assert_eq!(running_version(&server).await.as_deref(), Some("0.1.0"));
    assert!(!server.root.join("versions/current").exists());
    assert!(!server.root.join("state/update-trial.json").exists());
    let (ok, text) = cli(&server.root, &["update", "status"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("rolled-back") && text.contains("did not finish"),
        "{text}"
    );
    // The version itself stays installed.
    assert!(server.root.join("versions/0.2.0/poziserver").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_release_server_is_a_health_warning_that_names_the_step() {
    let release = Release::start().await;
    let key = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let closed = free_address();
    // (base URL, the step the warning must name)
    let cases = [
        (format!("http://{closed}/releases/"), "TCP: cannot connect"),
        // The release server speaks plain HTTP: a TLS client cannot make a connection.
        (format!("https://{}/releases/", release.addr), "TLS:"),
        (
            format!("http://{}/nothing-here/", release.addr),
            "HTTP status 404",
        ),
    ];
    for (base, words) in cases {
        let config = json!({"update": {"manifest_base_url": base, "public_keys": [key.pk.to_base64()], "auto_apply": false}});
        let server = Process::start(&config.to_string(), |_| {}).await;
        let (_, _, body) = server.get("/health").await;
        let health: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            health["checks"]["updater"][0]["status"], "pass",
            "{base}: {body}"
        );
        let report = post(&server, "/admin/update/check").await;
        assert_eq!(report["outcome"], "unreachable", "{base}: {report}");
        assert!(
            report["detail"].as_str().unwrap().contains(words),
            "{base}: {report}"
        );
        let (status, _, body) = server.get("/health").await;
        assert_eq!(status, 200, "a warning is not a failure: {body}");
        let health: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["status"], "warn", "{body}");
        let check = &health["checks"]["updater"][0];
        assert_eq!(check["status"], "warn", "{body}");
        assert!(check["output"].as_str().unwrap().contains(words), "{body}");
        assert_eq!(check["lastEvent"]["event"], "unreachable", "{body}");
        assert_eq!(running_version(&server).await.as_deref(), Some("0.1.0"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_address_is_refused_although_listeners_are_shareable() {
    let address = free_address();
    let first = Process::start_listening("{}", &address, |_| {}).await;
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("config.json"), "{}").unwrap();
    let mut second = std::process::Command::new(BIN)
        .args(["run", "--root"])
        .arg(other.path())
        .args(["--listen", &address])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let log = common::process::wait_for_log(
        other.path(),
        "another program is using this port",
        Duration::from_secs(30),
    )
    .await;
    assert!(!log.contains("listening on"), "{log}");
    // Every request still reaches the first server.
    for _ in 0..20 {
        let (status, _, _) = first.get("/health").await;
        assert_eq!(status, 200);
    }
    let _ = second.kill();
    let _ = second.wait();
    // A second server on the same root is refused at once, whatever its address.
    let output = std::process::Command::new(BIN)
        .args(["run", "--root"])
        .arg(&first.root)
        .args(["--listen", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("another poziserver is running on the root"),
        "{text}"
    );
    let (status, _, _) = first.get("/health").await;
    assert_eq!(status, 200);
}
