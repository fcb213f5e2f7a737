//! GDAL's `ogr2ogr` for sources not read natively (MapInfo TAB, VRT…): a file under the host's
//! folder, never a connection string. It runs without a shell, with an argument list rebuilt
//! in a fixed order from the parsed options (every value checked, so that no client text
//! becomes a GDAL option, an `@file` to read or a `/vsi` path), a bounded number at a time,
//! each under a time and memory limit, and killed when its client goes away.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::options::Options;
use crate::api::error::ApiError;
use crate::api::reply::{Response, geojson};
use crate::config::GdalConfig;
use crate::gis::query::admission::Admission;

/// Bytes of GDAL's error output kept for the error answer; the rest is read and dropped.
const STDERR_KEPT: usize = 16 * 1024;
/// Characters of GDAL's message shown to the client.
const MESSAGE_SHOWN: usize = 1000;

/// Where `ogr2ogr` is, if GDAL is installed.
#[must_use]
pub fn ogr2ogr() -> Option<PathBuf> {
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

/// The GDAL delegate: where `ogr2ogr` is, and the limits its processes run under.
#[derive(Debug)]
pub struct Gdal {
    program: Option<PathBuf>,
    processes: Admission,
    timeout: Duration,
    memory_bytes: u64,
}

impl Default for Gdal {
    fn default() -> Self {
        Self::new(&GdalConfig::default())
    }
}

impl Gdal {
    /// The delegate with `config`'s limits, using the `ogr2ogr` on the `PATH` (if any).
    #[must_use]
    pub fn new(config: &GdalConfig) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let slots = if config.max_processes == 0 {
            2 * cores
        } else {
            config.max_processes
        };
        let timeout = Duration::from_secs(config.timeout_secs.max(1));
        Self {
            program: ogr2ogr(),
            processes: Admission::new("GDAL processes", slots, config.queue, timeout),
            timeout,
            memory_bytes: config.memory_mb.saturating_mul(1024 * 1024),
        }
    }

    /// Processes running and waiting now.
    #[must_use]
    pub fn load(&self) -> (usize, usize) {
        (self.processes.running(), self.processes.waiting())
    }

    /// Answers a request for `source` (a file under `folder`, shown to the client as `shown`)
    /// with GDAL: 501 when GDAL is not installed, 400 naming an option whose value GDAL must not
    /// see, 503 when too many processes run and wait.
    pub async fn answer(
        &self,
        source: &Path,
        shown: &str,
        folder: &Path,
        options: &Options,
        encoding: crate::encoding::Encoding,
    ) -> Result<Response, ApiError> {
        let Some(program) = &self.program else {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "GDAL needed",
                Some(format!(
                    "{shown} is not read natively; install GDAL (ogr2ogr) to serve it"
                )),
            ));
        };
        let args =
            arguments(source, options).map_err(|e| ApiError::bad_request("bad options", e))?;
        let slot = self
            .processes
            .enter()
            .await
            .map_err(|busy| ApiError::busy(&busy))?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        limit(&mut command, self.timeout, self.memory_bytes);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(program = %program.display(), error = %e, "cannot start ogr2ogr");
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot run ogr2ogr",
                    None,
                ));
            }
        };
        let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot run ogr2ogr",
                None,
            ));
        };
        let stderr = tokio::spawn(keep_head(stderr));
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timed_out = || {
            tracing::warn!(source = %shown, timeout_secs = self.timeout.as_secs(), "ogr2ogr ran past its time limit; killed");
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "ogr2ogr timed out",
                Some(format!("no answer within {} s", self.timeout.as_secs())),
            )
        };
        // The first bytes decide the status: output means success so far; none means an error.
        let mut first = vec![0u8; 64 * 1024];
        let n = match tokio::time::timeout_at(deadline, stdout.read(&mut first)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "ogr2ogr failed",
                    Some(e.to_string()),
                ));
            }
            Err(_) => return Err(timed_out()),
        };
        if n == 0 {
            let status = tokio::time::timeout_at(deadline, child.wait()).await;
            let message = match tokio::time::timeout_at(deadline, stderr).await {
                Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
                _ => String::new(),
            };
            let message = clean_message(&message, source, shown, folder);
            let detail = match status {
                Ok(Ok(status)) if message.is_empty() => {
                    format!("no output ({})", describe_exit(status))
                }
                Ok(Ok(_)) => message,
                _ => return Err(timed_out()),
            };
            return Err(ApiError::bad_request("ogr2ogr refused the request", detail));
        }
        first.truncate(n);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let shown = shown.to_owned();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tx.send(Ok(Bytes::from(first))).await;
            let mut buffer = vec![0u8; 64 * 1024];
            let ended = loop {
                let read = tokio::select! {
                    () = tx.closed() => break "client went away",
                    read = tokio::time::timeout_at(deadline, stdout.read(&mut buffer)) => read,
                };
                let chunk = match read {
                    Ok(Ok(0)) => break "",
                    Ok(Ok(n)) => Ok(Bytes::copy_from_slice(&buffer[..n])),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(std::io::Error::other("ogr2ogr ran past its time limit")),
                };
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() {
                    break "client went away";
                }
                if failed {
                    break "ogr2ogr failed while streaming";
                }
            };
            if !ended.is_empty() {
                tracing::info!(source = %shown, reason = ended, "ogr2ogr stopped");
                let _ = child.start_kill();
            }
            match child.wait().await {
                // A process that ended badly after output leaves a truncated body: say so rather
                // than end it as if complete.
                Ok(status) if !status.success() && ended.is_empty() => {
                    tracing::warn!(source = %shown, status = %describe_exit(status), "ogr2ogr failed after starting its output");
                    let _ = tx.send(Err(std::io::Error::other("ogr2ogr failed"))).await;
                }
                _ => {}
            }
        });
        Ok(geojson(
            futures::stream::poll_fn(move |cx| rx.poll_recv(cx)),
            encoding,
        ))
    }
}

/// Applies the time and memory limits to the process before it runs GDAL, and makes it die
/// with this server.
#[cfg(unix)]
fn limit(command: &mut tokio::process::Command, timeout: Duration, memory_bytes: u64) {
    let cpu_secs = timeout.as_secs().saturating_add(1);
    #[expect(
        unsafe_code,
        reason = "pre_exec runs between fork and exec, where only async-signal-safe calls are \
                  allowed: setrlimit and prctl are, and nothing here allocates"
    )]
    unsafe {
        command.pre_exec(move || {
            let set = |resource, value: u64| {
                let limit = libc::rlimit {
                    rlim_cur: value as libc::rlim_t,
                    rlim_max: value as libc::rlim_t,
                };
                // SAFETY: a plain system call on a value on the stack.
                if libc::setrlimit(resource, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            set(libc::RLIMIT_AS, memory_bytes)?;
            set(libc::RLIMIT_CPU, cpu_secs)?;
            #[cfg(target_os = "linux")]
            {
                // Killed if this server dies first, so no child outlives it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            }
            Ok(())
        });
    }
}

/// On Windows the process cap and the wall-clock limit apply; memory is not limited.
#[cfg(not(unix))]
fn limit(_: &mut tokio::process::Command, _: Duration, _: u64) {}

/// Reads a pipe to its end, keeping the first [`STDERR_KEPT`] bytes (so a chatty process never
/// blocks on a full pipe, and its output never grows memory).
async fn keep_head(mut pipe: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        let room = STDERR_KEPT.saturating_sub(kept.len());
        kept.extend_from_slice(&buffer[..n.min(room)]);
    }
    kept
}

/// GDAL's error lines, without warnings and progress, with the server's paths replaced by what
/// the client asked for, and cut to a readable length.
fn clean_message(stderr: &str, source: &Path, shown: &str, folder: &Path) -> String {
    let message = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Warning") && !l.starts_with("->"))
        .collect::<Vec<_>>()
        .join(" ");
    let message = message.replace(&*source.to_string_lossy(), shown);
    let folder = folder.to_string_lossy();
    let message = if folder.is_empty() {
        message
    } else {
        message.replace(&*folder, "")
    };
    match message.char_indices().nth(MESSAGE_SHOWN) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message,
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        match status.signal() {
            Some(libc::SIGXCPU) => return "stopped at its CPU time limit".to_owned(),
            Some(libc::SIGKILL) => return "killed".to_owned(),
            Some(signal) => return format!("ended by signal {signal}"),
            None => {}
        }
    }
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => "ended abnormally".to_owned(),
    }
}

/// Why a value may not be given to GDAL, if it may not.
fn unsafe_value(value: &str) -> Option<&'static str> {
    if value.starts_with('@') {
        Some("may not start with @ (GDAL would read it from a file)")
    } else if value.starts_with('-') {
        Some("may not start with - (GDAL would read it as an option)")
    } else if value.to_ascii_lowercase().contains("/vsi") {
        Some("may not name a GDAL virtual file (/vsi…)")
    } else if value.chars().any(char::is_control) {
        Some("may not hold control characters")
    } else {
        None
    }
}

/// The argument list for the parsed options, in a fixed order: output, source, layer, then
/// each option this server understands with its checked value. `-sql` is never given to GDAL:
/// GDAL's SQL opens any data source a query names (`FROM 'CSV:/path'.layer`, URLs, connection
/// strings, inline VRTs).
///
/// # Errors
/// A message naming the option whose value GDAL must not see.
fn arguments(source: &Path, options: &Options) -> Result<Vec<OsString>, String> {
    if options.sql.is_some() {
        return Err(
            "-sql is answered for GeoPackage, SQLite, GeoJSON, CSV and Shapefile sources only; for a source read by GDAL use -where, -select, -spat and -limit"
                .to_owned(),
        );
    }
    let mut args: Vec<OsString> = ["-f", "GeoJSON", "/vsistdout/"]
        .into_iter()
        .map(OsString::from)
        .collect();
    args.push(source.as_os_str().to_owned());
    let checked = |option: &str, value: &str| match unsafe_value(value) {
        Some(reason) => Err(format!("{option} {value:?}: {reason}")),
        None => Ok(OsString::from(value)),
    };
    if let Some(layer) = &options.layer {
        args.push(checked("layer name", layer)?);
    }
    args.extend(
        ["-t_srs", "EPSG:4326", "-lco", "RFC7946=YES"]
            .into_iter()
            .map(OsString::from),
    );
    let mut push = |flag: &str, value: OsString| {
        args.push(OsString::from(flag));
        args.push(value);
    };
    if let Some(filter) = &options.filter {
        // GDAL gets the filter as this server writes it again, never the client's text.
        let written = crate::gis::query::filter::canonical(filter).map_err(|e| {
            format!(
                "-where {filter:?}: {e}; for a source read by GDAL a filter compares fields with values (=, <>, <, <=, >, >=, LIKE, IN, BETWEEN, IS NULL, AND, OR, NOT, + - * / ||), without functions"
            )
        })?;
        push("-where", checked("-where", &written)?);
    }
    if let Some(fields) = &options.select {
        for field in fields {
            checked("-select", field)?;
        }
        push("-select", OsString::from(fields.join(",")));
    }
    if let Some(limit) = options.limit {
        push("-limit", OsString::from(limit.to_string()));
    }
    if let Some(tolerance) = options.simplify {
        push("-simplify", OsString::from(tolerance.to_string()));
    }
    if let Some(name) = &options.name {
        push("-nln", checked("-nln", name)?);
    }
    for (key, value) in &options.open_options {
        checked("-oo", key)?;
        push("-oo", checked("-oo", &format!("{key}={value}"))?);
    }
    if let Some(corners) = options.spat {
        args.push(OsString::from("-spat"));
        args.extend(corners.map(|v| OsString::from(v.to_string())));
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(options: &str) -> Result<Vec<String>, String> {
        let options = super::super::options::parse(options).map_err(|e| e.0)?;
        arguments(Path::new("/data/roads.tab"), &options).map(|a| {
            a.into_iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect()
        })
    }

    #[test]
    fn values_that_gdal_would_read_as_files_or_options_are_refused() {
        for (options, named) in [
            ("-where|@/etc/passwd", "-where"),
            ("-sql|@state/self-signed.key", "-sql"),
            ("-sql|SELECT|*|FROM|'CSV:/etc/passwd'.passwd", "-sql"),
            ("-where|x|IN|(SELECT|1)", "-where"),
            ("-where|ogr_geocode('x')|IS|NOT|NULL", "-where"),
            ("-where|load_extension|(|'x'|)", "-where"),
            ("-where|sqlite_version/**/()|IS|NOT|NULL", "-where"),
            ("-nln|--version", "-nln"),
            ("-nln|--config", "-nln"),
            ("-select|name,--debug", "-select"),
            ("-where|name='/vsicurl/http://x'", "-where"),
            ("-where|\"name = '\u{7}'\"", "-where"),
        ] {
            let error = args(options).unwrap_err();
            assert!(error.starts_with(named), "{options}: {error}");
        }
    }

    #[test]
    fn arguments_come_in_a_fixed_order() {
        let built =
            args("-limit|5|-where|pop_est > 5|-spat|-10|-10|10|10|roads").unwrap_or_default();
        assert_eq!(
            built,
            [
                "-f",
                "GeoJSON",
                "/vsistdout/",
                "/data/roads.tab",
                "roads",
                "-t_srs",
                "EPSG:4326",
                "-lco",
                "RFC7946=YES",
                "-where",
                "\"pop_est\" > 5",
                "-limit",
                "5",
                "-spat",
                "-10",
                "-10",
                "10",
                "10"
            ]
        );
    }

    #[test]
    fn messages_hide_server_paths_and_stay_short() {
        let message = clean_message(
            "ERROR 1: /root/userdata/local/roads.tab: no such layer\nWarning 1: x",
            Path::new("/root/userdata/local/roads.tab"),
            "roads.tab",
            Path::new("/root/userdata/local"),
        );
        assert_eq!(message, "ERROR 1: roads.tab: no such layer");
        let long = clean_message(&"é".repeat(5000), Path::new("/x"), "x", Path::new("/y"));
        assert_eq!(long.chars().count(), MESSAGE_SHOWN + 1);
    }
}
