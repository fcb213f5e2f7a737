//! Unified search: an SQLite FTS5 index over datasets named in the config, with the original
//! server's columns, rebuilt at start and on a schedule into a new file that replaces the old one
//! by rename (searches see the old index or the new one, never a half-built one); and the query
//! with prefix matching and ranking behind `/search?q=…&limit=N`, written as GeoJSON points.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rusqlite::{Connection, OpenFlags, params};
use schedules::Schedule;

use crate::config::SearchSource;
use crate::gis::query::limits::{QueryError, Watch};
use crate::gis::query::reproject::{ReprojectError, Reprojector};
use crate::gis::store::{Catalog, DatasetError};

/// Results unless `limit` says otherwise, and the most ever returned.
pub const DEFAULT_LIMIT: u32 = 10;
/// The largest `limit` honoured.
pub const MAX_LIMIT: u32 = 100;

/// What the search component is started with.
#[derive(Debug, Clone)]
pub struct SearchArgs {
    /// The datasets indexed.
    pub sources: Vec<SearchSource>,
    /// `<root>/userdata`, which source paths are relative to.
    pub userdata: PathBuf,
    /// `<root>/state/search.sqlite`.
    pub index: PathBuf,
    /// When to rebuild.
    pub schedule: Schedule,
    /// Conversions of non-GeoPackage sources.
    pub catalog: Arc<Catalog>,
}

/// The name the index builder is registered under.
pub const ACTOR_NAME: &str = "search";

/// The index builder actor.
#[derive(Debug, Clone, Copy)]
pub struct SearchIndexer;

/// Its messages.
#[derive(Debug)]
pub enum SearchMsg {
    /// Rebuild now (at start, and when the schedule fires).
    Rebuild,
}

/// Why the index could not be rebuilt (the previous one stays).
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The new index file could not be written.
    #[error("{path}: cannot write the index: {source}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The new index could not replace the old one.
    #[error("{path}: cannot replace the index: {source}")]
    Replace {
        /// The index.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A source named in the config could not be indexed.
    #[error("search.sources[{index}] ({name}): {source}")]
    Source {
        /// Its place in `search.sources`.
        index: usize,
        /// Its `source` path.
        name: String,
        /// Why.
        #[source]
        source: SourceError,
    },
}

/// Why one source could not be indexed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The path is not one inside userdata.
    #[error("{0}")]
    Path(&'static str),
    /// The dataset could not be opened or has no such layer.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// Its coordinate system is unknown.
    #[error(transparent)]
    Reproject(#[from] ReprojectError),
    /// A field named in the config is not in the layer.
    #[error("no field {field:?} in {layer}; fields: {fields}")]
    UnknownField {
        /// The field asked for.
        field: String,
        /// The layer.
        layer: String,
        /// The fields it has.
        fields: String,
    },
    /// Reading it failed.
    #[error(transparent)]
    Read(#[from] rusqlite::Error),
}

/// Builds the index into a new file and renames it over `index`.
///
/// # Errors
/// When a source cannot be read or the index cannot be written; the old index stays.
pub fn build(args: &SearchArgs) -> Result<u64, IndexError> {
    let temporary = args
        .index
        .with_extension(format!("sqlite.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let result = write_index(args, &temporary);
    match result {
        Ok(count) => {
            std::fs::rename(&temporary, &args.index).map_err(|source| IndexError::Replace {
                path: args.index.clone(),
                source,
            })?;
            Ok(count)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&temporary);
            Err(e)
        }
    }
}

fn write_index(args: &SearchArgs, path: &Path) -> Result<u64, IndexError> {
    let failed = |source| IndexError::Write {
        path: path.to_owned(),
        source,
    };
    let connection = Connection::open(path).map_err(failed)?;
    connection
        .execute_batch(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; BEGIN;
             CREATE VIRTUAL TABLE search USING fts5(
                 category UNINDEXED, search_text, display_text UNINDEXED, search_key UNINDEXED,
                 map_layer UNINDEXED, map_layer_id_field UNINDEXED, map_layer_id UNINDEXED,
                 weight UNINDEXED, bbox UNINDEXED, x UNINDEXED, y UNINDEXED,
                 tokenize = 'unicode61 remove_diacritics 2', prefix = '1 2 3');",
        )
        .map_err(failed)?;
    let mut count = 0;
    for (i, source) in args.sources.iter().enumerate() {
        count += index_source(&connection, args, source).map_err(|e| IndexError::Source {
            index: i,
            name: source.source.clone(),
            source: e,
        })?;
    }
    connection.execute_batch("COMMIT;").map_err(failed)?;
    Ok(count)
}

fn index_source(
    connection: &Connection,
    args: &SearchArgs,
    source: &SearchSource,
) -> Result<u64, SourceError> {
    let segments =
        crate::safe_path::segments(&format!("/{}", source.source.trim_start_matches('/')))
            .map_err(|e| SourceError::Path(e.0))?;
    let mut path = segments
        .iter()
        .fold(args.userdata.clone(), |p, s| p.join(s));
    if crate::gis::source::readers::Format::of(&path).is_some() {
        path = args.catalog.converted(
            &path,
            &source.source,
            &crate::gis::source::readers::OpenOptions::default(),
        )?;
    }
    let dataset = args.catalog.datasets.get(&path, &source.source)?;
    let layer = dataset.layer(source.layer.as_deref())?.clone();
    let reproject = Reprojector::for_srs(layer.srs_id)?;
    let has = |f: &str| layer.fields.iter().any(|x| x == f);
    for field in [
        Some(&source.search_field),
        source.display_field.as_ref(),
        source.key_field.as_ref(),
        source.map_layer_id_field.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        if !has(field) {
            return Err(SourceError::UnknownField {
                field: field.clone(),
                layer: layer.name.clone(),
                fields: layer.fields.join(", "),
            });
        }
    }
    let display = source
        .display_field
        .as_ref()
        .unwrap_or(&source.search_field);
    let key = source.key_field.as_ref().unwrap_or(&layer.fid);
    let id_field = source.map_layer_id_field.as_ref().unwrap_or(key);
    let sql =
        crate::gis::query::plan::columns(&layer, &[&source.search_field, display, key, id_field]);
    let reader = dataset.connection()?;
    let mut insert = connection
        .prepare("INSERT INTO search VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)")?;
    let mut count = 0;
    {
        let mut statement = reader.prepare(&sql)?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let text = |i: usize| -> String {
                match row.get_ref(i) {
                    Ok(rusqlite::types::ValueRef::Text(t)) => {
                        String::from_utf8_lossy(t).into_owned()
                    }
                    Ok(rusqlite::types::ValueRef::Integer(n)) => n.to_string(),
                    Ok(rusqlite::types::ValueRef::Real(f)) => f.to_string(),
                    _ => String::new(),
                }
            };
            let search_text = text(0);
            if search_text.trim().is_empty() {
                continue;
            }
            let bounds = row
                .get_ref(4)
                .ok()
                .and_then(|v| v.as_blob().ok())
                .filter(|b| crate::gis::wkb::check_gpkg(b).is_ok())
                .and_then(|b| crate::gis::wkb::to_geo(b).ok())
                .and_then(|g| match &reproject {
                    Some(r) => r.to_wgs84(&g).ok(),
                    None => Some(g),
                })
                .and_then(|g| geo::BoundingRect::bounding_rect(&g));
            let (bbox, x, y) = match bounds {
                Some(r) => (
                    Some(format!(
                        "[{},{},{},{}]",
                        r.min().x,
                        r.min().y,
                        r.max().x,
                        r.max().y
                    )),
                    Some(f64::midpoint(r.min().x, r.max().x)),
                    Some(f64::midpoint(r.min().y, r.max().y)),
                ),
                None => (None, None, None),
            };
            insert.execute(params![
                source.category,
                search_text,
                text(1),
                text(2),
                source.map_layer.as_deref().unwrap_or(&layer.name),
                id_field,
                text(3),
                source.weight,
                bbox,
                x,
                y
            ])?;
            count += 1;
        }
    }
    Ok(count)
}

/// The FTS5 query for what a user typed: every word as a prefix, all required.
#[must_use]
pub fn match_expression(q: &str) -> Option<String> {
    let words: Vec<String> = q
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(10)
        .map(|w| format!("\"{}\"*", w.replace('"', "")))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// Why a search could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The index is missing or unreadable.
    #[error("{0}")]
    Unavailable(String),
    /// The query failed or hit a limit.
    #[error(transparent)]
    Query(#[from] QueryError),
}

/// The features matching `expression` (from [`match_expression`]), best first, at most
/// `limit`, as a GeoJSON FeatureCollection.
///
/// # Errors
/// When the index is missing or unreadable, or the query fails or hits a limit.
pub fn query(
    index: &Path,
    expression: &str,
    limit: u32,
    watch: &Arc<Watch>,
) -> Result<String, SearchError> {
    if !index.exists() {
        return Err(SearchError::Unavailable(
            "the index has not been built yet".to_owned(),
        ));
    }
    let connection = Connection::open_with_flags(
        index,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| SearchError::Unavailable(e.to_string()))?;
    let _watching = watch.install(&connection).map_err(SearchError::Query)?;
    let failed = |e: rusqlite::Error| SearchError::Query(watch.error(&e));
    let mut statement = connection
        .prepare(
            "SELECT category, display_text, search_key, map_layer, map_layer_id_field, map_layer_id, weight, bbox, x, y
             FROM search WHERE search MATCH ?1 ORDER BY bm25(search) * weight LIMIT ?2",
        )
        .map_err(failed)?;
    let mut rows = statement
        .query(params![expression, limit])
        .map_err(failed)?;
    let mut features = Vec::new();
    while let Some(row) = rows.next().map_err(failed)? {
        let get = |i: usize| row.get::<_, Option<String>>(i).ok().flatten();
        let (x, y) = (
            row.get::<_, Option<f64>>(8).ok().flatten(),
            row.get::<_, Option<f64>>(9).ok().flatten(),
        );
        let bbox: serde_json::Value = get(7)
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        features.push(serde_json::json!({
            "type": "Feature",
            "properties": {
                "category": get(0), "display_text": get(1), "search_key": get(2), "map_layer": get(3),
                "map_layer_id_field": get(4), "map_layer_id": get(5),
                "weight": row.get::<_, f64>(6).unwrap_or(1.0), "bbox": bbox,
            },
            "geometry": match (x, y) {
                (Some(x), Some(y)) => serde_json::json!({"type": "Point", "coordinates": [x, y]}),
                _ => serde_json::Value::Null,
            },
        }));
    }
    Ok(serde_json::json!({"type": "FeatureCollection", "features": features}).to_string())
}

impl Actor for SearchIndexer {
    type Msg = SearchMsg;
    type State = SearchArgs;
    type Arguments = SearchArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SearchMsg>,
        args: SearchArgs,
    ) -> Result<SearchArgs, ActorProcessingErr> {
        // A failure injected by the tests: `POZI_FAILPOINT=search-panic` makes every start of
        // this component panic, so that its restarts show in /health and /metrics.
        if std::env::var("POZI_FAILPOINT").is_ok_and(|f| f == "search-panic") {
            panic!("failpoint search-panic");
        }
        let _ = myself.send_message(SearchMsg::Rebuild);
        Ok(args)
    }

    #[tracing::instrument(name = "component", fields(component = "search"), skip_all)]
    async fn handle(
        &self,
        myself: ActorRef<SearchMsg>,
        message: SearchMsg,
        args: &mut SearchArgs,
    ) -> Result<(), ActorProcessingErr> {
        let SearchMsg::Rebuild = message;
        let started = std::time::Instant::now();
        let job = args.clone();
        match tokio::task::spawn_blocking(move || build(&job)).await? {
            Ok(count) => {
                tracing::info!(entries = count, ms = started.elapsed().as_millis(), index = %args.index.display(), "search index rebuilt")
            }
            // The previous index keeps serving; the next scheduled rebuild tries again.
            Err(e) => {
                tracing::error!(error = %e, "search index rebuild failed; the previous index is kept")
            }
        }
        if let Some(next) = args.schedule.next_after(Utc::now()) {
            let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            myself.send_after(wait, || SearchMsg::Rebuild);
        }
        Ok(())
    }
}
