//! GDAL's `ogr2ogr` for sources not read natively (MapInfo TAB, VRT, SQL Server, ODBC…): run
//! without a shell, with only the options this server understands (rebuilt from the parsed
//! request, never passed through), under a time limit, its output streamed.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::io::AsyncReadExt;
use warp::reply::Response;

use super::ogr2ogr::{Options, geojson_response};
use crate::http::error_body;

/// Longest an ogr2ogr run may take.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Where `ogr2ogr` is, if GDAL is installed.
#[must_use]
pub fn ogr2ogr() -> Option<std::path::PathBuf> {
    let name = if cfg!(windows) {
        "ogr2ogr.exe"
    } else {
        "ogr2ogr"
    };
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// The argument list for the parsed options.
fn arguments(source: &str, options: &Options) -> Vec<String> {
    let mut args = vec![
        "-f".to_owned(),
        "GeoJSON".to_owned(),
        "/vsistdout/".to_owned(),
        source.to_owned(),
    ];
    if let Some(layer) = &options.layer {
        args.push(layer.clone());
    }
    args.extend(["-t_srs", "EPSG:4326", "-lco", "RFC7946=YES"].map(str::to_owned));
    let mut push = |flag: &str, value: String| {
        args.push(flag.to_owned());
        args.push(value);
    };
    if let Some(filter) = &options.filter {
        push("-where", filter.clone());
    }
    if let Some(sql) = &options.sql {
        push("-sql", sql.clone());
    }
    if let Some(fields) = &options.select {
        push("-select", fields.join(","));
    }
    if let Some(limit) = options.limit {
        push("-limit", limit.to_string());
    }
    if let Some(tolerance) = options.simplify {
        push("-simplify", tolerance.to_string());
    }
    if let Some(name) = &options.name {
        push("-nln", name.clone());
    }
    for (key, value) in &options.open_options {
        push("-oo", format!("{key}={value}"));
    }
    if let Some([a, b, c, d]) = options.spat {
        args.push("-spat".to_owned());
        args.extend([a, b, c, d].map(|v| v.to_string()));
    }
    args
}

/// Answers a request with GDAL, or 501 when GDAL is not installed.
pub async fn answer(source: &str, shown: &str, options: &Options) -> Response {
    let Some(program) = ogr2ogr() else {
        return error_body(
            StatusCode::NOT_IMPLEMENTED,
            "GDAL needed",
            Some(&format!(
                "{shown} is not read natively; install GDAL (ogr2ogr) to serve it"
            )),
        );
    };
    let mut child = match tokio::process::Command::new(&program)
        .args(arguments(source, options))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return error_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot run ogr2ogr",
                Some(&e.to_string()),
            );
        }
    };
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return error_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot run ogr2ogr",
            None,
        );
    };
    // The first bytes decide the status: output means success so far; none means an error.
    let mut first = vec![0u8; 64 * 1024];
    let n = match tokio::time::timeout(TIMEOUT, stdout.read(&mut first)).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            return error_body(
                StatusCode::BAD_GATEWAY,
                "ogr2ogr failed",
                Some(&e.to_string()),
            );
        }
        Err(_) => {
            return error_body(
                StatusCode::GATEWAY_TIMEOUT,
                "ogr2ogr timed out",
                Some(&format!("no answer within {} s", TIMEOUT.as_secs())),
            );
        }
    };
    if n == 0 {
        let mut message = String::new();
        let _ = stderr.read_to_string(&mut message).await;
        let _ = child.wait().await;
        let message = message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("Warning") && !l.starts_with("->"))
            .collect::<Vec<_>>()
            .join(" ");
        let message = message.replace(source, shown);
        return error_body(
            StatusCode::BAD_REQUEST,
            "ogr2ogr refused the request",
            Some(if message.is_empty() {
                "no output"
            } else {
                &message
            }),
        );
    }
    first.truncate(n);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let _ = tx.send(Ok(Bytes::from(first))).await;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout_at(deadline, stdout.read(&mut buffer)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => {
                    if tx
                        .send(Ok(Bytes::copy_from_slice(&buffer[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
                Err(_) => {
                    tracing::warn!("ogr2ogr ran past its time limit; stopped");
                    let _ = tx
                        .send(Err(std::io::Error::other("ogr2ogr timed out")))
                        .await;
                    break;
                }
            }
        }
        // Dropping the child kills it if it is still running.
        let _ = child.start_kill();
        let _ = child.wait().await;
    });
    geojson_response(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// Whether a source is a GDAL connection string this server passes on.
#[must_use]
pub fn is_connection_string(source: &str) -> bool {
    ["MSSQL:", "ODBC:", "PG:", "MYSQL:", "OCI:"]
        .iter()
        .any(|p| source.len() > p.len() && source[..p.len()].eq_ignore_ascii_case(p))
}
