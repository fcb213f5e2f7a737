//! A real server on a free loopback port with a temporary root, and clients that trust its
//! certificate.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "shared test helpers"
)]

pub mod chromium;
pub mod gis;
pub mod process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use poziserver::config::Config;
use poziserver::root::Root;
use poziserver::runtime::Handles;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running server.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub addr: SocketAddr,
    pub handles: Handles,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Polls until `condition` holds, up to 20 s.
pub async fn eventually<F: Future<Output = bool>>(what: &str, condition: impl Fn() -> F) {
    for _ in 0..2000 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

impl TestServer {
    /// Starts a server whose config is `config` (JSON) with `listen` forced to a free port;
    /// `prepare` can put files in the root before it starts.
    pub async fn start(config: &str, prepare: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root_path = dir.path().join("root");
        let root = Root::new(&root_path).unwrap();
        root.lay_out().unwrap();
        prepare(&root_path);
        let mut config = Config::parse(config).unwrap_or_else(|e| panic!("test config: {e:?}"));
        if config.listen == Config::default().listen {
            config.listen = vec!["127.0.0.1:0".parse().unwrap()];
        }
        let handles = Handles::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = {
            let handles = handles.clone();
            tokio::spawn(async move {
                let outcome = poziserver::runtime::run(&config, &root, handles, async {
                    let _ = stopped.await;
                })
                .await;
                assert!(
                    matches!(outcome, Ok(actors::RootOutcome::Stopped)),
                    "{outcome:?}"
                );
            })
        };
        let listening = handles.listening.clone();
        eventually("server listening", || {
            let l = listening.clone();
            async move { !l.addresses().is_empty() }
        })
        .await;
        let addr = handles.listening.addresses()[0];
        Self {
            dir,
            root: root_path,
            addr,
            handles,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    /// GET `path`: the status and the body as JSON (`Null` when it is not JSON).
    pub async fn get_json(&self, path: &str) -> (reqwest::StatusCode, serde_json::Value) {
        let response = self.client().get(self.url(path)).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or_default())
    }

    /// The PEM certificate currently trusted for this server.
    pub fn cert_pem(&self) -> Vec<u8> {
        let org = self.root.join("certificate.cer");
        let path = if org.exists() {
            org
        } else {
            self.root.join("state/self-signed.cer")
        };
        std::fs::read(path).unwrap()
    }

    /// A reqwest client trusting this server's certificate, no automatic decompression.
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().unwrap()
    }

    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let cert = reqwest::Certificate::from_pem(&self.cert_pem()).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([cert])
            .no_proxy()
            .timeout(Duration::from_secs(20))
    }

    /// A client that sends `host` names to this server (the certificate must cover them).
    pub fn client_for(&self, hosts: &[&str]) -> reqwest::Client {
        let mut builder = self.client_builder();
        for host in hosts {
            builder = builder.resolve(host, self.addr);
        }
        builder.build().unwrap()
    }

    pub fn host_url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.addr.port())
    }

    /// A raw TLS connection trusting this server's certificate.
    pub async fn tls(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        tls_connect(self.addr, &self.cert_pem()).await.unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// Connects with TLS to `addr`, trusting only `pem`, asking for HTTP/1.1.
pub async fn tls_connect(
    addr: SocketAddr,
    pem: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
}

/// Sends one raw HTTP/1.1 request with `Connection: close` and returns (status, whole response).
pub async fn raw_get(server: &TestServer, target: &str) -> (u16, String) {
    let mut stream = server.tls().await;
    let request = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Sends a request on an open HTTP/1.1 connection and reads one response with a
/// Content-Length body; returns (status, body).
pub async fn keepalive_get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    path: &str,
) -> (u16, Vec<u8>) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    keepalive_get_raw(stream, &request).await
}

/// Sends `request` (a whole HTTP/1.1 request head) on an open connection and reads one response
/// with a Content-Length body; returns (status, body).
pub async fn keepalive_get_raw<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    request: &str,
) -> (u16, Vec<u8>) {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed");
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while buffer.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed mid-body");
                buffer.extend_from_slice(&chunk[..n]);
            }
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            return (status, buffer[end + 4..end + 4 + length].to_vec());
        }
    }
}

/// A gzip body, decompressed.
pub fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// A brotli body, decompressed.
pub fn unbrotli(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    brotli::Decompressor::new(bytes, 4096)
        .read_to_end(&mut out)
        .unwrap();
    out
}
