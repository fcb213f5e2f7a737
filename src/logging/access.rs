//! The access log: one line per request in `<log dir>/access.log.YYYY-MM-DD`, written off the
//! request path.
//!
//! A request hands a small [`Record`] to a bounded channel and goes on; a writer thread wakes
//! every few milliseconds, formats everything waiting into one reused buffer and writes it
//! with one system call. When the writer falls behind by more than the channel holds, lines are
//! dropped and counted (a warning in the server log says how many), so the log never slows
//! requests down nor grows memory.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use http::{HeaderValue, Method};
use tracing_appender::rolling::RollingFileAppender;

/// One request, as the access log records it.
#[derive(Debug)]
pub struct Record {
    /// When the response was ready.
    pub at: SystemTime,
    /// The peer's address.
    pub client: IpAddr,
    /// The request method.
    pub method: Method,
    /// The `Host` (or `:authority`) as sent.
    pub host: Option<HeaderValue>,
    /// The request path, without the query.
    pub path: String,
    /// The response status.
    pub status: u16,
    /// The response's `Content-Length`, when known before the body is sent.
    pub bytes: Option<u64>,
    /// Time from the request's head to the response's head.
    pub duration_us: u64,
}

/// Lines waiting for the writer; more are dropped and counted.
const CAPACITY: usize = 16_384;
/// How long the writer sleeps between batches while requests keep coming: short, so that a
/// batch is a small piece of work that never holds a shared core long.
const INTERVAL: Duration = Duration::from_millis(2);

struct Installed {
    sender: SyncSender<Record>,
    dropped: Arc<AtomicU64>,
}

static WRITER: ArcSwapOption<Installed> = ArcSwapOption::const_empty();

/// Logs one request: to the access log file when one is open, else as a server-log event with
/// target `access` (in-process tests, and before logging is set up).
pub fn record(record: Record) {
    if let Some(writer) = WRITER.load().as_ref() {
        if writer.sender.try_send(record).is_err() {
            writer.dropped.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    let bytes = record.bytes.map(|b| b.to_string());
    tracing::info!(
        target: "access",
        client = %record.client,
        method = %record.method,
        host = %record.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("-"),
        path = %record.path,
        status = record.status,
        bytes = %bytes.as_deref().unwrap_or("-"),
        duration_us = record.duration_us,
        "request"
    );
}

/// Keeps the access log's writer running; dropping it writes what is waiting and stops it.
#[derive(Debug)]
pub struct AccessLogGuard {
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for AccessLogGuard {
    fn drop(&mut self) {
        // The writer ends when the last sender is gone, after writing what is queued.
        WRITER.store(None);
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// Starts the writer over `file` and routes [`record`] to it.
///
/// # Errors
/// When the writer thread cannot be started.
pub fn install(file: RollingFileAppender, json: bool) -> std::io::Result<AccessLogGuard> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(CAPACITY);
    let dropped = Arc::new(AtomicU64::new(0));
    let writer = Writer {
        file,
        json,
        buffer: Vec::with_capacity(64 * 1024),
        clock: Clock::default(),
        line: String::with_capacity(256),
        dropped: Arc::clone(&dropped),
    };
    let thread = std::thread::Builder::new()
        .name("access-log".to_owned())
        .spawn(move || writer.run(&receiver))?;
    WRITER.store(Some(Arc::new(Installed { sender, dropped })));
    Ok(AccessLogGuard {
        thread: Mutex::new(Some(thread)),
    })
}

struct Writer {
    file: RollingFileAppender,
    json: bool,
    buffer: Vec<u8>,
    clock: Clock,
    line: String,
    dropped: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, receiver: &Receiver<Record>) {
        loop {
            // Idle: block until a request comes. Busy: sleep between batches, so requests never
            // have to wake this thread.
            let first = match receiver.recv_timeout(Duration::from_secs(1)) {
                Ok(record) => record,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            self.format(&first);
            let mut open = self.drain(receiver);
            while open {
                self.flush();
                std::thread::sleep(INTERVAL);
                let before = self.buffer.len();
                open = self.drain(receiver);
                if self.buffer.len() == before {
                    break;
                }
            }
            self.flush();
            if !open {
                return;
            }
        }
    }

    /// Formats everything waiting; false when every sender is gone.
    fn drain(&mut self, receiver: &Receiver<Record>) -> bool {
        loop {
            match receiver.try_recv() {
                Ok(record) => self.format(&record),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn flush(&mut self) {
        if !self.buffer.is_empty() {
            if let Err(e) = self.file.write_all(&self.buffer) {
                tracing::warn!(error = %e, "cannot write the access log; lines lost");
            }
            self.buffer.clear();
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "access log writer fell behind; lines dropped rather than slowing requests"
            );
        }
    }

    fn format(&mut self, r: &Record) {
        let line = &mut self.line;
        line.clear();
        let host = r.host.as_ref().map_or(&b"-"[..], HeaderValue::as_bytes);
        if self.json {
            line.push_str("{\"timestamp\":\"");
            self.clock.write(r.at, line);
            line.push_str(
                "\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\",\"client\":\"",
            );
            write_ip(line, r.client);
            line.push_str("\",\"method\":");
            json_string(line, r.method.as_str().as_bytes());
            line.push_str(",\"host\":");
            json_string(line, host);
            line.push_str(",\"path\":");
            json_string(line, r.path.as_bytes());
            line.push_str(",\"status\":");
            line.push_str(itoa::Buffer::new().format(r.status));
            line.push_str(",\"bytes\":\"");
            write_bytes(line, r.bytes);
            line.push_str("\",\"duration_us\":");
            line.push_str(itoa::Buffer::new().format(r.duration_us));
            line.push_str("},\"target\":\"access\"}");
        } else {
            self.clock.write(r.at, line);
            line.push_str("  INFO access: request client=");
            write_ip(line, r.client);
            line.push_str(" method=");
            text_value(line, r.method.as_str().as_bytes());
            line.push_str(" host=");
            text_value(line, host);
            line.push_str(" path=");
            text_value(line, r.path.as_bytes());
            line.push_str(" status=");
            line.push_str(itoa::Buffer::new().format(r.status));
            line.push_str(" bytes=");
            write_bytes(line, r.bytes);
            line.push_str(" duration_us=");
            line.push_str(itoa::Buffer::new().format(r.duration_us));
        }
        line.push('\n');
        self.buffer.extend_from_slice(line.as_bytes());
    }
}

fn write_ip(line: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().iter().enumerate() {
                if i > 0 {
                    line.push('.');
                }
                line.push_str(itoa::Buffer::new().format(*octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(line, "{v6}");
        }
    }
}

fn write_bytes(line: &mut String, bytes: Option<u64>) {
    match bytes {
        Some(b) => line.push_str(itoa::Buffer::new().format(b)),
        None => line.push('-'),
    }
}

/// RFC 3339 UTC timestamps with microseconds; the part up to the second is formatted once a
/// second.
#[derive(Default)]
struct Clock {
    second: u64,
    prefix: String,
}

impl Clock {
    fn write(&mut self, at: SystemTime, line: &mut String) {
        let since = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        if since.as_secs() != self.second || self.prefix.is_empty() {
            self.second = since.as_secs();
            let time: chrono::DateTime<chrono::Utc> = at.into();
            self.prefix = time.format("%Y-%m-%dT%H:%M:%S").to_string();
        }
        line.push_str(&self.prefix);
        line.push('.');
        let micros = since.subsec_micros();
        let digits = itoa::Buffer::new().format(micros).len();
        for _ in digits..6 {
            line.push('0');
        }
        line.push_str(itoa::Buffer::new().format(micros));
        line.push('Z');
    }
}

/// A value as the text log shows it: bare when it is plain, else quoted with escapes, so a
/// request can never forge a field or a line.
fn text_value(line: &mut String, value: &[u8]) {
    let plain = !value.is_empty()
        && value
            .iter()
            .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if plain {
        line.extend(value.iter().map(|&b| char::from(b)));
        return;
    }
    line.push('"');
    escaped(line, value);
    line.push('"');
}

fn json_string(line: &mut String, value: &[u8]) {
    line.push('"');
    escaped(line, value);
    line.push('"');
}

/// Printable ASCII as itself (`"` and `\` escaped), everything else as `\u00XX` per byte.
fn escaped(line: &mut String, value: &[u8]) {
    for &b in value {
        match b {
            b'"' => line.push_str("\\\""),
            b'\\' => line.push_str("\\\\"),
            b' '..=b'~' => line.push(char::from(b)),
            _ => {
                let _ = write!(line, "\\u{b:04x}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{escaped, text_value};

    #[test]
    fn request_text_cannot_forge_fields_or_lines() {
        let mut line = String::new();
        text_value(&mut line, b"/a b\" status=500\n");
        assert_eq!(line, "\"/a b\\\" status=500\\u000a\"");
        let mut line = String::new();
        text_value(&mut line, b"/plain/path.json");
        assert_eq!(line, "/plain/path.json");
        let mut line = String::new();
        escaped(&mut line, "é".as_bytes());
        assert_eq!(line, "\\u00c3\\u00a9");
    }
}
