//! Logs: console and a daily-rolling `<root>/logs/server.log`, text or JSON lines, level from the
//! config unless `RUST_LOG` is set; the access log beside it (`access`); and a panic hook that
//! logs panics through tracing.

pub mod access;

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogConfig;

/// Keeps the log writer flushing; drop it last, when the process ends.
#[derive(Debug)]
pub struct LogGuard {
    // Dropped first: the access log's last lines and warnings are written before the server
    // log's writer stops.
    _access: access::AccessLogGuard,
    _file: WorkerGuard,
}

/// A log setup that could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log folder or file could not be created.
    #[error("cannot open log file in {dir}: {reason}")]
    File {
        /// The log folder.
        dir: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// A subscriber was already installed (only in tests that start twice).
    #[error("logging already initialised: {0}")]
    AlreadySet(String),
}

/// The handle that changes the log level of the running subscriber.
static LEVEL: std::sync::OnceLock<
    tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>,
> = std::sync::OnceLock::new();

/// Sets the log level (a level or `target=level` directives, as `log.level`) of the running
/// server. `RUST_LOG`, when set, keeps precedence.
///
/// # Errors
/// A message when `RUST_LOG` is set, the level does not parse, or logging is not set up.
pub fn set_level(level: &str) -> Result<(), String> {
    if std::env::var_os("RUST_LOG").is_some() {
        return Err("RUST_LOG is set and takes precedence over log.level".to_owned());
    }
    let filter = EnvFilter::builder()
        .parse(level)
        .map_err(|e| format!("log.level {level:?}: {e}"))?;
    LEVEL
        .get()
        .ok_or_else(|| "logging is not set up".to_owned())?
        .reload(filter)
        .map_err(|e| e.to_string())
}

/// Installs the global subscriber and the panic hook.
///
/// # Errors
/// When the log folder cannot be written or logging was already set up.
pub fn init(config: &LogConfig, dir: &Path) -> Result<LogGuard, LogError> {
    let file = RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix("server.log")
        .max_log_files(config.keep_days)
        .build(dir)
        .map_err(|e| LogError::File {
            dir: dir.to_owned(),
            reason: e.to_string(),
        })?;
    let access_file = RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix("access.log")
        .max_log_files(config.keep_days)
        .build(dir)
        .map_err(|e| LogError::File {
            dir: dir.to_owned(),
            reason: e.to_string(),
        })?;
    let (file_writer, guard) = tracing_appender::non_blocking(file);
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::builder().parse(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));

    let console = config.console.then_some(std::io::stdout);
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let _ = LEVEL.set(handle);
    let registry = tracing_subscriber::registry().with(filter);
    let result = if config.json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(file_writer),
            )
            .with(console.map(|w| tracing_subscriber::fmt::layer().json().with_writer(w)))
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(file_writer),
            )
            .with(console.map(|w| tracing_subscriber::fmt::layer().with_writer(w)))
            .try_init()
    };
    result.map_err(|e| LogError::AlreadySet(e.to_string()))?;
    install_panic_hook();
    let access = access::install(access_file, config.json).map_err(|e| LogError::File {
        dir: dir.to_owned(),
        reason: format!("cannot start the access log writer: {e}"),
    })?;
    Ok(LogGuard {
        _access: access,
        _file: guard,
    })
}

/// Logs every panic through tracing: the event lands inside the panicking task's span, so it
/// carries the component's name, and the thread name is added for panics outside any span.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-text panic payload)".to_owned());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(
            panic = %message,
            location = %location,
            thread = thread.name().unwrap_or("unnamed"),
            "panic"
        );
    }));
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    #[test]
    fn a_panic_is_logged_with_the_component_span() {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(capture.clone())
            .with_ansi(false)
            .finish();
        super::install_panic_hook();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("component", component = "scheduler");
            let _entered = span.enter();
            let result = std::panic::catch_unwind(|| panic!("bad thing {}", 42));
            assert!(result.is_err());
        });
        let _ = std::panic::take_hook();
        let logged = String::from_utf8(
            capture
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
        .unwrap_or_default();
        assert!(logged.contains("ERROR"), "{logged}");
        assert!(
            logged.contains("component{component=\"scheduler\"}"),
            "{logged}"
        );
        assert!(logged.contains("panic=bad thing 42"), "{logged}");
        assert!(logged.contains("src/logging/mod.rs"), "{logged}");
    }
}
