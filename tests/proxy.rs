//! The reverse proxy against a real upstream HTTP server on loopback, and the drain on stop.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::TestServer;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use reqwest::{StatusCode, header};

/// An upstream that echoes what it received, or is slow, on a free port.
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let path = request
                        .uri()
                        .path_and_query()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    if path.starts_with("/pozi/slow") {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                    }
                    let method = request.method().to_string();
                    let headers: serde_json::Map<String, serde_json::Value> = request
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().into()))
                        .collect();
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    let echo = serde_json::json!({
                        "method": method, "path": path, "headers": headers,
                        "body_len": body.len(), "body_sum": body.iter().map(|b| u64::from(*b)).sum::<u64>(),
                    });
                    let response = Response::builder()
                        .header("content-type", "application/json")
                        .header("x-upstream", "yes")
                        .body(Full::new(Bytes::from(echo.to_string())))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn config(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"{{"http": {{"proxy": [
            {{"prefix": "/iis", "upstream": "http://{upstream}/pozi"}},
            {{"prefix": "/qgis", "upstream": "http://{upstream}/pozi", "timeout_secs": 1}},
            {{"prefix": "/down", "upstream": "http://127.0.0.1:9/nothing"}}
        ]{extra}}}}}"#
    )
}

#[tokio::test]
async fn forwards_method_path_query_headers_and_bodies() {
    let up = upstream().await;
    let server = TestServer::start(&config(up, ""), |_| {}).await;
    let client = server.client();

    let response = client
        .get(server.url("/iis/wms?SERVICE=WMS&REQUEST=GetCapabilities"))
        .header(header::ORIGIN, "https://gis01.pozi.com")
        .header("x-custom", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-upstream"], "yes");
    // CORS added for allowed origins, as operators had to add by hand in IIS.
    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://gis01.pozi.com"
    );
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["method"], "GET");
    assert_eq!(
        echo["path"],
        "/pozi/wms?SERVICE=WMS&REQUEST=GetCapabilities"
    );
    assert_eq!(echo["headers"]["x-custom"], "kept");
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    assert_eq!(
        echo["headers"]["x-forwarded-host"],
        format!("127.0.0.1:{}", server.addr.port())
    );

    // A 3 MB body streams through.
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 7) as u8).collect();
    let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
    let response = client
        .post(server.url("/iis/wfs"))
        .body(body)
        .send()
        .await
        .unwrap();
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_len"], 3_000_000);
    assert_eq!(echo["body_sum"], sum);

    // The prefix must match a whole segment.
    let other = client.get(server.url("/iisx/wms")).send().await.unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test]
async fn upstream_down_is_502_and_too_slow_is_504_with_json() {
    let up = upstream().await;
    let server = TestServer::start(&config(up, ""), |_| {}).await;
    let client = server.client();
    let down = client.get(server.url("/down/wms")).send().await.unwrap();
    assert_eq!(down.status(), StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = down.json().await.unwrap();
    assert_eq!(body["error"], "upstream unreachable");

    let slow = client.get(server.url("/qgis/slow")).send().await.unwrap();
    assert_eq!(slow.status(), StatusCode::GATEWAY_TIMEOUT);
    let body: serde_json::Value = slow.json().await.unwrap();
    assert_eq!(body["error"], "upstream timed out");
    server.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused() {
    let up = upstream().await;
    let server = TestServer::start(
        &config(up, r#", "limits": {"body_limit_bytes": 1000}"#),
        |_| {},
    )
    .await;
    let response = server
        .client()
        .post(server.url("/iis/wfs"))
        .body(vec![0u8; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], 413);
    server.stop().await;
}

#[tokio::test]
async fn stopping_drains_in_flight_requests() {
    let up = upstream().await;
    let server = TestServer::start(&config(up, ""), |_| {}).await;
    let client = server.client();
    let url = server.url("/iis/slow");
    let in_flight = tokio::spawn(async move { client.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = server.addr;
    server.stop().await;
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["path"], "/pozi/slow");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after stop"
    );
}
