//! Unified search: an SQLite FTS5 index over datasets named in the config, with the original
//! server's columns, rebuilt at start and on a schedule into a new file that replaces the old one
//! by rename (searches see the old index or the new one, never a half-built one); and the
//! `/search?q=…&limit=N` query with prefix matching and ranking, answered as GeoJSON points.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use geozero::ToGeo;
use http::StatusCode;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rusqlite::{Connection, OpenFlags, params};
use schedules::Schedule;
use warp::reply::Response;

use crate::config::SearchSource;
use crate::gis::query::limits::{QueryError, Watch};
use crate::gis::query::reproject::Reprojector;
use crate::gis::quote;
use crate::gis::store::gpkg::Catalog;
use crate::http::error_body;

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

/// The index builder actor.
#[derive(Debug, Clone, Copy)]
pub struct SearchIndexer;

/// Its messages.
#[derive(Debug)]
pub enum SearchMsg {
    /// Rebuild now (at start, and when the schedule fires).
    Rebuild,
}

/// Builds the index into a new file and renames it over `index`.
///
/// # Errors
/// When a source cannot be read or the index cannot be written; the old index stays.
pub fn build(args: &SearchArgs) -> Result<u64, String> {
    let temporary = args
        .index
        .with_extension(format!("sqlite.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let result = write_index(args, &temporary);
    match result {
        Ok(count) => {
            std::fs::rename(&temporary, &args.index)
                .map_err(|e| format!("{}: {e}", args.index.display()))?;
            Ok(count)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&temporary);
            Err(e)
        }
    }
}

fn write_index(args: &SearchArgs, path: &Path) -> Result<u64, String> {
    let connection = Connection::open(path).map_err(|e| e.to_string())?;
    connection
        .execute_batch(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; BEGIN;
             CREATE VIRTUAL TABLE search USING fts5(
                 category UNINDEXED, search_text, display_text UNINDEXED, search_key UNINDEXED,
                 map_layer UNINDEXED, map_layer_id_field UNINDEXED, map_layer_id UNINDEXED,
                 weight UNINDEXED, bbox UNINDEXED, x UNINDEXED, y UNINDEXED,
                 tokenize = 'unicode61 remove_diacritics 2', prefix = '1 2 3');",
        )
        .map_err(|e| e.to_string())?;
    let mut count = 0;
    for (i, source) in args.sources.iter().enumerate() {
        count += index_source(&connection, args, source)
            .map_err(|e| format!("search.sources[{i}] ({}): {e}", source.source))?;
    }
    connection
        .execute_batch("COMMIT;")
        .map_err(|e| e.to_string())?;
    Ok(count)
}

fn index_source(
    connection: &Connection,
    args: &SearchArgs,
    source: &SearchSource,
) -> Result<u64, String> {
    let segments =
        crate::safe_path::segments(&format!("/{}", source.source.trim_start_matches('/')))
            .map_err(|e| e.0.to_owned())?;
    let mut path = segments
        .iter()
        .fold(args.userdata.clone(), |p, s| p.join(s));
    if crate::gis::source::readers::Format::of(&path).is_some() {
        path = args
            .catalog
            .converted(
                &path,
                &source.source,
                &crate::gis::source::readers::OpenOptions::default(),
            )
            .map_err(|e| e.to_string())?;
    }
    let dataset = args
        .catalog
        .get(&path, &source.source)
        .map_err(|e| e.to_string())?;
    let layer = dataset
        .layer(source.layer.as_deref())
        .map_err(|e| e.to_string())?
        .clone();
    let reproject = Reprojector::for_srs(layer.srs_id).map_err(|e| e.to_string())?;
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
            return Err(format!(
                "no field {field:?} in {}; fields: {}",
                layer.name,
                layer.fields.join(", ")
            ));
        }
    }
    let display = source
        .display_field
        .as_ref()
        .unwrap_or(&source.search_field);
    let key = source.key_field.as_ref().unwrap_or(&layer.fid);
    let id_field = source.map_layer_id_field.as_ref().unwrap_or(key);
    let geometry = layer
        .geometry
        .as_deref()
        .map_or_else(|| "NULL".to_owned(), quote);
    let sql = format!(
        "SELECT {}, {}, {}, {}, {} FROM {}",
        quote(&source.search_field),
        quote(display),
        quote(key),
        quote(id_field),
        geometry,
        quote(&layer.name)
    );
    let reader = dataset.connection().map_err(|e| e.to_string())?;
    let mut insert = connection
        .prepare("INSERT INTO search VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)")
        .map_err(|e| e.to_string())?;
    let mut count = 0;
    {
        let mut statement = reader.prepare(&sql).map_err(|e| e.to_string())?;
        let mut rows = statement.query([]).map_err(|e| e.to_string())?;
        while let Some(row) = rows.next().map_err(|e| e.to_string())? {
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
                .and_then(|b| geozero::wkb::GpkgWkb(b).to_geo().ok())
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
            insert
                .execute(params![
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
                ])
                .map_err(|e| e.to_string())?;
            count += 1;
        }
    }
    dataset.release(reader);
    Ok(count)
}

/// The FTS5 query for what a user typed: every word as a prefix, all required.
fn match_expression(q: &str) -> Option<String> {
    let words: Vec<String> = q
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(10)
        .map(|w| format!("\"{}\"*", w.replace('"', "")))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// Answers `/search?q=…&limit=N` from the current index, on a query thread of `catalog` and
/// under its query limits.
pub async fn answer(
    catalog: Arc<Catalog>,
    index: PathBuf,
    q: Option<String>,
    limit: Option<String>,
    encoding: crate::encoding::Encoding,
) -> Response {
    let Some(expression) = q.as_deref().and_then(match_expression) else {
        return error_body(
            StatusCode::BAD_REQUEST,
            "missing parameter",
            Some("q must hold at least one word"),
        );
    };
    let limit = match limit.map(|l| l.parse::<u32>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if n >= 1 => n.min(MAX_LIMIT),
        Some(_) => {
            return error_body(
                StatusCode::BAD_REQUEST,
                "bad query",
                Some("limit must be a whole number from 1"),
            );
        }
    };
    let watch = Watch::new(catalog.limits, None, catalog.stop.clone());
    let result = catalog
        .run(move || query(&index, &expression, limit, &watch))
        .await;
    match result {
        Ok(Ok(body)) => crate::api::ogr2ogr::geojson_response(
            futures::stream::once(async move { Ok(bytes::Bytes::from(body)) }),
            encoding,
        ),
        Ok(Err(SearchError::Unavailable(e))) => error_body(
            StatusCode::SERVICE_UNAVAILABLE,
            "search index unavailable",
            Some(&e),
        ),
        Ok(Err(SearchError::Query(e))) => e.response(false),
        Err(e) => QueryError::from(e).response(false),
    }
}

/// Why a search could not be answered.
enum SearchError {
    /// The index is missing or unreadable.
    Unavailable(String),
    /// The query failed or hit a limit.
    Query(QueryError),
}

fn query(
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
