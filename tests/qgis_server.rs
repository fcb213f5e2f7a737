//! In front of a real QGIS Server: Debian's `qgis_mapserver` on loopback serves
//! `tests/data/qgis_project.qgs` (two layers) behind the `/iis` route. The capabilities advertise
//! the public URL, OWSLib and GDAL's WFS driver work through the route only (requests counted on
//! both sides), and WFS POSTs sent over HTTP/2 all reach QGIS Server with their bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::gis::test_data;
use common::process::Process;
use futures::StreamExt;
use serde_json::{Value, json};

/// `qgis_mapserver` serving the test project on a free loopback port; killed on drop.
struct QgisServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl QgisServer {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for file in ["qgis_project.qgs", "qgis_written.gpkg"] {
            std::fs::copy(test_data(file), dir.path().join(file)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("qgis.log")).unwrap();
        let child = Command::new("qgis_mapserver")
            .arg("-p")
            .arg(dir.path().join("qgis_project.qgs"))
            .arg(format!("127.0.0.1:{port}"))
            .env("QT_QPA_PLATFORM", "offscreen")
            .env("HOME", dir.path())
            .env("XDG_RUNTIME_DIR", dir.path())
            .env("QGIS_SERVER_LOG_LEVEL", "0")
            .env("QGIS_SERVER_LOG_STDERR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("qgis_mapserver (Debian's qgis-server-bin) is installed by scripts/test");
        let server = Self { dir, port, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "qgis_mapserver never listened:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("qgis.log")).unwrap_or_default()
    }

    /// The requests QGIS Server has answered (its access lines: `"GET /… HTTP/1.1" 200`).
    fn requests(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(" HTTP/1.1\" ") || l.contains(" HTTP/1.0\" "))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for QgisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This server with `/iis` proxied to QGIS Server.
async fn pozi(qgis: &QgisServer) -> Process {
    let config = json!({"http": {
        "host_names": ["local.pozi.com", "localhost", "127.0.0.1"],
        "proxy": [{
            "prefix": "/iis",
            "upstream": format!("http://127.0.0.1:{}/pozi", qgis.port),
            "service_path": "/wms",
            "preserve_host": true
        }]
    }});
    Process::start(&config.to_string(), |_| {}).await
}

/// This server's access-log lines for the `/iis` route.
fn proxied(server: &Process) -> usize {
    server
        .log()
        .lines()
        .filter(|l| l.contains("access:") && l.contains(" path=/iis"))
        .count()
}

/// The requests QGIS Server logged and this server's `/iis` lines, once both logs agree or 10 s
/// have passed (each side writes its line around its answer). Each test has its own QGIS
/// Server, so both count from its start.
async fn both_sides(qgis: &QgisServer, server: &Process) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (at_qgis, here) = (qgis.requests().len(), proxied(server));
        if at_qgis == here || Instant::now() > deadline {
            return (at_qgis, here);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_advertise_the_public_url_and_owslib_goes_through_the_proxy_only() {
    let qgis = QgisServer::start().await;
    let server = pozi(&qgis).await;
    let public = server.url("/iis/wms");

    let (status, _, body) = server
        .get("/iis/wms?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities")
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<Name>countries</Name>"), "{body}");
    assert!(
        body.contains(&format!("xlink:href=\"{public}")),
        "advertises {public}: {body}"
    );
    assert!(
        !body.contains(&format!(":{}", qgis.port)),
        "QGIS Server's own address leaked: {body}"
    );
    let (_, _, body) = server
        .get("/iis/wms?SERVICE=WFS&VERSION=1.1.0&REQUEST=GetCapabilities")
        .await;
    assert!(body.contains(&format!("xlink:href=\"{public}")), "{body}");

    // OWSLib follows the advertised URLs: every request it makes must come through the route.
    let ca = server.dir.path().join("ca.pem");
    std::fs::write(&ca, server.cert_pem()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/owslib_client.py");
    let output = tokio::task::spawn_blocking({
        let public = public.clone();
        move || {
            Command::new("/usr/bin/python3")
                .arg(script)
                .arg(&public)
                .arg(&ca)
                .env_remove("HTTPS_PROXY")
                .env_remove("https_proxy")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "OWSLib failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        qgis.log()
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    // The project's root layer (named after its title) and its two layers.
    for layer in ["assets", "countries"] {
        assert!(
            report["wms_layers"]
                .as_array()
                .unwrap()
                .contains(&json!(layer)),
            "{report}"
        );
    }
    assert_eq!(
        report["wfs_layers"],
        json!(["assets", "countries"]),
        "{report}"
    );
    for urls in [&report["getmap_urls"], &report["getfeature_urls"]] {
        for url in urls.as_array().unwrap() {
            assert!(
                url.as_str().unwrap().starts_with(&public),
                "advertised {url}, not {public}"
            );
        }
    }
    assert_eq!(report["png"], true, "{report}");
    // Australia and New Zealand cover part of the 256×256 map, not all of it.
    let painted = report["painted_pixels"].as_u64().unwrap();
    assert!((1000..60_000).contains(&painted), "{report}");
    // Seven Oceania countries; the five assets (one without a geometry).
    assert_eq!(report["features"], json!({"countries": 7, "assets": 5}));

    // This test's two capabilities, then OWSLib's: WMS and WFS capabilities, the map, two
    // GetFeatures. As many here as at QGIS Server: none went around this server.
    let (at_qgis, here) = both_sides(&qgis, &server).await;
    assert!(at_qgis >= 7, "{at_qgis} requests at QGIS Server");
    assert_eq!(here, at_qgis, "requests that went around the proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gdal_reads_every_feature_through_the_proxy() {
    let qgis = QgisServer::start().await;
    let server = pozi(&qgis).await;
    let endpoint = format!("WFS:{}", server.url("/iis/wms"));
    for (layer, expected) in [("countries", 7), ("assets", 5)] {
        let read = common::gis::gdal_read_url(&endpoint, &[layer]).await;
        let features = read["features"].as_array().unwrap();
        assert_eq!(features.len(), expected, "{layer}");
        if layer == "countries" {
            let mut names: Vec<&str> = features
                .iter()
                .map(|f| f["properties"]["name"].as_str().unwrap())
                .collect();
            names.sort_unstable();
            assert!(names.contains(&"Australia") && names.contains(&"New Zealand"));
        }
    }
    let (at_qgis, here) = both_sides(&qgis, &server).await;
    assert!(at_qgis >= 2, "{at_qgis} requests at QGIS Server");
    assert_eq!(here, at_qgis, "requests that went around the proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wfs_posts_over_http2_all_reach_qgis_server_with_their_bodies() {
    let qgis = QgisServer::start().await;
    let server = pozi(&qgis).await;
    let client = server
        .client_builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<wfs:GetFeature service="WFS" version="1.1.0" xmlns:wfs="http://www.opengis.net/wfs" xmlns:ogc="http://www.opengis.net/ogc">
  <wfs:Query typeName="countries">
    <ogc:Filter><ogc:PropertyIsEqualTo><ogc:PropertyName>name</ogc:PropertyName><ogc:Literal>Fiji</ogc:Literal></ogc:PropertyIsEqualTo></ogc:Filter>
  </wfs:Query>
</wfs:GetFeature>"#;
    // Each body comes in two parts 100 ms apart, as a slow client sends it: the head reaches
    // QGIS Server before the body, which it then reads only by a `Content-Length` it
    // recognises.
    let (first, second) = body.split_at(body.len() / 2);
    let sends = (0..20).map(|_| {
        let parts = futures::stream::iter([first, second]).then(|part| async move {
            if !part.starts_with("<?xml") {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<_, std::io::Error>(part)
        });
        client
            .post(server.url("/iis/wms?SERVICE=WFS"))
            .header("content-type", "text/xml")
            .header("content-length", body.len())
            .body(reqwest::Body::wrap_stream(parts))
            .send()
    });
    let mut complete = 0;
    for response in futures::future::join_all(sends).await {
        let response = response.unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, 200, "{text}");
        if text.matches("<gml:featureMember>").count() == 1 && text.contains("Fiji") {
            complete += 1;
        }
    }
    assert_eq!(
        complete, 20,
        "POSTs answered with the one feature asked for"
    );
}
