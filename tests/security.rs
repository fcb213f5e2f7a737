//! The attacks the server withstands, each tried against the real binary on a temporary root
//! (see docs/security.md for the threat model and the limits). Every request here needs no
//! login, and the simple GETs among them are what any web page could make a staff member's
//! browser send.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]
#![allow(dead_code, reason = "each test file uses some of the shared helpers")]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::gis::{gdal_write, test_data};
use common::process::{BIN, Process, eventually, get_with, wait_for_log};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `/ogr2ogr?source=…&options=…` with the query encoded.
fn ogr2ogr(source: &str, options: &str) -> String {
    let encode = |t: &str| {
        t.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    format!(
        "/ogr2ogr?source={}&options={}",
        encode(source),
        encode(options)
    )
}

/// The body as JSON, which every error answer must be.
fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A MapInfo table of the Natural Earth countries: a source only GDAL reads.
fn with_tab(root: &Path) {
    gdal_write(
        "MapInfo File",
        &test_data("naturalearth_lowres.gpkg"),
        &root.join("userdata/local/countries.tab"),
        &[],
    );
}

/// A VRT whose layer never ends (an SQLite recursive query inside GDAL): an ogr2ogr process
/// that runs until it is stopped.
fn with_slow_vrt(root: &Path) {
    let local = root.join("userdata/local");
    std::fs::copy(
        test_data("naturalearth_lowres.gpkg"),
        local.join("countries.gpkg"),
    )
    .unwrap();
    std::fs::write(
        local.join("slow.vrt"),
        r#"<OGRVRTDataSource>
  <OGRVRTLayer name="slow">
    <SrcDataSource relativeToVRT="1">countries.gpkg</SrcDataSource>
    <SrcSQL dialect="sqlite">WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) AS n FROM c</SrcSQL>
  </OGRVRTLayer>
</OGRVRTDataSource>
"#,
    )
    .unwrap();
}

/// The recursive query that never ends on its own.
const RUNAWAY: &str =
    "-sql|WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c";

/// Item 1: GDAL reads `@path` as the contents of a file: no option value may start with `@`.
#[tokio::test]
async fn gdal_cannot_be_made_to_read_server_files() {
    let server = Process::start("{}", with_tab).await;
    let root = server.root.display().to_string();
    // The GDAL path works for a plain filter.
    let (status, _, body) = server
        .get(&ogr2ogr("countries.tab", "-where|continent='Oceania'"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)["features"].as_array().unwrap().len() > 5);
    for (options, option) in [
        (format!("-where|@{root}/state/self-signed.key"), "-where"),
        (format!("-sql|@{root}/config.json"), "-sql"),
        ("-where|@/etc/passwd".to_owned(), "-where"),
        ("-sql|@/etc/passwd".to_owned(), "-sql"),
    ] {
        let (status, _, body) = server.get(&ogr2ogr("countries.tab", &options)).await;
        assert_eq!(status, 400, "{options}: {body}");
        let detail = json(&body)["detail"].as_str().unwrap().to_owned();
        assert!(detail.starts_with(option), "{options}: {detail}");
        for secret in ["PRIVATE KEY", "root:x:0", "\"listen\""] {
            assert!(!body.contains(secret), "{options} leaked {secret}: {body}");
        }
    }
}

/// Item 2: A source is a file in the site's folder: never a connection string, a URL or a GDAL
/// virtual file, so the server connects nowhere a client names.
#[tokio::test]
async fn connection_strings_urls_and_virtual_files_are_refused_without_connecting() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    let server = Process::start("{}", |_| {}).await;
    for source in [
        format!("PG:host=127.0.0.1 port={port} dbname=gis"),
        format!("pg:host=127.0.0.1 port={port}"),
        format!("MYSQL:gis,host=127.0.0.1,port={port}"),
        format!("MSSQL:server=127.0.0.1,{port};database=gis"),
        "ODBC:gis".to_owned(),
        "OCI:user/pass@gis".to_owned(),
        format!("WFS:http://127.0.0.1:{port}/wfs"),
        format!("/vsicurl/http://127.0.0.1:{port}/x.geojson"),
        format!("vsicurl/http://127.0.0.1:{port}/x.geojson"),
        "/vsizip/local/x.zip/x.shp".to_owned(),
        "/VSIMEM/x.geojson".to_owned(),
        format!("http://127.0.0.1:{port}/x.geojson"),
        "C:/gis/x.tab".to_owned(),
        "\\\\server\\share\\x.tab".to_owned(),
        "<OGRVRTDataSource/>".to_owned(),
    ] {
        for options in ["", "-sql|@/etc/passwd"] {
            let (status, _, body) = server.get(&ogr2ogr(&source, options)).await;
            assert_eq!(status, 400, "{source}: {body}");
            assert!(json(&body)["error"].is_string(), "{body}");
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the server connected out"
    );
}

/// Item 3: Client text never becomes a GDAL option: values that GDAL's general option parser would
/// take (`--version`, `--config`, `--debug`…) are refused, naming the option.
#[tokio::test]
async fn client_text_never_becomes_a_gdal_option() {
    let server = Process::start("{}", with_tab).await;
    for (options, option) in [
        ("-nln|--version", "-nln"),
        ("-nln|--formats", "-nln"),
        ("-nln|--help-general", "-nln"),
        ("-where|--debug|ON", "-where"),
        ("-select|name,--config", "-select"),
        ("-nln|--optfile", "-nln"),
        ("-where|name='/vsicurl/http://127.0.0.1:9/'", "-where"),
        ("--version", "--version"),
        ("--config|GDAL_HTTP_PROXY|127.0.0.1:9", "--config"),
    ] {
        let (status, _, body) = server.get(&ogr2ogr("countries.tab", options)).await;
        assert_eq!(status, 400, "{options}: {body}");
        let detail = json(&body)["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains(option), "{options}: {detail}");
        for gdal_output in ["GDAL 3", "Supported Formats", "Generic GDAL utility"] {
            assert!(!body.contains(gdal_output), "{options}: {body}");
        }
    }
}

/// Item 4: SQL has a time limit, runs on a bounded pool with a queue (503 and `Retry-After` when it
/// is full), and never starves static files or `/health`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_sql_is_stopped_and_never_starves_the_server() {
    let server = Process::start(
        r#"{"data": {"query_timeout_secs": 3, "query_workers": 2, "query_queue": 2}}"#,
        |_| {},
    )
    .await;
    let source = "naturalearth_lowres.gpkg";
    let (status, _, body) = server.get(&ogr2ogr(source, RUNAWAY)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        json(&body)["detail"]
            .as_str()
            .unwrap()
            .contains("time limit"),
        "{body}"
    );

    let client = server.client();
    let url = server.url(&ogr2ogr(source, RUNAWAY));
    let runaways: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { get_with(&client, &url).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // While the pool is full, health and static files answer at once.
    let (health, _, _) = server.get("/health").await;
    assert_eq!(health, 200);
    let (file, _, _) = server.get("/resourcecheck/local.json").await;
    assert_eq!(file, 200);
    assert!(
        runaways.iter().any(|r| !r.is_finished()),
        "health waited for the runaway queries"
    );
    let mut busy = 0;
    for runaway in runaways {
        let (status, headers, body) = runaway.await.unwrap();
        assert!(json(&body)["error"].is_string(), "{body}");
        match status.as_u16() {
            400 => assert!(body.contains("time limit"), "{body}"),
            503 => {
                busy += 1;
                assert!(headers.contains_key("retry-after"), "{headers:?}");
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(busy >= 1, "8 queries fit in 2 workers and a queue of 2");
}

/// Item 4: A query is interrupted when its client goes away, and when the server stops: SIGTERM
/// ends the process even with a query that would run for ten minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_ends_with_its_client_and_with_the_server() {
    let server = Process::start(
        r#"{"data": {"query_timeout_secs": 600, "query_workers": 1, "query_queue": 0},
            "http": {"limits": {"drain_timeout_secs": 1}}}"#,
        |_| {},
    )
    .await;
    let source = "naturalearth_lowres.gpkg";
    let url = server.url(&ogr2ogr(source, RUNAWAY));
    let client = server.client();
    let abandoned = tokio::spawn({
        let client = client.clone();
        async move { client.get(url).send().await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    abandoned.abort();
    // The only worker is free again once the abandoned query has been interrupted.
    let fast = server.url(&ogr2ogr(source, "-where|continent='Oceania'"));
    let mut freed = false;
    for _ in 0..100 {
        let (status, _, _) = get_with(&client, &fast).await;
        if status == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "the abandoned query kept its worker");

    let url = server.url(&ogr2ogr(source, RUNAWAY));
    tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let exit = server.terminate(Duration::from_secs(30)).await;
    assert!(
        exit.is_some_and(|s| s.success()),
        "SIGTERM did not stop the server: {exit:?}"
    );
}

/// Items 5 and 12: Results have a memory budget, and errors of the first rows are error statuses,
/// not a 200 followed by a broken body (over HTTP/1.1 and HTTP/2).
#[tokio::test]
async fn result_memory_is_bounded_and_errors_come_before_the_status() {
    let server = Process::start(r#"{"data": {"sqlite_memory_mb": 256}}"#, |_| {}).await;
    let source = "naturalearth_lowres.gpkg";
    let columns = |value: &str, n: usize| {
        (0..n)
            .map(|i| format!("{value} c{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let attacks = [
        format!("-sql|SELECT {}", columns("zeroblob(999000000)", 4)),
        format!("-sql|SELECT {}", columns("zeroblob(30000000)", 40)),
        format!(
            "-sql|SELECT {}",
            columns("printf('%.*c', 30000000, 'x')", 40)
        ),
        "-sql|SELECT randomblob(2000000000)".to_owned(),
        "-limit|18446744073709551615".to_owned(),
        "-limit|9223372036854775808".to_owned(),
    ];
    let h1 = server.client_builder().http1_only().build().unwrap();
    for client in [server.client(), h1] {
        for options in &attacks {
            let (status, _, body) = get_with(&client, &server.url(&ogr2ogr(source, options))).await;
            assert_eq!(status, 400, "{options}: {body}");
            assert!(json(&body)["detail"].is_string(), "{body}");
        }
        for query in [
            "offset=18446744073709551615",
            "offset=9223372036854775808",
            "limit=0",
        ] {
            let (status, _, body) = get_with(
                &client,
                &server.url(&format!(
                    "/features/collections/naturalearth_lowres/items?{query}"
                )),
            )
            .await;
            assert_eq!(status, 400, "{query}: {body}");
            assert!(json(&body)["detail"].is_string(), "{body}");
        }
    }
    let (_, peak) = server.memory_kb();
    assert!(peak < 700 * 1024, "peak memory {} MiB", peak / 1024);
    // The server still answers.
    let (status, _, _) = server
        .get(&ogr2ogr(source, "-where|continent='Oceania'"))
        .await;
    assert_eq!(status, 200);
}

/// Item 6: GDAL processes are capped (the rest wait in a bounded queue, then 503), limited in time
/// and memory, and killed when their client goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gdal_processes_are_capped_limited_and_killed_with_their_client() {
    let server = Process::start(
        r#"{"data": {"gdal": {"max_processes": 2, "queue": 1, "timeout_secs": 4, "memory_mb": 700}}}"#,
        with_slow_vrt,
    )
    .await;
    let client = server.client();
    let url = server.url(&ogr2ogr("slow.vrt", ""));
    let running: Vec<_> = (0..3)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { get_with(&client, &url).await })
        })
        .collect();
    eventually("two ogr2ogr processes", Duration::from_secs(20), || {
        server
            .children()
            .iter()
            .filter(|(_, c)| c == "ogr2ogr")
            .count()
            == 2
    })
    .await;
    for (pid, _) in server.children() {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = |name: &str| {
            limits
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_default()
                .split_whitespace()
                .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            line("Max address space")[0],
            (700u64 << 20).to_string(),
            "{limits}"
        );
        assert_eq!(line("Max cpu time")[0], "5", "{limits}");
    }
    // Two run, one waits: the next is turned away at once.
    let (status, headers, body) = server.get(&ogr2ogr("slow.vrt", "")).await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert!(server.children().len() <= 2);
    for task in running {
        let (status, _, body) = task.await.unwrap();
        assert!([503, 504].contains(&status.as_u16()), "{status}: {body}");
        assert!(json(&body)["error"].is_string());
    }
    eventually("no ogr2ogr left", Duration::from_secs(10), || {
        server.children().is_empty()
    })
    .await;

    // A client that goes away takes its process with it, long before the time limit.
    let patient = Process::start(
        r#"{"data": {"gdal": {"timeout_secs": 600}}}"#,
        with_slow_vrt,
    )
    .await;
    for http1 in [false, true] {
        let mut builder = patient.client_builder();
        if http1 {
            builder = builder.http1_only();
        }
        let client = builder.build().unwrap();
        let url = patient.url(&ogr2ogr("slow.vrt", ""));
        let request = tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) });
        eventually("an ogr2ogr process", Duration::from_secs(20), || {
            !patient.children().is_empty()
        })
        .await;
        request.abort();
        eventually(
            "the process of a client that went away killed",
            Duration::from_secs(20),
            || patient.children().is_empty(),
        )
        .await;
    }
}

/// TLS to `addr` trusting `pem`, with ALPN `protocol`.
async fn tls(
    addr: SocketAddr,
    pem: &[u8],
    protocol: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![protocol.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    connector
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

/// Item 7: An HTTP/2 connection with no request in flight is closed after the idle timeout, even
/// though keep-alive pings (the server's and the client's) keep bytes moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed() {
    let server = Process::start(
        r#"{"http": {"limits": {"idle_timeout_secs": 2, "max_connections": 4}}}"#,
        |_| {},
    )
    .await;
    for client_pings in [false, true] {
        let stream = tls(server.addr(), &server.cert_pem(), b"h2").await;
        let mut builder =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        builder.timer(hyper_util::rt::TokioTimer::new());
        if client_pings {
            builder
                .keep_alive_interval(Duration::from_millis(500))
                .keep_alive_while_idle(true);
        }
        let (mut sender, connection) = builder
            .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(
                stream,
            ))
            .await
            .unwrap();
        let connection = tokio::spawn(connection);
        let request = hyper::Request::get("/resourcecheck/local.json")
            .header("host", "localhost")
            .body(http_body_util::Empty::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        drop(response);
        // Now idle: the server must close it (before the fix it never did).
        let closed = tokio::time::timeout(Duration::from_secs(30), connection).await;
        assert!(closed.is_ok(), "an idle HTTP/2 connection stayed open");
    }
    let (status, _, _) = server.get("/health").await;
    assert_eq!(status, 200);
}

/// Sends GETs with `host` on one open HTTP/1.1 connection; returns the statuses.
async fn gets_with_hosts(
    stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    hosts: impl Iterator<Item = String>,
) -> Vec<u16> {
    let mut statuses = Vec::new();
    for host in hosts {
        let request = format!("GET /resourcecheck/local.json HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let (status, _) = common::keepalive_get_raw(stream, &request).await;
        statuses.push(status);
    }
    statuses
}

/// Item 8: Host names sent by clients are never remembered: 10,000 distinct 10 KB hosts leave
/// memory where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_host_names_do_not_grow_memory() {
    let server = Process::start(r#"{"http": {"access_log": {"mode": "off"}}}"#, |_| {}).await;
    let mut stream = tls(server.addr(), &server.cert_pem(), b"http/1.1").await;
    let host = |i: usize| format!("h{i}{}.example.org", "x".repeat(10_000));
    let warm = gets_with_hosts(&mut stream, (0..500).map(host)).await;
    assert!(warm.iter().all(|s| *s == 200));
    let (before, _) = server.memory_kb();
    let statuses = gets_with_hosts(&mut stream, (500..10_500).map(host)).await;
    assert!(statuses.iter().all(|s| *s == 200));
    let (after, _) = server.memory_kb();
    let grown = after.saturating_sub(before) / 1024;
    assert!(grown < 30, "memory grew by {grown} MiB");
}

/// Item 9: Open-option variants of one source cannot fill the disk with conversions, and the
/// conversions of a deleted source are removed.
#[tokio::test]
async fn open_option_variants_do_not_fill_the_disk() {
    let server = Process::start(r#"{"data": {"conversion_cache_mb": 1}}"#, |root| {
        let local = root.join("userdata/local");
        for name in ["cities.csv", "towns.csv"] {
            std::fs::copy(test_data("naturalearth_cities.csv"), local.join(name)).unwrap();
        }
    })
    .await;
    let cache = server.root.join("state/cache");
    let conversions = || -> Vec<(std::path::PathBuf, u64)> {
        std::fs::read_dir(&cache)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "gpkg"))
                    .map(|e| (e.path(), e.metadata().map_or(0, |m| m.len())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut largest = 0;
    for i in 0..40 {
        let (status, _, body) = server
            .get(&ogr2ogr(
                "cities.csv",
                &format!("-oo|X_POSSIBLE_NAMES=X,lon{i}"),
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        largest = conversions()
            .iter()
            .map(|c| c.1)
            .max()
            .unwrap_or(0)
            .max(largest);
    }
    let total: u64 = conversions().iter().map(|c| c.1).sum();
    assert!(
        total <= (1 << 20) + largest,
        "{total} bytes of conversions for a 1 MiB budget"
    );
    // The source goes; its conversions go at the next sweep (here: the next conversion).
    std::fs::remove_file(server.root.join("userdata/local/cities.csv")).unwrap();
    let (status, _, _) = server.get(&ogr2ogr("towns.csv", "")).await;
    assert_eq!(status, 200);
    let left: Vec<_> = conversions()
        .into_iter()
        .filter(|(path, _)| {
            std::fs::read_to_string(path.with_extension("source"))
                .is_ok_and(|s| s.ends_with("cities.csv"))
        })
        .collect();
    assert!(left.is_empty(), "conversions of a deleted source: {left:?}");
    let (status, _, _) = server.get(&ogr2ogr("cities.csv", "")).await;
    assert_eq!(status, 404);
}

/// An upstream that records the paths and headers it is asked for.
async fn recording_upstream() -> (
    SocketAddr,
    Arc<std::sync::Mutex<Vec<(String, Vec<String>)>>>,
) {
    use http_body_util::Full;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            let path = request
                                .uri()
                                .path_and_query()
                                .map(ToString::to_string)
                                .unwrap_or_default();
                            let headers =
                                request.headers().keys().map(ToString::to_string).collect();
                            record.lock().unwrap().push((path, headers));
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(
                                bytes::Bytes::from_static(b"upstream"),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// One raw HTTP/1.1 request (the path sent exactly as written); returns the status and body.
async fn raw(server: &Process, request: &str) -> (u16, String) {
    let mut stream = tls(server.addr(), &server.cert_pem(), b"http/1.1").await;
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Item 10: Proxy paths cannot leave the upstream's base, and headers named in `Connection` are
/// not forwarded.
#[tokio::test]
async fn proxy_paths_stay_under_the_upstream_base() {
    let (upstream, seen) = recording_upstream().await;
    let server = Process::start(
        &format!(r#"{{"http": {{"proxy": [{{"prefix": "/iis", "upstream": "http://{upstream}/pozi"}}]}}}}"#),
        |_| {},
    )
    .await;
    for path in [
        "/iis/../secret",
        "/iis/%2e%2e/secret",
        "/iis/%2E%2E%2Fsecret",
        "/iis/.%2e/.%2e/root",
        "/iis/..%5csecret",
        "/iis/..;/secret",
        "/iis/a/../../secret",
        "/iis/%252e%252e/secret",
    ] {
        let (status, body) = raw(
            &server,
            &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 400, "{path}: {body}");
        json(&body);
    }
    // A backslash is not even a valid request target.
    let (status, _) = raw(
        &server,
        "GET /iis/..\\secret HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = raw(
        &server,
        "GET /iis/a/../wms?x=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nX-Kept: 1\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].0, "/pozi/wms?x=1");
    assert!(seen[0].1.contains(&"x-kept".to_owned()));
    assert!(!seen[0].1.contains(&"x-secret".to_owned()), "{seen:?}");
}

/// Item 11: Request text that is not ASCII is a clear error, never a panic.
#[tokio::test]
async fn non_ascii_sources_are_clear_errors() {
    let server = Process::start("{}", |_| {}).await;
    for (source, wanted) in [("abécd", 404), ("é:x", 400), ("ü", 404), ("MSSQ€:x", 400)] {
        let (status, _, body) = server.get(&ogr2ogr(source, "")).await;
        assert_eq!(status.as_u16(), wanted, "{source}: {body}");
        json(&body);
    }
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// Runs `poziserver` with `args`; (exit code, stderr).
fn poziserver(args: &[&str]) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("poziserver {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Item 13: `check-config` accepts only what `run` can use, and both report the same problem with
/// its path, line and column; only regular files of sane size are read.
#[test]
fn check_config_and_run_agree() {
    let dir = tempfile::tempdir().unwrap();
    for (config, wanted) in [
        (
            r#"{"http": {"limits": {"drain_timeout_secs": 18446744073709551615}}}"#,
            "http.limits.drain_timeout_secs",
        ),
        (
            r#"{"http": {"limits": {"idle_timeout_secs": 18446744073709551615}}}"#,
            "http.limits.idle_timeout_secs",
        ),
        (
            r#"{"http": {"limits": {"max_connections": 18446744073709551615}}}"#,
            "http.limits.max_connections",
        ),
        (
            r#"{"supervisor": {"period_secs": 0}}"#,
            "supervisor.period_secs",
        ),
        (
            r#"{"search": {"time_zone": "../../etc/passwd"}}"#,
            "search.time_zone",
        ),
        (r#"{"search": {"rebuild": "nope"}}"#, "search.rebuild"),
        (r#"{"log": {"level": "verbose"}}"#, "log.level"),
        (
            r#"{"http": {"hosts": {"a": "../../../../../../etc"}}}"#,
            "http.hosts.a",
        ),
        (
            r#"{"http": {"cache_control": [{"pattern": "[", "value": "no-store"}]}}"#,
            "http.cache_control[0].pattern",
        ),
        (
            r#"{"http": {"cache_control": [{"pattern": "**", "value": "no-store\r\nX-Evil: 1"}]}}"#,
            "http.cache_control[0].value",
        ),
        (
            r#"{"http": {"proxy": [{"prefix": "iis", "upstream": "http://localhost/pozi"}]}}"#,
            "http.proxy[0].prefix",
        ),
        (
            r#"{"http": {"proxy": [{"prefix": "/iis", "upstream": "localhost/pozi"}]}}"#,
            "http.proxy[0].upstream",
        ),
        (
            r#"{"http": {"cors": {"allowed_origins": ["pozi.com"]}}}"#,
            "http.cors.allowed_origins[0]",
        ),
        (
            r#"{"data": {"query_timeout_secs": 0}}"#,
            "data.query_timeout_secs",
        ),
        (
            r#"{"data": {"gdal": {"memory_mb": 1}}}"#,
            "data.gdal.memory_mb",
        ),
    ] {
        let file = dir.path().join("config.json");
        std::fs::write(&file, config).unwrap();
        let (code, checked) = poziserver(&["check-config", file.to_str().unwrap()]);
        assert_eq!(code, Some(1), "check-config accepted {config}");
        assert!(
            checked.contains("1:") && checked.contains(wanted),
            "{config}: {checked}"
        );
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("config.json"), config).unwrap();
        let (code, ran) = poziserver(&[
            "run",
            "--root",
            root.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        assert_eq!(code, Some(1), "run accepted {config}");
        let problem = checked.lines().find(|l| l.contains(wanted)).unwrap().trim();
        let problem = problem.split_once(": ").map_or(problem, |(_, p)| p);
        assert!(
            ran.contains(problem),
            "run said something else for {config}:\n{ran}\ncheck-config:\n{checked}"
        );
    }
    let (code, stderr) = poziserver(&["check-config", "/dev/zero"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("not a regular file"), "{stderr}");
    let big = dir.path().join("big.json");
    std::fs::write(&big, " ".repeat(2 << 20)).unwrap();
    let (code, stderr) = poziserver(&["check-config", big.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("at most"), "{stderr}");
    #[cfg(unix)]
    {
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let (code, stderr) = poziserver(&["check-config", fifo.to_str().unwrap()]);
        assert_eq!(code, Some(1));
        assert!(stderr.contains("not a regular file"), "{stderr}");
    }
}

/// Item 14: A garbage or mismatched certificate at start does not leave the server without HTTPS:
/// it serves the last good copy (or the self-signed certificate) and warns in `/health`.
#[tokio::test]
async fn a_bad_certificate_at_start_falls_back_and_warns() {
    let server = Process::start("{}", |root| {
        std::fs::write(root.join("certificate.cer"), "not a certificate").unwrap();
        std::fs::write(root.join("certificate.key"), "not a key").unwrap();
    })
    .await;
    let (status, _, body) = server.get("/health").await;
    assert_eq!(status, 200, "{body}");
    let health = json(&body);
    assert_eq!(health["status"], "warn", "{body}");
    let check = &health["checks"]["certificate:expiry"][0];
    assert_eq!(check["selfSigned"], true);
    assert!(
        check["output"].as_str().unwrap().contains("not usable"),
        "{body}"
    );
    drop(server);

    // A good certificate once, then a mismatched key: its last good copy is served.
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    let good = Process::start("{}", |root| {
        std::fs::write(root.join("certificate.cer"), &cert_pem).unwrap();
        std::fs::write(root.join("certificate.key"), &key_pem).unwrap();
    })
    .await;
    let (status, _, _) = good.get("/health").await;
    assert_eq!(status, 200);
    let other = rcgen::KeyPair::generate().unwrap();
    let restarted = Process::start_in(good.into_dir(), |root| {
        std::fs::write(root.join("certificate.key"), other.serialize_pem()).unwrap();
    })
    .await;
    let (status, _, body) = restarted.get("/health").await;
    assert_eq!(status, 200, "{body}");
    let health = json(&body);
    let check = &health["checks"]["certificate:expiry"][0];
    assert_eq!(check["selfSigned"], false, "{body}");
    assert!(
        check["output"].as_str().unwrap().contains("do not match"),
        "{body}"
    );
}

/// Item 15: Nothing internal leaks: `/health` shows no absolute paths, a 502 no upstream address, a
/// too-large head gets the JSON error every other error has, and data-source definitions and
/// dotfiles are not downloadable (while `/ogr2ogr` still reads the VRT).
#[tokio::test]
async fn nothing_internal_leaks() {
    let server = Process::start(
        r#"{"http": {"proxy": [{"prefix": "/down", "upstream": "http://127.0.0.1:9/nothing"}]}}"#,
        |root| {
            let local = root.join("userdata/local");
            std::fs::copy(test_data("naturalearth_lowres.gpkg"), local.join("countries.gpkg")).unwrap();
            std::fs::write(
                local.join("layers.vrt"),
                "<OGRVRTDataSource><OGRVRTLayer name=\"countries\"><SrcDataSource relativeToVRT=\"1\">countries.gpkg</SrcDataSource><SrcLayer>naturalearth_lowres</SrcLayer></OGRVRTLayer></OGRVRTDataSource>",
            )
            .unwrap();
            std::fs::write(local.join("roads.tab"), "!table\n").unwrap();
            std::fs::write(local.join(".env"), "PASSWORD=secret\n").unwrap();
            std::fs::create_dir_all(local.join(".git")).unwrap();
            std::fs::write(local.join(".git/config"), "[core]\n").unwrap();
        },
    )
    .await;
    let root = server.root.display().to_string();
    let (_, _, body) = server.get("/health").await;
    assert!(!body.contains(&root), "{body}");
    let (status, _, body) = server.get("/down/x").await;
    assert_eq!(status, 502);
    assert!(
        !body.contains("127.0.0.1:9") && !body.contains("nothing"),
        "{body}"
    );
    for path in [
        "/layers.vrt",
        "/roads.tab",
        "/.env",
        "/.git/config",
        "/LAYERS.VRT",
    ] {
        let (status, _, body) = server.get(path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            !body.contains("OGRVRTDataSource") && !body.contains("secret"),
            "{body}"
        );
    }
    let (status, _, body) = server.get(&ogr2ogr("layers.vrt", "")).await;
    assert_eq!(status, 200, "{body}");
    let big = "x".repeat(20_000);
    let (status, body) = raw(
        &server,
        &format!(
            "GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 431);
    assert_eq!(json(&body)["status"], 431);
}

/// Item 16: A component that cannot start after a planned restart backs off like any failing
/// component: here the certificate files are broken and the self-signed one cannot be
/// rewritten when the scheduled restart of `http` fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_restart_that_cannot_start_backs_off() {
    let server = Process::start(
        r#"{"supervisor": {"period_secs": 1, "backoff_initial_ms": 100, "backoff_max_ms": 2000},
            "restarts": [{"component": "http", "schedule": "*/2 * * * * *"}]}"#,
        |_| {},
    )
    .await;
    wait_for_log(&server.root, "server started", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::write(server.root.join("certificate.cer"), "garbage").unwrap();
    std::fs::write(server.root.join("certificate.key"), "garbage").unwrap();
    for name in ["self-signed.cer", "self-signed.key"] {
        let path = server.root.join("state").join(name);
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
    }
    let started = server.log().matches("restart planned").count();
    wait_for_log(
        &server.root,
        "child http failed to start",
        Duration::from_secs(20),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let log = server.log();
    let restarts = log.matches("restart planned").count() - started;
    assert!(
        (1..=20).contains(&restarts),
        "{restarts} restarts in about 4 s"
    );
    // The delays grow as documented (100 ms doubling, with jitter, to the 2 s cap).
    let delays: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("restart planned") && l.contains("child=http"))
        .filter_map(|l| {
            l.split("delay_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let grown = delays.iter().rev().take(3).any(|d| *d >= 1000);
    assert!(
        delays.iter().filter(|d| **d == 0).count() <= 2 && grown,
        "delays {delays:?}"
    );
}

/// Item 17: The repository holds everything its tests, benchmarks and scripts use: nothing reads a
/// path beside it.
#[test]
fn the_repository_holds_everything_its_tests_use() {
    let outside = format!("..{}shared", '/');
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut offenders = Vec::new();
    let mut folders = vec![top.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !["target", ".git"].contains(&name.as_str()) {
                    folders.push(path);
                }
            } else if let Ok(text) = std::fs::read_to_string(&path)
                && text.contains(&outside)
            {
                offenders.push(path.strip_prefix(top).unwrap().display().to_string());
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "files reading outside the repository: {offenders:?}"
    );
}

/// Found by an outside review: GDAL's own SQL opens any data source a query names (`FROM
/// 'CSV:/path'.layer`, URLs, connection strings, inline VRTs), so `-sql` never goes to GDAL,
/// and a `-where` for GDAL may not hold a subquery or call a function a driver adds.
#[tokio::test]
async fn gdal_sql_cannot_open_other_data_sources() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    let server = Process::start("{}", |root| {
        with_tab(root);
        std::fs::write(root.join("certificate-copy.csv"), "secret\nPRIVATE KEY\n").unwrap();
    })
    .await;
    let root = server.root.display().to_string();
    for options in [
        format!("-sql|SELECT|*|FROM|'CSV:{root}/certificate-copy.csv'.certificate-copy"),
        format!(
            "-sql|SELECT * FROM '<OGRVRTDataSource><OGRVRTLayer name=''k''><SrcDataSource>CSV:{root}/state/self-signed.key</SrcDataSource></OGRVRTLayer></OGRVRTDataSource>'.k"
        ),
        format!("-sql|SELECT * FROM 'http://127.0.0.1:{port}/x.json'.x"),
        format!("-sql|SELECT * FROM 'PG:host=127.0.0.1 port={port}'.x"),
        "-sql|SELECT * FROM 'CSV:/proc/self/status'.status".to_owned(),
        "-where|name IN (SELECT name FROM countries)".to_owned(),
        "-where|ogr_geocode('x') IS NOT NULL".to_owned(),
    ] {
        let (status, _, body) = server.get(&ogr2ogr("countries.tab", &options)).await;
        assert_eq!(status, 400, "{options}: {body}");
        assert!(
            !body.contains("secret") && !body.contains("PRIVATE"),
            "{body}"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(connections.load(Ordering::SeqCst), 0, "GDAL connected out");
    // A filter on fields still goes to GDAL.
    let (status, _, body) = server
        .get(&ogr2ogr(
            "countries.tab",
            "-where|(continent='Oceania' AND pop_est * 2 > 0)",
        ))
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Found by an outside review: a geometry nested 8,000 collections deep overflowed the stack
/// and aborted the process; one claiming four billion points would have asked for 64 GB; NaN
/// coordinates came out as `null` in a 200. Such geometries are checked before anything
/// decodes them, and left out (the answer stays valid GeoJSON).
#[tokio::test]
async fn hostile_geometries_neither_crash_nor_corrupt_answers() {
    let server = Process::start("{}", |_| {}).await;
    let source = "naturalearth_lowres.gpkg";
    for (what, blob) in [
        (
            "nested 8,000 deep",
            "concat('4750000100000000', replace(hex(zeroblob(8000)),'00','010700000001000000'), '0101000000', '000000000000F03F000000000000F03F')",
        ),
        (
            "four billion points",
            "concat('4750000100000000', '0102000000FFFFFFFF', hex(zeroblob(32)))",
        ),
        (
            "NaN coordinates",
            "'475000010000000001010000000000000000F87F000000000000F87F'",
        ),
    ] {
        let (status, _, body) = server
            .get(&ogr2ogr(
                source,
                &format!("-sql|SELECT unhex({blob}) AS geom, 1 AS n"),
            ))
            .await;
        assert_eq!(status, 200, "{what}: {body}");
        assert_eq!(
            json(&body)["features"],
            serde_json::json!([]),
            "{what}: {body}"
        );
    }
    let (status, _, _) = server.get("/health").await;
    assert_eq!(status, 200, "the server died");
}

/// Found by an outside review: answers were bounded per query in chunks, not bytes, and not at
/// all across queries, so clients that ask for large answers and never read them grew the
/// process by gigabytes. Answers held for clients now share `data.answer_memory_mb`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_cannot_grow_memory() {
    let server = Process::start(
        r#"{"data": {"answer_memory_mb": 64, "query_memory_mb": 32, "response_cache_mb": 0}}"#,
        |_| {},
    )
    .await;
    let big = ogr2ogr(
        "naturalearth_lowres.gpkg",
        "-sql|WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 60) SELECT x, printf('%.*c', 1000000, 'x') b FROM c",
    );
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut stream = tls(server.addr(), &server.cert_pem(), b"http/1.1").await;
        stream
            .write_all(format!("GET {big} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, peak) = server.memory_kb();
    assert!(
        peak < 500 * 1024,
        "peak memory {} MiB with 20 unread 60 MB answers",
        peak / 1024
    );
    let (status, _, _) = server.get("/health").await;
    assert_eq!(status, 200);
    drop(held);
}

/// Found by an outside review: a response the client never takes (an HTTP/2 window of zero)
/// held its connection forever, so enough of them kept `/health` from answering. Such a
/// connection is dropped after the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_never_taken_do_not_hold_connections() {
    let server = Process::start(r#"{"http": {"limits": {"idle_timeout_secs": 2}}}"#, |_| {}).await;
    let stream = tls(server.addr(), &server.cert_pem(), b"h2").await;
    let mut builder =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .initial_stream_window_size(0)
        .initial_connection_window_size(0);
    let (mut sender, connection) = builder
        .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get("/resourcecheck/local.json")
        .header("host", "localhost")
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    // The body is never read: the connection must still be closed by the server.
    let closed = tokio::time::timeout(Duration::from_secs(30), connection).await;
    assert!(
        closed.is_ok(),
        "a connection with an untaken response stayed open"
    );
    drop(response);
}

/// Found by an outside review: the response cache was keyed by the source as asked, so two
/// sites' copies of a file with the same name, size and time shared answers.
#[tokio::test]
async fn sites_never_share_cached_answers() {
    let server = Process::start("{}", |root| {
        let (local, gis01) = (root.join("userdata/local"), root.join("userdata/gis01"));
        std::fs::create_dir_all(&gis01).unwrap();
        std::fs::copy(test_data("naturalearth_lowres.gpkg"), local.join("c.gpkg")).unwrap();
        std::fs::copy(test_data("naturalearth_lowres.gpkg"), gis01.join("c.gpkg")).unwrap();
        // Same length, so the same size: the record's text is rewritten in place.
        let bytes = std::fs::read(gis01.join("c.gpkg")).unwrap();
        let at = bytes.windows(4).position(|w| w == b"Fiji").unwrap();
        let mut changed = bytes.clone();
        changed[at..at + 4].copy_from_slice(b"FIJI");
        std::fs::write(gis01.join("c.gpkg"), changed).unwrap();
        let same = std::process::Command::new("touch")
            .arg("-r")
            .arg(local.join("c.gpkg"))
            .arg(gis01.join("c.gpkg"))
            .status()
            .unwrap();
        assert!(same.success());
        assert_eq!(
            std::fs::metadata(local.join("c.gpkg")).unwrap().len(),
            std::fs::metadata(gis01.join("c.gpkg")).unwrap().len()
        );
    })
    .await;
    let client = server.client_builder().http1_only().build().unwrap();
    let path = server.url(&ogr2ogr("c.gpkg", "-where|iso_a3='FJI'|-select|name"));
    for (host, name) in [
        ("local.pozi.com", "Fiji"),
        ("gis01.pozi.com", "FIJI"),
        ("local.pozi.com", "Fiji"),
    ] {
        let body = client
            .get(&path)
            .header("host", host)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(
            json(&body)["features"][0]["properties"]["name"],
            name,
            "{host}: {body}"
        );
    }
}

/// Found by a second outside review: a function check on `-where` was bypassed with comments
/// (`f/**/()`), and through a VRT over a GeoPackage the filter reached GDAL's own SQLite with
/// Spatialite, which could read and write files. GDAL now gets the filter as this server writes
/// it again from a small grammar of comparisons: no function survives the round trip.
#[tokio::test]
async fn filters_for_gdal_are_rewritten_not_passed_through() {
    let server = Process::start("{}", |root| {
        let local = root.join("userdata/local");
        std::fs::copy(test_data("naturalearth_lowres.gpkg"), local.join("countries.gpkg")).unwrap();
        std::fs::write(
            local.join("countries.vrt"),
            "<OGRVRTDataSource><OGRVRTLayer name=\"countries\"><SrcDataSource relativeToVRT=\"1\">countries.gpkg</SrcDataSource><SrcLayer>naturalearth_lowres</SrcLayer></OGRVRTLayer></OGRVRTDataSource>",
        )
        .unwrap();
    })
    .await;
    let leak = server.root.join("userdata/local/leak.sqlite");
    for options in [
        "-where|sqlite_version/**/()|IS|NOT|NULL".to_owned(),
        "-where|`sqlite_version`()|IS|NOT|NULL".to_owned(),
        "-where|[sqlite_version]()|IS|NOT|NULL".to_owned(),
        format!(
            "-where|name='Fiji' AND SqlProc_Execute/**/(SqlProc_FromText/**/('VACUUM INTO ''{}'';')) IS NULL",
            leak.display()
        ),
        "-where|name IN (SELECT name FROM naturalearth_lowres)".to_owned(),
    ] {
        let (status, _, body) = server.get(&ogr2ogr("countries.vrt", &options)).await;
        assert_eq!(status, 400, "{options}: {body}");
    }
    assert!(!leak.exists(), "a file was written");
    let (status, _, body) = server
        .get(&ogr2ogr(
            "countries.vrt",
            "-where|name = 'Fiji' OR (pop_est > 1e9 AND continent <> 'x')",
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body)["features"].as_array().unwrap().len(),
        3,
        "{body}"
    );
}

/// The geometry of a second outside review: a MultiPolygon whose part claims to be a point
/// passed the check and led the decoder, reading it as a polygon, into bytes holding 16,000
/// nested collections (a stack overflow). Parts must now be of their collection's kind, and no
/// bytes may be left over; curves (which GeoJSON cannot hold) are left out too.
#[tokio::test]
async fn geometries_that_lie_about_their_parts_are_left_out() {
    let server = Process::start("{}", |_| {}).await;
    let m = 16_000usize;
    let mut head = b"GP\x00\x01".to_vec();
    head.extend_from_slice(&4326i32.to_le_bytes());
    for (kind, n) in [(7u32, 3u32), (6, 1)] {
        head.push(1);
        head.extend_from_slice(&kind.to_le_bytes());
        head.extend_from_slice(&n.to_le_bytes());
    }
    head.push(1);
    head.extend_from_slice(&1u32.to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes());
    head.push(1);
    head.extend_from_slice(&1u32.to_le_bytes());
    head.extend_from_slice(&[0; 7]);
    head.push(1);
    head.extend_from_slice(&2u32.to_le_bytes());
    head.extend_from_slice(&u32::try_from(9 * m / 16).unwrap().to_le_bytes());
    let mut tail = vec![1];
    tail.extend_from_slice(&1u32.to_le_bytes());
    tail.extend_from_slice(&[0; 16]);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
    let lying = format!(
        "-sql|\"SELECT CAST(X'{}' || unhex(replace(hex(zeroblob({m})),'00','010700000001000000')) || X'{}' AS BLOB) AS geom\"",
        hex(&head),
        hex(&tail)
    );
    let circular = "-sql|SELECT X'475000010000000001080000000300000000000000000000000000000000000000000000000000F03F000000000000F03F00000000000000400000000000000000' AS geom".to_owned();
    for options in [lying, circular] {
        let (status, _, body) = server
            .get(&ogr2ogr("naturalearth_lowres.gpkg", &options))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(json(&body)["features"], serde_json::json!([]), "{body}");
    }
    let (status, _, _) = server.get("/health").await;
    assert_eq!(status, 200, "the server died");
}

/// A second outside review: 20,000 HTTP/2 streams of a large file with a zero window used every
/// file descriptor and 3 GB, and `/health` stopped answering; streams of 15 MB answers held by
/// the HTTP layer escaped the answers' memory budget. Streamed responses are now bounded over
/// all connections (`http.limits.max_open_streams`), HTTP/2 connections to 100 streams each, and
/// a chunk's memory counts until the HTTP layer asks for the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_unread_streams_are_bounded() {
    let server = Process::start(
        r#"{"http": {"limits": {"max_open_streams": 16}},
            "data": {"answer_memory_mb": 64, "response_cache_mb": 0}}"#,
        |root| {
            std::fs::write(root.join("userdata/local/big.bin"), vec![7u8; 4 << 20]).unwrap();
        },
    )
    .await;
    let big_answer = ogr2ogr(
        "naturalearth_lowres.gpkg",
        "-sql|SELECT 1 AS n, printf('%.*c', 15000000, 'x') AS b",
    );
    let mut connections = Vec::new();
    let mut pending = Vec::new();
    for path in [
        "/big.bin",
        big_answer.as_str(),
        "/big.bin",
        big_answer.as_str(),
    ] {
        let stream = tls(server.addr(), &server.cert_pem(), b"h2").await;
        let (sender, connection) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(
                    stream,
                ))
                .await
                .unwrap();
        connections.push(tokio::spawn(connection));
        for _ in 0..40 {
            let mut sender = sender.clone();
            let request = hyper::Request::get(path)
                .header("host", "localhost")
                .body(http_body_util::Empty::new())
                .unwrap();
            // Responses are taken and held, their bodies never read.
            pending.push(tokio::spawn(async move {
                sender.send_request(request).await.ok()
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (status, _, _) = server.get("/health").await;
    assert_eq!(status, 200);
    let (_, peak) = server.memory_kb();
    assert!(peak < 600 * 1024, "peak memory {} MiB", peak / 1024);
    let open_files = std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .unwrap()
        .count();
    assert!(open_files < 200, "{open_files} file descriptors open");
    let mut busy = 0;
    for task in pending {
        task.abort();
        if let Ok(Some(response)) = task.await
            && response.status() == 503
        {
            busy += 1;
        }
    }
    let _ = busy;
    for connection in connections {
        connection.abort();
    }
}

/// One client address cannot take every connection slot: past its share, its connections are
/// closed as soon as they are accepted, and other connections are served.
#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let server = Process::start(
        r#"{"http": {"limits": {"max_connections_per_client": 5}}}"#,
        |_| {},
    )
    .await;
    let addr = server.addr();
    // Five bare TCP connections (no TLS) hold this address's share.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The sixth is closed at once, long before the handshake timeout.
    let mut sixth = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(3), sixth.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the sixth connection was not closed: {read:?}"
    );
    // Once they go, the address is served again.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, _) = server.get("/health").await;
    assert_eq!(status, 200);
}

/// Two `Host` headers are refused rather than one of them guessed at.
#[tokio::test]
async fn two_host_headers_are_refused() {
    let server = Process::start("{}", |_| {}).await;
    let (status, body) = raw(
        &server,
        "GET /resourcecheck/local.json HTTP/1.1\r\nHost: localhost\r\nHost: other\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("more than one Host header"), "{body}");
    let (status, _) = raw(
        &server,
        "GET /resourcecheck/local.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
}
