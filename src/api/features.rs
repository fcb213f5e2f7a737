//! OGC API Features (Part 1: Core, GeoJSON) under `/features/`: the landing page, conformance,
//! the OpenAPI document, collections (the layers of the datasets in the request host's folder),
//! paged items with `bbox`, `limit`, `offset` and property filters, and single items.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};
use serde_json::{Value, json};

use super::error::ApiError;
use super::reply::geojson;
use super::reply::{Response, json};
use crate::gis::query::limits::QueryError;
use crate::gis::query::plan::{
    BoxMatch, Condition, Count, Filter, Members, Plan, crs84_extent, cut,
};
use crate::gis::query::reproject::Reprojector;
use crate::gis::query::run::{box_page, count, execute, lookup};
use crate::gis::store::{Catalog, Dataset, Layer};

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
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions-plus",
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

/// Answers a request under `/features`; `rest` is the path after it, `query` its parameters.
///
/// # Errors
/// A bad query, an unknown collection or feature, or a dataset or query that failed.
pub async fn answer(
    catalog: Arc<Catalog>,
    context: RequestContext<'_>,
    rest: &str,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let base = format!("{}/features", context.base);
    let parts: Vec<&str> = rest
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let find = |id: &str| {
        let (catalog, folder, id) = (catalog.clone(), context.folder.clone(), id.to_owned());
        async move {
            collections(&catalog, &folder)
                .await?
                .into_iter()
                .find(|c| c.id == id)
                .ok_or_else(|| ApiError::not_found("no such collection", id))
        }
    };
    Ok(match parts.as_slice() {
        [] => json(StatusCode::OK, &landing(&base), "application/json"),
        ["conformance"] => json(
            StatusCode::OK,
            &json!({ "conformsTo": CONFORMANCE }),
            "application/json",
        ),
        ["api"] => {
            let list = collections(&catalog, &context.folder).await?;
            json(
                StatusCode::OK,
                &openapi(&base, &list),
                "application/vnd.oai.openapi+json;version=3.0",
            )
        }
        ["collections"] => {
            let collections = collections(&catalog, &context.folder).await?;
            let list: Vec<Value> = collections.iter().map(|c| describe(c, &base)).collect();
            let body = json!({
                "links": [
                    {"href": format!("{base}/collections"), "rel": "self", "type": "application/json", "title": "collections"},
                ],
                "collections": list,
            });
            json(StatusCode::OK, &body, "application/json")
        }
        ["collections", id] => json(
            StatusCode::OK,
            &describe(&find(id).await?, &base),
            "application/json",
        ),
        ["collections", id, "items"] => {
            items(&catalog, find(id).await?, &base, query, context.headers).await?
        }
        ["collections", id, "queryables"] => json(
            StatusCode::OK,
            &queryables(&find(id).await?, &base),
            "application/schema+json",
        ),
        ["collections", id, "items", feature] => {
            item(&catalog, find(id).await?, &base, feature).await?
        }
        _ => return Err(ApiError::not_found("not found", rest)),
    })
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
    let found = tokio::task::spawn_blocking(move || listing.listings.geopackages_in(&folder))
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

/// What an items request asks, its parameters checked.
struct ItemsQuery {
    limit: u64,
    offset: u64,
    /// `bbox` as boxes in CRS84 (two when it crosses the antimeridian).
    bbox: Option<Vec<[f64; 4]>>,
    /// Property parameters and the CQL2 filter.
    conditions: Vec<Condition>,
    /// `resultType=hits`: the count alone.
    hits: bool,
}

impl ItemsQuery {
    /// The parameters of `query` for `layer`, or a `400` naming what is wrong.
    fn parse(query: &HashMap<String, String>, layer: &Layer) -> Result<Self, ApiError> {
        let bad = |detail: String| ApiError::bad_request("bad query", detail);
        let limit = match query.get("limit").map(|l| l.parse::<u64>()) {
            None => DEFAULT_LIMIT,
            Some(Ok(n)) if n >= 1 => n.min(MAX_LIMIT),
            Some(_) => {
                return Err(bad(format!(
                    "limit must be a whole number from 1 to {MAX_LIMIT}"
                )));
            }
        };
        // SQLite's OFFSET is a signed 64-bit integer.
        let offset = match query.get("offset").map(|o| o.parse::<u64>()) {
            None => 0,
            Some(Ok(n)) if i64::try_from(n).is_ok() => n,
            Some(_) => {
                return Err(bad(format!(
                    "offset must be a whole number from 0 to {}",
                    i64::MAX
                )));
            }
        };
        let bbox = query
            .get("bbox")
            .map(|b| parse_bbox(b))
            .transpose()
            .map_err(bad)?;
        if let Some(crs) = query.get("bbox-crs").or_else(|| query.get("crs"))
            && crs != CRS84
        {
            return Err(bad(format!("only {CRS84} is supported")));
        }
        if let Some(f) = query.get("f")
            && !["json", "geojson"].contains(&f.as_str())
        {
            return Err(bad(format!("f={f}: only json is served")));
        }
        let mut conditions = Vec::new();
        let mut filters: Vec<(&String, &String)> = query
            .iter()
            .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
            .collect();
        filters.sort();
        for (name, value) in filters {
            if !layer.fields.contains(name) {
                return Err(bad(format!(
                    "unknown parameter or property {name:?}; properties: {}",
                    layer.fields.join(", ")
                )));
            }
            conditions.push(Condition::Equals {
                field: name.clone(),
                value: value.clone(),
            });
        }
        // A CQL2 text filter (OGC API Features Part 3).
        if let Some(filter) = query.get("filter") {
            if let Some(lang) = query.get("filter-lang")
                && lang != "cql2-text"
            {
                return Err(bad(format!(
                    "filter-lang={lang}: only cql2-text is supported"
                )));
            }
            if let Some(crs) = query.get("filter-crs")
                && crs != CRS84
            {
                return Err(bad(format!("filter-crs: only {CRS84} is supported")));
            }
            conditions.push(Condition::Cql2(filter.clone()));
        } else if query.contains_key("filter-lang") {
            return Err(bad("filter-lang without a filter".to_owned()));
        }
        // `resultType=hits` (as WFS has it, and GDAL's OAPIF driver asks when the API lists
        // it): the count alone.
        let hits = match query.get("resultType").map(String::as_str) {
            None | Some("results") => false,
            Some("hits") => true,
            Some(other) => return Err(bad(format!("resultType={other}: results or hits"))),
        };
        Ok(Self {
            limit,
            offset,
            bbox,
            conditions,
            hits,
        })
    }
}

async fn items(
    catalog: &Arc<Catalog>,
    c: Collection,
    base: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let bad = |detail: String| ApiError::bad_request("bad query", detail);
    let layer = &c.layer;
    let asked = ItemsQuery::parse(query, layer)?;
    let (limit, offset) = (asked.limit, asked.offset);
    let reproject = Reprojector::for_srs(layer.srs_id).map_err(|e| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "cannot reproject",
            Some(e.to_string()),
        )
    })?;
    let filter = Filter::new(layer, &asked.conditions, reproject.as_deref())
        .map_err(|e| bad(e.to_string()))?;
    let shapes = filter.shapes().to_vec();
    // The box is in CRS84; the index is in the layer's system. A projection holds only
    // near its zone (a world box's corners land anywhere), so the box is first cut to the
    // layer's own extent in CRS84; a box missing the extent meets nothing.
    let bbox = match &reproject {
        Some(r) => match asked.bbox {
            Some(boxes) => {
                let extent = crs84_extent(layer, r);
                let inside: Vec<[f64; 4]> =
                    boxes.into_iter().filter_map(|b| cut(b, extent)).collect();
                if inside.is_empty() {
                    // An empty page: no box of the request meets the layer.
                    Some(Vec::new())
                } else {
                    Some(
                        inside
                            .into_iter()
                            .map(|b| r.bbox_from_wgs84(b))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| bad(e.to_string()))?,
                    )
                }
            }
            None => None,
        },
        None => asked.bbox,
    };
    // With a box or a geometry, each candidate is tested on its geometry (as GDAL tests
    // `-spat`), which gives the count and the page's fids at once; without, SQL counts and
    // pages.
    let (matched, page_fids) = if bbox.as_ref().is_some_and(Vec::is_empty) {
        (0, Some(Vec::new()))
    } else if bbox.is_none() && shapes.is_empty() {
        let n = count(catalog, c.dataset.clone(), Count::matching(layer, &filter)).await?;
        (n, None)
    } else {
        let matching = BoxMatch::new(layer, bbox.as_deref().unwrap_or_default(), shapes, &filter);
        let (n, fids) = box_page(catalog, c.dataset.clone(), matching, offset, limit).await?;
        (n, Some(fids))
    };
    if asked.hits {
        return Ok(json(
            StatusCode::OK,
            &json!({
                "type": "FeatureCollection",
                "features": [],
                "numberMatched": matched,
                "numberReturned": 0,
            }),
            "application/geo+json",
        ));
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
        let mut response = Response::default();
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        if let Ok(v) = HeaderValue::from_str(&etag) {
            response.headers_mut().insert(header::ETAG, v);
        }
        return Ok(response);
    }
    let plan = match page_fids {
        Some(fids) => Plan::fids(layer, &fids, &c.id),
        None => Plan::page(layer, &filter, limit, offset, &c.id),
    };
    let href = format!("{base}/collections/{}/items", c.id);
    let members = page_members(&href, query, limit, offset, matched);
    let plan = plan.reprojected(reproject).with_members(members);
    let stream = execute(catalog, c.dataset.clone(), plan, None).await?;
    let mut response = geojson(stream, encoding);
    if let Ok(v) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, v);
    }
    Ok(response)
}

/// What follows the features of a page: `numberReturned`, links to this page and the next and
/// previous ones, `numberMatched` and `timeStamp`.
fn page_members(
    href: &str,
    query: &HashMap<String, String>,
    limit: u64,
    offset: u64,
    matched: u64,
) -> Members {
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
    Box::new(move |returned: u64| {
        let mut links = vec![
            json!({"href": self_link, "rel": "self", "type": "application/geo+json", "title": "this page"}),
        ];
        if offset.saturating_add(returned) < matched {
            links.push(json!({"href": next_link, "rel": "next", "type": "application/geo+json", "title": "next page"}));
        }
        if let Some(prev) = prev_link {
            links.push(json!({"href": prev, "rel": "prev", "type": "application/geo+json", "title": "previous page"}));
        }
        vec![
            ("numberReturned", Value::from(returned)),
            ("links", Value::Array(links)),
            ("numberMatched", Value::from(matched)),
            ("timeStamp", Value::from(chrono::Utc::now().to_rfc3339())),
        ]
    })
}

async fn item(
    catalog: &Arc<Catalog>,
    c: Collection,
    base: &str,
    feature: &str,
) -> Result<Response, ApiError> {
    let no_such = || ApiError::not_found("no such feature", feature);
    let Ok(fid) = feature.parse::<i64>() else {
        return Err(no_such());
    };
    let layer = &c.layer;
    let exists = count(catalog, c.dataset.clone(), Count::fid(layer, fid)).await?;
    if exists != 1 {
        return Err(no_such());
    }
    let href = format!("{base}/collections/{}/items/{fid}", c.id);
    let collection = format!("{base}/collections/{}", c.id);
    let plan = Plan::feature(layer, fid, &c.id)
        .reprojected(Reprojector::for_srs(layer.srs_id).ok().flatten());
    // One feature, read through the same writer, then unwrapped from its collection.
    let body = {
        use futures::StreamExt;
        let stream = execute(catalog, c.dataset.clone(), plan, Some(1)).await?;
        let chunks: Vec<_> = stream.collect().await;
        let bytes: Vec<u8> = chunks
            .into_iter()
            .filter_map(Result::ok)
            .flat_map(|b| b.to_vec())
            .collect();
        serde_json::from_slice::<Value>(&bytes).ok()
    };
    let Some(mut feature) = body.and_then(|mut b| b["features"].get_mut(0).map(Value::take)) else {
        return Err(no_such());
    };
    feature["links"] = json!([
        {"href": href, "rel": "self", "type": "application/geo+json", "title": "this feature"},
        {"href": collection, "rel": "collection", "type": "application/json", "title": "the collection"},
    ]);
    Ok(json(StatusCode::OK, &feature, "application/geo+json"))
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
        json!({"name": "filter", "in": "query", "description": "a CQL2 text filter on the properties and S_INTERSECTS(geometry, <WKT or BBOX>)", "schema": {"type": "string"}}),
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
