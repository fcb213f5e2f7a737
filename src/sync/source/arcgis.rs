//! `arcgis` sources: an ArcGIS REST FeatureServer or MapServer layer. The layer's metadata
//! says its fields, page size and whether it pages; pages are fetched several at once (in
//! order) with `resultOffset`/`resultRecordCount`, or, where the server does not page, by
//! batches of object ids. Features are asked for in WGS 84 (`outSR=4326`), as GeoJSON where
//! the server offers it, else as Esri JSON and converted here. They are written as
//! newline-delimited GeoJSON in the job's state folder and staged from there.

use std::io::Write;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use serde_json::{Map, Value, json};

use super::Staged;
use crate::config::sync::{SyncJob, SyncSource};
use crate::gis::source::gpkg_write::{Field, FieldType, LayerWriter};
use crate::sync::{JobPaths, Progress, SyncError};

use super::MAX_PAGE_BYTES;

/// A layer's metadata, as far as paging needs it.
struct Layer {
    max_records: u64,
    paginates: bool,
    geojson: bool,
    /// The object id field, which pages are ordered by.
    oid: Option<String>,
    /// Fields holding dates (epoch milliseconds), written as ISO 8601 text.
    dates: Vec<String>,
    /// The attribute fields the metadata lists (name, type, whether a date), geometry and
    /// binary fields left out.
    fields: Vec<(String, FieldType, bool)>,
}

struct Client {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Client {
    /// GETs `url/<path>` with `params` (and the token, `f` as given) and reads the JSON,
    /// refusing an ArcGIS error document inside a 200.
    async fn get(&self, path: &str, params: &[(&str, String)]) -> Result<Vec<u8>, SyncError> {
        let mut request = self
            .http
            .get(format!("{}{path}", self.url.trim_end_matches('/')))
            .query(params);
        if let Some(token) = &self.token {
            request = request.query(&[("token", token)]);
        }
        let response = request.send().await.map_err(super::request_error)?;
        read_body(response).await
    }

    /// POSTs a query form (used for object-id batches, which may be long).
    async fn post(&self, path: &str, params: &[(&str, String)]) -> Result<Vec<u8>, SyncError> {
        let mut form: Vec<(&str, String)> = params.to_vec();
        if let Some(token) = &self.token {
            form.push(("token", token.clone()));
        }
        let response = self
            .http
            .post(format!("{}{path}", self.url.trim_end_matches('/')))
            .form(&form)
            .send()
            .await
            .map_err(super::request_error)?;
        read_body(response).await
    }

    /// [`Client::get`] read as JSON.
    async fn get_json(&self, path: &str, params: &[(&str, String)]) -> Result<Value, SyncError> {
        json(&self.get(path, params).await?)
    }
}

/// An answer's body, within [`MAX_PAGE_BYTES`], refused when it is an ArcGIS error document
/// (which servers send with status 200).
async fn read_body(response: reqwest::Response) -> Result<Vec<u8>, SyncError> {
    let status = response.status();
    if !status.is_success() {
        return Err(SyncError::Source(format!("the server answered {status}")));
    }
    let body = super::body_within(response, MAX_PAGE_BYTES).await?;
    // Only the `error` member is read here; the rest is skipped.
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Option<Value>,
    }
    let envelope: Envelope = serde_json::from_slice(&body)
        .map_err(|e| SyncError::Source(format!("the answer is not JSON: {e}")))?;
    if let Some(error) = envelope.error {
        let code = error.get("code").map(Value::to_string).unwrap_or_default();
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no message");
        let details = error
            .get("details")
            .and_then(Value::as_array)
            .map(|d| {
                d.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .filter(|d| !d.is_empty())
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        return Err(SyncError::Source(format!(
            "ArcGIS error {code}: {message}{details}"
        )));
    }
    Ok(body)
}

fn json(body: &[u8]) -> Result<Value, SyncError> {
    serde_json::from_slice(body)
        .map_err(|e| SyncError::Source(format!("the answer is not JSON: {e}")))
}

/// What a GeoJSON page says besides its features.
#[derive(serde::Deserialize)]
struct PageTail {
    #[serde(default)]
    features: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "exceededTransferLimit")]
    exceeded: Option<bool>,
    #[serde(default)]
    properties: Option<PageProperties>,
}

#[derive(serde::Deserialize)]
struct PageProperties {
    #[serde(default, rename = "exceededTransferLimit")]
    exceeded: Option<bool>,
}

fn layer_of(meta: &Value) -> Layer {
    let formats = meta
        .get("supportedQueryFormats")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let paginates = meta
        .pointer("/advancedQueryCapabilities/supportsPagination")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let dates = meta
        .get("fields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|f| f.get("type").and_then(Value::as_str) == Some("esriFieldTypeDate"))
        .filter_map(|f| f.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    Layer {
        max_records: meta
            .get("maxRecordCount")
            .and_then(Value::as_u64)
            .filter(|n| *n > 0)
            .unwrap_or(1000),
        paginates,
        oid: meta
            .get("objectIdField")
            .and_then(Value::as_str)
            .map(str::to_owned),
        geojson: formats.split(',').any(|f| f.trim() == "geojson"),
        dates,
        fields: meta
            .get("fields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|f| {
                let name = f.get("name")?.as_str()?.to_owned();
                let (kind, date) = match f.get("type")?.as_str()? {
                    "esriFieldTypeOID"
                    | "esriFieldTypeInteger"
                    | "esriFieldTypeSmallInteger"
                    | "esriFieldTypeBigInteger" => (FieldType::Integer, false),
                    "esriFieldTypeDouble" | "esriFieldTypeSingle" => (FieldType::Real, false),
                    "esriFieldTypeDate" => (FieldType::Text, true),
                    "esriFieldTypeGeometry" | "esriFieldTypeBlob" | "esriFieldTypeRaster" => {
                        return None;
                    }
                    _ => (FieldType::Text, false),
                };
                Some((name, kind, date))
            })
            .collect(),
    }
}

/// Reads an ArcGIS layer into the stage.
pub(super) fn stage(
    job: &SyncJob,
    paths: &JobPaths,
    layer: &str,
    progress: &Progress,
) -> Result<Staged, SyncError> {
    let SyncSource::Arcgis {
        url,
        token_env,
        concurrency,
        page_size,
        r#where,
    } = &job.source
    else {
        return Err(SyncError::Source("not an arcgis source".to_owned()));
    };
    let client = Client {
        http: super::client()?,
        url: url.clone(),
        token: token_env.as_deref().map(super::secret).transpose()?,
    };
    let filter = r#where.as_deref().unwrap_or("1=1");
    let runtime = super::runtime()?;
    let meta = runtime.block_on(client.get_json("", &[("f", "json".to_owned())]))?;
    let info = layer_of(&meta);
    let concurrency = (*concurrency).max(1);
    if !info.fields.is_empty() {
        // The fields are known: pages are written into the stage as they arrive, in order.
        let fields: Vec<Field> = info
            .fields
            .iter()
            .map(|(name, kind, _)| Field {
                name: name.clone(),
                kind: *kind,
            })
            .collect();
        let publish =
            |e: crate::gis::source::gpkg_write::WriteError| SyncError::Publish(e.to_string());
        let mut writer =
            LayerWriter::create(&paths.beside("stage"), layer, 4326, &fields).map_err(publish)?;
        let mut bytes = 0u64;
        runtime.block_on(fetch_all(
            &client,
            &info,
            concurrency,
            *page_size,
            filter,
            |page| {
                bytes += page.len() as u64;
                progress.bytes.store(bytes, Ordering::Relaxed);
                let (n, more) = rows_into(&mut writer, &info, page)?;
                progress.row(n as u64);
                Ok((n, more))
            },
        ))?;
        let rows = writer.finish().map_err(publish)?;
        return Ok(Staged::Rows {
            rows,
            bytes,
            validators: None,
        });
    }
    // Without a field list, the features go to newline-delimited GeoJSON and are staged from
    // there (the reader finds the columns).
    let lines = paths.state.join("arcgis.ndjson");
    let written = runtime.block_on(lines_of(
        &client,
        &info,
        concurrency,
        *page_size,
        filter,
        &lines,
        progress,
    ));
    super::stage_lines(written, &lines, paths, layer, progress)
}

/// Fetches every feature of the layer, page by page in order, handing each page (the body as
/// sent) to `write`, which says how many features it held and whether the server has more.
async fn fetch_all(
    client: &Client,
    layer: &Layer,
    concurrency: usize,
    page_size: Option<u64>,
    filter: &str,
    mut write: impl FnMut(&[u8]) -> Result<(usize, bool), SyncError>,
) -> Result<(), SyncError> {
    let size = page_size
        .unwrap_or(layer.max_records)
        .min(layer.max_records)
        .max(1);
    let format = if layer.geojson { "geojson" } else { "json" };
    let base = |extra: Vec<(&'static str, String)>| {
        let mut params = vec![
            ("where", filter.to_owned()),
            ("outFields", "*".to_owned()),
            ("outSR", "4326".to_owned()),
            ("returnGeometry", "true".to_owned()),
            ("f", format.to_owned()),
        ];
        params.extend(extra);
        params
    };
    if layer.paginates {
        let count = client
            .get_json(
                "/query",
                &[
                    ("where", filter.to_owned()),
                    ("returnCountOnly", "true".to_owned()),
                    ("f", "json".to_owned()),
                ],
            )
            .await?
            .get("count")
            .and_then(Value::as_u64)
            .ok_or_else(|| SyncError::Source("the count answer has no `count`".to_owned()))?;
        let pages = count.div_ceil(size);
        let mut offset = pages * size;
        let mut stream = futures::stream::iter(0..pages)
            .map(|n| {
                let mut extra = vec![
                    ("resultOffset", (n * size).to_string()),
                    ("resultRecordCount", size.to_string()),
                ];
                // A stable order, so that pages neither overlap nor skip rows.
                if let Some(oid) = &layer.oid {
                    extra.push(("orderByFields", oid.clone()));
                }
                let params = base(extra);
                async move { client.get("/query", &params).await }
            })
            .buffered(concurrency);
        let mut more = false;
        while let Some(page) = stream.next().await {
            more = write(&page?)?.1;
        }
        // Rows added since the count: go on one page at a time while the server says so.
        while more {
            let page = client
                .get(
                    "/query",
                    &base(vec![
                        ("resultOffset", offset.to_string()),
                        ("resultRecordCount", size.to_string()),
                    ]),
                )
                .await?;
            let (n, again) = write(&page)?;
            more = again && n > 0;
            offset += size;
        }
    } else {
        let ids = client
            .get_json(
                "/query",
                &[
                    ("where", filter.to_owned()),
                    ("returnIdsOnly", "true".to_owned()),
                    ("f", "json".to_owned()),
                ],
            )
            .await?;
        let mut ids: Vec<i64> = ids
            .get("objectIds")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();
        ids.sort_unstable();
        let batches: Vec<String> = ids
            .chunks(usize::try_from(size).unwrap_or(1000))
            .map(|c| {
                c.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        let mut stream = futures::stream::iter(batches)
            .map(|batch| {
                let params = base(vec![("objectIds", batch)]);
                async move { client.post("/query", &params).await }
            })
            .buffered(concurrency);
        while let Some(page) = stream.next().await {
            write(&page?)?;
        }
    }
    Ok(())
}

/// Fetches every feature into newline-delimited GeoJSON at `lines`; returns the bytes written.
async fn lines_of(
    client: &Client,
    layer: &Layer,
    concurrency: usize,
    page_size: Option<u64>,
    filter: &str,
    lines: &std::path::Path,
    progress: &Progress,
) -> Result<u64, SyncError> {
    let fail = |e: std::io::Error| SyncError::Source(format!("{}: {e}", lines.display()));
    let mut out = std::io::BufWriter::new(std::fs::File::create(lines).map_err(fail)?);
    let mut bytes = 0u64;
    let mut write = |page: &[u8]| -> Result<(usize, bool), SyncError> {
        let (n, more) = if layer.geojson && layer.dates.is_empty() {
            // GeoJSON features go to the lines as the server wrote them, not parsed here.
            let tail: PageTail = serde_json::from_slice(page)
                .map_err(|e| SyncError::Source(format!("a page is not JSON: {e}")))?;
            if tail.features.is_none() {
                return Err(SyncError::Source("a page has no `features`".to_owned()));
            }
            let mut n = 0;
            for feature in crate::gis::source::json_split::FeatureBytes::new(page) {
                let mut feature = feature.map_err(|e| SyncError::Source(format!("a page: {e}")))?;
                // Line breaks outside strings are white space (inside, JSON escapes them).
                for b in &mut feature {
                    if *b == b'\n' || *b == b'\r' {
                        *b = b' ';
                    }
                }
                feature.push(b'\n');
                bytes += feature.len() as u64;
                out.write_all(&feature).map_err(fail)?;
                n += 1;
            }
            let more = tail
                .exceeded
                .or(tail.properties.and_then(|p| p.exceeded))
                .unwrap_or(false);
            (n, more)
        } else {
            let page = json(page)?;
            let features = page
                .get("features")
                .and_then(Value::as_array)
                .ok_or_else(|| SyncError::Source("a page has no `features`".to_owned()))?;
            for feature in features {
                let line = if layer.geojson {
                    geojson_feature(feature, &layer.dates)
                } else {
                    esri_feature(feature, &layer.dates)?
                };
                let text = line.to_string();
                bytes += text.len() as u64 + 1;
                writeln!(out, "{text}").map_err(fail)?;
            }
            let more = page
                .get("exceededTransferLimit")
                .or_else(|| page.pointer("/properties/exceededTransferLimit"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            (features.len(), more)
        };
        progress.row(n as u64);
        progress.bytes.store(bytes, Ordering::Relaxed);
        Ok((n, more))
    };
    fetch_all(client, layer, concurrency, page_size, filter, &mut write).await?;
    out.flush().map_err(fail)?;
    Ok(bytes)
}

/// Writes a page's features into the stage: attributes by the metadata's fields (dates as
/// ISO 8601 text), geometries from GeoJSON or Esri JSON. Returns how many, and whether the
/// server has more.
fn rows_into(
    writer: &mut LayerWriter,
    layer: &Layer,
    page: &[u8],
) -> Result<(usize, bool), SyncError> {
    #[derive(serde::Deserialize)]
    struct Page {
        features: Vec<Feature>,
        #[serde(default, rename = "exceededTransferLimit")]
        exceeded: Option<bool>,
        #[serde(default)]
        properties: Option<PageProperties>,
    }
    #[derive(serde::Deserialize)]
    struct Feature {
        #[serde(default)]
        properties: Option<serde_json::Map<String, Value>>,
        #[serde(default)]
        attributes: Option<serde_json::Map<String, Value>>,
        #[serde(default)]
        geometry: Option<Value>,
    }
    let page: Page = serde_json::from_slice(page)
        .map_err(|e| SyncError::Source(format!("a page is not a feature collection: {e}")))?;
    let n = page.features.len();
    for feature in page.features {
        let attributes = if layer.geojson {
            feature.properties
        } else {
            feature.attributes
        }
        .unwrap_or_default();
        let values = layer
            .fields
            .iter()
            .map(|(name, kind, is_date)| {
                let value = attributes.get(name).unwrap_or(&Value::Null);
                match (value, kind) {
                    (Value::Null, _) => rusqlite::types::Value::Null,
                    (v, _) if *is_date => match date(v) {
                        Value::String(t) => rusqlite::types::Value::Text(t),
                        _ => rusqlite::types::Value::Null,
                    },
                    (Value::Bool(b), _) => rusqlite::types::Value::Integer(i64::from(*b)),
                    (Value::Number(n), FieldType::Integer) => n
                        .as_i64()
                        .map(rusqlite::types::Value::Integer)
                        .or_else(|| n.as_f64().map(rusqlite::types::Value::Real))
                        .unwrap_or(rusqlite::types::Value::Null),
                    (Value::Number(n), FieldType::Real) => n
                        .as_f64()
                        .map_or(rusqlite::types::Value::Null, rusqlite::types::Value::Real),
                    (Value::String(t), _) => rusqlite::types::Value::Text(t.clone()),
                    (other, _) => rusqlite::types::Value::Text(other.to_string()),
                }
            })
            .collect();
        let geometry = match feature.geometry {
            None | Some(Value::Null) => None,
            Some(g) if layer.geojson => {
                let g: geojson::Geometry = serde_json::from_value(g)
                    .map_err(|e| SyncError::Source(format!("a feature's geometry: {e}")))?;
                Some(
                    geo::Geometry::<f64>::try_from(g.value)
                        .map_err(|e| SyncError::Source(format!("a feature's geometry: {e}")))?,
                )
            }
            Some(g) => esri_geometry(&g)?,
        };
        writer
            .add(values, geometry.as_ref())
            .map_err(|e| SyncError::Publish(e.to_string()))?;
    }
    let more = page
        .exceeded
        .or(page.properties.and_then(|p| p.exceeded))
        .unwrap_or(false);
    Ok((n, more))
}

/// An ISO 8601 UTC time for epoch milliseconds.
fn date(value: &Value) -> Value {
    value
        .as_i64()
        .or_else(|| value.as_f64().map(|f| f as i64))
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or(Value::Null, |t| {
            Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        })
}

fn with_dates(properties: Option<&Value>, dates: &[String]) -> Value {
    let mut properties: Map<String, Value> = properties
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for name in dates {
        if let Some(v) = properties.get_mut(name) {
            *v = date(v);
        }
    }
    Value::Object(properties)
}

fn geojson_feature(feature: &Value, dates: &[String]) -> Value {
    json!({
        "type": "Feature",
        "properties": with_dates(feature.get("properties"), dates),
        "geometry": feature.get("geometry").cloned().unwrap_or(Value::Null),
    })
}

fn esri_feature(feature: &Value, dates: &[String]) -> Result<Value, SyncError> {
    let geometry = match feature.get("geometry") {
        Some(g) if !g.is_null() => esri_geometry(g)?
            .and_then(|g| serde_json::to_value(geojson::Geometry::from(&g)).ok())
            .unwrap_or(Value::Null),
        _ => Value::Null,
    };
    Ok(json!({
        "type": "Feature",
        "properties": with_dates(feature.get("attributes"), dates),
        "geometry": geometry,
    }))
}

fn coords(value: &Value) -> Option<Vec<geo::Coord<f64>>> {
    value
        .as_array()?
        .iter()
        .map(|p| {
            let p = p.as_array()?;
            Some(geo::coord! { x: p.first()?.as_f64()?, y: p.get(1)?.as_f64()? })
        })
        .collect()
}

fn parts(value: Option<&Value>) -> Option<Vec<Vec<geo::Coord<f64>>>> {
    value?.as_array()?.iter().map(coords).collect()
}

/// An Esri JSON geometry as a `geo` geometry: points, multipoints, paths and rings (clockwise
/// rings are exterior, counter-clockwise ones holes of the exterior that holds them).
pub(crate) fn esri_geometry(g: &Value) -> Result<Option<geo::Geometry<f64>>, SyncError> {
    use geo::{Contains, Geometry, LineString, MultiLineString, MultiPoint, Point, Polygon};
    let bad = || {
        SyncError::Source(
            format!("not an Esri JSON geometry: {g}")
                .chars()
                .take(300)
                .collect(),
        )
    };
    if let Some(x) = g.get("x") {
        return match (x.as_f64(), g.get("y").and_then(Value::as_f64)) {
            (Some(x), Some(y)) => Ok(Some(Geometry::Point(Point::new(x, y)))),
            _ => Ok(None), // "NaN" or null: an empty point
        };
    }
    if let Some(points) = g.get("points") {
        let points = coords(points).ok_or_else(bad)?;
        return Ok(Some(Geometry::MultiPoint(MultiPoint(
            points.into_iter().map(Point::from).collect(),
        ))));
    }
    if g.get("paths").is_some() {
        let mut lines: Vec<LineString<f64>> = parts(g.get("paths"))
            .ok_or_else(bad)?
            .into_iter()
            .map(LineString::from)
            .collect();
        return Ok(match lines.len() {
            0 => None,
            1 => lines.pop().map(Geometry::LineString),
            _ => Some(Geometry::MultiLineString(MultiLineString(lines))),
        });
    }
    if g.get("rings").is_some() {
        let rings = parts(g.get("rings")).ok_or_else(bad)?;
        let mut shells: Vec<Polygon<f64>> = Vec::new();
        let mut holes: Vec<LineString<f64>> = Vec::new();
        for ring in rings {
            let ring = LineString::from(ring);
            if ring.0.len() < 4 {
                continue;
            }
            // Shoelace: negative area is clockwise (in x-east, y-north coordinates).
            let twice_area: f64 = ring
                .lines()
                .map(|l| l.start.x * l.end.y - l.end.x * l.start.y)
                .sum();
            if twice_area <= 0.0 {
                shells.push(Polygon::new(ring, Vec::new()));
            } else {
                holes.push(ring);
            }
        }
        for hole in holes {
            let inside = hole.0.first().copied();
            match shells
                .iter_mut()
                .find(|s| inside.is_some_and(|p| s.contains(&Point::from(p))))
            {
                Some(shell) => shell.interiors_push(hole),
                // A hole in no shell: kept as a shell of its own, as GDAL does.
                None => shells.push(Polygon::new(hole, Vec::new())),
            }
        }
        return Ok(match shells.len() {
            0 => None,
            1 => shells.pop().map(Geometry::Polygon),
            _ => Some(Geometry::MultiPolygon(geo::MultiPolygon(shells))),
        });
    }
    Err(bad())
}
