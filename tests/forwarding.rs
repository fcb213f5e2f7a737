//! Behind a TLS-terminating proxy: with `http.trusted_proxies`, the client's address, scheme,
//! host and path prefix come from the proxy's `Forwarded` / `X-Forwarded-*` headers (links,
//! host folder, access log, what the reverse proxy passes on); from any other peer the same
//! headers change nothing. The "proxy" here is the test itself on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::time::Duration;

use common::process::Process;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request's head, read a byte at a time up to its blank line (16 KiB at most); `None` when
/// the connection closes first.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(head)
}

/// An upstream on loopback that answers every request with the request's head as text.
async fn echo_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    head.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.write_all(&head).await;
            });
        }
    });
    addr
}

const SPOOFED: [(&str, &str); 4] = [
    ("x-forwarded-for", "203.0.113.9"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "gis01.example.org"),
    ("x-forwarded-prefix", "/gis"),
];

async fn get(server: &Process, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = server.client().get(server.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn config(upstream: std::net::SocketAddr, trusted: &[&str]) -> String {
    json!({"http": {
        "trusted_proxies": trusted,
        "host_names": ["local.pozi.com", "localhost", "127.0.0.1", "gis01.example.org"],
        "proxy": [
            {"prefix": "/iis", "upstream": format!("http://{upstream}/pozi"), "service_path": "/wms"},
            {"prefix": "/qgis", "upstream": format!("http://{upstream}/qgis"), "preserve_host": true}
        ]
    }})
    .to_string()
}

fn prepare(root: &std::path::Path) {
    std::fs::create_dir_all(root.join("userdata/gis01")).unwrap();
    std::fs::write(
        root.join("userdata/gis01/layer.json"),
        r#"{"site":"gis01"}"#,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_gives_the_client_scheme_host_and_prefix() {
    let upstream = echo_upstream().await;
    let server = Process::start(&config(upstream, &["127.0.0.1/32"]), prepare).await;

    // Links name the public address the proxy serves.
    let (status, body) = get(&server, "/features/", &SPOOFED).await;
    assert_eq!(status, 200, "{body}");
    let landing: Value = serde_json::from_str(&body).unwrap();
    for link in landing["links"].as_array().unwrap() {
        let href = link["href"].as_str().unwrap();
        assert!(
            href.starts_with("https://gis01.example.org/gis/features"),
            "{href}"
        );
    }
    // RFC 7239's header works the same.
    let (_, body) = get(
        &server,
        "/features/",
        &[(
            "forwarded",
            r#"for="[2001:db8::7]:4711";proto=https;host=maps.example.org"#,
        )],
    )
    .await;
    assert!(body.contains("https://maps.example.org/features"), "{body}");

    // The host folder follows the forwarded host.
    let (status, body) = get(&server, "/layer.json", &SPOOFED).await;
    assert_eq!((status, body.as_str()), (200, r#"{"site":"gis01"}"#));

    // The reverse proxy passes the trusted values on, with the proxy added to the chain.
    let (status, seen) = get(&server, "/iis/wms?x=1", &SPOOFED).await;
    assert_eq!(status, 200, "{seen}");
    let seen = seen.to_ascii_lowercase();
    assert!(
        seen.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1"),
        "{seen}"
    );
    assert!(
        seen.contains("x-forwarded-host: gis01.example.org"),
        "{seen}"
    );
    assert!(seen.contains("x-forwarded-proto: https"), "{seen}");

    // Map servers are told the public URL to advertise, in the header case QGIS Server reads.
    let (_, head) = get(&server, "/iis/wms?SERVICE=WMS", &SPOOFED).await;
    assert!(
        head.contains("X-Qgis-Service-Url: https://gis01.example.org/gis/iis/wms\r\n"),
        "{head}"
    );
    assert!(
        head.contains("X-Qgis-Wfs-Service-Url: https://gis01.example.org/gis/iis/wms\r\n"),
        "{head}"
    );
    assert!(head.contains("X-Forwarded-Prefix: /gis/iis\r\n"), "{head}");
    // The advertised URL is the route's, whatever path a client asks for: a map server keys
    // its capabilities cache on it.
    let (_, head) = get(&server, "/iis/a-path-of-my-choosing?SERVICE=WMS", &SPOOFED).await;
    assert!(
        head.contains("X-Qgis-Service-Url: https://gis01.example.org/gis/iis/wms\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Host: {upstream}\r\n")),
        "the upstream's own host by default: {head}"
    );
    let (_, head) = get(&server, "/qgis/wms", &SPOOFED).await;
    assert!(
        head.contains("Host: gis01.example.org\r\n"),
        "preserve_host: {head}"
    );

    // The access log names the client, not the proxy.
    let log =
        common::process::wait_for_log(&server.root, "client=203.0.113.9", Duration::from_secs(10))
            .await;
    assert!(log.contains("path=/layer.json"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_headers_from_an_untrusted_peer_change_nothing() {
    let upstream = echo_upstream().await;
    let server = Process::start(&config(upstream, &[]), prepare).await;
    let own = server.url("");

    let (_, body) = get(&server, "/features/", &SPOOFED).await;
    let landing: Value = serde_json::from_str(&body).unwrap();
    for link in landing["links"].as_array().unwrap() {
        let href = link["href"].as_str().unwrap();
        assert!(href.starts_with(&format!("{own}/features")), "{href}");
    }
    let (status, _) = get(&server, "/layer.json", &SPOOFED).await;
    assert_eq!(status, 404, "the spoofed host picks no folder");

    let mut claims = SPOOFED.to_vec();
    claims.push(("x-qgis-service-url", "https://evil.example/"));
    claims.push(("forwarded", "for=10.0.0.1;host=evil.example"));
    let (_, seen) = get(&server, "/iis/wms", &claims).await;
    let seen = seen.to_ascii_lowercase();
    assert!(
        !seen.contains("evil.example"),
        "what a client claims is dropped: {seen}"
    );
    assert!(
        seen.contains("x-forwarded-for: 127.0.0.1\r\n"),
        "the claimed chain is dropped: {seen}"
    );
    assert!(!seen.contains("gis01.example.org"), "{seen}");
    assert!(!seen.contains("203.0.113.9"), "{seen}");

    let log =
        common::process::wait_for_log(&server.root, "path=/layer.json", Duration::from_secs(10))
            .await;
    assert!(!log.contains("203.0.113.9"), "{log}");

    // Spoofed headers do not make a web page's request an admin one either: a request claiming
    // to be forwarded is not let in by address.
    let response = server
        .client()
        .get(server.url("/admin/jobs"))
        .header("x-forwarded-for", "127.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

/// nginx, as `docs/http.md` shows it, terminating TLS in front of the server in plain HTTP mode.
struct Nginx {
    child: std::process::Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn start(upstream: std::net::SocketAddr) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // nginx's workers run as an unprivileged user.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let certified = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .unwrap();
        std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("key.pem"),
            certified.signing_key.serialize_pem(),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let port = common::process::free_address()
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap();
        let d = dir.path().display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\nerror_log {d}/logs/error.log warn;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log {d}/logs/access.log;\n  server {{\n    listen 127.0.0.1:{port} ssl;\n\
             ssl_certificate {d}/cert.pem;\n    ssl_certificate_key {d}/key.pem;\n\
             location / {{\n      proxy_pass http://{upstream};\n      proxy_set_header Host $host;\n\
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             proxy_set_header X-Forwarded-Proto $scheme;\n      proxy_set_header X-Forwarded-Host $http_host;\n    }}\n  }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let nginx = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|n| std::path::Path::new(n).exists() || *n == "nginx")
            .unwrap();
        let child = std::process::Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx (scripts/test installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, dir, port }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/access.log")).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gdal_pages_a_collection_to_the_end_through_nginx_only() {
    let address = common::process::free_address();
    let config = json!({"http": {"plain_http": true, "trusted_proxies": ["127.0.0.1/32"]}});
    let server = Process::start_listening(&config.to_string(), &address, |_| {}).await;
    let nginx = Nginx::start(address.parse().unwrap());
    let public = format!("https://127.0.0.1:{}", nginx.port);
    let endpoint = format!("OAPIF:{public}/features");
    let read =
        common::gis::gdal_read_url(&endpoint, &["naturalearth_lowres", "-oo", "PAGE_SIZE=20"])
            .await;
    assert_eq!(read["features"].as_array().unwrap().len(), 177);
    // Every page came through nginx: as many item pages there as here, and more than one.
    let pages = |log: &str| {
        log.lines()
            .filter(|l| l.contains("/collections/naturalearth_lowres/items"))
            .count()
    };
    let at_nginx = pages(&nginx.log());
    let at_server =
        pages(&common::process::wait_for_log(&server.root, "items", Duration::from_secs(5)).await);
    assert!(at_nginx >= 9, "{at_nginx} pages at nginx");
    assert_eq!(at_nginx, at_server, "pages that went around the proxy");
    // The links of a page name the public address.
    let (_, body) = {
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let response = client
            .get(format!(
                "{public}/features/collections/naturalearth_lowres/items?limit=5"
            ))
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    };
    let page: Value = serde_json::from_str(&body).unwrap();
    let next = page["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["rel"] == "next")
        .unwrap();
    assert!(
        next["href"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{public}/features/")),
        "{next}"
    );
}

/// A map server on loopback that advertises its own address whatever it is told, as MapServer
/// does with a static `wms_onlineresource`.
async fn static_onlineresource_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut stream).await.is_none() {
                    return;
                }
                let body = format!(
                    r#"<?xml version="1.0"?><WMS_Capabilities><Service><OnlineResource xlink:href="http://{addr}/cgi-bin/mapserv?map=/maps/council.map&amp;"/></Service></WMS_Capabilities>"#
                );
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_server_advertising_its_own_address_is_rewritten_to_the_public_one() {
    let upstream = static_onlineresource_upstream().await;
    let config = json!({"http": {
        "trusted_proxies": ["127.0.0.1/32"],
        "host_names": ["local.pozi.com", "localhost", "127.0.0.1", "gis01.example.org"],
        "proxy": [
            {"prefix": "/ms", "upstream": format!("http://{upstream}/cgi-bin/mapserv"), "rewrite_urls": true},
            {"prefix": "/raw", "upstream": format!("http://{upstream}/cgi-bin/mapserv")}
        ]
    }});
    let server = Process::start(&config.to_string(), |_| {}).await;
    let (status, body) = get(&server, "/ms?SERVICE=WMS&REQUEST=GetCapabilities", &SPOOFED).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(
            r#"xlink:href="https://gis01.example.org/gis/ms?map=/maps/council.map&amp;""#
        ),
        "{body}"
    );
    assert!(!body.contains(&upstream.to_string()), "{body}");
    // Without the option the answer is passed on as it came.
    let (_, body) = get(&server, "/raw?SERVICE=WMS", &SPOOFED).await;
    assert!(
        body.contains(&format!("http://{upstream}/cgi-bin/mapserv")),
        "{body}"
    );
}
