//! The HTTPS listener against the real server: protocols, static files, host folders, CORS,
//! health, limits and the listener's life as a supervised component.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::{TestServer, eventually, gunzip, keepalive_get, raw_get, unbrotli};
use reqwest::StatusCode;
use reqwest::header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOSTS: &str = r#"{"http": {"host_names": ["local.pozi.com", "gis01.pozi.com", "other.pozi.com", "maps.example.org", "localhost", "127.0.0.1"],
    "hosts": {"maps.example.org": "gis01"}}}"#;

fn write(root: &std::path::Path, relative: &str, bytes: &[u8]) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn serves_over_http1_and_http2_by_alpn() {
    let server = TestServer::start("{}", |_| {}).await;
    let h1 = server.client_builder().http1_only().build().unwrap();
    let response = h1
        .get(server.url("/resourcecheck/local.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.status(), StatusCode::OK);
    let h2 = server.client();
    let response = h2
        .get(server.url("/resourcecheck/local.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    server.stop().await;
}

#[tokio::test]
async fn static_files_have_types_validators_and_conditional_answers() {
    let server = TestServer::start("{}", |root| {
        write(
            root,
            "userdata/local/styles/site.css",
            b"body { color: red }",
        );
        write(
            root,
            "userdata/local/img/logo.png",
            b"\x89PNG\r\n\x1a\nnot really",
        );
    })
    .await;
    let client = server.client();
    for (path, wanted) in [
        (
            "/naturalearth_cities.geojson",
            "application/geo+json; charset=utf-8",
        ),
        (
            "/resourcecheck/local.json",
            "application/json; charset=utf-8",
        ),
        ("/styles/site.css", "text/css; charset=utf-8"),
        ("/img/logo.png", "image/png"),
    ] {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()[header::CONTENT_TYPE], wanted, "{path}");
    }

    let response = client
        .get(server.url("/styles/site.css"))
        .send()
        .await
        .unwrap();
    let etag = response.headers()[header::ETAG].clone();
    let modified = response.headers()[header::LAST_MODIFIED].clone();
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-cache");
    let again = client
        .get(server.url("/styles/site.css"))
        .header(header::IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()[header::ETAG], etag);
    assert!(again.bytes().await.unwrap().is_empty());
    let again = client
        .get(server.url("/styles/site.css"))
        .header(header::IF_MODIFIED_SINCE, modified)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let stale = client
        .get(server.url("/styles/site.css"))
        .header(header::IF_NONE_MATCH, "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);

    // The resource check must never be cached; the rule is the first matching pattern.
    let check = client
        .get(server.url("/resourcecheck/local.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(check.headers()[header::CACHE_CONTROL], "no-store");

    // A replaced file is served (with a new ETag) within the cache's revalidation second.
    tokio::time::sleep(Duration::from_millis(20)).await;
    write(
        &server.root,
        "userdata/local/styles/site.css",
        b"body { color: blue }",
    );
    eventually("replacement served", || {
        let (client, url) = (client.clone(), server.url("/styles/site.css"));
        async move {
            client
                .get(url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
                .contains("blue")
        }
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn head_and_ranges() {
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let server = TestServer::start("{}", |root| write(root, "userdata/local/big.bin", &big)).await;
    let client = server.client();

    let head = client.head(server.url("/big.bin")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()[header::CONTENT_LENGTH], "5000000");
    assert_eq!(head.headers()[header::ACCEPT_RANGES], "bytes");
    assert!(head.bytes().await.unwrap().is_empty());

    let whole = client
        .get(server.url("/big.bin"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(whole.as_ref(), big.as_slice());

    let part = client
        .get(server.url("/big.bin"))
        .header(header::RANGE, "bytes=1000000-1000099")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.headers()[header::CONTENT_RANGE],
        "bytes 1000000-1000099/5000000"
    );
    assert_eq!(
        part.bytes().await.unwrap().as_ref(),
        &big[1_000_000..1_000_100]
    );

    let tail = client
        .get(server.url("/big.bin"))
        .header(header::RANGE, "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.bytes().await.unwrap().as_ref(), &big[big.len() - 10..]);

    let small = client
        .get(server.url("/resourcecheck/local.json"))
        .header(header::RANGE, "bytes=0-5")
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(small.bytes().await.unwrap().as_ref(), b"{\"stat");

    let beyond = client
        .get(server.url("/big.bin"))
        .header(header::RANGE, "bytes=6000000-")
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(beyond.headers()[header::CONTENT_RANGE], "bytes */5000000");
    server.stop().await;
}

#[tokio::test]
async fn gzip_and_brotli_negotiation_and_precompressed_siblings() {
    let big_json: String = format!(
        "[{}]",
        (0..300_000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let server = TestServer::start("{}", |root| {
        write(
            root,
            "userdata/local/layer.geojson",
            br#"{"type": "FeatureCollection", "features": []}"#,
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, br#"{"precompressed": true}"#).unwrap();
        write(
            root,
            "userdata/local/layer.geojson.gz",
            &gz.finish().unwrap(),
        );
        write(root, "userdata/local/big.json", big_json.as_bytes());
        write(root, "userdata/local/photo.jpg", &[0xff; 4096]);
    })
    .await;
    let client = server.client();
    let original = std::fs::read(
        server
            .root
            .join("userdata/local/naturalearth_cities.geojson"),
    )
    .unwrap();

    let br = client
        .get(server.url("/naturalearth_cities.geojson"))
        .header(header::ACCEPT_ENCODING, "gzip, deflate, br")
        .send()
        .await
        .unwrap();
    assert_eq!(br.headers()[header::CONTENT_ENCODING], "br");
    assert_eq!(
        br.headers()[header::VARY].to_str().unwrap(),
        "Accept-Encoding"
    );
    assert_eq!(unbrotli(&br.bytes().await.unwrap()), original);

    let gz = client
        .get(server.url("/naturalearth_cities.geojson"))
        .header(header::ACCEPT_ENCODING, "gzip;q=1, br;q=0.5")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()[header::CONTENT_ENCODING], "gzip");
    let gz_etag = gz.headers()[header::ETAG].clone();
    assert_eq!(gunzip(&gz.bytes().await.unwrap()), original);

    let plain = client
        .get(server.url("/naturalearth_cities.geojson"))
        .send()
        .await
        .unwrap();
    assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
    assert_ne!(plain.headers()[header::ETAG], gz_etag);
    assert_eq!(plain.bytes().await.unwrap().as_ref(), original.as_slice());

    // A precompressed sibling wins over compressing on the fly.
    let sibling = client
        .get(server.url("/layer.geojson"))
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(sibling.headers()[header::CONTENT_ENCODING], "gzip");
    assert_eq!(
        gunzip(&sibling.bytes().await.unwrap()),
        br#"{"precompressed": true}"#
    );

    // Large files are compressed as a stream.
    let streamed = client
        .get(server.url("/big.json"))
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.headers()[header::CONTENT_ENCODING], "gzip");
    assert_eq!(
        gunzip(&streamed.bytes().await.unwrap()),
        big_json.as_bytes()
    );

    // Images are not compressed.
    let image = client
        .get(server.url("/photo.jpg"))
        .header(header::ACCEPT_ENCODING, "gzip, br")
        .send()
        .await
        .unwrap();
    assert!(image.headers().get(header::CONTENT_ENCODING).is_none());
    server.stop().await;
}

#[tokio::test]
async fn the_host_picks_the_folder_with_local_as_fallback() {
    let server = TestServer::start(HOSTS, |root| {
        write(
            root,
            "userdata/gis01/resourcecheck/gis01.json",
            br#"{"site": "gis01"}"#,
        );
        write(root, "userdata/gis01/layer.json", b"gis01 layer");
        write(root, "userdata/local/layer.json", b"local layer");
        write(root, "userdata/local/only-local.json", b"only in local");
    })
    .await;
    let client = server.client_for(&[
        "gis01.pozi.com",
        "other.pozi.com",
        "maps.example.org",
        "local.pozi.com",
    ]);
    let get = |host: &str, path: &str| {
        let (client, url) = (client.clone(), server.host_url(host, path));
        async move {
            let response = client.get(url).send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };
    assert_eq!(get("gis01.pozi.com", "/layer.json").await.1, "gis01 layer");
    assert_eq!(get("local.pozi.com", "/layer.json").await.1, "local layer");
    // Files missing from the host's folder come from local.
    assert_eq!(
        get("gis01.pozi.com", "/only-local.json").await.1,
        "only in local"
    );
    assert_eq!(
        get("gis01.pozi.com", "/resourcecheck/gis01.json").await.0,
        StatusCode::OK
    );
    // A host without a folder uses local; local never sees another host's files.
    assert_eq!(get("other.pozi.com", "/layer.json").await.1, "local layer");
    assert_eq!(
        get("local.pozi.com", "/resourcecheck/gis01.json").await.0,
        StatusCode::NOT_FOUND
    );
    // The explicit map wins over the first label.
    assert_eq!(
        get("maps.example.org", "/layer.json").await.1,
        "gis01 layer"
    );
    server.stop().await;
}

#[tokio::test]
async fn errors_are_json_and_folders_are_never_listed() {
    let server = TestServer::start("{}", |_| {}).await;
    let client = server.client();
    // The root is the status page (no index.html here), which lists no files.
    let root = client.get(server.url("/")).send().await.unwrap();
    assert_eq!(root.status(), StatusCode::OK);
    let page = root.text().await.unwrap();
    assert!(page.contains("Components"), "{page}");
    assert!(!page.contains("naturalearth_cities.geojson"), "{page}");
    for (method, path, status) in [
        (reqwest::Method::GET, "/missing.json", StatusCode::NOT_FOUND),
        (
            reqwest::Method::GET,
            "/resourcecheck/",
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::GET,
            "/resourcecheck",
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::POST,
            "/resourcecheck/local.json",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            reqwest::Method::DELETE,
            "/resourcecheck/local.json",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        // The route table: a path an API does not have is 404 before the method is looked
        // at; another method on one it has is 405; a doubled leading slash is not an API path
        // (the static server refuses it as a path); `/search/` is `/search`, missing its `q`.
        (reqwest::Method::GET, "/health/x", StatusCode::NOT_FOUND),
        (reqwest::Method::POST, "/health/x", StatusCode::NOT_FOUND),
        (
            reqwest::Method::POST,
            "/health",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            reqwest::Method::DELETE,
            "/ogr2ogr",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            reqwest::Method::GET,
            "//features/collections",
            StatusCode::BAD_REQUEST,
        ),
        (reqwest::Method::GET, "/search/", StatusCode::BAD_REQUEST),
    ] {
        let response = client
            .request(method.clone(), server.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/json",
            "{method} {path}"
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["status"], status.as_u16(), "{method} {path}");
        assert!(body["detail"].is_string(), "{method} {path}: {body}");
    }
    server.stop().await;
}

/// At least 60 attack strings; none may reveal the secret beside the root, nor any file
/// outside the served folders.
const ATTACKS: &[&str] = &[
    "/../secret.txt",
    "/../../secret.txt",
    "/..%2fsecret.txt",
    "/%2e%2e/secret.txt",
    "/%2e%2e%2fsecret.txt",
    "/%2E%2E/secret.txt",
    "/..%2F..%2Fsecret.txt",
    "/%252e%252e/secret.txt",
    "/%252e%252e%252fsecret.txt",
    "/..%252fsecret.txt",
    "/%c0%ae%c0%ae/secret.txt",
    "/%c0%af..%c0%afsecret.txt",
    "/..\\secret.txt",
    "/..%5csecret.txt",
    "/%5c..%5csecret.txt",
    "/..%255csecret.txt",
    "/\\..\\secret.txt",
    "/resourcecheck/../../secret.txt",
    "/resourcecheck/..%2f..%2fsecret.txt",
    "/resourcecheck/%2e%2e/%2e%2e/secret.txt",
    "/./../secret.txt",
    "/.%2e/secret.txt",
    "/%2e./secret.txt",
    "/....//secret.txt",
    "/..././secret.txt",
    "/..;/secret.txt",
    "//etc/passwd",
    "/%2fetc%2fpasswd",
    "/%2f%2fetc/passwd",
    "/etc/passwd%00.json",
    "/../../../../../../etc/passwd",
    "/..%00/secret.txt",
    "/secret.txt%00",
    "/%00",
    "/resourcecheck/local.json%00.txt",
    "/C:/Windows/win.ini",
    "/c:%5cwindows%5cwin.ini",
    "/C%3a/Windows/win.ini",
    "/%43:/secret.txt",
    "/resourcecheck/local.json::$DATA",
    "/resourcecheck/local.json:$DATA",
    "/resourcecheck/local.json%3a%3a$DATA",
    "/CON",
    "/con.json",
    "/NUL",
    "/nul.geojson",
    "/AUX",
    "/PRN.txt",
    "/COM1",
    "/com1.json",
    "/LPT1",
    "/lpt9.txt",
    "/resourcecheck/CON",
    "/resourcecheck/local.json.",
    "/resourcecheck/local.json%20",
    "/resourcecheck/local.json%2e",
    "/%20../secret.txt",
    "/..%20/secret.txt",
    "/.../secret.txt",
    "/%2e%2e%5c%2e%2e%5csecret.txt",
    "/..%c1%9csecret.txt",
    "/..%u2215secret.txt",
    "/%uff0e%uff0e/secret.txt",
    "/local/../../secret.txt",
    "/userdata/local/../../../secret.txt",
    "/../root/config.json",
    "/../config.json",
    "/%2e%2e/config.json",
    "/../state/self-signed.key",
    "/..%2fstate%2fself-signed.key",
    "/%2e%2e%2fcertificate.key",
    "/resourcecheck/*",
    "/resourcecheck/local?.json",
    "/a<b>.json",
    "/resourcecheck/local.json|x",
    "/%0d%0aSet-Cookie:x",
    "/%7f",
];

#[tokio::test]
async fn path_traversal_attacks_are_refused() {
    assert!(ATTACKS.len() >= 60, "{} attacks", ATTACKS.len());
    let server = TestServer::start("{}", |_| {}).await;
    std::fs::write(
        server.dir.path().join("secret.txt"),
        "TOP-SECRET-BESIDE-THE-ROOT",
    )
    .unwrap();
    for attack in ATTACKS {
        let (status, text) = raw_get(&server, attack).await;
        assert!(
            status == 400 || status == 404,
            "{attack}: status {status}\n{text}"
        );
        assert!(!text.contains("TOP-SECRET"), "{attack} leaked the secret");
        assert!(!text.contains("root:x:0"), "{attack} leaked /etc/passwd");
        assert!(!text.contains("PRIVATE KEY"), "{attack} leaked a key");
        assert!(
            !text.contains("\"supervisor\""),
            "{attack} leaked the config"
        );
    }
    // The server still serves after all that.
    assert_eq!(raw_get(&server, "/resourcecheck/local.json").await.0, 200);
    server.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn symlinks_inside_userdata_are_followed() {
    let server = TestServer::start("{}", |root| {
        let share = root.parent().unwrap().join("network-share");
        std::fs::create_dir_all(&share).unwrap();
        std::fs::write(
            share.join("parcels.geojson"),
            br#"{"type":"FeatureCollection","features":[]}"#,
        )
        .unwrap();
        std::os::unix::fs::symlink(&share, root.join("userdata/local/share")).unwrap();
    })
    .await;
    let response = server
        .client()
        .get(server.url("/share/parcels.geojson"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/geo+json; charset=utf-8"
    );
    server.stop().await;
}

#[tokio::test]
async fn cors_for_allowed_origins_only() {
    let server = TestServer::start("{}", |_| {}).await;
    let client = server.client();
    let url = server.url("/resourcecheck/local.json");

    let allowed = client
        .get(&url)
        .header(header::ORIGIN, "https://gis01.pozi.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://gis01.pozi.com"
    );
    assert!(
        allowed
            .headers()
            .get_all(header::VARY)
            .iter()
            .any(|v| v == "Origin")
    );
    assert!(
        allowed
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
            .is_none()
    );

    let local_dev = client
        .get(&url)
        .header(header::ORIGIN, "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(
        local_dev.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "http://localhost:3000"
    );

    for origin in [
        "https://evil.com",
        "https://pozi.com.evil.com",
        "http://gis01.pozi.com",
    ] {
        let refused = client
            .get(&url)
            .header(header::ORIGIN, origin)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::OK);
        assert!(
            refused
                .headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_none(),
            "{origin}"
        );
    }

    let preflight = client
        .request(reqwest::Method::OPTIONS, &url)
        .header(header::ORIGIN, "https://gis01.pozi.com")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "if-none-match")
        .header("Access-Control-Request-Private-Network", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    let h = preflight.headers();
    assert_eq!(
        h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://gis01.pozi.com"
    );
    assert!(
        h[header::ACCESS_CONTROL_ALLOW_METHODS]
            .to_str()
            .unwrap()
            .contains("GET")
    );
    assert!(
        h[header::ACCESS_CONTROL_ALLOW_HEADERS]
            .to_str()
            .unwrap()
            .contains("if-none-match")
    );
    assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "86400");
    assert_eq!(h["access-control-allow-private-network"], "true");

    let refused = client
        .request(reqwest::Method::OPTIONS, &url)
        .header(header::ORIGIN, "https://evil.com")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .send()
        .await
        .unwrap();
    assert!(
        refused
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );
    server.stop().await;

    let credentials =
        TestServer::start(r#"{"http": {"cors": {"allow_credentials": true}}}"#, |_| {}).await;
    let response = credentials
        .client()
        .get(credentials.url("/resourcecheck/local.json"))
        .header(header::ORIGIN, "https://gis01.pozi.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_CREDENTIALS],
        "true"
    );
    credentials.stop().await;
}

#[tokio::test]
async fn health_reports_components_version_and_certificate() {
    // The disk check would warn on a test machine short of space: not what is tested here.
    let server = TestServer::start(r#"{"health": {"disk_warn_mb": 0}}"#, |_| {}).await;
    let response = server
        .client()
        .get(server.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/health+json"
    );
    let doc: serde_json::Value = response.json().await.unwrap();
    assert_eq!(doc["status"], "pass");
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    for component in ["http", "scheduler"] {
        let check = &doc["checks"][format!("{component}:state")][0];
        assert_eq!(check["observedValue"], "running", "{doc}");
        assert_eq!(check["totalRestarts"], 0);
    }
    let cert = &doc["checks"]["certificate:expiry"][0];
    assert_eq!(cert["selfSigned"], true);
    assert!(cert["observedValue"].as_u64().unwrap() > 800);
    server.stop().await;
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let server = TestServer::start(
        r#"{"http": {"limits": {"max_header_bytes": 8192}}}"#,
        |_| {},
    )
    .await;
    let mut stream = server.tls().await;
    let big = "x".repeat(20_000);
    let request = format!(
        "GET /resourcecheck/local.json HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    let server = TestServer::start(
        r#"{"http": {"limits": {"header_read_timeout_secs": 1, "idle_timeout_secs": 2}}}"#,
        |_| {},
    )
    .await;
    // Slowloris: half a request, then silence.
    let mut slow = server.tls().await;
    slow.write_all(b"GET /resourcecheck/local.json HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "slow client kept its connection");
    assert!(started.elapsed() < Duration::from_secs(5));

    // An idle keep-alive connection is closed after the idle timeout, not the (shorter)
    // header-read one: that runs from a head's first byte.
    let mut idle = server.tls().await;
    let (status, _) = keepalive_get(&mut idle, "/resourcecheck/local.json").await;
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "idle connection kept open");
    assert!(
        started.elapsed() >= Duration::from_millis(1800),
        "closed after {:?}, before the 2 s idle timeout",
        started.elapsed()
    );

    // Slowloris on a kept-alive connection: after a first request, half a second one.
    let mut slow = server.tls().await;
    let (status, _) = keepalive_get(&mut slow, "/resourcecheck/local.json").await;
    assert_eq!(status, 200);
    slow.write_all(b"GET /resourcecheck/local.json HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "slow client kept its connection");
    assert!(
        started.elapsed() < Duration::from_millis(1700),
        "{:?}",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_their_turn() {
    let server = TestServer::start(r#"{"http": {"limits": {"max_connections": 1}}}"#, |_| {}).await;
    let mut first = server.tls().await;
    assert_eq!(
        keepalive_get(&mut first, "/resourcecheck/local.json")
            .await
            .0,
        200
    );
    let pem = server.cert_pem();
    let waiting = tokio::time::timeout(
        Duration::from_millis(700),
        common::tls_connect(server.addr, &pem),
    )
    .await;
    assert!(
        waiting.is_err(),
        "a second connection was served beyond the limit"
    );
    drop(first);
    let mut next = tokio::time::timeout(
        Duration::from_secs(5),
        common::tls_connect(server.addr, &pem),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        keepalive_get(&mut next, "/resourcecheck/local.json")
            .await
            .0,
        200
    );
    server.stop().await;
}

#[tokio::test]
async fn a_port_in_use_is_retried_with_backoff_while_the_rest_runs() {
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = blocker.local_addr().unwrap().port();
    let config = format!(
        r#"{{"listen": ["127.0.0.1:{port}"], "supervisor": {{"backoff_initial_ms": 50, "backoff_max_ms": 200}}}}"#
    );
    let dir = tempfile::tempdir().unwrap();
    let root = poziserver::root::Root::new(dir.path()).unwrap();
    root.lay_out().unwrap();
    let config = poziserver::config::Config::parse(&config).unwrap();
    let handles = poziserver::runtime::Handles::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = {
        let handles = handles.clone();
        tokio::spawn(async move {
            poziserver::runtime::run(&config, &root, handles, async {
                let _ = stopped.await;
            })
            .await
        })
    };
    let registry = handles.registry.clone();
    eventually("http failing with a clear error", || {
        let registry = registry.clone();
        async move {
            registry.get("http").is_some_and(|h| {
                h.total_restarts >= 3
                    && h.last_error.as_ref().is_some_and(|e| {
                        e.message
                            .contains(&format!("cannot listen on 127.0.0.1:{port}"))
                            && e.message.contains("another program")
                    })
            })
        }
    })
    .await;
    // Far more failures than the root's intensity allows: the root did not give up.
    assert_eq!(
        registry.get("scheduler").unwrap().state,
        actors::ComponentState::Running
    );
    drop(blocker);
    let listening = handles.listening.clone();
    eventually("http listening once the port is free", || {
        let l = listening.clone();
        async move { !l.addresses().is_empty() }
    })
    .await;
    assert_eq!(
        registry.get("http").unwrap().state,
        actors::ComponentState::Running
    );
    stop.send(()).unwrap();
    assert_eq!(task.await.unwrap().unwrap(), actors::RootOutcome::Stopped);
}

#[tokio::test]
async fn port_80_redirects_to_https() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let server = TestServer::start(
        &format!(r#"{{"http": {{"redirect_listen": ["127.0.0.1:{port}"]}}}}"#),
        |_| {},
    )
    .await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let response = client
        .get(format!(
            "http://127.0.0.1:{port}/resourcecheck/local.json?x=1"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        response.headers()[header::LOCATION],
        format!(
            "https://127.0.0.1:{}/resourcecheck/local.json?x=1",
            server.addr.port()
        )
    );
    server.stop().await;
}

#[tokio::test]
async fn plain_http_mode_for_deployments_behind_a_proxy() {
    let server = TestServer::start(r#"{"http": {"plain_http": true}}"#, |_| {}).await;
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!(
            "http://127.0.0.1:{}/resourcecheck/local.json",
            server.addr.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let health: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{}/health", server.addr.port()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert!(health["checks"].get("certificate:expiry").is_none());
    server.stop().await;
}
