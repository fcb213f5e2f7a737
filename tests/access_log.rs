//! The access log of the real binary: its own daily file, one line per request, values that
//! cannot forge fields or lines, JSON lines when the log is JSON, and every line written by
//! the time the process has stopped.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]
#![allow(dead_code, reason = "each test file uses some of the shared helpers")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::process::Process;

/// Everything in `<root>/logs/access.log.*`.
fn access_log(root: &Path) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(root.join("logs")).unwrap().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("access.log")
        {
            all.push_str(&std::fs::read_to_string(entry.path()).unwrap());
        }
    }
    all
}

#[tokio::test]
async fn each_request_is_one_line_in_the_access_log_and_none_is_lost_at_stop() {
    let server = Process::start("{}", |_| {}).await;
    let client = server.client();
    for i in 0..500 {
        let response = client
            .get(server.url(&format!("/resourcecheck/local.json?n={i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // A path and a host that try to start a new line or a new field.
    let response = client
        .get(server.url("/no%20such%22file%0A status=200"))
        .header("host", "evil\" status=200")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert!(status == 400 || status == 404, "{status}");
    let root = server.root.clone();
    let (exit, _dir) = server.terminate_keeping(Duration::from_secs(15)).await;
    assert!(exit.is_some_and(|s| s.success()));

    let log = access_log(&root);
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("path=/resourcecheck/local.json"))
            .count(),
        500,
        "{log}"
    );
    let line = lines
        .iter()
        .find(|l| l.contains("path=/resourcecheck/local.json"))
        .unwrap();
    for field in [
        "INFO access: request",
        "client=127.0.0.1",
        "method=GET",
        "status=200",
        "bytes=59",
        "duration_us=",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    // The hostile request is one line whose status is its own, with the host quoted.
    let hostile: Vec<&&str> = lines.iter().filter(|l| l.contains("no%20such")).collect();
    assert_eq!(hostile.len(), 1, "{log}");
    assert!(
        hostile[0].contains("host=\"evil\\\" status=200\""),
        "{}",
        hostile[0]
    );
    assert!(
        hostile[0].contains(&format!(" status={status} ")),
        "{}",
        hostile[0]
    );
    assert_eq!(lines.len(), 501, "{log}");
    // The server log does not repeat them.
    assert!(
        !common::process::log_of(&root)
            .lines()
            .any(|l| l.starts_with("20") && l.contains("INFO access:") && !log.contains(l))
    );
}

#[tokio::test]
async fn json_logs_make_json_access_lines() {
    let server = Process::start(r#"{"log": {"json": true}}"#, |_| {}).await;
    let (status, _, _) = server.get("/resourcecheck/local.json").await;
    assert_eq!(status, 200);
    let root = server.root.clone();
    let (status, _dir) = server.terminate_keeping(Duration::from_secs(15)).await;
    assert!(status.is_some_and(|s| s.success()));
    let log = access_log(&root);
    let line: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(line["target"], "access");
    assert_eq!(line["fields"]["path"], "/resourcecheck/local.json");
    assert_eq!(line["fields"]["status"], 200);
    assert_eq!(line["fields"]["bytes"], "59");
    assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
}
