//! `sync`: scheduled jobs that refresh datasets under `userdata/` from files, web services and
//! databases, publishing each new version atomically.

use std::collections::BTreeMap;

use schedules::CatchUp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Sync jobs and the limits they share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Runs in progress at once, over all jobs (a job never runs twice at once).
    #[schemars(range(min = 1, max = 64))]
    pub max_concurrent_runs: usize,
    /// Runs kept in the journal per job (the newest).
    #[schemars(range(min = 1, max = 100000))]
    pub keep_runs: usize,
    /// URL POSTed a small JSON document when any job fails, and when it recovers (a job may
    /// name its own instead).
    pub webhook: Option<String>,
    /// The jobs.
    pub jobs: Vec<SyncJob>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            max_concurrent_runs: 2,
            keep_runs: 200,
            webhook: None,
            jobs: Vec::new(),
        }
    }
}

/// One job: where the data comes from, what is done to it, and where it is published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncJob {
    /// Unique name (letters, digits, `-`, `_`, `.`): in the journal, health (`sync/<name>`),
    /// the admin API and `poziserver sync`.
    pub name: String,
    /// Cron expression; `null` runs the job only when asked (`sync run`, the admin API).
    #[serde(default)]
    pub schedule: Option<String>,
    /// IANA time zone of the schedule; default the top-level `time_zone`.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// What to do about a run missed while the server was down: `skip` or `run_once`.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// Whether the job is scheduled at all (a disabled job can still be run by hand).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where the data comes from.
    pub source: SyncSource,
    /// An optional SQL transform and the coordinate system written.
    #[serde(default)]
    pub transform: Transform,
    /// Where the data is published.
    pub target: SyncTarget,
    /// Longest a run may take (download, conversion, publish) before it is cancelled.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_secs: u64,
    /// Retries of a failed run.
    #[serde(default)]
    pub retries: Retries,
    /// Fewest features a new version may have; fewer fails the run and publishes nothing.
    #[serde(default = "one")]
    pub min_features: u64,
    /// URL POSTed when this job fails and when it recovers; default `sync.webhook`.
    #[serde(default)]
    pub webhook: Option<String>,
}

fn yes() -> bool {
    true
}

fn one() -> u64 {
    1
}

fn default_timeout() -> u64 {
    3600
}

/// Retries after a failed run (not after `unchanged` or a cancelled run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Retries {
    /// How many.
    #[schemars(range(max = 100))]
    pub count: u32,
    /// Wait before the first retry; each next one waits twice as long.
    #[schemars(range(min = 1, max = 86400))]
    pub backoff_secs: u64,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            count: 2,
            backoff_secs: 60,
        }
    }
}

/// Where a job's data comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SyncSource {
    /// A file: GeoPackage, SQLite, GeoJSON, newline-delimited GeoJSON, CSV, Shapefile, zipped
    /// Shapefile or `.shz`.
    File {
        /// The file; relative paths are under the root.
        path: String,
        /// For GeoPackage and SQLite sources, the layer (default: the first).
        #[serde(default)]
        layer: Option<String>,
        /// Open options as `/ogr2ogr`'s `-oo` takes them (`SEPARATOR`, `X_POSSIBLE_NAMES`,
        /// `Y_POSSIBLE_NAMES`, `GEOM_POSSIBLE_NAMES`, `ENCODING`).
        #[serde(default)]
        open_options: BTreeMap<String, String>,
    },
    /// A file downloaded over HTTP(S), streamed to disk, re-imported only when it changed
    /// (ETag / Last-Modified).
    Http {
        /// The URL.
        url: String,
        /// What the download is: `geojson`, `ndjson`, `csv`, `zip` (a zipped Shapefile) or
        /// `gpkg`; default from the URL's extension.
        #[serde(default)]
        format: Option<String>,
        /// Extra request headers, each value taken from the environment variable named.
        #[serde(default)]
        headers_from_env: BTreeMap<String, String>,
        /// Largest download accepted, in bytes.
        #[serde(default = "default_max_bytes")]
        #[schemars(range(min = 1))]
        max_bytes: u64,
        /// Open options, as for `file`.
        #[serde(default)]
        open_options: BTreeMap<String, String>,
    },
    /// An ArcGIS REST FeatureServer or MapServer layer (`…/FeatureServer/0`).
    Arcgis {
        /// The layer URL.
        url: String,
        /// Environment variable holding a token, sent as `token=`.
        #[serde(default)]
        token_env: Option<String>,
        /// Pages fetched at once.
        #[serde(default = "default_concurrency")]
        #[schemars(range(min = 1, max = 16))]
        concurrency: usize,
        /// Features per page; default the layer's `maxRecordCount`.
        #[serde(default)]
        page_size: Option<u64>,
        /// A `where` clause (default `1=1`).
        #[serde(default)]
        r#where: Option<String>,
    },
    /// A WFS 2.0.0 (or 1.1.0) feature type, paged with `startIndex`/`count`.
    Wfs {
        /// The service URL (without request parameters).
        url: String,
        /// The feature type (`ns:parcels`).
        type_name: String,
        /// `2.0.0` (default) or `1.1.0`.
        #[serde(default = "default_wfs_version")]
        version: String,
        /// Property the pages are sorted by, so that paging is stable (many servers refuse to
        /// page without one); default the feature type's first property that is not a
        /// geometry, from `DescribeFeatureType`.
        #[serde(default)]
        sort_by: Option<String>,
        /// Features per page.
        #[serde(default = "default_wfs_page")]
        #[schemars(range(min = 1, max = 1000000))]
        page_size: u64,
        /// GeoJSON output format name the server knows.
        #[serde(default = "default_wfs_format")]
        output_format: String,
        /// Extra vendor parameters (`cql_filter`, …).
        #[serde(default)]
        params: BTreeMap<String, String>,
    },
    /// A GeoPackage or SQLite file read with an SQL query.
    Sqlite {
        /// The file; relative paths are under the root.
        path: String,
        /// A `SELECT`; a geometry column named `geom` (GeoPackage binary) becomes the geometry.
        query: String,
    },
    /// A map catalogue: a WMS or WFS `GetCapabilities` (or QGIS Server `GetProjectSettings`)
    /// document, its layers kept, dropped, renamed and ordered by title, published as a static
    /// XML file (the target's `dataset` then names an `.xml` file).
    Catalogue {
        /// The document's URL, with its request parameters.
        url: String,
        /// Titles kept (literal, or `/regular expression/`); empty keeps every layer.
        #[serde(default)]
        include: Vec<String>,
        /// Titles dropped (literal, or `/regular expression/`).
        #[serde(default)]
        exclude: Vec<String>,
        /// Title replacements, in order.
        #[serde(default)]
        rename: Vec<TitleRename>,
        /// Titles (after renaming) put first, in this order; the others follow as they came.
        #[serde(default)]
        order: Vec<String>,
        /// Extra request headers, each value taken from the environment variable named.
        #[serde(default)]
        headers_from_env: BTreeMap<String, String>,
        /// Largest document accepted, in bytes.
        #[serde(default = "default_catalogue_bytes")]
        #[schemars(range(min = 1, max = 1073741824))]
        max_bytes: u64,
    },
    /// Any GDAL source (a VRT, SQL Server, ODBC…) converted by the real `ogr2ogr`.
    Ogr {
        /// The source string as `ogr2ogr` takes it.
        source: String,
        /// The layer (default: the first).
        #[serde(default)]
        layer: Option<String>,
    },
}

fn default_max_bytes() -> u64 {
    2 * 1024 * 1024 * 1024
}

fn default_catalogue_bytes() -> u64 {
    32 * 1024 * 1024
}

/// One title replacement of a catalogue job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TitleRename {
    /// The title replaced (literal), or `/regular expression/` matched anywhere in it.
    pub from: String,
    /// The replacement; with a regular expression, `$1`… name its groups.
    pub to: String,
}

/// A title pattern: `/regular expression/`, or a literal title.
///
/// # Errors
/// The regular expression's error.
pub fn title_pattern(text: &str) -> Result<regex::Regex, String> {
    let source = match text.strip_prefix('/').and_then(|t| t.strip_suffix('/')) {
        Some(expression) if text.len() >= 2 => expression.to_owned(),
        _ => format!("^{}$", regex::escape(text)),
    };
    regex::RegexBuilder::new(&source)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| e.to_string())
}

fn default_concurrency() -> usize {
    4
}

fn default_wfs_version() -> String {
    "2.0.0".to_owned()
}

fn default_wfs_page() -> u64 {
    1000
}

fn default_wfs_format() -> String {
    "application/json".to_owned()
}

/// The optional transform of the staged rows.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Transform {
    /// `SELECT … FROM source`: renames, filters, computed columns. The geometry is the column
    /// named `geom`.
    pub sql: Option<String>,
    /// Keep the source's coordinate system instead of reprojecting to EPSG:4326.
    pub keep_crs: bool,
}

/// Where a job publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncTarget {
    /// The GeoPackage under `userdata` (`local/parcels.gpkg`).
    pub dataset: String,
    /// Its layer name; default the file name without extension.
    #[serde(default)]
    pub layer: Option<String>,
    /// Publish even when a column of the previous version is gone.
    #[serde(default)]
    pub allow_column_loss: bool,
    /// Also write the layer as GeoJSON beside it (`parcels.geojson`, with `.gz` and `.br`).
    #[serde(default)]
    pub geojson: bool,
}

/// Whether `name` may name a job: 1–64 of letters, digits, `-`, `_` and `.`, not starting with
/// a dot (it becomes part of file names and URLs).
#[must_use]
pub fn valid_job_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks what the schema cannot: unique names, schedules and zones, target paths, URLs and
/// environment variable names.
pub(super) fn issues(
    value: &serde_json::Value,
    default_zone: Option<chrono_tz::Tz>,
    report: &mut dyn FnMut(&[super::Segment], String),
) {
    use super::Segment;
    let key = |k: &str| Segment::Key(k.to_owned());
    let url_ok = |text: &str| {
        reqwest::Url::parse(text)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .is_some()
    };
    if let Some(webhook) = value.pointer("/sync/webhook").and_then(|v| v.as_str())
        && !url_ok(webhook)
    {
        report(
            &[key("sync"), key("webhook")],
            format!("{webhook:?} is not an http or https URL"),
        );
    }
    let jobs = value.pointer("/sync/jobs").and_then(|v| v.as_array());
    let mut seen = std::collections::HashSet::new();
    for (i, job) in jobs.into_iter().flatten().enumerate() {
        let at = |parts: &[&str]| -> Vec<Segment> {
            [key("sync"), key("jobs"), Segment::Index(i)]
                .into_iter()
                .chain(parts.iter().map(|p| key(p)))
                .collect()
        };
        let text = |pointer: &str| job.pointer(pointer).and_then(|v| v.as_str());
        if let Some(name) = text("/name") {
            if !valid_job_name(name) {
                report(
                    &at(&["name"]),
                    format!(
                        "{name:?}: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
                    ),
                );
            } else if !seen.insert(name.to_owned()) {
                report(
                    &at(&["name"]),
                    format!("a job named {name:?} already exists"),
                );
            }
        }
        let zone = match text("/time_zone") {
            Some(name) => super::parse_zone(name)
                .map_err(|message| report(&at(&["time_zone"]), message))
                .ok(),
            None => default_zone,
        };
        if let Some(expression) = text("/schedule") {
            super::check_schedule(expression, zone, &at(&["schedule"]), report);
        }
        if let Some(webhook) = text("/webhook")
            && !url_ok(webhook)
        {
            report(
                &at(&["webhook"]),
                format!("{webhook:?} is not an http or https URL"),
            );
        }
        let extension = if text("/source/type") == Some("catalogue") {
            ".xml"
        } else {
            ".gpkg"
        };
        for list in ["include", "exclude", "order"] {
            let items = job
                .pointer(&format!("/source/{list}"))
                .and_then(|v| v.as_array());
            for (n, item) in items.into_iter().flatten().enumerate() {
                if let Some(pattern) = item.as_str()
                    && let Err(e) = title_pattern(pattern)
                {
                    let mut path = at(&["source", list]);
                    path.push(Segment::Index(n));
                    report(&path, format!("not a regular expression: {e}"));
                }
            }
        }
        let renames = job.pointer("/source/rename").and_then(|v| v.as_array());
        for (n, item) in renames.into_iter().flatten().enumerate() {
            if let Some(pattern) = item.get("from").and_then(|v| v.as_str())
                && let Err(e) = title_pattern(pattern)
            {
                let mut path = at(&["source", "rename"]);
                path.extend([Segment::Index(n), key("from")]);
                report(&path, format!("not a regular expression: {e}"));
            }
        }
        if let Some(dataset) = text("/target/dataset") {
            let safe = crate::safe_path::segments(&format!("/{}", dataset.trim_start_matches('/')));
            match safe {
                Err(e) => report(
                    &at(&["target", "dataset"]),
                    format!("{dataset:?} is not a path under userdata: {e}"),
                ),
                Ok(segments)
                    if segments.len() < 2
                        || !segments
                            .last()
                            .is_some_and(|n| n.to_ascii_lowercase().ends_with(extension)) =>
                {
                    report(
                        &at(&["target", "dataset"]),
                        if extension == ".xml" {
                            format!(
                                "{dataset:?}: a catalogue job publishes an XML file in a host folder, such as \"local/catalogue.xml\""
                            )
                        } else {
                            format!(
                                "{dataset:?}: name a GeoPackage in a host folder, such as \"local/parcels.gpkg\""
                            )
                        },
                    );
                }
                Ok(_) => {}
            }
        }
        if let Some(sql) = text("/transform/sql")
            && !sql.trim_start().to_ascii_lowercase().starts_with("select")
        {
            report(
                &at(&["transform", "sql"]),
                "must be a SELECT over the table `source`".to_owned(),
            );
        }
        let kind = text("/source/type").unwrap_or_default();
        const KINDS: [&str; 7] = [
            "file",
            "http",
            "arcgis",
            "wfs",
            "sqlite",
            "ogr",
            "catalogue",
        ];
        if job.pointer("/source/type").is_some() && !KINDS.contains(&kind) {
            report(
                &at(&["source", "type"]),
                format!(
                    "unknown source type {kind:?}; use file, http, arcgis, wfs, sqlite, ogr or catalogue"
                ),
            );
        }
        if matches!(kind, "http" | "arcgis" | "wfs" | "catalogue")
            && let Some(url) = text("/source/url")
            && !url_ok(url)
        {
            report(
                &at(&["source", "url"]),
                format!("{url:?} is not an http or https URL"),
            );
        }
        if kind == "sqlite"
            && let Some(query) = text("/source/query")
            && !query
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("select")
        {
            report(&at(&["source", "query"]), "must be a SELECT".to_owned());
        }
        if kind == "http"
            && let Some(format) = text("/source/format")
            && !crate::sync::source::DOWNLOAD_FORMATS.contains(&format)
        {
            report(
                &at(&["source", "format"]),
                format!(
                    "{format:?}: use one of {}",
                    crate::sync::source::DOWNLOAD_FORMATS.join(", ")
                ),
            );
        }
        if kind == "wfs"
            && let Some(version) = text("/source/version")
            && !matches!(version, "2.0.0" | "1.1.0")
        {
            report(
                &at(&["source", "version"]),
                format!("{version:?}: use \"2.0.0\" or \"1.1.0\""),
            );
        }
        let env_names = job
            .pointer("/source/headers_from_env")
            .and_then(|v| v.as_object())
            .map(|m| m.values().filter_map(|v| v.as_str()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain(text("/source/token_env"));
        for name in env_names {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                report(
                    &at(&["source"]),
                    format!("{name:?} is not an environment variable name"),
                );
            }
        }
        if let Some(options) = job
            .pointer("/source/open_options")
            .and_then(|v| v.as_object())
        {
            let pairs: Vec<(String, String)> = options
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            if let Err(e) = crate::gis::source::readers::OpenOptions::parse(&pairs) {
                report(&at(&["source", "open_options"]), e.0);
            }
        }
    }
}
