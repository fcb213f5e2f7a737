//! The `poziserver` command line, run as a real process.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_poziserver");

fn poziserver(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn version_reports_version_commit_date_and_target() {
    let out = poziserver(&["version", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    for field in ["commit", "build_date", "target"] {
        assert!(!v[field].as_str().unwrap().is_empty(), "{field}");
    }
    let out = poziserver(&["version"]);
    assert!(text(&out.stdout).starts_with(&format!("poziserver {}", env!("CARGO_PKG_VERSION"))));
}

#[test]
fn help_documents_every_command_and_flag() {
    let help = text(&poziserver(&["--help"]).stdout);
    for command in ["run", "check-config", "version", "config-schema"] {
        assert!(help.contains(command), "{command} missing from:\n{help}");
    }
    let help = text(&poziserver(&["run", "--help"]).stdout);
    for flag in ["--config", "--root", "--listen"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    assert!(text(&poziserver(&["version", "--help"]).stdout).contains("--json"));

    // `help` is a command like the others: it answers its own `--help`, and names defaults.
    let out = poziserver(&["help", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("COMMAND"));
    let out = poziserver(&["help", "run"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("default: the current"));
    let out = poziserver(&["help", "check-config"]);
    assert!(text(&out.stdout).contains("default: config.json"));
    assert_eq!(poziserver(&["help", "nope"]).status.code(), Some(2));
}

/// The error example in docs/configuration.md is what `check-config` prints for
/// `tests/data/bad-config.json` (copied there as `config.json`).
#[test]
fn the_documented_config_errors_are_the_real_ones() {
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let start = docs.find("error: config.json has").unwrap();
    let documented = &docs[start..start + docs[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/bad-config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr).trim(), documented.trim());
}

#[test]
fn check_config_accepts_the_example_with_a_one_line_summary() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.json");
    let out = poziserver(&["check-config", example]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("config OK"), "{stdout}");
}

#[test]
fn check_config_lists_every_problem_with_path_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    std::fs::write(
        &file,
        r#"{
  "listen": ["0.0.0.0:443", "nonsense"],
  "time_zone": "Mars/Olympus",
  "log": {"level": 5, "colour": true},
  "supervisor": {"max_restarts": "five"},
  "restarts": [
    {"component": "scheduler", "schedule": "0 3 * * *"},
    {"component": "nope", "schedule": "0 3 * * *"},
    {"component": "scheduler", "schedule": "0 25 * * *", "catch_up": "twice"},
    {"component": "scheduler", "schedule": "@daily", "time_zone": "Nowhere/Land"}
  ],
  "extra": 1
}"#,
    )
    .unwrap();
    let out = poziserver(&["check-config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let expected = [
        ":2:29: listen[1]: \"nonsense\" is not an address",
        ":3:16: time_zone: unknown time zone \"Mars/Olympus\"",
        ":4:20: log.level: 5 is not of type \"string\"",
        ":4:23: log.colour: unknown field",
        ":5:34: supervisor.max_restarts: \"five\" is not of type \"integer\"",
        ":8:19: restarts[1].component: unknown component \"nope\"",
        ":9:44: restarts[2].schedule: 25 is out of range 0-23 (column 3, hour field)",
        ":9:70: restarts[2].catch_up: \"twice\" is not one of \"skip\" or \"run_once\"",
        ":10:67: restarts[3].time_zone: unknown time zone \"Nowhere/Land\"",
        ":12:3: extra: unknown field",
    ];
    for line in expected {
        assert!(stderr.contains(line), "missing {line:?} in:\n{stderr}");
    }
    assert!(stderr.contains("has 10 problems"), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[test]
fn check_config_names_bad_proxy_routes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    std::fs::write(
        &file,
        r#"{"http": {"proxy": [
  {"prefix": "/iis", "upstream": "http://localhost/pozi", "service_path": "/wms"},
  {"prefix": "iis/", "upstream": "http://localhost/pozi", "service_path": "/../x?y"}
]}}"#,
    )
    .unwrap();
    let out = poziserver(&["check-config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("http.proxy[1].prefix: \"iis/\" must be a path"),
        "{stderr}"
    );
    assert!(
        stderr.contains("http.proxy[1].service_path: \"/../x?y\" must be a path"),
        "{stderr}"
    );
    assert!(stderr.contains("has 2 problems"), "{stderr}");
}

#[test]
fn check_config_reports_syntax_errors_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    std::fs::write(&file, "{\n  \"log\": {\"level\": \"info\",}\n}").unwrap();
    let out = poziserver(&["check-config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(":2:27: (syntax): not valid JSON: trailing comma"),
        "{}",
        text(&out.stderr)
    );

    let out = poziserver(&[
        "check-config",
        dir.path().join("absent.json").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot read config file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_committed_schema_matches_the_code() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/config.schema.json"
    ))
    .unwrap();
    let generated = text(&poziserver(&["config-schema"]).stdout);
    assert_eq!(
        committed, generated,
        "docs/config.schema.json is stale: run `cargo run -- config-schema > docs/config.schema.json`"
    );
}

#[test]
fn the_committed_manifest_schema_matches_the_code() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/update-manifest.schema.json"
    ))
    .unwrap();
    let generated = text(&poziserver(&["update", "manifest-schema"]).stdout);
    assert_eq!(
        committed, generated,
        "docs/update-manifest.schema.json is stale: run `cargo run -- update manifest-schema > docs/update-manifest.schema.json`"
    );
}

#[test]
fn the_example_config_spells_out_every_option() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.json"))
        .unwrap();
    let written: serde_json::Value = serde_json::from_str(&text).unwrap();
    let config = poziserver::config::Config::parse(&text).unwrap();
    // Serialising adds any option the example leaves out, so equality means none is missing.
    assert_eq!(serde_json::to_value(&config).unwrap(), written);
    // And apart from the sample planned restart and the sample (disabled) sync job, every
    // value is the default.
    let mut defaults = config.clone();
    defaults.restarts.clear();
    defaults.sync.jobs.clear();
    assert_eq!(defaults, poziserver::config::Config::default());
}

/// The URL a server started on `root` reports in its log once it listens, and a client trusting
/// its self-signed certificate.
fn started_server(root: &Path) -> (String, reqwest::blocking::Client) {
    let log = wait_for_log(root, "listening on https://");
    let url = log
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let cert =
        reqwest::Certificate::from_pem(&std::fs::read(root.join("state/self-signed.cer")).unwrap())
            .unwrap();
    let client = reqwest::blocking::Client::builder()
        .tls_certs_only([cert])
        .no_proxy()
        .build()
        .unwrap();
    (url, client)
}

fn wait_for_log(root: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = String::new();
        if let Ok(entries) = std::fs::read_dir(root.join("logs")) {
            for entry in entries.flatten() {
                all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        if all.contains(needle) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "log never said {needle:?}:\n{all}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(unix)]
#[test]
fn run_lays_out_an_empty_root_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let child = Command::new(BIN)
        .args([
            "run",
            "--root",
            root.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_log(&root, "server started");
    for file in [
        "config.json",
        "userdata/local/resourcecheck/local.json",
        "userdata/local/naturalearth_cities.geojson",
        "userdata/local/naturalearth_lowres.gpkg",
        "updater/updater-config.json",
        "state/schedules.sqlite",
    ] {
        assert!(root.join(file).is_file(), "{file} not laid out");
    }
    for folder in ["versions", "logs"] {
        assert!(root.join(folder).is_dir(), "{folder} not laid out");
    }
    let geojson: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("userdata/local/naturalearth_cities.geojson")).unwrap(),
    )
    .unwrap();
    assert_eq!(geojson["features"].as_array().unwrap().len(), 243);

    // It serves HTTPS on the port it reports, and logs each request.
    let (url, client) = started_server(&root);
    let response = client
        .get(format!("{url}/resourcecheck/local.json"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let log = wait_for_log(&root, "path=/resourcecheck/local.json");
    let line = log
        .lines()
        .find(|l| l.contains("path=/resourcecheck/local.json"))
        .unwrap();
    for field in [
        "access",
        "method=GET",
        "status=200",
        "bytes=59",
        "duration_us=",
        "client=127.0.0.1",
    ] {
        assert!(
            line.contains(field),
            "{field} missing from access line: {line}"
        );
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        text(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    let log = wait_for_log(&root, "stopped");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(
        log.contains("stopping children in reverse start order"),
        "{log}"
    );
}

#[test]
fn run_with_a_root_that_cannot_be_created_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "not a folder").unwrap();
    let out = poziserver(&["run", "--root", blocker.join("root").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot prepare installation root"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn run_with_an_invalid_config_lists_the_problems_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"restarts": [{"component": "scheduler", "schedule": "0 0 * * 8"}]}"#,
    )
    .unwrap();
    let out = poziserver(&["run", "--root", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("restarts[0].schedule: 8 is out of range 0-7"),
        "{stderr}"
    );
}

#[cfg(unix)]
#[test]
fn without_gdal_a_source_that_needs_it_gets_501() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("userdata/local")).unwrap();
    std::fs::write(root.join("userdata/local/roads.tab"), "!table\n").unwrap();
    // No ogr2ogr on this PATH.
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--root",
            root.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("PATH", dir.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (url, client) = started_server(&root);
    let response = client
        .get(format!("{url}/ogr2ogr?source=roads.tab"))
        .send()
        .unwrap();
    let status = response.status();
    let body: serde_json::Value = response.json().unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(status, 501, "{body}");
    assert_eq!(body["error"], "GDAL needed");
    assert!(
        body["detail"].as_str().unwrap().contains("roads.tab"),
        "{body}"
    );
}
