//! `config.json`: the one configuration file, its defaults, its schema and its validation.
//!
//! Loading reports every problem it can find at once, each with the JSON path, line and column
//! and the reason: first syntax, then structure (types, unknown fields) against the generated
//! JSON Schema, then meaning (schedules, time zones, component names).

pub mod admin;
mod locate;
pub mod sync;
pub mod update;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono_tz::Tz;
use schedules::{CatchUp, Schedule};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use admin::AdminConfig;
pub use locate::Segment;
use locate::{dotted, from_pointer, line_column};
pub use sync::SyncConfig;
pub use update::UpdateConfig;

/// The components a planned restart may name.
pub const COMPONENTS: &[&str] = &["http", "scheduler", "search", "sync", "updater"];

/// Default listen address: HTTPS on every IPv4 interface.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:443";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Addresses the HTTPS listener binds (IPv4 or IPv6, with port). `--listen` overrides.
    pub listen: Vec<SocketAddr>,
    /// IANA time zone for schedules that name none (e.g. `Australia/Melbourne`); `null` uses the
    /// machine's zone.
    pub time_zone: Option<String>,
    /// The HTTPS listener and what it serves.
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
    /// Restart policy of the root supervisor.
    pub supervisor: SupervisorConfig,
    /// Datasets and the APIs over them.
    pub data: DataConfig,
    /// Unified search over datasets.
    pub search: SearchConfig,
    /// Planned restarts of components on cron schedules (the in-process replacement for a
    /// nightly `Restart-Service` scheduled task).
    pub restarts: Vec<PlannedRestart>,
    /// Scheduled refreshes of datasets from files, web services and databases.
    pub sync: SyncConfig,
    /// The updater: release manifests, their signing keys, polling and health-gated switches.
    pub update: UpdateConfig,
    /// Who may use the operators' endpoints (`/admin/`).
    pub admin: AdminConfig,
    /// What `/health` warns about.
    pub health: HealthConfig,
    /// `/metrics`.
    pub metrics: MetricsConfig,
}

/// `/metrics`: whether requests are counted and the metrics served, and to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Count requests and serve `/metrics`.
    pub enabled: bool,
    /// Serve `/metrics` to anyone; by default only to those the admin rules let in.
    pub public: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            public: false,
        }
    }
}

/// What `/health` warns about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Warn when less than this many MiB are free on the disk holding the root.
    #[schemars(range(max = 1_048_576))]
    pub disk_warn_mb: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self { disk_warn_mb: 1024 }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 443))],
            time_zone: None,
            http: HttpConfig::default(),
            log: LogConfig::default(),
            supervisor: SupervisorConfig::default(),
            restarts: Vec::new(),
            search: SearchConfig::default(),
            data: DataConfig::default(),
            sync: SyncConfig::default(),
            update: UpdateConfig::default(),
            admin: AdminConfig::default(),
            health: HealthConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// Datasets and the APIs over them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Memory kept for recent `/ogr2ogr` answers, in MiB (0 turns the cache off). An answer is
    /// keyed by the dataset's version, so a replaced dataset is never answered from the cache.
    #[schemars(range(max = 65536))]
    pub response_cache_mb: usize,
    /// Memory kept for rendered features, in MiB (0 turns it off): a box query (`-spat`) whose
    /// features were all read before is answered from the spatial index and these copies. Keyed
    /// by the dataset's version like the response cache.
    #[schemars(range(max = 65536))]
    pub feature_cache_mb: usize,
    /// Longest a query may run inside SQLite, in seconds (time spent waiting for a slow client
    /// to read the answer is not counted). A query past it is interrupted with an error; so is
    /// a query whose client has gone, or every query when the server stops.
    #[schemars(range(min = 1, max = 3600))]
    pub query_timeout_secs: u64,
    /// Queries run at once, each on its own thread; 0 means two per CPU core.
    /// Static files and `/health` never wait behind them.
    #[schemars(range(max = 1024))]
    pub query_workers: usize,
    /// Queries that may wait for a worker; more are answered 503 with `Retry-After`, as is a
    /// query that waited `query_timeout_secs` without getting one.
    #[schemars(range(max = 100000))]
    pub query_queue: usize,
    /// Memory one query may use, in MiB: the largest single value (text or blob) SQLite will
    /// make, the largest feature, and the answer held while the client reads it.
    #[schemars(range(min = 1, max = 1024))]
    pub query_memory_mb: usize,
    /// Memory all answers held for their clients may use together, in MiB: when it is full a
    /// query waits for its client to read (up to 30 s, then its answer is abandoned), so slow
    /// readers cannot grow the process.
    #[schemars(range(min = 16, max = 1048576))]
    pub answer_memory_mb: usize,
    /// Memory all SQLite connections of the process may use together, in MiB (SQLite's hard
    /// heap limit): past it a query fails with an out-of-memory error instead of the process
    /// growing.
    #[schemars(range(min = 64, max = 1048576))]
    pub sqlite_memory_mb: usize,
    /// Disk kept in `<root>/state/cache` for GeoPackage conversions of GeoJSON, CSV and
    /// Shapefile sources, in MiB; the least recently used go first, and conversions of sources
    /// that were deleted or changed are removed.
    #[schemars(range(min = 1, max = 1048576))]
    pub conversion_cache_mb: u64,
    /// GDAL's `ogr2ogr`, for sources not read natively.
    pub gdal: GdalConfig,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            response_cache_mb: 64,
            feature_cache_mb: 64,
            query_timeout_secs: 5,
            query_workers: 0,
            query_queue: 64,
            query_memory_mb: 32,
            answer_memory_mb: 256,
            sqlite_memory_mb: 1024,
            conversion_cache_mb: 2048,
            gdal: GdalConfig::default(),
        }
    }
}

/// Limits on the `ogr2ogr` processes started for sources not read natively.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GdalConfig {
    /// Processes running at once; 0 means two per CPU core.
    #[schemars(range(max = 1024))]
    pub max_processes: usize,
    /// Requests that may wait for a process slot (up to `timeout_secs`); more get 503 with
    /// `Retry-After`.
    #[schemars(range(max = 100000))]
    pub queue: usize,
    /// Longest one process may run, in seconds, wall clock and CPU; then it is killed.
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_secs: u64,
    /// Address space one process may use, in MiB (on Unix; ogr2ogr itself maps about 170 MiB).
    #[schemars(range(min = 256, max = 1048576))]
    pub memory_mb: u64,
}

impl Default for GdalConfig {
    fn default() -> Self {
        Self {
            max_processes: 0,
            queue: 16,
            timeout_secs: 60,
            memory_mb: 1024,
        }
    }
}

/// The unified search index: which datasets feed it and when it is rebuilt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// Cron schedule of rebuilds (it is also built at start).
    pub rebuild: String,
    /// IANA time zone of the schedule; default the top-level `time_zone`.
    pub time_zone: Option<String>,
    /// The datasets indexed.
    pub sources: Vec<SearchSource>,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            rebuild: "0 4 * * *".to_owned(),
            time_zone: None,
            sources: Vec::new(),
        }
    }
}

/// One dataset in the search index, with the original server's columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchSource {
    /// Dataset path under `userdata` (`local/parcels.gpkg`); GeoPackage, SQLite, GeoJSON, CSV or
    /// Shapefile.
    pub source: String,
    /// Layer (default: the first).
    #[serde(default)]
    pub layer: Option<String>,
    /// `category` of its results (`Property`, `Road`…).
    pub category: String,
    /// The field searched (`search_text`).
    pub search_field: String,
    /// The field shown (`display_text`); default `search_field`.
    #[serde(default)]
    pub display_field: Option<String>,
    /// The field identifying a result (`search_key`); default the feature id.
    #[serde(default)]
    pub key_field: Option<String>,
    /// `map_layer` of its results; default the layer name.
    #[serde(default)]
    pub map_layer: Option<String>,
    /// `map_layer_id_field`: the field that identifies the feature on the map; default `key_field`.
    #[serde(default)]
    pub map_layer_id_field: Option<String>,
    /// Ranking weight: results of heavier sources come first at equal relevance.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0.001, max = 1000))]
    pub weight: f64,
}

fn default_weight() -> f64 {
    1.0
}

/// The HTTPS listener: certificates, host folders, CORS, caching, reverse proxy and limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve plain HTTP instead of HTTPS (only behind a reverse proxy that terminates TLS).
    pub plain_http: bool,
    /// Extra plain-HTTP addresses (e.g. `0.0.0.0:80`) that redirect every request to HTTPS.
    pub redirect_listen: Vec<SocketAddr>,
    /// Names the self-signed certificate is made for when `<root>/certificate.cer` and
    /// `certificate.key` are absent.
    pub host_names: Vec<String>,
    /// Explicit `Host` to `userdata` folder map (`{"maps.example.org": "gis01"}`); otherwise the
    /// host's first DNS label picks the folder, and `local` is the fallback.
    pub hosts: BTreeMap<String, String>,
    /// How often the certificate files are checked for a replacement, in seconds.
    #[schemars(range(min = 1, max = 86400))]
    pub certificate_check_secs: u64,
    /// Cross-origin access for the Pozi web app.
    pub cors: CorsConfig,
    /// `Cache-Control` by path pattern (glob on the path inside the host folder; first match wins).
    pub cache_control: Vec<CacheRule>,
    /// Reverse-proxy routes to QGIS Server, MapServer or IIS.
    pub proxy: Vec<ProxyRoute>,
    /// File extensions never served as static files (compared without case): data-source
    /// definitions that name internal paths or hold database passwords. `/ogr2ogr` still reads
    /// them. Files and folders whose names start with a dot are never served either (except
    /// `.well-known`).
    pub refused_extensions: Vec<String>,
    /// Connection and request limits.
    pub limits: Limits,
    /// Access log through the server log.
    pub access_log: AccessLog,
    /// Addresses (or CIDR ranges) of proxies in front of this server whose `Forwarded` or
    /// `X-Forwarded-For/Proto/Host/Prefix` headers are believed: the client's address, scheme,
    /// host and path prefix then come from them. Empty: those headers are ignored.
    pub trusted_proxies: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            plain_http: false,
            redirect_listen: Vec::new(),
            host_names: vec![
                "local.pozi.com".to_owned(),
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
            ],
            hosts: BTreeMap::new(),
            certificate_check_secs: 2,
            cors: CorsConfig::default(),
            cache_control: vec![
                CacheRule {
                    pattern: "resourcecheck/**".to_owned(),
                    value: "no-store".to_owned(),
                },
                CacheRule {
                    pattern: "**".to_owned(),
                    value: "no-cache".to_owned(),
                },
            ],
            proxy: Vec::new(),
            refused_extensions: DEFAULT_REFUSED_EXTENSIONS
                .iter()
                .map(|e| (*e).to_owned())
                .collect(),
            limits: Limits::default(),
            access_log: AccessLog::default(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// Extensions refused as static files by default: GDAL virtual datasets, MapInfo tables (which
/// can hold database connections), QGIS projects and layer files, MapServer map files, and
/// connection and key files.
pub const DEFAULT_REFUSED_EXTENSIONS: &[&str] = &[
    "vrt", "tab", "map", "qgs", "qgz", "qlr", "udl", "dsn", "odc", "ini", "env", "key", "pem",
    "pfx", "p12",
];

/// Which origins may read this server's responses from a browser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Allowed origins; `*.` matches any subdomain (`https://*.pozi.com`).
    pub allowed_origins: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true` (cookies, Windows authentication).
    pub allow_credentials: bool,
    /// Request headers a preflight may ask for.
    pub allowed_headers: Vec<String>,
    /// How long browsers may cache a preflight answer, in seconds.
    #[schemars(range(max = 604800))]
    pub max_age_secs: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: vec![
                "https://*.pozi.com".to_owned(),
                "http://localhost:3000".to_owned(),
            ],
            allow_credentials: false,
            allowed_headers: [
                "accept",
                "authorization",
                "content-type",
                "if-none-match",
                "if-modified-since",
                "range",
                "x-requested-with",
            ]
            .map(str::to_owned)
            .to_vec(),
            max_age_secs: 86_400,
        }
    }
}

/// A `Cache-Control` value for paths matching a glob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheRule {
    /// Glob on the path inside the host folder (`images/**`, `**/*.geojson`).
    pub pattern: String,
    /// The header value (`public, max-age=3600`).
    pub value: String,
}

/// A path prefix forwarded to an upstream server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyRoute {
    /// Path prefix, e.g. `/iis`; `/iis/wms?x` goes to `<upstream>/wms?x`.
    pub prefix: String,
    /// Upstream base URL, e.g. `http://localhost/pozi`.
    pub upstream: String,
    /// Time allowed for the upstream to answer, in seconds; then 504.
    #[serde(default = "default_proxy_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_secs: u64,
    /// Send the client's `Host` to the upstream instead of the upstream's own (for servers that
    /// keep a cache per host, as QGIS Server does for its capabilities).
    #[serde(default)]
    pub preserve_host: bool,
    /// Replace the upstream's base URL with this route's public one in its text answers (XML,
    /// JSON, HTML, plain text; up to 16 MiB each), for servers that advertise their own address
    /// whatever they are told (MapServer's `wms_onlineresource`).
    #[serde(default)]
    pub rewrite_urls: bool,
    /// The path under the prefix of the service URL a map server is told to advertise (the
    /// `X-Qgis-*-Service-Url` headers), e.g. `/wms` for `https://local.pozi.com/iis/wms`; the
    /// prefix itself when absent. Fixed here, never taken from a request, so that clients
    /// cannot fill the map server's capabilities cache with URLs of their choosing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_path: Option<String>,
}

fn default_proxy_timeout() -> u64 {
    30
}

/// Connection and request limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Time for a TLS handshake, in seconds.
    #[schemars(range(min = 1, max = 300))]
    pub handshake_timeout_secs: u64,
    /// Time for a client to send a request's headers (slowloris defence), in seconds.
    #[schemars(range(min = 1, max = 300))]
    pub header_read_timeout_secs: u64,
    /// A connection with no request in flight for this many seconds is closed (HTTP/1.1
    /// keep-alive and HTTP/2 alike; keep-alive pings do not count as requests).
    #[schemars(range(min = 1, max = 86400))]
    pub idle_timeout_secs: u64,
    /// Largest request head accepted, in bytes.
    #[schemars(range(min = 1024, max = 1048576))]
    pub max_header_bytes: usize,
    /// Connections served at once; more wait in the OS backlog.
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: usize,
    /// Connections one client address may hold at once; more are closed as soon as they are
    /// accepted, so that one address cannot take every connection slot.
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections_per_client: usize,
    /// Streamed responses open at once over all connections: large files read as they are
    /// sent, proxied answers, query answers (each holds a file, an upstream connection or
    /// memory); more are answered 503 with `Retry-After`.
    #[schemars(range(min = 1, max = 1000000))]
    pub max_open_streams: usize,
    /// Largest request body accepted (proxied uploads), in bytes.
    #[schemars(range(max = 1099511627776_u64))]
    pub body_limit_bytes: u64,
    /// On stop, time allowed for in-flight requests to finish, in seconds.
    #[schemars(range(max = 3600))]
    pub drain_timeout_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout_secs: 10,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_header_bytes: 16 * 1024,
            max_connections: 10_000,
            max_connections_per_client: 1_000,
            max_open_streams: 1024,
            body_limit_bytes: 10 * 1024 * 1024,
            drain_timeout_secs: 10,
        }
    }
}

/// Access log settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLog {
    /// `on`, `off`, or `sampled` (one request in `sample_one_in`; errors always logged).
    pub mode: AccessLogMode,
    /// For `sampled`: log one request in this many.
    #[schemars(range(min = 1, max = 1000000))]
    pub sample_one_in: u64,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self {
            mode: AccessLogMode::On,
            sample_one_in: 100,
        }
    }
}

/// Whether requests are logged: `on`, `off` or `sampled`.
#[expect(
    missing_docs,
    reason = "variants are described on the enum, so the JSON Schema lists them as a plain enum"
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogMode {
    On,
    Off,
    Sampled,
}

/// Where and how much the server logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Level or filter directives (`info`, `debug`, `poziserver=debug,info`); `RUST_LOG` overrides.
    pub level: String,
    /// Write JSON lines instead of text.
    pub json: bool,
    /// Also log to the console (standard output).
    pub console: bool,
    /// Folder of the daily-rolling `server.log` and `access.log`, relative to the installation
    /// root.
    pub directory: PathBuf,
    /// Days of log files kept.
    #[schemars(range(min = 1, max = 3650))]
    pub keep_days: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            json: false,
            console: true,
            directory: PathBuf::from("logs"),
            keep_days: 14,
        }
    }
}

/// Restart intensity and backoff of the root supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// More than this many restarts within `period_secs` makes the server exit non-zero, so the
    /// OS service manager takes over.
    #[schemars(range(max = 10000))]
    pub max_restarts: u32,
    /// The window restarts are counted in, in seconds.
    #[schemars(range(min = 1, max = 86400))]
    pub period_secs: u64,
    /// Delay before the second restart of a component within the window, in milliseconds;
    /// it doubles for each further restart. The first restart is immediate.
    #[schemars(range(max = 3600000))]
    pub backoff_initial_ms: u64,
    /// Upper bound of the restart delay, in milliseconds.
    #[schemars(range(max = 86400000))]
    pub backoff_max_ms: u64,
    /// Time allowed for an orderly shutdown on SIGINT/SIGTERM, in seconds.
    #[schemars(range(min = 1, max = 3600))]
    pub shutdown_timeout_secs: u64,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            period_secs: 10,
            backoff_initial_ms: 100,
            backoff_max_ms: 30_000,
            shutdown_timeout_secs: 15,
        }
    }
}

/// A component restarted on a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlannedRestart {
    /// The component to restart (see `COMPONENTS` in the docs).
    pub component: String,
    /// Cron expression: 5 fields (`0 3 * * *`), 6 with seconds first, or `@daily` and friends.
    pub schedule: String,
    /// IANA time zone of the schedule; default the top-level `time_zone`.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// What to do about a run missed while the server was down: `skip` or `run_once`.
    #[serde(default)]
    pub catch_up: CatchUp,
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted JSON path (`restarts[2].schedule`).
    pub path: String,
    /// 1-based line in the file.
    pub line: usize,
    /// 1-based column in the file.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.line, self.column, self.path, self.message
        )
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The path is not a regular file (a folder, a device, a pipe), or is too large to be one.
    #[error("config file {path}: {reason}")]
    NotAConfigFile {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        reason: String,
    },
    /// The file was read and has problems.
    #[error("{} has {} problem{}:\n{}", path.display(), issues.len(), if issues.len() == 1 { "" } else { "s" },
        issues.iter().map(|i| format!("  {}:{i}", path.display())).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        issues: Vec<ConfigIssue>,
    },
}

/// The JSON Schema of `config.json`, as committed in `docs/config.schema.json`.
#[must_use]
pub fn schema() -> serde_json::Value {
    schemars::schema_for!(Config).to_value()
}

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// When the file cannot be read, or has any problem (all of them are listed).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_config_text(path)?;
        Self::parse(&text).map_err(|issues| ConfigError::Invalid {
            path: path.to_owned(),
            issues,
        })
    }

    /// Parses and validates config text.
    ///
    /// # Errors
    /// Every problem found, in file order.
    pub fn parse(text: &str) -> Result<Self, Vec<ConfigIssue>> {
        let issue = |path: &[Segment], key: bool, message: String| {
            let (line, column) = line_column(text, path, key);
            ConfigIssue {
                path: dotted(path),
                line,
                column,
                message,
            }
        };
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            vec![ConfigIssue {
                path: "(syntax)".to_owned(),
                line: e.line(),
                column: e.column(),
                message: format!("not valid JSON: {e}"),
            }]
        })?;

        let mut issues = structural_issues(&value, &issue);
        semantic_issues(&value, &mut |path, message| {
            issues.push(issue(path, false, message))
        });
        if !issues.is_empty() {
            sort(&mut issues);
            return Err(issues);
        }
        serde_path_to_error::deserialize(&value).map_err(|e| {
            let path = path_segments(e.path());
            vec![issue(&path, false, e.into_inner().to_string())]
        })
    }

    /// The time zone for schedules that name none.
    #[must_use]
    pub fn zone(&self) -> Tz {
        self.time_zone
            .as_deref()
            .and_then(|z| parse_zone(z).ok())
            .unwrap_or_else(schedules::local_zone)
    }

    /// The one-line summary `check-config` prints.
    #[must_use]
    pub fn summary(&self) -> String {
        let listen: Vec<String> = self.listen.iter().map(ToString::to_string).collect();
        format!(
            "config OK: listen {}, {} planned restart{}, log level {}",
            listen.join(" "),
            self.restarts.len(),
            if self.restarts.len() == 1 { "" } else { "s" },
            self.log.level
        )
    }
}

/// Largest config file read, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Reads a config file that is a regular file of at most [`MAX_CONFIG_BYTES`] (never a device
/// such as `/dev/zero`, which never ends, nor a pipe, which may never answer).
fn read_config_text(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let read = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let not = |reason: String| ConfigError::NotAConfigFile {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a folder"
        } else {
            "a device, pipe or socket"
        };
        return Err(not(format!("is {kind}, not a regular file")));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(not(format!(
            "is {} bytes; a config file may be at most {MAX_CONFIG_BYTES}",
            meta.len()
        )));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(read)?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(not(format!(
            "grew past {MAX_CONFIG_BYTES} bytes while being read"
        )));
    }
    Ok(text)
}

/// Parses an IANA zone name.
///
/// # Errors
/// A message naming the zone when it is unknown.
pub fn parse_zone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name).map_err(|_| {
        format!("unknown time zone {name:?}; use an IANA name such as \"Australia/Melbourne\"")
    })
}

/// Checks what the schema cannot (addresses, time zones, schedules, names, relations between
/// fields), on the raw document so that they are reported alongside structural problems.
fn semantic_issues(value: &serde_json::Value, report: &mut dyn FnMut(&[Segment], String)) {
    let key = |k: &str| Segment::Key(k.to_owned());
    let text = |pointer: &str| value.pointer(pointer).and_then(serde_json::Value::as_str);
    if let Some(listen) = value
        .pointer("/listen")
        .and_then(serde_json::Value::as_array)
    {
        if listen.is_empty() {
            report(
                &[key("listen")],
                "at least one address is needed".to_owned(),
            );
        }
        for (i, address) in listen.iter().enumerate() {
            if let Some(address) = address.as_str()
                && address.parse::<SocketAddr>().is_err()
            {
                report(
                    &[key("listen"), Segment::Index(i)],
                    format!(
                        "{address:?} is not an address with a port, such as \"0.0.0.0:443\" or \"[::]:443\""
                    ),
                );
            }
        }
    }
    let default_zone = match text("/time_zone") {
        Some(zone) => match parse_zone(zone) {
            Ok(zone) => Some(zone),
            Err(message) => {
                report(&[key("time_zone")], message);
                None
            }
        },
        None => Some(schedules::local_zone()),
    };
    if let Some(level) = text("/log/level")
        && let Err(e) = check_log_level(level)
    {
        report(&[key("log"), key("level")], e);
    }
    search_issues(value, default_zone, report);
    sync::issues(value, default_zone, report);
    update::issues(value, report);
    admin::issues(value, report);
    http_issues(value, report);
    let number = |pointer: &str| value.pointer(pointer).and_then(serde_json::Value::as_u64);
    let defaults = SupervisorConfig::default();
    let initial = number("/supervisor/backoff_initial_ms").unwrap_or(defaults.backoff_initial_ms);
    let max = number("/supervisor/backoff_max_ms").unwrap_or(defaults.backoff_max_ms);
    if initial > max {
        report(
            &[key("supervisor"), key("backoff_initial_ms")],
            format!("{initial} exceeds backoff_max_ms ({max})"),
        );
    }
    let restarts = value
        .pointer("/restarts")
        .and_then(serde_json::Value::as_array);
    for (i, restart) in restarts.into_iter().flatten().enumerate() {
        let at = |field: &str| [key("restarts"), Segment::Index(i), key(field)];
        let field = |name: &str| restart.get(name).and_then(serde_json::Value::as_str);
        if let Some(component) = field("component")
            && !COMPONENTS.contains(&component)
        {
            report(
                &at("component"),
                format!(
                    "unknown component {component:?}; known: {}",
                    COMPONENTS.join(", ")
                ),
            );
        }
        let zone = match field("time_zone") {
            Some(name) => parse_zone(name)
                .map_err(|message| report(&at("time_zone"), message))
                .ok(),
            None => default_zone,
        };
        if let Some(expression) = field("schedule") {
            // A bad zone is reported above; the expression is still checked, in UTC.
            check_schedule(expression, zone, &at("schedule"), report);
        }
    }
}

/// Log levels a filter directive may name.
const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// Checks a log filter as `run` will use it: every directive a level (`info`) or a target with
/// a level (`poziserver=debug`). A bare word that is not a level would be read as a target
/// name and silence everything else.
fn check_log_level(filter: &str) -> Result<(), String> {
    let hint = "use trace, debug, info, warn, error or off, or target=level directives such as \"poziserver=debug,info\"";
    for directive in filter.split(',').map(str::trim) {
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.trim().is_empty() => level,
            Some(_) => return Err(format!("{directive:?} has no target before =; {hint}")),
            None => directive,
        };
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level.trim())) {
            return Err(format!("{directive:?} is not a log level; {hint}"));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map(|_| ())
        .map_err(|e| format!("not a log level or filter: {e}"))
}

/// The search index's schedule, zone and sources.
fn search_issues(
    value: &serde_json::Value,
    default_zone: Option<Tz>,
    report: &mut dyn FnMut(&[Segment], String),
) {
    let at = |field: &str| {
        [
            Segment::Key("search".to_owned()),
            Segment::Key(field.to_owned()),
        ]
    };
    let field = |name: &str| value.pointer(&format!("/search/{name}"));
    let zone = match field("time_zone").and_then(serde_json::Value::as_str) {
        Some(name) => parse_zone(name)
            .map_err(|message| report(&at("time_zone"), message))
            .ok(),
        None => default_zone,
    };
    if let Some(expression) = field("rebuild").and_then(serde_json::Value::as_str) {
        check_schedule(expression, zone, &at("rebuild"), report);
    }
    let sources = field("sources").and_then(serde_json::Value::as_array);
    for (i, source) in sources.into_iter().flatten().enumerate() {
        if let Some(path) = source.get("source").and_then(serde_json::Value::as_str)
            && let Err(e) =
                crate::safe_path::segments(&format!("/{}", path.trim_start_matches('/')))
        {
            report(
                &[
                    Segment::Key("search".to_owned()),
                    Segment::Key("sources".to_owned()),
                    Segment::Index(i),
                    Segment::Key("source".to_owned()),
                ],
                format!("{path:?} is not a path under userdata: {e}"),
            );
        }
    }
}

/// Checks a cron expression in `zone` (UTC when the zone itself was bad and is reported apart).
pub(crate) fn check_schedule(
    expression: &str,
    zone: Option<Tz>,
    at: &[Segment],
    report: &mut dyn FnMut(&[Segment], String),
) {
    if let Err(e) = Schedule::parse(expression, zone.unwrap_or(Tz::UTC)) {
        report(
            at,
            format!(
                "{} (column {}{})",
                e.reason,
                e.column,
                e.field.map(|f| format!(", {f} field")).unwrap_or_default()
            ),
        );
    }
}

/// Host folders, certificate names, caching rules, proxy routes and CORS origins, checked as
/// the listener will use them.
fn http_issues(value: &serde_json::Value, report: &mut dyn FnMut(&[Segment], String)) {
    let path = |parts: &[&str]| -> Vec<Segment> {
        std::iter::once(Segment::Key("http".to_owned()))
            .chain(parts.iter().map(|p| Segment::Key((*p).to_owned())))
            .collect()
    };
    let with_index = |mut at: Vec<Segment>, i: usize, field: Option<&str>| {
        at.push(Segment::Index(i));
        if let Some(field) = field {
            at.push(Segment::Key(field.to_owned()));
        }
        at
    };
    let array = |pointer: &str| {
        value
            .pointer(pointer)
            .and_then(serde_json::Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    if let Some(hosts) = value
        .pointer("/http/hosts")
        .and_then(serde_json::Value::as_object)
    {
        for (host, folder) in hosts {
            if let Some(folder) = folder.as_str()
                && let Err(e) = check_host_folder(folder)
            {
                report(&path(&["hosts", host]), e);
            }
        }
    }
    for (i, name) in array("/http/host_names").iter().enumerate() {
        if let Some(name) = name.as_str()
            && (name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()))
        {
            report(
                &with_index(path(&["host_names"]), i, None),
                format!("{name:?} is not a host name or IP address (ASCII, no spaces)"),
            );
        }
    }
    for (i, rule) in array("/http/cache_control").iter().enumerate() {
        if let Some(pattern) = rule.get("pattern").and_then(serde_json::Value::as_str)
            && let Err(e) = globset::Glob::new(pattern)
        {
            report(
                &with_index(path(&["cache_control"]), i, Some("pattern")),
                format!("not a glob: {e}"),
            );
        }
        if let Some(header) = rule.get("value").and_then(serde_json::Value::as_str)
            && (header.chars().any(char::is_control)
                || http::HeaderValue::from_str(header).is_err())
        {
            report(
                &with_index(path(&["cache_control"]), i, Some("value")),
                "not a valid header value (control characters such as CR or LF are not allowed)"
                    .to_owned(),
            );
        }
    }
    for (i, route) in array("/http/proxy").iter().enumerate() {
        if let Some(prefix) = route.get("prefix").and_then(serde_json::Value::as_str)
            && (!prefix.starts_with('/')
                || prefix.len() < 2
                || prefix.ends_with('/')
                || prefix.contains(['?', '#', '%', '\\'])
                || prefix.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            report(
                &with_index(path(&["proxy"]), i, Some("prefix")),
                format!(
                    "{prefix:?} must be a path such as \"/iis\": a leading /, no trailing /, no ?, #, % or spaces"
                ),
            );
        }
        if let Some(service) = route
            .get("service_path")
            .and_then(serde_json::Value::as_str)
            && (!service.starts_with('/')
                || service.len() < 2
                || service.contains("..")
                || service.contains(['?', '#', '%', '\\'])
                || service.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            report(
                &with_index(path(&["proxy"]), i, Some("service_path")),
                format!(
                    "{service:?} must be a path such as \"/wms\": a leading /, no .., ?, #, % or spaces"
                ),
            );
        }
        if let Some(upstream) = route.get("upstream").and_then(serde_json::Value::as_str)
            && let Err(e) = check_upstream(upstream)
        {
            report(&with_index(path(&["proxy"]), i, Some("upstream")), e);
        }
    }
    for (i, extension) in array("/http/refused_extensions").iter().enumerate() {
        if let Some(extension) = extension.as_str()
            && (extension.trim_start_matches('.').is_empty()
                || !extension
                    .trim_start_matches('.')
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-'))
        {
            report(
                &with_index(path(&["refused_extensions"]), i, None),
                format!("{extension:?} is not a file extension such as \"vrt\""),
            );
        }
    }
    for (i, origin) in array("/http/cors/allowed_origins").iter().enumerate() {
        if let Some(origin) = origin.as_str()
            && let Err(e) = check_origin(origin)
        {
            report(&with_index(path(&["cors", "allowed_origins"]), i, None), e);
        }
    }
    for (i, name) in array("/http/cors/allowed_headers").iter().enumerate() {
        if let Some(name) = name.as_str()
            && http::HeaderName::from_bytes(name.as_bytes()).is_err()
        {
            report(
                &with_index(path(&["cors", "allowed_headers"]), i, None),
                format!("{name:?} is not a header name"),
            );
        }
    }
}

/// A host's folder: a relative path must stay under `userdata` (plain folder names only); an
/// absolute path is the operator's explicit choice.
fn check_host_folder(folder: &str) -> Result<(), String> {
    use std::path::Component;
    let path = Path::new(folder);
    if folder.trim().is_empty() {
        return Err("an empty folder name".to_owned());
    }
    if path.is_absolute() {
        return Ok(());
    }
    if path
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        || folder.contains('\\')
    {
        return Err(format!(
            "{folder:?} leaves userdata: a relative folder may hold only plain folder names (no .., no drive or root)"
        ));
    }
    Ok(())
}

/// An upstream base URL: `http` or `https` with a host.
fn check_upstream(upstream: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(upstream).map_err(|e| {
        format!(
            "{upstream:?} is not a URL ({e}); write it in full, such as \"http://localhost/pozi\""
        )
    })?;
    if !["http", "https"].contains(&url.scheme()) || url.host_str().is_none() {
        return Err(format!(
            "{upstream:?} must be an http:// or https:// URL with a host"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{upstream:?} may not hold a query or fragment"));
    }
    Ok(())
}

/// A CORS origin: `scheme://host[:port]`, or `scheme://*.domain` for every subdomain.
fn check_origin(origin: &str) -> Result<(), String> {
    let hint = "an origin is a scheme and host such as \"https://maps.example.org\" or \"https://*.pozi.com\"";
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err(format!("{origin:?} has no scheme; {hint}"));
    };
    if !["http", "https"].contains(&scheme.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "{origin:?}: the scheme must be http or https; {hint}"
        ));
    }
    let host = rest.trim_end_matches('/');
    let host = host.strip_prefix("*.").unwrap_or(host);
    if host.is_empty()
        || host.contains(['/', '?', '#', '@', '*'])
        || host.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("{origin:?} is not an origin; {hint}"));
    }
    Ok(())
}

fn structural_issues(
    value: &serde_json::Value,
    issue: &dyn Fn(&[Segment], bool, String) -> ConfigIssue,
) -> Vec<ConfigIssue> {
    let validator = match jsonschema::validator_for(&schema()) {
        Ok(v) => v,
        Err(e) => {
            return vec![issue(
                &[],
                false,
                format!("internal: config schema is invalid: {e}"),
            )];
        }
    };
    let mut issues = Vec::new();
    for error in validator.iter_errors(value) {
        let path = from_pointer(error.instance_path().as_str());
        match error.kind() {
            jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                for name in unexpected {
                    let mut at = path.clone();
                    at.push(Segment::Key(name.clone()));
                    issues.push(issue(&at, true, "unknown field".to_owned()));
                }
            }
            _ => issues.push(issue(&path, false, error.to_string())),
        }
    }
    issues
}

fn path_segments(path: &serde_path_to_error::Path) -> Vec<Segment> {
    path.iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => Some(Segment::Key(variant.clone())),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect()
}

fn sort(issues: &mut [ConfigIssue]) {
    issues.sort_by_key(|i| (i.line, i.column));
}
