//! A real browser: headless Chromium loads a page from a second origin, whose script fetches
//! the resource check and a GeoJSON file from the server cross-origin. Chromium is installed by
//! `scripts/test` (Debian package `chromium`).
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use common::TestServer;
use common::chromium::spki_hash;
use http_body_util::Full;
use hyper::Response;
use hyper_util::rt::TokioIo;

/// Serves `page` at every path from a new loopback origin; returns its address.
async fn page_origin(listener: tokio::net::TcpListener, page: String) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let page = page.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_| {
                    let page = page.clone();
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "text/html; charset=utf-8")
                                .body(Full::new(Bytes::from(page)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn page(server: &TestServer) -> String {
    let base = server.url("");
    format!(
        r#"<!doctype html><html><body><pre id="result">pending</pre><script>
(async () => {{
  const out = {{}};
  try {{
    const r = await fetch("{base}/resourcecheck/local.json");
    out.check = r.status;
    out.checkBody = (await r.json()).status;
  }} catch (e) {{ out.check = "error: " + e; }}
  try {{
    const r = await fetch("{base}/naturalearth_cities.geojson");
    out.type = r.headers.get("content-type");
    out.features = (await r.json()).features.length;
  }} catch (e) {{ out.features = "error: " + e; }}
  document.getElementById("result").textContent = "RESULT " + JSON.stringify(out);
}})();
</script></body></html>"#
    )
}

/// Loads `url` in headless Chromium and returns the JSON the page's script wrote.
fn browse(url: &str, spki: &str) -> serde_json::Value {
    let output = common::chromium::run(url, spki, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&output.stdout);
    let json = dom
        .split("RESULT ")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .unwrap_or_else(|| {
            panic!(
                "the page never finished:\n{dom}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    serde_json::from_str(&json.replace("&quot;", "\"").replace("&amp;", "&")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_on_an_allowed_origin_reads_the_resource_check_and_geojson() {
    let allowed_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let allowed_port = allowed_listener.local_addr().unwrap().port();
    let config = format!(
        r#"{{"http": {{"cors": {{"allowed_origins": ["https://*.pozi.com", "http://127.0.0.1:{allowed_port}"]}}}}}}"#
    );
    let server = TestServer::start(&config, |_| {}).await;
    let spki = spki_hash(&server.cert_pem());

    let allowed = page_origin(allowed_listener, page(&server)).await;
    let url = format!("http://{allowed}/");
    let result = tokio::task::spawn_blocking(move || browse(&url, &spki))
        .await
        .unwrap();
    assert_eq!(result["check"], 200, "{result}");
    assert_eq!(result["checkBody"], "ok", "{result}");
    assert_eq!(result["features"], 243, "{result}");
    assert_eq!(
        result["type"], "application/geo+json; charset=utf-8",
        "{result}"
    );

    // Control: the same page from an origin that is not allowed cannot read the responses.
    let other = page_origin(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        page(&server),
    )
    .await;
    let url = format!("http://{other}/");
    let spki = spki_hash(&server.cert_pem());
    let refused = tokio::task::spawn_blocking(move || browse(&url, &spki))
        .await
        .unwrap();
    assert!(
        refused["check"]
            .as_str()
            .is_some_and(|e| e.starts_with("error")),
        "{refused}"
    );
    assert!(
        refused["features"]
            .as_str()
            .is_some_and(|e| e.starts_with("error")),
        "{refused}"
    );
    server.stop().await;
}
