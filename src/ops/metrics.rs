//! `GET /metrics`: the server's metrics in the Prometheus text format (0.0.4), encoded by the
//! `prometheus` crate.
//!
//! The request path records through handles resolved once (a route class by a status class),
//! so recording is a few uncontended atomic additions and no label lookup; the histograms are
//! lock-free. Everything else (component restarts, caches, datasets, the certificate) is read
//! when scraped.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// The classes requests are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// Static files.
    Static,
    /// `/ogr2ogr`.
    Ogr2ogr,
    /// `/features/`.
    Features,
    /// `/search`.
    Search,
    /// The reverse proxy.
    Proxy,
    /// `/health`.
    Health,
    /// `/admin/`.
    Admin,
    /// `/metrics`.
    Metrics,
    /// Answered before a route was chosen (a CORS preflight, a head too large).
    Other,
}

const CLASSES: [&str; 9] = [
    "static", "ogr2ogr", "features", "search", "proxy", "health", "admin", "metrics", "other",
];
const STATUS: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Upper bounds of the latency buckets, in seconds.
const LATENCY: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of the sync run duration buckets, in seconds.
const RUN_SECONDS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0,
];

/// What is read when scraped: the running server's parts.
#[derive(Clone, Default)]
pub struct Sources {
    /// Component states and restarts.
    pub registry: Option<actors::HealthRegistry>,
    /// The caches.
    pub catalog: Option<Arc<crate::gis::store::Catalog>>,
    /// `userdata/`, whose datasets are counted.
    pub userdata: Option<std::path::PathBuf>,
    /// The certificate served.
    pub cert: Option<Arc<crate::http::tls::CertStore>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("userdata", &self.userdata)
            .finish_non_exhaustive()
    }
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Vec<Vec<IntCounter>>,
    latency: Vec<Histogram>,
    bytes: Vec<IntCounter>,
    open_connections: IntGauge,
    handshakes: IntCounterVec,
    sync_runs: IntCounterVec,
    sync_rows: IntCounterVec,
    sync_duration: HistogramVec,
    restarts: IntCounterVec,
    planned_restarts: IntCounterVec,
    running: IntGaugeVec,
    cache_hits: IntCounterVec,
    cache_misses: IntCounterVec,
    cache_bytes: IntGaugeVec,
    datasets: IntGauge,
    dataset_bytes: IntGauge,
    certificate_expiry: IntGauge,
    sources: Mutex<Sources>,
    /// The last count of datasets: when, how many, how many bytes.
    dataset_count: Mutex<Option<(std::time::Instant, i64, i64)>>,
}

fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> prometheus::Result<M> {
    let metric = metric?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl Metrics {
    fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        let requests = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "pozi_http_requests_total",
                    "Requests answered, by route class and status class.",
                ),
                &["route", "status"],
            ),
        )?;
        let latency = register(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "pozi_http_request_duration_seconds",
                    "Time from a request's head to its answer's head, by route class.",
                )
                .buckets(LATENCY.to_vec()),
                &["route"],
            ),
        )?;
        let bytes = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "pozi_http_response_bytes_total",
                    "Bytes of answers of known length sent, by route class.",
                ),
                &["route"],
            ),
        )?;
        Ok(Self {
            requests: CLASSES
                .iter()
                .map(|class| {
                    STATUS
                        .iter()
                        .map(|status| requests.with_label_values(&[*class, *status]))
                        .collect()
                })
                .collect(),
            latency: CLASSES
                .iter()
                .map(|class| latency.with_label_values(&[*class]))
                .collect(),
            bytes: CLASSES
                .iter()
                .map(|class| bytes.with_label_values(&[*class]))
                .collect(),
            open_connections: register(
                &r,
                IntGauge::new("pozi_http_open_connections", "Connections open now."),
            )?,
            handshakes: register(
                &r,
                IntCounterVec::new(
                    Opts::new("pozi_tls_handshakes_total", "TLS handshakes, by result."),
                    &["result"],
                ),
            )?,
            sync_runs: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "pozi_sync_runs_total",
                        "Sync runs ended, by job and status.",
                    ),
                    &["job", "status"],
                ),
            )?,
            sync_rows: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "pozi_sync_rows_written_total",
                        "Rows published by sync runs, by job.",
                    ),
                    &["job"],
                ),
            )?,
            sync_duration: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "pozi_sync_run_duration_seconds",
                        "Time sync runs took, by job.",
                    )
                    .buckets(RUN_SECONDS.to_vec()),
                    &["job"],
                ),
            )?,
            restarts: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "pozi_component_restarts_total",
                        "Restarts of each component after a failure.",
                    ),
                    &["component"],
                ),
            )?,
            planned_restarts: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "pozi_component_planned_restarts_total",
                        "Planned and asked-for restarts of each component.",
                    ),
                    &["component"],
                ),
            )?,
            running: register(
                &r,
                IntGaugeVec::new(
                    Opts::new("pozi_component_running", "1 while the component runs."),
                    &["component"],
                ),
            )?,
            cache_hits: register(
                &r,
                IntCounterVec::new(
                    Opts::new("pozi_cache_hits_total", "Lookups answered from a cache."),
                    &["cache"],
                ),
            )?,
            cache_misses: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "pozi_cache_misses_total",
                        "Lookups a cache could not answer.",
                    ),
                    &["cache"],
                ),
            )?,
            cache_bytes: register(
                &r,
                IntGaugeVec::new(
                    Opts::new("pozi_cache_bytes", "Bytes a cache holds."),
                    &["cache"],
                ),
            )?,
            datasets: register(
                &r,
                IntGauge::new("pozi_datasets", "Dataset files under userdata/."),
            )?,
            dataset_bytes: register(
                &r,
                IntGauge::new(
                    "pozi_dataset_bytes",
                    "Bytes of the dataset files under userdata/.",
                ),
            )?,
            certificate_expiry: register(
                &r,
                IntGauge::new(
                    "pozi_certificate_expiry_timestamp_seconds",
                    "When the certificate served expires (Unix time).",
                ),
            )?,
            registry: r,
            sources: Mutex::default(),
            dataset_count: Mutex::new(None),
        })
    }

    /// Records one answered request.
    pub fn request(&self, class: RouteClass, status: u16, bytes: Option<u64>, elapsed: Duration) {
        let class = class as usize;
        let status = usize::from(status / 100).clamp(1, 5) - 1;
        if let Some(counter) = self.requests.get(class).and_then(|row| row.get(status)) {
            counter.inc();
        }
        if let Some(histogram) = self.latency.get(class) {
            histogram.observe(elapsed.as_secs_f64());
        }
        if let (Some(bytes), Some(total)) = (bytes, self.bytes.get(class)) {
            total.inc_by(bytes);
        }
    }

    /// Bytes of a streamed answer sent.
    pub fn sent(&self, class: RouteClass, bytes: u64) {
        if let Some(total) = self.bytes.get(class as usize) {
            total.inc_by(bytes);
        }
    }

    /// A connection was accepted; it counts as open until the value is dropped.
    #[must_use]
    pub fn connection(&'static self) -> OpenConnection {
        self.open_connections.inc();
        OpenConnection(self)
    }

    /// A TLS handshake ended, well or not.
    pub fn handshake(&self, ok: bool) {
        self.handshakes
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
    }

    /// A sync run ended.
    pub fn sync_run(&self, job: &str, status: &'static str, elapsed: Duration, rows: u64) {
        self.sync_runs.with_label_values(&[job, status]).inc();
        self.sync_rows.with_label_values(&[job]).inc_by(rows);
        self.sync_duration
            .with_label_values(&[job])
            .observe(elapsed.as_secs_f64());
    }

    /// Sets what scrapes read (the listener does at its start).
    pub fn set_sources(&self, sources: Sources) {
        if let Ok(mut current) = self.sources.lock() {
            *current = sources;
        }
    }

    /// The metrics in the Prometheus text format.
    #[must_use]
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        // One scrape at a time: the values read now are set, then everything is encoded.
        let Ok(sources) = self.sources.lock() else {
            return String::new();
        };
        self.read(&sources);
        let mut text = Vec::new();
        if prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .is_err()
        {
            text.clear();
        }
        String::from_utf8(text).unwrap_or_default()
    }

    /// Sets the values read at a scrape.
    fn read(&self, sources: &Sources) {
        let set = |counter: &IntCounter, value: u64| {
            counter.reset();
            counter.inc_by(value);
        };
        if let Some(registry) = &sources.registry {
            for (name, h) in registry.snapshot().iter() {
                let name = name.to_string();
                set(&self.restarts.with_label_values(&[&name]), h.total_restarts);
                set(
                    &self.planned_restarts.with_label_values(&[&name]),
                    h.planned_restarts,
                );
                self.running
                    .with_label_values(&[&name])
                    .set(i64::from(h.state == actors::ComponentState::Running));
            }
        }
        if let Some(catalog) = &sources.catalog {
            let responses = catalog.responses.stats();
            let features = catalog.features.stats();
            for (cache, hits, misses, bytes) in [
                (
                    "responses",
                    responses.hits,
                    responses.misses,
                    responses.bytes,
                ),
                ("features", features.hits, features.misses, features.bytes),
            ] {
                set(&self.cache_hits.with_label_values(&[cache]), hits);
                set(&self.cache_misses.with_label_values(&[cache]), misses);
                self.cache_bytes
                    .with_label_values(&[cache])
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
        }
        if let Some(userdata) = &sources.userdata {
            let (count, bytes) = self.count_datasets(userdata);
            self.datasets.set(count);
            self.dataset_bytes.set(bytes);
        }
        if let Some(cert) = &sources.cert {
            let expiry = cert
                .info()
                .not_after
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            self.certificate_expiry.set(expiry);
        }
    }

    /// Datasets under `userdata/` and their bytes, counted at most once a minute.
    fn count_datasets(&self, userdata: &std::path::Path) -> (i64, i64) {
        let Ok(mut cached) = self.dataset_count.lock() else {
            return (0, 0);
        };
        if let Some((at, count, bytes)) = *cached
            && at.elapsed() < DATASET_SCAN_EVERY
        {
            return (count, bytes);
        }
        let (count, bytes) = count_datasets(userdata);
        *cached = Some((std::time::Instant::now(), count, bytes));
        (count, bytes)
    }
}

/// The process's metrics (`None`, after one error in the log, if they could not be made).
#[must_use]
pub fn global() -> Option<&'static Metrics> {
    static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();
    METRICS
        .get_or_init(|| match Metrics::new() {
            Ok(metrics) => Some(metrics),
            Err(e) => {
                tracing::error!(error = %e, "cannot make the metrics; /metrics stays empty");
                None
            }
        })
        .as_ref()
}

/// Counts an open connection until dropped.
#[derive(Debug)]
pub struct OpenConnection(&'static Metrics);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.dec();
    }
}

/// Dataset files under `folder` (and its folders) and their bytes, looking at no more than
/// [`DATASET_SCAN_LIMIT`] entries.
#[must_use]
pub fn count_datasets(folder: &std::path::Path) -> (i64, i64) {
    let (mut count, mut bytes, mut seen) = (0i64, 0i64, 0usize);
    let mut folders = vec![folder.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            seen += 1;
            if seen > DATASET_SCAN_LIMIT {
                return (count, bytes);
            }
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                folders.push(entry.path());
            } else if is_dataset(&entry.path()) {
                count += 1;
                bytes += entry
                    .metadata()
                    .map_or(0, |m| i64::try_from(m.len()).unwrap_or(0));
            }
        }
    }
    (count, bytes)
}

/// How long a count of the datasets under `userdata/` is reused.
const DATASET_SCAN_EVERY: Duration = Duration::from_secs(60);
/// Most files looked at by one count.
const DATASET_SCAN_LIMIT: usize = 100_000;

/// Whether a file is of a format the data layer serves (GeoPackage or SQLite, or one the
/// readers convert).
fn is_dataset(path: &std::path::Path) -> bool {
    let sqlite = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "gpkg" | "sqlite" | "db"));
    sqlite || crate::gis::source::readers::Format::of(path).is_some()
}
