//! OGC API Features (Part 1: Core, GeoJSON) under `/features/`: the landing page, conformance,
//! the OpenAPI document, collections (the layers of the datasets in the request host's folder),
//! paged items with `bbox`, `limit`, `offset` and property filters, and single items.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};
use rusqlite::types::Value as SqlValue;
use serde_json::{Value, json};
use warp::reply::Response;

use crate::api::ogr2ogr::geojson_response;
use crate::gis::query::limits::QueryError;
use crate::gis::query::reproject::Reprojector;
use crate::gis::query::run::{BoxMatch, Plan, box_page, count, execute, lookup};
use crate::gis::quote;
use crate::gis::store::gpkg::{Catalog, Dataset, Layer};
use crate::http::error_body;

/// Items per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: u64 = 100;
/// The largest `limit` honoured.
pub const MAX_LIMIT: u64 = 10_000;

const CONFORMANCE: &[&str] = &[
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables-query-parameters",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
];
const CRS84: &str = "http://www.opengis.net/def/crs/OGC/1.3/CRS84";
/// The link relation of a collection's queryables (OGC API Features Part 3).
const QUERYABLES_REL: &str = "http://www.opengis.net/def/rel/ogc/1.0/queryables";
/// Query parameters with a meaning of their own; any other must name a property.
const RESERVED: &[&str] = &[
    "bbox",
    "limit",
    "offset",
    "f",
    "bbox-crs",
    "crs",
    "datetime",
    "filter",
    "filter-lang",
    "filter-crs",
    "resultType",
];

/// A collection: one layer of one dataset file.
struct Collection {
    id: String,
    dataset: Arc<Dataset>,
    layer: Layer,
}

/// What a request needs to know about where it came from.
#[derive(Debug)]
pub struct RequestContext<'a> {
    /// The host's userdata folder.
    pub folder: PathBuf,
    /// `https://host[:port]` as the client addressed this server, for links.
    pub base: String,
    /// The request headers (for `If-None-Match`).
    pub headers: &'a HeaderMap,
}

fn json_response(status: StatusCode, body: &Value, content_type: &'static str) -> Response {
    let mut response = Response::new(body.to_string().into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Answers a request under `/features`; `rest` is the path after it, `query` its parameters.
pub async fn answer(
    catalog: Arc<Catalog>,
    context: RequestContext<'_>,
    rest: &str,
    query: &HashMap<String, String>,
) -> Response {
    let base = format!("{}/features", context.base);
    let parts: Vec<&str> = rest
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    match parts.as_slice() {
        [] => json_response(StatusCode::OK, &landing(&base), "application/json"),
        ["conformance"] => json_response(
            StatusCode::OK,
            &json!({ "conformsTo": CONFORMANCE }),
            "application/json",
        ),
        ["api"] => match collections(&catalog, &context.folder).await {
            Ok(list) => json_response(
                StatusCode::OK,
                &openapi(&base, &list),
                "application/vnd.oai.openapi+json;version=3.0",
            ),
            Err(e) => e.response(false),
        },
        ["collections"] => {
            let collections = match collections(&catalog, &context.folder).await {
                Ok(c) => c,
                Err(e) => return e.response(false),
            };
            let list: Vec<Value> = collections.iter().map(|c| describe(c, &base)).collect();
            let body = json!({
                "links": [
                    {"href": format!("{base}/collections"), "rel": "self", "type": "application/json", "title": "collections"},
                ],
                "collections": list,
            });
            json_response(StatusCode::OK, &body, "application/json")
        }
        ["collections", id] => match find(&catalog, &context.folder, id).await {
            Ok(Some(c)) => json_response(StatusCode::OK, &describe(&c, &base), "application/json"),
            Ok(None) => error_body(StatusCode::NOT_FOUND, "no such collection", Some(id)),
            Err(e) => e.response(false),
        },
        ["collections", id, "items"] => match find(&catalog, &context.folder, id).await {
            Ok(Some(c)) => items(&catalog, c, &base, query, context.headers).await,
            Ok(None) => error_body(StatusCode::NOT_FOUND, "no such collection", Some(id)),
            Err(e) => e.response(false),
        },
        ["collections", id, "queryables"] => match find(&catalog, &context.folder, id).await {
            Ok(Some(c)) => json_response(
                StatusCode::OK,
                &queryables(&c, &base),
                "application/schema+json",
            ),
            Ok(None) => error_body(StatusCode::NOT_FOUND, "no such collection", Some(id)),
            Err(e) => e.response(false),
        },
        ["collections", id, "items", feature] => match find(&catalog, &context.folder, id).await {
            Ok(Some(c)) => item(&catalog, c, &base, feature).await,
            Ok(None) => error_body(StatusCode::NOT_FOUND, "no such collection", Some(id)),
            Err(e) => e.response(false),
        },
        _ => error_body(StatusCode::NOT_FOUND, "not found", Some(rest)),
    }
}

fn landing(base: &str) -> Value {
    json!({
        "title": "Pozi Server",
        "description": "The organisation's GIS data, as OGC API Features",
        "links": [
            {"href": format!("{base}/"), "rel": "self", "type": "application/json", "title": "this document"},
            {"href": format!("{base}/api"), "rel": "service-desc", "type": "application/vnd.oai.openapi+json;version=3.0", "title": "the API definition"},
            {"href": format!("{base}/conformance"), "rel": "conformance", "type": "application/json", "title": "conformance classes"},
            {"href": format!("{base}/collections"), "rel": "data", "type": "application/json", "title": "collections"},
        ],
    })
}

/// Every layer of every GeoPackage directly in `folder` (and one level down).
async fn collections(catalog: &Arc<Catalog>, folder: &Path) -> Result<Vec<Collection>, QueryError> {
    collections_where(catalog, folder, |_| true).await
}

/// The collections of the GeoPackages whose collection-id stem passes `wanted`.
async fn collections_where(
    catalog: &Arc<Catalog>,
    folder: &Path,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<Collection>, QueryError> {
    let mut files = Vec::new();
    let (listing, folder) = (catalog.clone(), folder.to_owned());
    // Listing a folder is brief file-system work, not a query.
    let found = tokio::task::spawn_blocking(move || listing.geopackages_in(&folder))
        .await
        .map_err(|_| QueryError::Internal)?;
    let found: Vec<(std::path::PathBuf, String)> = found
        .iter()
        .filter(|(_, stem)| wanted(stem))
        .cloned()
        .collect();
    for (path, stem) in found {
        let dataset = match lookup(catalog, &path, &stem).await {
            Ok(dataset) => dataset,
            // A file that is not a usable GeoPackage is not a collection.
            Err(QueryError::Dataset(_)) => continue,
            Err(e) => return Err(e),
        };
        let single = dataset.layers.len() == 1;
        for layer in &dataset.layers {
            let id = if single {
                stem.clone()
            } else {
                format!("{stem}.{}", layer.name)
            };
            files.push(Collection {
                id,
                dataset: dataset.clone(),
                layer: layer.clone(),
            });
        }
    }
    Ok(files)
}

async fn find(
    catalog: &Arc<Catalog>,
    folder: &Path,
    id: &str,
) -> Result<Option<Collection>, QueryError> {
    Ok(collections(catalog, folder)
        .await?
        .into_iter()
        .find(|c| c.id == id))
}

fn describe(c: &Collection, base: &str) -> Value {
    let href = format!("{base}/collections/{}", c.id);
    let mut body = json!({
        "id": c.id,
        "title": c.layer.name,
        "itemType": "feature",
        "crs": [CRS84],
        "links": [
            {"href": href, "rel": "self", "type": "application/json", "title": "this collection"},
            {"href": format!("{href}/items"), "rel": "items", "type": "application/geo+json", "title": "items"},
            {"href": format!("{href}/queryables"), "rel": QUERYABLES_REL, "type": "application/schema+json", "title": "queryable properties"},
        ],
    });
    let extent = c
        .layer
        .extent
        .and_then(|e| match Reprojector::for_srs(c.layer.srs_id) {
            Ok(Some(r)) => r.bbox_to_wgs84(e).ok(),
            Ok(None) => Some(e),
            Err(_) => None,
        });
    if let Some(bbox) = extent {
        body["extent"] = json!({"spatial": {"bbox": [bbox], "crs": CRS84}});
    }
    body
}

/// The `bbox` parameter as boxes `[xmin, ymin, xmax, ymax]` in WGS 84: one, or two when it
/// crosses the antimeridian (west edge greater than east, as the standard allows).
fn parse_bbox(text: &str) -> Result<Vec<[f64; 4]>, String> {
    let numbers: Vec<f64> = text
        .split(',')
        .map(|n| n.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .ok()
        .filter(|n: &Vec<f64>| n.iter().all(|v| v.is_finite()))
        .ok_or_else(|| format!("bbox {text:?} is not numbers"))?;
    let (west, south, east, north) = match numbers.as_slice() {
        [a, b, c, d] | [a, b, _, c, d, _] if b <= d => (*a, *b, *c, *d),
        _ => {
            return Err(format!(
                "bbox {text:?} must be west,south,east,north with south <= north"
            ));
        }
    };
    Ok(if west <= east {
        vec![[west, south, east, north]]
    } else {
        vec![[west, south, 180.0, north], [-180.0, south, east, north]]
    })
}

/// Where the candidates for boxes `rects` (in the layer's system) come from: the R*Tree alone
/// when nothing else filters, else the table (through the R*Tree when there is one).
fn box_match(
    layer: &Layer,
    rects: &[[f64; 4]],
    conditions: &[String],
    mut params: Vec<SqlValue>,
) -> BoxMatch {
    let geometry = layer.geometry.as_deref().map_or("NULL".to_owned(), quote);
    let mut within = Vec::new();
    for rect in rects {
        let n = params.len();
        within.push(format!(
            "minx <= ?{} AND maxx >= ?{} AND miny <= ?{} AND maxy >= ?{}",
            n + 1,
            n + 2,
            n + 3,
            n + 4
        ));
        params.extend([rect[2], rect[0], rect[3], rect[1]].map(SqlValue::Real));
    }
    let index = layer.rtree.as_deref().map(|rtree| {
        within
            .iter()
            .map(|w| {
                format!(
                    "SELECT id, minx, maxx, miny, maxy FROM {} WHERE {w}",
                    quote(rtree)
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ")
    });
    let (candidates, from_index) = match index {
        Some(index) if conditions.is_empty() => (format!("{index} ORDER BY 1"), true),
        index => {
            let mut filters = conditions.to_vec();
            if let Some(index) = index {
                filters.push(format!(
                    "{} IN (SELECT id FROM ({index}))",
                    quote(&layer.fid)
                ));
            }
            let filter = if filters.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", filters.join(" AND "))
            };
            (
                format!(
                    "SELECT {}, {geometry} FROM {}{filter} ORDER BY 1",
                    quote(&layer.fid),
                    quote(&layer.name)
                ),
                false,
            )
        }
    };
    BoxMatch {
        candidates,
        params,
        from_index,
        geometry: format!(
            "SELECT {geometry} FROM {} WHERE {} = ?1",
            quote(&layer.name),
            quote(&layer.fid)
        ),
        rects: rects
            .iter()
            .map(|r| crate::gis::query::run::rect(*r))
            .collect(),
    }
}

async fn items(
    catalog: &Arc<Catalog>,
    c: Collection,
    base: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    let bad = |detail: String| error_body(StatusCode::BAD_REQUEST, "bad query", Some(&detail));
    let limit = match query.get("limit").map(|l| l.parse::<u64>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if n >= 1 => n.min(MAX_LIMIT),
        Some(_) => {
            return bad(format!(
                "limit must be a whole number from 1 to {MAX_LIMIT}"
            ));
        }
    };
    // SQLite's OFFSET is a signed 64-bit integer.
    let offset = match query.get("offset").map(|o| o.parse::<u64>()) {
        None => 0,
        Some(Ok(n)) if i64::try_from(n).is_ok() => n,
        Some(_) => {
            return bad(format!(
                "offset must be a whole number from 0 to {}",
                i64::MAX
            ));
        }
    };
    let bbox = match query.get("bbox").map(|b| parse_bbox(b)) {
        None => None,
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => return bad(e),
    };
    if let Some(crs) = query.get("bbox-crs").or_else(|| query.get("crs"))
        && crs != CRS84
    {
        return bad(format!("only {CRS84} is supported"));
    }
    if let Some(f) = query.get("f")
        && !["json", "geojson"].contains(&f.as_str())
    {
        return bad(format!("f={f}: only json is served"));
    }
    let layer = &c.layer;
    let reproject = match Reprojector::for_srs(layer.srs_id) {
        Ok(r) => r,
        Err(e) => {
            return error_body(
                StatusCode::NOT_IMPLEMENTED,
                "cannot reproject",
                Some(&e.to_string()),
            );
        }
    };
    // The box is in WGS 84; the index is in the layer's system.
    let bbox = match (bbox, &reproject) {
        (Some(boxes), Some(r)) => {
            match boxes
                .into_iter()
                .map(|b| r.bbox_from_wgs84(b))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(b) => Some(b),
                Err(e) => return bad(e.to_string()),
            }
        }
        (b, _) => b,
    };
    let mut conditions = Vec::new();
    let mut params: Vec<SqlValue> = Vec::new();
    let mut filters: Vec<(&String, &String)> = query
        .iter()
        .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
        .collect();
    filters.sort();
    for (name, value) in filters {
        let Some(field) = layer.fields.iter().find(|f| *f == name) else {
            return bad(format!(
                "unknown parameter or property {name:?}; properties: {}",
                layer.fields.join(", ")
            ));
        };
        params.push(SqlValue::Text(value.clone()));
        // Compared as text, so "5" matches an integer 5 as well as the string.
        conditions.push(format!(
            "CAST({} AS TEXT) = ?{}",
            quote(field),
            params.len()
        ));
    }
    // A CQL2 text filter (OGC API Features Part 3), compiled to a parameterised condition.
    if let Some(filter) = query.get("filter") {
        if let Some(lang) = query.get("filter-lang")
            && lang != "cql2-text"
        {
            return bad(format!("filter-lang={lang}: only cql2-text is supported"));
        }
        if let Some(crs) = query.get("filter-crs")
            && crs != CRS84
        {
            return bad(format!("filter-crs: only {CRS84} is supported"));
        }
        match crate::gis::query::filter::to_sql(filter, &layer.fields, params.len()) {
            Ok((condition, values)) => {
                conditions.push(format!("({condition})"));
                params.extend(values);
            }
            Err(e) => return bad(format!("filter: {e}")),
        }
    } else if query.contains_key("filter-lang") {
        return bad("filter-lang without a filter".to_owned());
    }
    // With a box, each candidate is tested on its geometry (as GDAL tests `-spat`), which
    // gives the count and the page's fids at once; without one, SQL counts and pages.
    let (matched, page_sql) = match &bbox {
        Some(rects) => {
            let matching = box_match(layer, rects, &conditions, params.clone());
            match box_page(catalog, c.dataset.clone(), matching, offset, limit).await {
                Ok((matched, fids)) => {
                    let fids: Vec<String> = fids.iter().map(i64::to_string).collect();
                    (Some(matched), Some(fids.join(",")))
                }
                Err(e) => return e.response(false),
            }
        }
        None => {
            let filter = if conditions.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", conditions.join(" AND "))
            };
            let sql = format!("SELECT count(*) FROM {}{filter}", quote(&layer.name));
            match count(catalog, c.dataset.clone(), sql, params.clone()).await {
                Ok(n) => (Some(n), None),
                Err(e) => return e.response(false),
            }
        }
    };
    // `resultType=hits` (as WFS has it, and GDAL's OAPIF driver asks when the API lists it):
    // the count alone.
    match query.get("resultType").map(String::as_str) {
        None | Some("results") => {}
        Some("hits") => {
            return json_response(
                StatusCode::OK,
                &json!({
                    "type": "FeatureCollection",
                    "features": [],
                    "numberMatched": matched,
                    "numberReturned": 0,
                }),
                "application/geo+json",
            );
        }
        Some(other) => return bad(format!("resultType={other}: results or hits")),
    }
    // One ETag per encoding: a strong validator names the bytes sent.
    let encoding = crate::encoding::accepted(headers);
    let etag = format!(
        "\"{}-{:x}{}\"",
        c.dataset.version(),
        crate::gis::stable_hash(&format!("{:?}", sorted(query))),
        match encoding {
            crate::encoding::Encoding::Identity => "",
            crate::encoding::Encoding::Gzip => "-gzip",
            crate::encoding::Encoding::Brotli => "-br",
        }
    );
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        let mut response = Response::new(bytes::Bytes::new().into());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        if let Ok(v) = HeaderValue::from_str(&etag) {
            response.headers_mut().insert(header::ETAG, v);
        }
        return response;
    }

    let columns = layer.select_list(None);
    let (sql, params) = match page_sql {
        // The page's fids come from this server's own query: integers, written as such.
        Some(fids) => (
            format!(
                "SELECT {columns} FROM {} WHERE {} IN ({fids}) ORDER BY {}",
                quote(&layer.name),
                quote(&layer.fid),
                quote(&layer.fid)
            ),
            Vec::new(),
        ),
        None => {
            let filter = if conditions.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", conditions.join(" AND "))
            };
            (
                format!(
                    "SELECT {columns} FROM {}{filter} ORDER BY {} LIMIT {limit} OFFSET {offset}",
                    quote(&layer.name),
                    quote(&layer.fid)
                ),
                params,
            )
        }
    };
    let href = format!("{base}/collections/{}/items", c.id);
    let page = |o: u64| {
        let mut q: Vec<(String, String)> = sorted(query)
            .into_iter()
            .filter(|(k, _)| k != "offset" && k != "limit")
            .collect();
        q.push(("limit".to_owned(), limit.to_string()));
        q.push(("offset".to_owned(), o.to_string()));
        let encoded: Vec<String> = q
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        format!("{href}?{}", encoded.join("&"))
    };
    let (self_link, next_link, prev_link) = (
        page(offset),
        page(offset.saturating_add(limit)),
        (offset > 0).then(|| page(offset.saturating_sub(limit))),
    );
    let tail = move |returned: u64| {
        let mut links = vec![
            json!({"href": self_link, "rel": "self", "type": "application/geo+json", "title": "this page"}),
        ];
        let more = match matched {
            Some(m) => offset.saturating_add(returned) < m,
            None => returned == limit,
        };
        if more {
            links.push(json!({"href": next_link, "rel": "next", "type": "application/geo+json", "title": "next page"}));
        }
        if let Some(prev) = prev_link {
            links.push(json!({"href": prev, "rel": "prev", "type": "application/geo+json", "title": "previous page"}));
        }
        let mut tail = format!(
            ",\"numberReturned\":{returned},\"links\":{}",
            Value::Array(links)
        );
        if let Some(m) = matched {
            tail.push_str(&format!(",\"numberMatched\":{m}"));
        }
        tail.push_str(&format!(
            ",\"timeStamp\":{}",
            Value::from(chrono::Utc::now().to_rfc3339())
        ));
        tail
    };
    let plan = Plan {
        sql,
        params,
        has_fid: true,
        emit_id: true,
        envelope_filter: None,
        exact: None,
        simplify: None,
        reproject,
        name: c.id.clone(),
        tail: Some(Box::new(tail)),
        reuse: None,
    };
    match execute(catalog, c.dataset.clone(), plan, None).await {
        Ok(stream) => {
            let mut response = geojson_response(stream, crate::encoding::accepted(headers));
            if let Ok(v) = HeaderValue::from_str(&etag) {
                response.headers_mut().insert(header::ETAG, v);
            }
            response
        }
        Err(e) => e.response(false),
    }
}

async fn item(catalog: &Arc<Catalog>, c: Collection, base: &str, feature: &str) -> Response {
    let Ok(fid) = feature.parse::<i64>() else {
        return error_body(StatusCode::NOT_FOUND, "no such feature", Some(feature));
    };
    let layer = &c.layer;
    let columns = layer.select_list(None);
    let sql = format!(
        "SELECT {} FROM {} WHERE {} = ?1",
        columns,
        quote(&layer.name),
        quote(&layer.fid)
    );
    let exists = count(
        catalog,
        c.dataset.clone(),
        format!(
            "SELECT count(*) FROM {} WHERE {} = ?1",
            quote(&layer.name),
            quote(&layer.fid)
        ),
        vec![SqlValue::Integer(fid)],
    )
    .await;
    let exists = match exists {
        Ok(n) => n,
        Err(e) => return e.response(false),
    };
    if exists != 1 {
        return error_body(StatusCode::NOT_FOUND, "no such feature", Some(feature));
    }
    let href = format!("{base}/collections/{}/items/{fid}", c.id);
    let collection = format!("{base}/collections/{}", c.id);
    let plan = Plan {
        sql,
        params: vec![SqlValue::Integer(fid)],
        has_fid: true,
        emit_id: true,
        envelope_filter: None,
        exact: None,
        simplify: None,
        reproject: Reprojector::for_srs(layer.srs_id).ok().flatten(),
        name: c.id.clone(),
        tail: None,
        reuse: None,
    };
    // One feature, read through the same writer, then unwrapped from its collection.
    let body = match execute(catalog, c.dataset.clone(), plan, Some(1)).await {
        Ok(stream) => {
            use futures::StreamExt;
            let chunks: Vec<_> = stream.collect().await;
            let bytes: Vec<u8> = chunks
                .into_iter()
                .filter_map(Result::ok)
                .flat_map(|b| b.to_vec())
                .collect();
            serde_json::from_slice::<Value>(&bytes).ok()
        }
        Err(e) => return e.response(false),
    };
    let Some(mut feature) = body.and_then(|mut b| b["features"].get_mut(0).map(Value::take)) else {
        return error_body(StatusCode::NOT_FOUND, "no such feature", Some(feature));
    };
    feature["links"] = json!([
        {"href": href, "rel": "self", "type": "application/geo+json", "title": "this feature"},
        {"href": collection, "rel": "collection", "type": "application/json", "title": "the collection"},
    ]);
    json_response(StatusCode::OK, &feature, "application/geo+json")
}

fn sorted(query: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut q: Vec<(String, String)> = query.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    q.sort();
    q
}

fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The properties of a collection that `items` can filter on, as a JSON Schema (OGC API
/// Features Part 3: each is also a query parameter, `?name=value`).
fn queryables(c: &Collection, base: &str) -> Value {
    let mut properties = serde_json::Map::new();
    for (i, field) in queryable_fields(&c.layer) {
        properties.insert(
            field.clone(),
            json!({"title": field, "type": c.layer.json_type(i)}),
        );
    }
    if c.layer.geometry.is_some() {
        properties.insert(
            "geometry".to_owned(),
            json!({"$ref": "https://geojson.org/schema/Geometry.json"}),
        );
    }
    json!({
        "$schema": "https://json-schema.org/draft/2019-09/schema",
        "$id": format!("{base}/collections/{}/queryables", c.id),
        "type": "object",
        "title": c.layer.name,
        "properties": properties,
        "additionalProperties": false,
    })
}

/// The attribute fields that can be query parameters: those whose names are not parameters
/// of their own (`limit`, `bbox`…), with their index in the layer.
fn queryable_fields(layer: &Layer) -> impl Iterator<Item = (usize, &String)> {
    layer
        .fields
        .iter()
        .enumerate()
        .filter(|(_, f)| !RESERVED.contains(&f.as_str()))
}

fn openapi(base: &str, collections: &[Collection]) -> Value {
    let collection_id = json!({"name": "collectionId", "in": "path", "required": true, "schema": {"type": "string"}});
    let json_ok = |description: &str, media: &str| json!({"200": {"description": description, "content": {media: {"schema": {"type": "object"}}}}, "400": {"description": "bad request"}, "404": {"description": "not found"}});
    let paging = [
        json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}}),
        json!({"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}}),
        json!({"name": "bbox", "in": "query", "style": "form", "explode": false, "schema": {"type": "array", "minItems": 4, "maxItems": 6, "items": {"type": "number"}}}),
        json!({"name": "filter", "in": "query", "description": "a CQL2 text filter on the properties", "schema": {"type": "string"}}),
        json!({"name": "filter-lang", "in": "query", "schema": {"type": "string", "enum": ["cql2-text"], "default": "cql2-text"}}),
        json!({"name": "resultType", "in": "query", "description": "hits: the count alone", "schema": {"type": "string", "enum": ["results", "hits"], "default": "results"}}),
    ];
    let mut paths = json!({
        "/": {"get": {"summary": "Landing page", "operationId": "getLandingPage", "responses": json_ok("links to the API", "application/json")}},
        "/conformance": {"get": {"summary": "Conformance classes", "operationId": "getConformance", "responses": json_ok("conformance classes", "application/json")}},
        "/collections": {"get": {"summary": "Collections", "operationId": "getCollections", "responses": json_ok("the collections", "application/json")}},
        "/collections/{collectionId}": {"get": {"summary": "A collection", "operationId": "describeCollection", "parameters": [collection_id], "responses": json_ok("the collection", "application/json")}},
        "/collections/{collectionId}/queryables": {"get": {"summary": "The queryable properties of a collection", "operationId": "getQueryables", "parameters": [collection_id], "responses": json_ok("a JSON Schema of the properties", "application/schema+json")}},
        "/collections/{collectionId}/items": {"get": {
            "summary": "Features of a collection",
            "operationId": "getFeatures",
            "parameters": [collection_id, paging[0], paging[1], paging[2], paging[3], paging[4], paging[5]],
            "responses": json_ok("a page of features", "application/geo+json"),
        }},
        "/collections/{collectionId}/items/{featureId}": {"get": {
            "summary": "One feature",
            "operationId": "getFeature",
            "parameters": [collection_id, {"name": "featureId", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": json_ok("the feature", "application/geo+json"),
        }},
    });
    // Each collection's items with its properties as parameters: what clients such as GDAL's
    // OAPIF driver read to send attribute filters to the server rather than page through
    // everything.
    for c in collections {
        let mut parameters: Vec<Value> = paging.to_vec();
        for (i, field) in queryable_fields(&c.layer) {
            parameters.push(json!({
                "name": field,
                "in": "query",
                "required": false,
                "description": format!("features whose {field} equals this value"),
                "schema": {"type": c.layer.json_type(i)},
                "style": "form",
                "explode": false,
            }));
        }
        paths[format!("/collections/{}/items", c.id)] = json!({"get": {
            "summary": format!("Features of {}", c.id),
            "operationId": format!("getFeatures.{}", c.id),
            "parameters": parameters,
            "responses": json_ok("a page of features", "application/geo+json"),
        }});
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Pozi Server", "version": env!("CARGO_PKG_VERSION"), "description": "OGC API Features (Part 1: Core, GeoJSON; Part 3: queryables)"},
        "servers": [{"url": base}],
        "paths": paths,
    })
}
