//! The operators' endpoints against the real binary over HTTPS: who may use `/admin/` (address
//! ranges and a bearer token), and the command line's own token.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::time::Duration;

use common::process::{BIN, Process};
use serde_json::{Value, json};

/// `poziserver admin token`: the token and the hash line it prints.
fn new_token() -> (String, String) {
    let output = std::process::Command::new(BIN)
        .args(["admin", "token"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap()
        .to_owned();
    let hash = text
        .split("\"token_hash\": \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    (token, hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_access_follows_the_allow_list_and_the_token() {
    let (token, hash) = new_token();
    let config = json!({
        "admin": {"allow": ["127.0.0.1/32"], "token_hash": hash},
        "sync": {"jobs": [{
            "name": "oceania",
            "source": {"type": "file", "path": "userdata/local/naturalearth_lowres.gpkg"},
            "transform": {"sql": "SELECT * FROM source WHERE continent = 'Oceania'"},
            "target": {"dataset": "local/oceania.gpkg"}
        }]}
    });
    let server = Process::start(&config.to_string(), |_| {}).await;
    let url = server.url("/admin/jobs");
    let from = |address: [u8; 4]| {
        server
            .client_builder()
            .local_address(std::net::IpAddr::from(address))
            .build()
            .unwrap()
    };
    let ask = |client: reqwest::Client, bearer: Option<String>| {
        let url = url.clone();
        async move {
            let mut request = client.get(&url);
            if let Some(bearer) = bearer {
                request = request.bearer_auth(bearer);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, body)
        }
    };
    // A loopback address outside the allow-list, even with the right token.
    let (status, body) = ask(from([127, 0, 0, 2]), Some(token.clone())).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("127.0.0.2 is not allowed"),
        "{body}"
    );
    // An allowed address: no token, a wrong one, the right one.
    let (status, body) = ask(from([127, 0, 0, 1]), None).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("token is required"),
        "{body}"
    );
    let (status, body) = ask(from([127, 0, 0, 1]), Some("0".repeat(64))).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("not the configured one"),
        "{body}"
    );
    let (status, body) = ask(from([127, 0, 0, 1]), Some(token.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["jobs"][0]["name"], "oceania");
    // /metrics follows the same rules.
    let metrics = |client: reqwest::Client, bearer: Option<String>| {
        let url = server.url("/metrics");
        async move {
            let mut request = client.get(&url);
            if let Some(bearer) = bearer {
                request = request.bearer_auth(bearer);
            }
            request.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(
        metrics(from([127, 0, 0, 2]), Some(token.clone())).await,
        403
    );
    assert_eq!(metrics(from([127, 0, 0, 1]), None).await, 403);
    assert_eq!(
        metrics(from([127, 0, 0, 1]), Some(token.clone())).await,
        200
    );
    // Each refusal is a log line naming the address.
    let log = common::process::wait_for_log(
        &server.root,
        "admin request refused",
        Duration::from_secs(5),
    )
    .await;
    assert!(log.contains("127.0.0.2"), "{log}");

    // A token lets a POST in without the header a web page could not send anyway.
    let response = from([127, 0, 0, 1])
        .post(server.url("/admin/jobs/oceania/run"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    // The command line on this machine uses the server's own token from state/.
    let runs = server.url("/admin/jobs/oceania/runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = {
            let response = from([127, 0, 0, 1])
                .get(&runs)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        };
        assert_eq!(status, 200, "{body}");
        if body["runs"][0]["status"] != "running" {
            assert_eq!(body["runs"][0]["status"], "ok", "{body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = std::process::Command::new(BIN)
        .args(["sync", "run", "oceania", "--root"])
        .arg(&server.root)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("run 2 ok"), "{text}");
    // It went through the server (the access log has both POSTs admitted), not around it.
    let admitted = || {
        common::process::log_of(&server.root)
            .lines()
            .filter(|l| {
                l.contains("method=POST")
                    && l.contains("path=/admin/jobs/oceania/run")
                    && l.contains("status=202")
            })
            .count()
    };
    common::process::eventually(
        "both runs asked of the server",
        Duration::from_secs(10),
        || admitted() == 2,
    )
    .await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(server.root.join("state/admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "only the server's account reads the command line's token"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_uptime_caches_disk_and_each_sync_job_and_answers_live_and_ready() {
    let config = json!({
        // More free disk than any machine has: the disk check warns.
        "health": {"disk_warn_mb": 1_048_576},
        "sync": {"jobs": [
            {
                "name": "good",
                "schedule": "0 3 * * *",
                "source": {"type": "file", "path": "userdata/local/naturalearth_lowres.gpkg"},
                "target": {"dataset": "local/good.gpkg"}
            },
            {
                "name": "broken",
                "source": {"type": "file", "path": "userdata/local/missing.gpkg"},
                "target": {"dataset": "local/broken.gpkg"},
                "retries": {"count": 0, "backoff_secs": 1}
            }
        ]}
    });
    let server = Process::start(&config.to_string(), |_| {}).await;
    for job in ["good", "broken"] {
        let response = server.post_admin(&format!("/admin/jobs/{job}/run")).await;
        assert_eq!(response.status(), 202);
    }
    // Reads through the response cache: a miss, then a hit.
    for _ in 0..2 {
        let (status, _, _) = server
            .get("/ogr2ogr?source=naturalearth_lowres.gpkg&options=-limit|1")
            .await;
        assert_eq!(status, 200);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let health = loop {
        let (status, headers, body) = server.get("/health").await;
        assert_eq!(status, 200, "warnings are not failures: {body}");
        assert_eq!(headers["content-type"], "application/health+json");
        let health: Value = serde_json::from_str(&body).unwrap();
        let ended = ["good", "broken"].iter().all(|job| {
            !health["checks"][format!("sync:{job}")][0]["running"]
                .as_bool()
                .unwrap_or(true)
        });
        if ended && health["checks"]["sync:broken"][0]["lastFailure"].is_object() {
            break health;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let check = |key: &str| health["checks"][key][0].clone();
    assert_eq!(health["status"], "warn", "{health}");
    assert!(
        check("uptime")["observedValue"].as_f64().unwrap() > 0.0,
        "{health}"
    );
    assert_eq!(check("uptime")["observedUnit"], "s");
    let disk = check("disk:free");
    assert_eq!(disk["status"], "warn", "{health}");
    assert!(
        disk["output"]
            .as_str()
            .unwrap()
            .contains("below health.disk_warn_mb"),
        "{health}"
    );
    let good = check("sync:good");
    assert_eq!(good["status"], "pass", "{health}");
    assert!(good["lastSuccess"].is_string(), "{health}");
    assert!(good["nextRun"].is_string(), "{health}");
    let broken = check("sync:broken");
    assert_eq!(broken["status"], "warn", "{health}");
    assert!(broken["lastSuccess"].is_null(), "{health}");
    assert!(
        broken["output"].as_str().unwrap().contains("missing.gpkg"),
        "{health}"
    );
    let responses = check("responses:cache");
    assert_eq!(responses["entries"], 1, "{health}");
    assert_eq!(responses["hits"], 1, "{health}");
    assert_eq!(responses["hitRate"], 0.5, "{health}");
    assert!(responses["bytes"].as_u64().unwrap() > 0, "{health}");
    assert!(check("features:cache")["entries"].is_u64(), "{health}");
    for component in ["http", "scheduler", "search", "sync"] {
        assert_eq!(
            check(&format!("{component}:state"))["observedValue"],
            "running",
            "{health}"
        );
    }

    for path in ["/health/live", "/health/ready"] {
        let (status, headers, body) = server.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(headers["content-type"], "application/health+json");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["status"], "pass", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_restarts_a_component_and_reads_the_log_tail() {
    let server = Process::start_listening("{}", &common::process::free_address(), |_| {}).await;
    let response = server.post_admin("/admin/components/search/restart").await;
    assert_eq!(response.status(), 202);
    let response = server.post_admin("/admin/components/nope/restart").await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("components: http"),
        "{body}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, body) = server.get("/health").await;
        let health: Value = serde_json::from_str(&body).unwrap();
        let search = &health["checks"]["search:state"][0];
        if search["plannedRestarts"] == 1 && search["observedValue"] == "running" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The listener itself: the answer comes before it drains, and it serves again after.
    let response = server.post_admin("/admin/components/http/restart").await;
    assert_eq!(response.status(), 202);
    common::process::wait_for_log(
        &server.root,
        "component restarted (asked through /admin/) component=\"http\"",
        Duration::from_secs(30),
    )
    .await;

    let (status, _, body) =
        common::process::get_with(&server.client(), &server.url("/admin/log?lines=3")).await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let lines = body["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 3, "{body}");
    let (_, _, body) = server.get("/admin/log?lines=10000").await;
    assert!(body.contains("restart asked through /admin/"), "{body}");
    let (status, _, _) = server.get("/admin/log?lines=0").await;
    assert_eq!(status, 400);
}

/// Runs `promtool check metrics` on `text`: its exit status and what it said.
fn promtool(text: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// The value of the sample `name` (with its labels as written) in a metrics text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_panicking_again_and_again_shows_in_health_and_metrics_and_the_server_serves_on()
 {
    let config = json!({"supervisor": {"max_restarts": 1000, "backoff_max_ms": 200}});
    let server = Process::start_with(
        &config.to_string(),
        &[("POZI_FAILPOINT", "search-panic")],
        |_| {},
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = server.get("/health").await;
        let health: Value = serde_json::from_str(&body).unwrap();
        if health["checks"]["search:state"][0]["totalRestarts"]
            .as_u64()
            .unwrap_or(0)
            >= 3
        {
            assert!(status == 200 || status == 503, "{body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        let (status, _, _) = server.get("/resourcecheck/local.json").await;
        assert_eq!(status, 200, "the server serves on");
    }
    // A streamed answer (no Content-Length): its bytes are counted as they are sent.
    let (status, headers, body) = server.get("/ogr2ogr?source=naturalearth_lowres.gpkg").await;
    assert_eq!(status, 200);
    assert!(headers.get("content-length").is_none(), "{headers:?}");
    let streamed = body.len() as f64;
    let (status, headers, text) = server.get("/metrics").await;
    assert_eq!(status, 200, "{text}");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let restarts = sample(&text, "pozi_component_restarts_total{component=\"search\"}").unwrap();
    assert!(restarts >= 3.0, "{text}");
    assert_eq!(
        sample(&text, "pozi_component_running{component=\"http\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "pozi_http_requests_total{route=\"static\",status=\"2xx\"}"
        )
        .unwrap()
            >= 5.0,
        "{text}"
    );
    assert!(
        sample(&text, "pozi_tls_handshakes_total{result=\"ok\"}").unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, "pozi_certificate_expiry_timestamp_seconds").unwrap() > 1.7e9,
        "{text}"
    );
    assert!(sample(&text, "pozi_datasets").unwrap() >= 2.0, "{text}");
    let counted = sample(&text, "pozi_http_response_bytes_total{route=\"ogr2ogr\"}").unwrap();
    assert!(
        counted >= streamed,
        "{counted} bytes counted for a {streamed}-byte answer"
    );
    assert!(
        text.contains("pozi_http_request_duration_seconds_bucket{route=\"static\",le=\"0.001\"}"),
        "{text}"
    );
    let (ok, said) = promtool(&text);
    assert!(ok, "promtool check metrics: {said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_server() {
    let server = Process::start("{}", |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let prometheus_address = common::process::free_address();
    let target = server
        .url("")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pozi\n    scheme: https\n    tls_config:\n      insecure_skip_verify: true\n    static_configs:\n      - targets: ['{target}']\n"
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let mut prometheus = std::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={prometheus_address}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus (Debian's prometheus package; scripts/test installs it)");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let query = |q: &'static str| {
        let client = client.clone();
        let url = format!("http://{prometheus_address}/api/v1/query");
        async move {
            let response = client.get(&url).query(&[("query", q)]).send().await.ok()?;
            let body: Value = response.json().await.ok()?;
            body["data"]["result"][0]["value"][1]
                .as_str()?
                .parse::<f64>()
                .ok()
        }
    };
    let requests = "sum(pozi_http_requests_total{route=\"metrics\"})";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let first = loop {
        if query("up{job=\"pozi\"}").await == Some(1.0)
            && let Some(n) = query(requests).await
        {
            break n;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "prometheus never saw the server up"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Each scrape is a request the next scrape counts.
    loop {
        if query(requests).await.is_some_and(|n| n > first) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the request counter never grew past {first}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = prometheus.kill();
    let _ = prometheus.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_a_browser_shows_components_and_jobs_and_run_now_only_to_admins() {
    // Only 127.0.0.2 is an admin here: the browser, on 127.0.0.1, is not.
    let config = json!({
        "admin": {"allow": ["127.0.0.2/32"]},
        "sync": {"jobs": [{
            "name": "oceania",
            "source": {"type": "file", "path": "userdata/local/naturalearth_lowres.gpkg"},
            "target": {"dataset": "local/oceania.gpkg"}
        }]}
    });
    let server = Process::start(&config.to_string(), |_| {}).await;
    let spki = common::chromium::spki_hash(&server.cert_pem());
    let url = server.url("/");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let (dom, console) = {
        let (url, spki, shot) = (url.clone(), spki.clone(), shot.clone());
        tokio::task::spawn_blocking(move || {
            let dom = common::chromium::run(
                &url,
                &spki,
                &["--dump-dom", "--enable-logging=stderr", "--v=0"],
            );
            let _ = common::chromium::run(
                &url,
                &spki,
                &[
                    "--window-size=412,915",
                    &format!("--screenshot={}", shot.display()),
                ],
            );
            (
                String::from_utf8_lossy(&dom.stdout).to_string(),
                String::from_utf8_lossy(&dom.stderr).to_string(),
            )
        })
        .await
        .unwrap()
    };
    for words in [
        "Pozi Server",
        "Components",
        "http",
        "scheduler",
        "search",
        "sync",
        "Sync jobs",
        "oceania",
        "Data folders",
        "local",
        "Certificate",
        "Updates",
    ] {
        assert!(dom.contains(words), "the page lacks {words:?}:\n{dom}");
    }
    assert!(
        !dom.contains("Run now"),
        "a viewer without admin access gets no run button:\n{dom}"
    );
    assert!(!dom.contains("Latest warnings"), "nor the log:\n{dom}");
    let errors: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000),
        "no screenshot at {}",
        shot.display()
    );

    // An admin viewer gets the button and the log; the refresh asks for the main part only.
    let admin = server
        .client_builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let page = admin.get(&url).send().await.unwrap().text().await.unwrap();
    assert!(
        page.contains("Run now") && page.contains("data-job=\"oceania\""),
        "{page}"
    );
    assert!(page.contains("Latest warnings and errors"), "{page}");
    let fragment = admin
        .get(server.url("/status?fragment=1"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        fragment.contains("Components") && !fragment.contains("<html"),
        "{fragment}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_folder_with_its_own_index_keeps_the_root_and_the_status_page_moves_to_status() {
    let server = Process::start("{}", |root| {
        std::fs::write(
            root.join("userdata/local/index.html"),
            "<p>our own page</p>",
        )
        .unwrap();
    })
    .await;
    let (status, _, body) = server.get("/").await;
    assert_eq!(status, 200);
    assert_eq!(body, "<p>our own page</p>");
    let (status, headers, body) = server.get("/status").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(body.contains("Components"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_config_is_applied_live_and_an_invalid_one_is_refused_while_a_download_goes_on() {
    use futures::StreamExt;
    let config = |origins: &[&str], extra: Value| {
        let mut config = json!({"http": {"cors": {"allowed_origins": origins}}});
        if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        config.to_string()
    };
    let big = vec![b'x'; 48 * 1024 * 1024];
    let server = Process::start(&config(&["https://a.example"], json!({})), |root| {
        std::fs::write(root.join("userdata/local/big.bin"), &big).unwrap();
    })
    .await;
    let allowed = |origin: &'static str| {
        let client = server.client();
        let url = server.url("/resourcecheck/local.json");
        async move {
            let response = client
                .get(&url)
                .header("origin", origin)
                .send()
                .await
                .unwrap();
            response
                .headers()
                .get("access-control-allow-origin")
                .is_some_and(|v| v == origin)
        }
    };
    assert!(allowed("https://a.example").await);
    assert!(!allowed("https://b.example").await);

    // A long download on its own connection, read slowly.
    let download = {
        let client = server.client();
        let url = server.url("/big.bin");
        tokio::spawn(async move {
            let response = client.get(&url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let mut stream = response.bytes_stream();
            let mut received = 0usize;
            while let Some(chunk) = stream.next().await {
                received += chunk.unwrap().len();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            received
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A valid change on disk: the watcher applies it for the next request.
    let path = server.root.join("config.json");
    std::fs::write(
        &path,
        config(&["https://a.example", "https://b.example"], json!({})),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !allowed("https://b.example").await {
        assert!(
            std::time::Instant::now() < deadline,
            "the new origin never applied:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    common::process::wait_for_log(&server.root, "config reloaded", Duration::from_secs(5)).await;
    assert!(!download.is_finished(), "the download spans the reloads");

    // An invalid one: refused, every problem listed, the running config stays, health warns.
    std::fs::write(
        &path,
        r#"{"http": {"cors": {"allowed_origins": 7}}, "log": {"level": "verbose"}}"#,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let warning = loop {
        let (_, _, body) = server.get("/health").await;
        let health: Value = serde_json::from_str(&body).unwrap();
        let check = health["checks"]["config:reload"][0].clone();
        if check["status"] == "warn" {
            break check;
        }
        assert!(std::time::Instant::now() < deadline, "no warning: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let output = warning["output"].as_str().unwrap();
    assert!(
        output.contains("allowed_origins") && output.contains("log.level"),
        "{output}"
    );
    assert!(
        allowed("https://b.example").await,
        "the running config stays"
    );
    let response = server.post_admin("/admin/reload").await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("2 problems"),
        "{body}"
    );

    // Valid again, through the admin API: what needs a restart is said so.
    std::fs::write(
        &path,
        config(
            &["https://a.example"],
            json!({"log": {"level": "debug"}, "http": {"cors": {"allowed_origins": ["https://a.example"]}, "plain_http": true, "limits": {"max_connections_per_client": 500, "idle_timeout_secs": 30}}}),
        ),
    )
    .unwrap();
    let response = server.post_admin("/admin/reload").await;
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    let listed = |key: &str, words: &str| {
        report[key]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v.as_str().unwrap().contains(words))
    };
    assert!(listed("needs_restart", "http.plain_http"), "{report}");
    assert!(
        !listed("needs_restart", "limits"),
        "limits apply to new connections: {report}"
    );
    assert!(
        listed("applied", "log.level") && listed("applied", "CORS"),
        "{report}"
    );
    assert!(!allowed("https://b.example").await);
    let (_, _, body) = server.get("/health").await;
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        health["checks"]["config:reload"][0]["status"], "pass",
        "{body}"
    );

    // The download went on through all of it.
    assert_eq!(download.await.unwrap(), big.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_adds_a_sync_job_restarts_sync_with_it() {
    let job = |name: &str| {
        json!({
            "name": name,
            "source": {"type": "file", "path": "userdata/local/naturalearth_lowres.gpkg"},
            "target": {"dataset": format!("local/{name}.gpkg")}
        })
    };
    let server = Process::start(
        &json!({"sync": {"jobs": [job("first")]}}).to_string(),
        |_| {},
    )
    .await;
    std::fs::write(
        server.root.join("config.json"),
        json!({"sync": {"jobs": [job("first"), job("second")]}}).to_string(),
    )
    .unwrap();
    let response = server.post_admin("/admin/reload").await;
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert!(
        report["restarted"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "sync"),
        "{report}"
    );
    let response = server.post_admin("/admin/jobs/second/run").await;
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    let (_, _, body) = server.get("/admin/jobs").await;
    let jobs: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 2, "{jobs}");
    let (_, _, body) = server.get("/health").await;
    assert!(body.contains("sync:second"), "{body}");
}
