//! Sync jobs through the real binary: `poziserver sync run` on a temporary root (in its own
//! process, and through a running server's admin API), against local files and loopback HTTP
//! servers shaped like a plain web server, ArcGIS REST and WFS 2.0, compared with what GDAL
//! reads from the same data. Failures must publish nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::gis::{flatten, test_data};
use common::process::{BIN, Process};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// What a loopback handler sees of a request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    query: HashMap<String, String>,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

type Handler = Arc<dyn Fn(&Seen) -> (u16, Vec<(String, String)>, Vec<u8>) + Send + Sync>;

/// A loopback HTTP server answering with `handler`; every request it saw is kept.
async fn loopback(handler: Handler) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let (handler, log) = (handler.clone(), log.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let (handler, log) = (handler.clone(), log.clone());
                    async move {
                        let path = request.uri().path().to_owned();
                        let mut query: HashMap<String, String> = request
                            .uri()
                            .query()
                            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                            .unwrap_or_default();
                        let headers = request
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (k.to_string(), v.to_str().unwrap_or_default().to_owned())
                            })
                            .collect();
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        query.extend(form_urlencoded::parse(&body).into_owned());
                        let seen = Seen {
                            path,
                            query,
                            headers,
                            body: body.to_vec(),
                        };
                        log.lock().unwrap().push(seen.clone());
                        let (status, headers, body) = handler(&seen);
                        let mut response = Response::builder().status(status);
                        for (k, v) in headers {
                            response = response.header(k, v);
                        }
                        Ok::<_, Infallible>(response.body(Full::new(Bytes::from(body))).unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A root with `config` (its `sync.jobs`), and the test data under `data/`.
fn root_with(config: &Value) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::create_dir_all(root.join("userdata/local")).unwrap();
    for name in [
        "naturalearth_cities.geojson",
        "naturalearth_lowres.gpkg",
        "naturalearth_cities.csv",
    ] {
        std::fs::copy(test_data(name), root.join("data").join(name)).unwrap();
    }
    std::fs::write(root.join("config.json"), config.to_string()).unwrap();
    (dir, root)
}

fn config(jobs: Value) -> Value {
    json!({ "listen": ["127.0.0.1:0"], "sync": { "jobs": jobs } })
}

/// `poziserver sync <args> --root <root>`: exit success, stdout, stderr.
async fn sync(root: &Path, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(BIN)
        .arg("sync")
        .args(args)
        .arg("--root")
        .arg(root)
        .env("PARCELS_KEY", "s3cret-value")
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// GDAL's reading of a file's first layer (or `layer`), as GeoJSON at full precision.
fn gdal_read(file: &Path, layer: Option<&str>) -> Value {
    let mut command = std::process::Command::new("ogr2ogr");
    command.args(["-f", "GeoJSON", "/vsistdout/"]).arg(file);
    if let Some(layer) = layer {
        command.arg(layer);
    }
    let output = command
        .output()
        .expect("ogr2ogr (gdal-bin) is needed by the tests");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Features keyed by `key`.
fn by_key(collection: &Value, key: &str) -> HashMap<String, Value> {
    collection["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["properties"][key].to_string(), f.clone()))
        .collect()
}

/// The same features (matched by `key`): the same properties, and the same vertices within
/// 1e-9 (as sorted sets: a ring may start elsewhere or turn the other way).
fn assert_same_data(ours: &Value, theirs: &Value, key: &str, what: &str) {
    let (a, b) = (by_key(ours, key), by_key(theirs, key));
    assert_eq!(a.len(), b.len(), "{what}: feature count");
    assert!(!a.is_empty(), "{what}: no features");
    for (k, x) in &a {
        let y = b.get(k).unwrap_or_else(|| panic!("{what}: {k} missing"));
        for (name, value) in y["properties"].as_object().unwrap() {
            let mine = &x["properties"][name];
            let equal = match (mine.as_f64(), value.as_f64()) {
                (Some(p), Some(q)) => (p - q).abs() <= 1e-9 * p.abs().max(1.0),
                _ => mine == value,
            };
            assert!(equal, "{what}: {k}.{name}: {mine} vs {value}");
        }
        let points = |g: &Value| {
            let mut v = Vec::new();
            flatten(&g["coordinates"], &mut v);
            v.sort_by(|p, q| p.partial_cmp(q).unwrap());
            v.dedup();
            v
        };
        let (p, q) = (points(&x["geometry"]), points(&y["geometry"]));
        assert_eq!(p.len(), q.len(), "{what}: {k}: vertex count");
        for (s, t) in p.iter().zip(&q) {
            assert!(
                (s.0 - t.0).abs() <= 1e-9 && (s.1 - t.1).abs() <= 1e-9,
                "{what}: {k}: {s:?} vs {t:?}"
            );
        }
    }
}

fn journal_runs(root: &Path, job: &str) -> Vec<(String, Option<String>)> {
    let c = rusqlite::Connection::open(root.join("state/sync.sqlite")).unwrap();
    let mut s = c
        .prepare("SELECT status, error FROM runs WHERE job = ?1 ORDER BY id")
        .unwrap();
    s.query_map([job], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn file_jobs_publish_what_gdal_reads_and_roll_back() {
    let (_dir, root) = root_with(&config(json!([
        {"name": "cities", "source": {"type": "file", "path": "data/naturalearth_cities.geojson"},
         "target": {"dataset": "local/cities.gpkg"}},
        {"name": "cities-csv", "source": {"type": "file", "path": "data/naturalearth_cities.csv",
           "open_options": {"X_POSSIBLE_NAMES": "X", "Y_POSSIBLE_NAMES": "Y"}},
         "target": {"dataset": "local/cities_csv.gpkg"}},
        {"name": "oceania", "source": {"type": "file", "path": "data/naturalearth_lowres.gpkg"},
         "transform": {"sql": "SELECT geom, name, iso_a3, pop_est * 2 AS double_pop FROM source WHERE continent = 'Oceania'"},
         "target": {"dataset": "local/oceania.gpkg", "layer": "oceania"}},
        {"name": "by-query", "source": {"type": "sqlite", "path": "data/naturalearth_lowres.gpkg",
           "query": "SELECT geom, name FROM naturalearth_lowres WHERE continent = 'Africa'"},
         "target": {"dataset": "local/africa.gpkg"}}
    ])));
    for job in ["cities", "cities-csv", "oceania", "by-query"] {
        let (ok, out, err) = sync(&root, &["run", job]).await;
        assert!(ok, "{job}: {out}{err}");
        assert!(
            out.contains(&format!("{job}: run")) && out.contains(" ok: "),
            "{out}"
        );
    }
    let cities = root.join("userdata/local/cities.gpkg");
    assert_same_data(
        &gdal_read(&cities, None),
        &gdal_read(&test_data("naturalearth_cities.geojson"), None),
        "name",
        "geojson file job",
    );
    let csv = gdal_read(&root.join("userdata/local/cities_csv.gpkg"), None);
    assert_eq!(csv["features"].as_array().unwrap().len(), 243);
    let oceania = gdal_read(&root.join("userdata/local/oceania.gpkg"), None);
    let expected = gdal_read(&test_data("naturalearth_lowres.gpkg"), None);
    let expected_oceania: Vec<&Value> = expected["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["properties"]["continent"] == "Oceania")
        .collect();
    let mine = by_key(&oceania, "iso_a3");
    assert_eq!(mine.len(), expected_oceania.len());
    for f in expected_oceania {
        let m = &mine[&f["properties"]["iso_a3"].to_string()];
        assert_eq!(m["properties"]["name"], f["properties"]["name"]);
        assert_eq!(
            m["properties"]["double_pop"].as_f64().unwrap(),
            f["properties"]["pop_est"].as_f64().unwrap() * 2.0
        );
    }
    let c = rusqlite::Connection::open(root.join("userdata/local/oceania.gpkg")).unwrap();
    let columns: Vec<String> = c
        .prepare("SELECT name FROM pragma_table_info('oceania')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        columns,
        vec!["fid", "geom", "name", "iso_a3", "double_pop"],
        "the transform's columns, in its order"
    );
    let africa = gdal_read(&root.join("userdata/local/africa.gpkg"), None);
    assert!(africa["features"].as_array().unwrap().len() > 40);

    // A second run keeps the first version; rollback puts it back, and a second rollback
    // undoes the first.
    let first = std::fs::read(&cities).unwrap();
    std::fs::write(
        root.join("data/naturalearth_cities.geojson"),
        json!({"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": {"name": "Only"}, "geometry": {"type": "Point", "coordinates": [1, 2]}}
        ]})
        .to_string(),
    )
    .unwrap();
    let (ok, out, err) = sync(&root, &["run", "cities"]).await;
    assert!(ok, "{out}{err}");
    assert_eq!(
        gdal_read(&cities, None)["features"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (ok, out, _) = sync(&root, &["rollback", "cities"]).await;
    assert!(ok && out.contains("previous version"), "{out}");
    assert_eq!(
        std::fs::read(&cities).unwrap(),
        first,
        "rollback restores the bytes"
    );
    let (ok, _, _) = sync(&root, &["rollback", "cities"]).await;
    assert!(ok);
    assert_eq!(
        gdal_read(&cities, None)["features"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let (ok, out, _) = sync(&root, &["history", "cities"]).await;
    assert!(ok);
    assert_eq!(
        out.lines().filter(|l| l.contains(" ok ")).count(),
        2,
        "{out}"
    );
    let (ok, out, _) = sync(&root, &["list"]).await;
    assert!(
        ok && out.contains("oceania") && out.contains("local/africa.gpkg"),
        "{out}"
    );
    // No work files are left beside the targets.
    let left: Vec<String> = std::fs::read_dir(root.join("userdata/local"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_run_publishes_nothing_and_says_why() {
    let (_dir, root) = root_with(&config(json!([
        {"name": "cities", "source": {"type": "file", "path": "data/naturalearth_cities.geojson"},
         "target": {"dataset": "local/cities.gpkg"}},
        {"name": "too-few", "source": {"type": "file", "path": "data/naturalearth_cities.geojson"},
         "min_features": 1000, "target": {"dataset": "local/cities.gpkg"}},
        {"name": "bad-sql", "source": {"type": "file", "path": "data/naturalearth_cities.geojson"},
         "transform": {"sql": "SELECT geom, nosuchcolumn FROM source"}, "target": {"dataset": "local/cities.gpkg"}},
        {"name": "lost-column", "source": {"type": "file", "path": "data/naturalearth_cities.geojson"},
         "transform": {"sql": "SELECT geom FROM source"}, "target": {"dataset": "local/cities.gpkg"}},
        {"name": "not-geojson", "source": {"type": "file", "path": "data/fake.geojson"},
         "target": {"dataset": "local/cities.gpkg"}},
        {"name": "not-gpkg", "source": {"type": "file", "path": "data/fake.gpkg"},
         "target": {"dataset": "local/cities.gpkg"}},
        {"name": "missing", "source": {"type": "file", "path": "data/nothing.geojson"},
         "target": {"dataset": "local/cities.gpkg"}}
    ])));
    std::fs::write(root.join("data/fake.geojson"), "<html>not json</html>").unwrap();
    std::fs::write(
        root.join("data/fake.gpkg"),
        "PK\u{3}\u{4} a zip, not SQLite",
    )
    .unwrap();
    let (ok, out, err) = sync(&root, &["run", "cities"]).await;
    assert!(ok, "{out}{err}");
    let published = std::fs::read(root.join("userdata/local/cities.gpkg")).unwrap();
    for (job, expected) in [
        ("too-few", "fewer than min_features (1000)"),
        ("bad-sql", "no such column: nosuchcolumn"),
        ("lost-column", "would be lost"),
        ("not-geojson", "fake.geojson"),
        ("not-gpkg", "not a database"),
        ("missing", "no such file"),
    ] {
        let (ok, out, err) = sync(&root, &["run", job]).await;
        assert!(!ok, "{job} should fail: {out}");
        assert!(err.contains(expected), "{job}: {err}");
        let runs = journal_runs(&root, job);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].0, "failed");
        assert!(
            runs[0].1.as_deref().unwrap_or_default().contains(expected),
            "{runs:?}"
        );
        assert_eq!(
            std::fs::read(root.join("userdata/local/cities.gpkg")).unwrap(),
            published,
            "{job} changed the published file"
        );
    }
    let (ok, _, err) = sync(&root, &["run", "nosuchjob"]).await;
    assert!(!ok && err.contains("no sync job \"nosuchjob\""), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_source_downloads_once_then_is_unchanged() {
    let cities = std::fs::read(test_data("naturalearth_cities.geojson")).unwrap();
    let handler: Handler = Arc::new(move |seen: &Seen| match seen.path.as_str() {
        "/cities.geojson" => {
            if seen.headers.get("x-api-key").map(String::as_str) != Some("s3cret-value") {
                return (401, vec![], b"no key".to_vec());
            }
            if seen.headers.get("if-none-match").map(String::as_str) == Some("\"v1\"") {
                return (304, vec![], Vec::new());
            }
            (
                200,
                vec![
                    ("etag".into(), "\"v1\"".into()),
                    ("content-type".into(), "application/geo+json".into()),
                ],
                cities.clone(),
            )
        }
        "/error" => (500, vec![], b"oops".to_vec()),
        _ => (404, vec![], Vec::new()),
    });
    let (addr, seen) = loopback(handler).await;
    let (_dir, root) = root_with(&config(json!([
        {"name": "web", "source": {"type": "http", "url": format!("http://{addr}/cities.geojson"),
           "headers_from_env": {"X-Api-Key": "PARCELS_KEY"}},
         "target": {"dataset": "local/web.gpkg"}},
        {"name": "small", "source": {"type": "http", "url": format!("http://{addr}/cities.geojson"),
           "headers_from_env": {"X-Api-Key": "PARCELS_KEY"}, "max_bytes": 1000},
         "target": {"dataset": "local/small.gpkg"}},
        {"name": "broken", "source": {"type": "http", "url": format!("http://{addr}/error"), "format": "geojson"},
         "target": {"dataset": "local/broken.gpkg"}},
        {"name": "no-env", "source": {"type": "http", "url": format!("http://{addr}/cities.geojson"),
           "headers_from_env": {"X-Api-Key": "NOT_SET_ANYWHERE"}},
         "target": {"dataset": "local/none.gpkg"}}
    ])));
    let (ok, out, err) = sync(&root, &["run", "web"]).await;
    assert!(ok, "{out}{err}");
    assert!(
        !format!("{out}{err}").contains("s3cret"),
        "the secret was printed"
    );
    let target = root.join("userdata/local/web.gpkg");
    let before = std::fs::metadata(&target).unwrap().modified().unwrap();
    assert_eq!(
        gdal_read(&target, None)["features"]
            .as_array()
            .unwrap()
            .len(),
        243
    );
    let (ok, out, err) = sync(&root, &["run", "web"]).await;
    assert!(ok && out.contains("unchanged"), "{out}{err}");
    assert_eq!(
        std::fs::metadata(&target).unwrap().modified().unwrap(),
        before,
        "a 304 leaves the dataset untouched"
    );
    assert_eq!(
        seen.lock()
            .unwrap()
            .last()
            .unwrap()
            .headers
            .get("if-none-match")
            .map(String::as_str),
        Some("\"v1\"")
    );
    for (job, expected) in [
        ("small", "max_bytes (1000)"),
        ("broken", "500"),
        ("no-env", "environment variable NOT_SET_ANYWHERE is not set"),
    ] {
        let (ok, _, err) = sync(&root, &["run", job]).await;
        assert!(!ok && err.contains(expected), "{job}: {err}");
        assert!(!root.join(format!("userdata/local/{job}.gpkg")).exists());
    }
    // The secret never reaches the journal or the command's output.
    let journal = std::fs::read(root.join("state/sync.sqlite")).unwrap();
    assert!(!String::from_utf8_lossy(&journal).contains("s3cret"));
}

/// A download cut short (fewer bytes than its Content-Length) fails the run.
#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_download_fails() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nContent-Type: application/geo+json\r\n\r\n{\"type\": \"FeatureCollection\", \"features\": [")
                .await;
            let _ = stream.shutdown().await;
        }
    });
    let (_dir, root) = root_with(&config(json!([
        {"name": "cut", "source": {"type": "http", "url": format!("http://{addr}/x.geojson")},
         "target": {"dataset": "local/cut.gpkg"}}
    ])));
    let (ok, _, err) = sync(&root, &["run", "cut"]).await;
    assert!(!ok, "{err}");
    assert!(!root.join("userdata/local/cut.gpkg").exists());
    assert_eq!(journal_runs(&root, "cut")[0].0, "failed");
}

/// The Natural Earth countries as GeoJSON features (read by GDAL from the test GeoPackage).
fn countries() -> Vec<Value> {
    gdal_read(&test_data("naturalearth_lowres.gpkg"), None)["features"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut f = f.clone();
            f["properties"]["OBJECTID"] = json!(i + 1);
            f["properties"]["updated"] = json!(1_700_000_000_000_i64 + i as i64 * 86_400_000);
            f
        })
        .collect()
}

/// A GeoJSON ring as Esri wants it: exterior rings clockwise, holes counter-clockwise.
fn esri_ring(ring: &Value, exterior: bool) -> Value {
    let mut points: Vec<Value> = ring.as_array().unwrap().clone();
    let twice_area: f64 = points
        .windows(2)
        .map(|w| {
            w[0][0].as_f64().unwrap() * w[1][1].as_f64().unwrap()
                - w[1][0].as_f64().unwrap() * w[0][1].as_f64().unwrap()
        })
        .sum();
    if (twice_area > 0.0) == exterior {
        points.reverse();
    }
    Value::Array(points)
}

fn esri_geometry(g: &Value) -> Value {
    let polygons: Vec<&Value> = match g["type"].as_str().unwrap() {
        "Polygon" => vec![&g["coordinates"]],
        "MultiPolygon" => g["coordinates"].as_array().unwrap().iter().collect(),
        other => panic!("{other}"),
    };
    let rings: Vec<Value> = polygons
        .into_iter()
        .flat_map(|p| {
            p.as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, r)| esri_ring(r, i == 0))
                .collect::<Vec<_>>()
        })
        .collect();
    json!({ "rings": rings, "spatialReference": {"wkid": 4326} })
}

/// An ArcGIS-REST-shaped layer over `features`: pages of `max` with `exceededTransferLimit`
/// when `pages`, else only object ids and batches of them; GeoJSON when `geojson`, else
/// Esri JSON.
fn arcgis(
    features: Vec<Value>,
    max: usize,
    pages: bool,
    geojson: bool,
    dates: bool,
    list_fields: bool,
) -> Handler {
    // The fields as ArcGIS lists them: each property with the type of all its values.
    let mut fields: Vec<Value> = Vec::new();
    for (name, value) in features[0]["properties"].as_object().unwrap() {
        let kind = match name.as_str() {
            "OBJECTID" => "esriFieldTypeOID",
            "updated" if dates => "esriFieldTypeDate",
            _ if value.is_string() => "esriFieldTypeString",
            _ if features
                .iter()
                .all(|f| f["properties"][name].is_i64() || f["properties"][name].is_null()) =>
            {
                "esriFieldTypeInteger"
            }
            _ => "esriFieldTypeDouble",
        };
        fields.push(json!({"name": name, "type": kind}));
    }
    fields.push(json!({"name": "Shape", "type": "esriFieldTypeGeometry"}));
    if !list_fields {
        fields.clear();
    }
    Arc::new(move |seen: &Seen| {
        let q = &seen.query;
        let ok = |v: Value| {
            (
                200,
                vec![("content-type".to_owned(), "application/json".to_owned())],
                v.to_string().into_bytes(),
            )
        };
        if seen.path.ends_with("/FeatureServer/0") {
            return ok(json!({
                "name": "countries", "type": "Feature Layer", "geometryType": "esriGeometryPolygon",
                "objectIdField": "OBJECTID", "maxRecordCount": max,
                "supportedQueryFormats": if geojson { "JSON, geoJSON, PBF" } else { "JSON" },
                "advancedQueryCapabilities": {"supportsPagination": pages},
                "fields": fields,
            }));
        }
        if !seen.path.ends_with("/FeatureServer/0/query") {
            return (404, vec![], Vec::new());
        }
        if q.get("outSR").is_some_and(|s| s != "4326") {
            return ok(json!({"error": {"code": 400, "message": "bad outSR", "details": []}}));
        }
        if q.get("returnCountOnly").is_some_and(|v| v == "true") {
            return ok(json!({"count": features.len()}));
        }
        if q.get("returnIdsOnly").is_some_and(|v| v == "true") {
            let ids: Vec<Value> = features
                .iter()
                .map(|f| f["properties"]["OBJECTID"].clone())
                .collect();
            return ok(json!({"objectIdFieldName": "OBJECTID", "objectIds": ids}));
        }
        let chosen: Vec<&Value> = if let Some(ids) = q.get("objectIds") {
            let ids: Vec<i64> = ids.split(',').map(|i| i.parse().unwrap()).collect();
            assert!(ids.len() <= max, "a batch larger than maxRecordCount");
            features
                .iter()
                .filter(|f| ids.contains(&f["properties"]["OBJECTID"].as_i64().unwrap()))
                .collect()
        } else {
            if !pages {
                return ok(
                    json!({"error": {"code": 400, "message": "Pagination is not supported.", "details": []}}),
                );
            }
            let offset: usize = q.get("resultOffset").map_or(0, |o| o.parse().unwrap());
            let count: usize = q
                .get("resultRecordCount")
                .map_or(max, |o| o.parse().unwrap())
                .min(max);
            features.iter().skip(offset).take(count).collect()
        };
        let more = q
            .get("resultOffset")
            .is_some_and(|o| o.parse::<usize>().unwrap() + chosen.len() < features.len());
        if q.get("f").map(String::as_str) == Some("geojson") {
            assert!(geojson, "GeoJSON asked of a server that does not offer it");
            ok(
                json!({"type": "FeatureCollection", "features": chosen, "properties": {"exceededTransferLimit": more}}),
            )
        } else {
            let esri: Vec<Value> = chosen
                .iter()
                .map(|f| json!({"attributes": f["properties"], "geometry": esri_geometry(&f["geometry"])}))
                .collect();
            ok(
                json!({"geometryType": "esriGeometryPolygon", "features": esri, "exceededTransferLimit": more}),
            )
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn arcgis_layers_page_or_batch_object_ids_and_match_the_source() {
    let all = countries();
    let expected = json!({"type": "FeatureCollection", "features": all.clone()});
    let mut jobs = Vec::new();
    let mut servers = Vec::new();
    // The last two list no fields: their features go through newline-delimited GeoJSON.
    for (name, pages, geojson, dates, list_fields) in [
        ("paged-geojson", true, true, true, true),
        ("paged-esri", true, false, true, true),
        ("ids-esri", false, false, true, true),
        ("unlisted-geojson-as-sent", true, true, false, false),
        ("unlisted-esri", true, false, false, false),
    ] {
        let (addr, seen) =
            loopback(arcgis(all.clone(), 50, pages, geojson, dates, list_fields)).await;
        jobs.push(json!({"name": name, "source": {"type": "arcgis", "url": format!("http://{addr}/arcgis/rest/services/x/FeatureServer/0")},
                         "target": {"dataset": format!("local/{name}.gpkg")}}));
        servers.push((name, seen));
    }
    let (addr, _) = loopback(Arc::new(|_: &Seen| {
        (
            200,
            vec![],
            json!({"error": {"code": 498, "message": "Invalid token.", "details": []}})
                .to_string()
                .into_bytes(),
        )
    }))
    .await;
    jobs.push(json!({"name": "refused", "source": {"type": "arcgis", "url": format!("http://{addr}/FeatureServer/0")},
                     "target": {"dataset": "local/refused.gpkg"}}));
    let (_dir, root) = root_with(&config(Value::Array(jobs)));
    for (name, seen) in &servers {
        let (ok, out, err) = sync(&root, &["run", name]).await;
        assert!(ok, "{name}: {out}{err}");
        let ours = gdal_read(&root.join(format!("userdata/local/{name}.gpkg")), None);
        // Dates come as ISO 8601 text; compare the rest with the source.
        let mut theirs = expected.clone();
        for f in theirs["features"].as_array_mut().unwrap() {
            if name.starts_with("unlisted") {
                break; // no date fields: the numbers stay numbers
            }
            let ms = f["properties"]["updated"].as_i64().unwrap();
            f["properties"]["updated"] = json!(
                chrono::DateTime::from_timestamp_millis(ms)
                    .unwrap()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            );
        }
        assert_same_data(&ours, &theirs, "OBJECTID", name);
        let queries: Vec<Seen> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path.ends_with("/query"))
            .cloned()
            .collect();
        if !name.starts_with("ids") {
            let pages = queries
                .iter()
                .filter(|s| s.query.contains_key("resultOffset"))
                .count();
            assert_eq!(
                pages,
                all.len().div_ceil(50),
                "{name}: one request per page"
            );
        } else {
            assert!(
                queries.iter().any(|s| s.query.contains_key("objectIds")),
                "{name}: object id batches"
            );
        }
    }
    let (ok, _, err) = sync(&root, &["run", "refused"]).await;
    assert!(
        !ok && err.contains("ArcGIS error 498: Invalid token."),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wfs_feature_types_page_with_start_index() {
    let all = countries();
    let pages = Arc::new(Mutex::new(0usize));
    let counter = pages.clone();
    let features = all.clone();
    let (addr, seen) = loopback(Arc::new(move |seen: &Seen| {
        let q = &seen.query;
        if q.get("typeNames").map(String::as_str) == Some("ns:missing") {
            return (400, vec![], br#"<?xml version="1.0"?><ows:ExceptionReport xmlns:ows="http://www.opengis.net/ows/1.1"><ows:Exception exceptionCode="InvalidParameterValue"><ows:ExceptionText>Feature type ns:missing unknown</ows:ExceptionText></ows:Exception></ows:ExceptionReport>"#.to_vec());
        }
        if q.get("request").map(String::as_str) == Some("DescribeFeatureType") {
            let xsd = r#"<?xml version="1.0"?><xsd:schema xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:gml="http://www.opengis.net/gml/3.2">
              <xsd:complexType name="countriesType"><xsd:complexContent><xsd:extension base="gml:AbstractFeatureType"><xsd:sequence>
                <xsd:element name="the_geom" type="gml:MultiSurfacePropertyType"/>
                <xsd:element name="name" type="xsd:string"/>
                <xsd:element name="pop_est" type="xsd:double"/>
              </xsd:sequence></xsd:extension></xsd:complexContent></xsd:complexType>
              <xsd:element name="countries" type="ns:countriesType" substitutionGroup="gml:AbstractFeature"/></xsd:schema>"#;
            return (200, vec![("content-type".into(), "text/xml".into())], xsd.as_bytes().to_vec());
        }
        assert_eq!(q.get("request").map(String::as_str), Some("GetFeature"));
        assert_eq!(q.get("sortBy").map(String::as_str), Some("name"));
        *counter.lock().unwrap() += 1;
        let start: usize = q["startIndex"].parse().unwrap();
        // WFS 2.0.0 says count and typeNames; 1.1.0 maxFeatures and typeName.
        let count: usize = if q["version"] == "1.1.0" {
            assert!(q.contains_key("typeName") && !q.contains_key("count"));
            q["maxFeatures"].parse().unwrap()
        } else {
            assert!(q.contains_key("typeNames") && !q.contains_key("maxFeatures"));
            q["count"].parse().unwrap()
        };
        let chosen: Vec<&Value> = features.iter().skip(start).take(count).collect();
        let body = json!({"type": "FeatureCollection", "numberMatched": features.len(), "numberReturned": chosen.len(), "features": chosen});
        (200, vec![("content-type".into(), "application/json".into())], body.to_string().into_bytes())
    }))
    .await;
    let (_dir, root) = root_with(&config(json!([
        {"name": "wfs", "source": {"type": "wfs", "url": format!("http://{addr}/geoserver/wfs"), "type_name": "ns:countries",
           "sort_by": "name", "page_size": 40, "params": {"cql_filter": "1=1"}},
         "target": {"dataset": "local/wfs.gpkg"}},
        {"name": "wfs-default-sort", "source": {"type": "wfs", "url": format!("http://{addr}/geoserver/wfs"),
           "type_name": "ns:countries", "page_size": 100},
         "target": {"dataset": "local/wfs_default_sort.gpkg"}},
        {"name": "wfs11", "source": {"type": "wfs", "url": format!("http://{addr}/geoserver/wfs"), "type_name": "ns:countries",
           "version": "1.1.0", "sort_by": "name", "page_size": 100},
         "target": {"dataset": "local/wfs11.gpkg"}},
        {"name": "wfs-missing", "source": {"type": "wfs", "url": format!("http://{addr}/geoserver/wfs"), "type_name": "ns:missing"},
         "target": {"dataset": "local/missing.gpkg"}}
    ])));
    let (ok, out, err) = sync(&root, &["run", "wfs"]).await;
    assert!(ok, "{out}{err}");
    assert_eq!(*pages.lock().unwrap(), all.len().div_ceil(40));
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|s| s.query.get("cql_filter").map(String::as_str) == Some("1=1"))
    );
    let ours = gdal_read(&root.join("userdata/local/wfs.gpkg"), None);
    assert_same_data(&ours, &json!({"features": all}), "OBJECTID", "wfs");
    // Without sort_by, the pages are sorted by the first property that is not a geometry
    // (the server asserts sortBy=name).
    let (ok, out, err) = sync(&root, &["run", "wfs-default-sort"]).await;
    assert!(ok, "{out}{err}");
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|s| s.query.get("request").map(String::as_str) == Some("DescribeFeatureType"))
    );
    let (ok, out, err) = sync(&root, &["run", "wfs11"]).await;
    assert!(ok, "{out}{err}");
    let ours = gdal_read(&root.join("userdata/local/wfs11.gpkg"), None);
    assert_eq!(ours["features"].as_array().unwrap().len(), all.len());
    let (ok, _, err) = sync(&root, &["run", "wfs-missing"]).await;
    assert!(
        !ok && err.contains("Feature type ns:missing unknown"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_runs_jobs_on_schedule_and_when_asked() {
    let mut config = config(json!([
        {"name": "cities", "source": {"type": "file", "path": "data/naturalearth_cities.geojson"},
         "target": {"dataset": "local/cities.gpkg", "geojson": true}},
        {"name": "ticking", "schedule": "*/2 * * * * *", "source": {"type": "file", "path": "data/naturalearth_cities.geojson"},
         "target": {"dataset": "local/ticking.gpkg"}},
        {"name": "failing", "schedule": "*/2 * * * * *", "retries": {"count": 0, "backoff_secs": 1},
         "source": {"type": "file", "path": "data/nothing.geojson"}, "target": {"dataset": "local/failing.gpkg"}}
    ]));
    config["search"] = json!({"sources": [{"source": "local/cities.gpkg", "category": "City", "search_field": "name"}]});
    let server = Process::start(&config.to_string(), |root| {
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::copy(
            test_data("naturalearth_cities.geojson"),
            root.join("data/naturalearth_cities.geojson"),
        )
        .unwrap();
    })
    .await;
    // `sync run` with the server up asks the server.
    let (ok, out, err) = sync(&server.root, &["run", "cities"]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("ok"), "{out}");
    assert!(
        server.log().contains("sync run published a new version"),
        "the server ran it"
    );
    let client = server.client();
    let items: Value = get_json(
        &client,
        server.url("/features/collections/cities/items?limit=1"),
    )
    .await;
    assert_eq!(items["numberMatched"], 243, "{items}");
    // The GeoJSON copy and its compressed siblings are served; the search index, which reads
    // the dataset, was rebuilt after the publish.
    let plain: Value = get_json(&client, server.url("/cities.geojson")).await;
    assert_eq!(plain["features"].as_array().unwrap().len(), 243);
    let gz = client
        .get(server.url("/cities.geojson"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    common::process::wait_for_log(
        &server.root,
        "search index rebuilt entries=243",
        Duration::from_secs(20),
    )
    .await;
    let found = client
        .get(server.url("/search?q=Vatican"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(found.contains("Vatican City"), "{found}");
    // The scheduled jobs ran: one publishing, one failing into the journal and health,
    // neither stopping the other or the listener.
    common::process::eventually("scheduled runs", Duration::from_secs(20), || {
        root_runs(&server.root, "ticking") >= 2 && root_runs(&server.root, "failing") >= 2
    })
    .await;
    let jobs: Value = get_json(&client, server.url("/admin/jobs")).await;
    let failing = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "failing")
        .unwrap();
    assert_eq!(failing["last_run"]["status"], "failed", "{jobs}");
    assert!(failing["next_run"].is_string());
    let health: Value = get_json(&client, server.url("/health")).await;
    let check = &health["checks"]["sync/failing:state"][0];
    assert!(
        check["lastError"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no such file"),
        "{health}"
    );
    let runs: Value = get_json(&client, server.url("/admin/jobs/ticking/runs?limit=1")).await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1);
    let response = client
        .post(server.url("/admin/jobs/nosuch/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = client
        .get(server.url("/admin/jobs/cities/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    // A POST without the admin header (what a web page could send) is refused.
    let response = client
        .post(server.url("/admin/jobs/cities/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("X-Pozi-Admin: 1")
            || body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("x-pozi-admin: 1"),
        "{body}"
    );
}

/// A GET answered with JSON.
async fn get_json(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

fn root_runs(root: &Path, job: &str) -> usize {
    if !root.join("state/sync.sqlite").exists() {
        return 0;
    }
    rusqlite::Connection::open(root.join("state/sync.sqlite"))
        .and_then(|c| {
            c.query_row(
                "SELECT count(*) FROM runs WHERE job = ?1 AND status != 'running'",
                [job],
                |r| r.get::<_, i64>(0),
            )
        })
        .map_or(0, |n| usize::try_from(n).unwrap_or(0))
}

/// Points from the generator kept in the repository, as GeoJSON.
fn points(count: usize, file: &Path, seed: u64) {
    let generator = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gen_points.py");
    let status = std::process::Command::new("python3")
        .arg(generator)
        .arg(count.to_string())
        .args(["--seed", &seed.to_string(), "--out"])
        .arg(file)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The published layer's row count after SQLite's integrity check passed.
fn checked_count(file: &Path) -> i64 {
    let c = rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let integrity: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let rtree: i64 = c
        .query_row("SELECT count(*) FROM rtree_points_geom", [], |r| r.get(0))
        .unwrap();
    let rows: i64 = c
        .query_row("SELECT count(*) FROM points", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rtree, rows, "the R*Tree holds every row");
    rows
}

/// SIGKILL at 20 moments spread over whole runs (reading, ordering, indexing, publishing):
/// each time the dataset opens, passes `integrity_check` and holds one complete version, and
/// the next run removes what the killed one left. A million points, as the issue asks
/// (`bench/ingest-vs-ogr2ogr --kill N` runs the same loop with the optimised binary).
#[tokio::test(flavor = "multi_thread")]
async fn a_run_killed_at_any_moment_leaves_a_complete_version() {
    const BIG: i64 = 1_000_000;
    const OTHER: i64 = 900_000;
    const SMALL: i64 = 1_000;
    let (_dir, root) = root_with(&config(json!([
        {"name": "points", "source": {"type": "file", "path": "data/points.geojson"},
         "target": {"dataset": "local/points.gpkg"}}
    ])));
    let (small, big, other) = (
        root.join("data/small.geojson"),
        root.join("data/big.geojson"),
        root.join("data/other.geojson"),
    );
    points(SMALL as usize, &small, 1);
    points(BIG as usize, &big, 2);
    points(OTHER as usize, &other, 3);
    let source = root.join("data/points.geojson");
    let target = root.join("userdata/local/points.gpkg");
    std::fs::copy(&small, &source).unwrap();
    assert!(sync(&root, &["run", "points"]).await.0);
    assert_eq!(checked_count(&target), SMALL);
    // How long a whole run of each source takes here, so that the kills spread over runs.
    let mut full = [Duration::ZERO; 2];
    for (i, (file, count)) in [(&other, OTHER), (&big, BIG)].into_iter().enumerate() {
        std::fs::copy(file, &source).unwrap();
        let started = std::time::Instant::now();
        assert!(sync(&root, &["run", "points"]).await.0);
        full[i] = started.elapsed();
        assert_eq!(checked_count(&target), count);
    }

    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut cut_short = 0;
    for round in 0..20 {
        std::fs::copy(if round % 2 == 0 { &other } else { &big }, &source).unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Anywhere in the run, its last moments (the publish) included.
        let at = full[round % 2].mul_f64((seed % 1000) as f64 / 1000.0);
        let mut child = tokio::process::Command::new(BIN)
            .args(["sync", "run", "points", "--root"])
            .arg(&root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(at).await;
        if child.try_wait().unwrap().is_none() {
            cut_short += 1;
        }
        child.kill().await.unwrap();
        let count = checked_count(&target);
        assert!(
            count == OTHER || count == BIG,
            "round {round}: {count} rows published"
        );
    }
    assert!(
        cut_short >= 15,
        "only {cut_short} of 20 kills came during a run"
    );
    // The next run removes the leftovers and publishes.
    std::fs::copy(&small, &source).unwrap();
    let (ok, out, err) = sync(&root, &["run", "points"]).await;
    assert!(ok, "{out}{err}");
    assert_eq!(checked_count(&target), SMALL);
    let left: Vec<String> = std::fs::read_dir(root.join("userdata/local"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "points.gpkg")
        .collect();
    assert!(left.is_empty(), "left beside the target: {left:?}");
    let statuses: Vec<String> = journal_runs(&root, "points")
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert!(!statuses.iter().any(|s| s == "running"), "{statuses:?}");
}

/// A job whose runs panic every time: its failures are journaled and reported in health; the
/// other job keeps its schedule and the server keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_panics_harms_nothing_else() {
    let config = config(json!([
        {"name": "panicky", "schedule": "*/2 * * * * *", "retries": {"count": 0, "backoff_secs": 1},
         "source": {"type": "file", "path": "data/naturalearth_cities.geojson"}, "target": {"dataset": "local/panicky.gpkg"}},
        {"name": "steady", "schedule": "*/2 * * * * *",
         "source": {"type": "file", "path": "data/naturalearth_cities.geojson"}, "target": {"dataset": "local/steady.gpkg"}}
    ]));
    let server = Process::start_with(
        &config.to_string(),
        &[("POZI_FAILPOINT", "sync-panic:panicky")],
        |root| {
            std::fs::create_dir_all(root.join("data")).unwrap();
            std::fs::copy(
                test_data("naturalearth_cities.geojson"),
                root.join("data/naturalearth_cities.geojson"),
            )
            .unwrap();
        },
    )
    .await;
    common::process::eventually("three runs of each", Duration::from_secs(30), || {
        root_runs(&server.root, "panicky") >= 3 && root_runs(&server.root, "steady") >= 3
    })
    .await;
    let runs = journal_runs(&server.root, "panicky");
    assert!(
        runs.iter().filter(|r| r.0 == "failed").count() >= 3,
        "{runs:?}"
    );
    assert!(
        runs.iter().all(|r| r
            .1
            .as_deref()
            .unwrap_or_default()
            .contains("failpoint sync-panic:panicky")
            || r.0 == "running"),
        "{runs:?}"
    );
    assert!(
        journal_runs(&server.root, "steady")
            .iter()
            .filter(|r| r.0 == "ok")
            .count()
            >= 3
    );
    assert!(!server.root.join("userdata/local/panicky.gpkg").exists());
    let client = server.client();
    let health: Value = get_json(&client, server.url("/health")).await;
    assert!(
        health["checks"]["sync/panicky:state"][0]["lastError"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("panicked"),
        "{health}"
    );
    assert_eq!(
        health["checks"]["sync/steady:state"][0]["observedValue"],
        "running"
    );
    let response = client
        .get(server.url("/features/collections/steady/items?limit=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// An `ogr` source: a VRT over the cities CSV converted by the real `ogr2ogr`; without GDAL
/// the run fails saying so.
#[tokio::test(flavor = "multi_thread")]
async fn ogr_sources_go_through_gdal() {
    let (_dir, root) = root_with(&config(json!([
        {"name": "vrt", "source": {"type": "ogr", "source": "data/cities.vrt"},
         "target": {"dataset": "local/vrt.gpkg"}}
    ])));
    let vrt = format!(
        r#"<OGRVRTDataSource><OGRVRTLayer name="cities"><SrcDataSource>{}</SrcDataSource><SrcLayer>naturalearth_cities</SrcLayer>
           <GeometryType>wkbPoint</GeometryType><LayerSRS>EPSG:4326</LayerSRS>
           <GeometryField encoding="PointFromColumns" x="X" y="Y"/></OGRVRTLayer></OGRVRTDataSource>"#,
        root.join("data/naturalearth_cities.csv").display()
    );
    std::fs::write(root.join("data/cities.vrt"), vrt).unwrap();
    // A relative source string is under the root, as a `file` source's path.
    let output = tokio::process::Command::new(BIN)
        .args(["sync", "run", "vrt", "--root"])
        .arg(&root)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ours = gdal_read(&root.join("userdata/local/vrt.gpkg"), None);
    assert_same_data(
        &ours,
        &gdal_read(&root.join("data/cities.vrt"), None),
        "name",
        "vrt",
    );

    let empty = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(BIN)
        .args(["sync", "run", "vrt", "--root"])
        .arg(&root)
        .env("PATH", empty.path())
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("job vrt: ogr2ogr was not found; install GDAL"),
        "{err}"
    );
}

/// Every problem in `sync` is reported with its JSON path, line and column.
#[tokio::test]
async fn bad_jobs_are_refused_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    std::fs::write(
        &file,
        r#"{
  "sync": {
    "jobs": [
      {"name": "a b", "schedule": "61 * * * *", "source": {"type": "file", "path": "x.geojson"},
       "target": {"dataset": "../etc/passwd.gpkg"}},
      {"name": "dup", "source": {"type": "http", "url": "ftp://example.org/x", "format": "kml"},
       "target": {"dataset": "local/x.shp"}},
      {"name": "dup", "source": {"type": "wfs", "url": "http://127.0.0.1/wfs", "type_name": "x", "version": "3.0"},
       "transform": {"sql": "DELETE FROM source"}, "target": {"dataset": "local/y.gpkg"}},
      {"name": "bad-source", "source": {"type": "carrier-pigeon"}, "target": {"dataset": "local/z.gpkg"}}
    ]
  }
}"#,
    )
    .unwrap();
    let output = tokio::process::Command::new(BIN)
        .arg("check-config")
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "4:16: sync.jobs[0].name: \"a b\": use 1 to 64 letters",
        "4:35: sync.jobs[0].schedule: 61 is out of range 0-59",
        "5:30: sync.jobs[0].target.dataset: \"../etc/passwd.gpkg\" is not a path under userdata",
        "6:57: sync.jobs[1].source.url: \"ftp://example.org/x\" is not an http or https URL",
        "sync.jobs[1].source.format: \"kml\": use one of geojson, ndjson, csv, zip, gpkg",
        "sync.jobs[1].target.dataset: \"local/x.shp\": name a GeoPackage",
        "sync.jobs[2].name: a job named \"dup\" already exists",
        "sync.jobs[2].source.version: \"3.0\"",
        "sync.jobs[2].transform.sql: must be a SELECT",
        "sync.jobs[3].source.type: unknown source type \"carrier-pigeon\"; use file, http, arcgis, wfs, sqlite, ogr or catalogue",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

/// A real map server on loopback: MapServer's `mapserv` run as a CGI program for each request,
/// over a mapfile with three layers of the test data.
async fn mapserver(dir: &Path) -> SocketAddr {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let layer = |name: &str, kind: &str, title: &str, connection: String| {
        format!(
            "LAYER NAME \"{name}\" TYPE {kind} STATUS ON CONNECTIONTYPE OGR CONNECTION \"{connection}\"\n  METADATA \"wms_title\" \"{title}\" END\n  PROJECTION \"init=epsg:4326\" END\nEND\n"
        )
    };
    let mapfile = format!(
        "MAP\nNAME \"pozi\"\nEXTENT -180 -90 180 90\nSIZE 400 300\nPROJECTION \"init=epsg:4326\" END\nWEB METADATA \"wms_title\" \"Pozi test\" \"wms_srs\" \"EPSG:4326\" \"wms_enable_request\" \"*\" END END\n{}{}{}END\n",
        layer(
            "countries",
            "POLYGON",
            "Countries (old)",
            data.join("naturalearth_lowres.gpkg").display().to_string()
        ),
        layer(
            "cities",
            "POINT",
            "Cities & Towns",
            data.join("naturalearth_cities.geojson")
                .display()
                .to_string()
        ),
        layer(
            "boroughs",
            "POLYGON",
            "NYC Boroughs",
            data.join("nybb/nybb.shp").display().to_string()
        ),
    );
    std::fs::write(dir.join("test.map"), mapfile).unwrap();
    std::fs::write(
        dir.join("mapserver.conf"),
        "CONFIG\n ENV\n  MS_MAP_PATTERN \".\"\n END\nEND\n",
    )
    .unwrap();
    let dir = dir.to_owned();
    let (addr, _) = loopback(Arc::new(move |seen: &Seen| {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(seen.query.iter())
            .finish();
        let output = std::process::Command::new("mapserv")
            .env("MAPSERVER_CONFIG_FILE", dir.join("mapserver.conf"))
            .env("MS_MAPFILE", dir.join("test.map"))
            .env("REQUEST_METHOD", "GET")
            .env("QUERY_STRING", query)
            // As a web server runs a CGI program: MapServer builds its online resource from these.
            .env(
                "HTTP_HOST",
                seen.headers.get("host").cloned().unwrap_or_default(),
            )
            .env("SERVER_NAME", "127.0.0.1")
            .env(
                "SERVER_PORT",
                seen.headers
                    .get("host")
                    .and_then(|h| h.rsplit(':').next())
                    .unwrap_or("80"),
            )
            .env("SCRIPT_NAME", &seen.path)
            .output()
            .expect("mapserv (mapserver-bin) is needed by the tests");
        let text = output.stdout;
        // A CGI answer: headers, a blank line, the body.
        let split = text
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| (p, 4))
            .or_else(|| text.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)))
            .unwrap();
        let head = String::from_utf8_lossy(&text[..split.0]).into_owned();
        let content_type = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Type: "))
            .unwrap_or("text/xml")
            .to_owned();
        (
            200,
            vec![("content-type".into(), content_type)],
            text[split.0 + split.1..].to_vec(),
        )
    }))
    .await;
    addr
}

/// A catalogue job against a real map server: layers dropped, renamed and ordered, the rest of
/// the document kept, and the published file still read by GDAL's WMS driver.
#[tokio::test(flavor = "multi_thread")]
async fn catalogue_jobs_edit_a_map_servers_capabilities() {
    let scratch = tempfile::tempdir().unwrap();
    let addr = mapserver(scratch.path()).await;
    let url =
        format!("http://{addr}/cgi-bin/mapserv?SERVICE=WMS&REQUEST=GetCapabilities&VERSION=1.3.0");
    let config = config(json!([
        {"name": "catalogue", "source": {"type": "catalogue", "url": url,
           "exclude": ["/\\(old\\)$/"], "rename": [{"from": "Cities & Towns", "to": "Towns"}],
           "order": ["NYC Boroughs", "Towns"]},
         "target": {"dataset": "local/catalogue.xml"}},
        {"name": "empty", "source": {"type": "catalogue", "url": url, "include": ["Nothing"]},
         "target": {"dataset": "local/empty.xml"}}
    ]));
    let (_dir, root) = root_with(&config);
    let (ok, out, err) = sync(&root, &["run", "catalogue"]).await;
    assert!(ok, "{out}{err}");
    let published = std::fs::read_to_string(root.join("userdata/local/catalogue.xml")).unwrap();
    assert!(!published.contains("Countries"), "{published}");
    assert!(published.contains("<Title>Towns</Title>"), "{published}");
    assert!(
        published.find("<Name>boroughs</Name>") < published.find("<Name>cities</Name>"),
        "{published}"
    );
    assert!(
        published.contains("xmlns:xlink=\"http://www.w3.org/1999/xlink\""),
        "namespaces kept"
    );
    let (ok, _, err) = sync(&root, &["run", "empty"]).await;
    assert!(
        !ok && err.contains("0 layers left, fewer than min_features (1)"),
        "{err}"
    );
    assert!(!root.join("userdata/local/empty.xml").exists());

    // GDAL's WMS driver reads the published catalogue from this server.
    let server = Process::start(&config.to_string(), |root| {
        std::fs::copy(
            _dir.path().join("root/userdata/local/catalogue.xml"),
            root.join("userdata/local/catalogue.xml"),
        )
        .unwrap();
    })
    .await;
    let output = tokio::process::Command::new("gdalinfo")
        .arg(format!("WMS:{}", server.url("/catalogue.xml")))
        .env("GDAL_HTTP_UNSAFESSL", "YES")
        .output()
        .await
        .unwrap();
    let info = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{info}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        info.contains("LAYERS=boroughs") && info.contains("LAYERS=cities"),
        "{info}"
    );
    assert!(!info.contains("LAYERS=countries"), "{info}");
    assert!(
        info.contains("SUBDATASET_2_DESC=Towns") || info.contains("DESC=Towns"),
        "{info}"
    );
}

/// In the server: a run past `timeout_secs` is killed and journaled `timed_out`; failed runs
/// are retried with backoff; the webhook hears of the failure and of the recovery.
#[tokio::test(flavor = "multi_thread")]
async fn timeouts_retries_and_the_webhook() {
    // A source that never finishes answering.
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stall_addr = stall.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = stall.accept().await {
            held.push(stream);
        }
    });
    let (hook, heard) = loopback(Arc::new(|_: &Seen| (204, vec![], Vec::new()))).await;
    let config = config(json!([
        {"name": "slow", "timeout_secs": 1, "retries": {"count": 0, "backoff_secs": 1},
         "source": {"type": "http", "url": format!("http://{stall_addr}/x.geojson")},
         "target": {"dataset": "local/slow.gpkg"}},
        {"name": "flaky", "schedule": "*/2 * * * * *", "retries": {"count": 1, "backoff_secs": 1},
         "webhook": format!("http://{hook}/hook"),
         "source": {"type": "file", "path": "data/later.geojson"}, "target": {"dataset": "local/flaky.gpkg"}}
    ]));
    let server = Process::start(&config.to_string(), |root| {
        std::fs::create_dir_all(root.join("data")).unwrap();
    })
    .await;
    let client = server.client();
    let started = client
        .post(server.url("/admin/jobs/slow/run"))
        .header("x-pozi-admin", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let again = client
        .post(server.url("/admin/jobs/slow/run"))
        .header("x-pozi-admin", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409, "one run of a job at a time");
    common::process::eventually("the slow run timed out", Duration::from_secs(20), || {
        journal_runs(&server.root, "slow")
            .first()
            .is_some_and(|r| r.0 == "timed_out")
    })
    .await;
    // The flaky job fails, is retried once, and the webhook is told.
    common::process::eventually("a retry", Duration::from_secs(20), || {
        let c = rusqlite::Connection::open(server.root.join("state/sync.sqlite")).unwrap();
        c.query_row(
            "SELECT count(*) FROM runs WHERE job = 'flaky' AND trigger = 'retry'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0)
            >= 1
    })
    .await;
    common::process::eventually("the failure webhook", Duration::from_secs(20), || {
        heard.lock().unwrap().iter().any(|s| s.path == "/hook")
    })
    .await;
    // The source appears: the next run recovers, and the webhook hears that too.
    std::fs::copy(
        test_data("naturalearth_cities.geojson"),
        server.root.join("data/later.geojson"),
    )
    .unwrap();
    common::process::eventually("a successful run", Duration::from_secs(20), || {
        journal_runs(&server.root, "flaky")
            .iter()
            .any(|r| r.0 == "ok")
    })
    .await;
    common::process::eventually("the recovery webhook", Duration::from_secs(20), || {
        heard
            .lock()
            .unwrap()
            .iter()
            .any(|s| String::from_utf8_lossy(&s.body).contains("\"recovered\""))
    })
    .await;
    let first: Value = serde_json::from_slice(&heard.lock().unwrap()[0].body).unwrap();
    assert_eq!(first["event"], "failed", "{first}");
    assert_eq!(first["job"], "flaky");
    assert!(
        first["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no such file"),
        "{first}"
    );
}

/// A stall that never answers, on a free loopback port.
async fn stalling_server() -> SocketAddr {
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stall.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = stall.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// Whether process `pid` is gone (or only a zombie).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// A shutdown cancels a running job within the shutdown timeout and journals it; a server
/// killed outright leaves no worker behind (the worker ends when its standard input closes).
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_cancels_runs_and_workers_never_outlive_their_server() {
    let addr = stalling_server().await;
    let config = config(json!([
        {"name": "slow", "source": {"type": "http", "url": format!("http://{addr}/x.geojson")},
         "target": {"dataset": "local/slow.gpkg"}}
    ]));
    for kill in [false, true] {
        let server = Process::start(&config.to_string(), |_| {}).await;
        let client = server.client();
        let started = client
            .post(server.url("/admin/jobs/slow/run"))
            .header("x-pozi-admin", "1")
            .header("x-pozi-admin", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(started.status(), 202);
        let mut worker = None;
        common::process::eventually("a worker process", Duration::from_secs(20), || {
            worker = server.children().into_iter().map(|(pid, _)| pid).next();
            worker.is_some()
        })
        .await;
        let worker = worker.unwrap();
        let root = server.root.clone();
        if kill {
            let pid = server.pid();
            std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap();
            common::process::eventually(
                "the orphaned worker to end",
                Duration::from_secs(20),
                || gone(worker),
            )
            .await;
            // The run the killed server left `running` is closed as cancelled at the next start.
            assert_eq!(journal_runs(&root, "slow")[0].0, "running");
            let again = Process::start_in(server.into_dir(), |_| {}).await;
            let runs = journal_runs(&again.root, "slow");
            assert_eq!(runs[0].0, "cancelled", "{runs:?}");
            assert!(
                runs[0]
                    .1
                    .as_deref()
                    .unwrap_or_default()
                    .contains("server stopped"),
                "{runs:?}"
            );
        } else {
            let (status, _dir) = server.terminate_keeping(Duration::from_secs(20)).await;
            assert!(status.is_some_and(|s| s.success()), "{status:?}");
            assert!(gone(worker), "the worker outlived the server");
            let runs = journal_runs(&root, "slow");
            assert_eq!(runs[0].0, "cancelled", "{runs:?}");
            assert!(
                runs[0]
                    .1
                    .as_deref()
                    .unwrap_or_default()
                    .contains("stopping"),
                "{runs:?}"
            );
        }
    }
}

/// A GeoPackage in a projected system (New York's boroughs in EPSG:2263, US feet) is published
/// in WGS 84 by default, as GDAL reprojects it, or as it is with `keep_crs`.
#[tokio::test(flavor = "multi_thread")]
async fn projected_sources_are_reprojected_unless_kept() {
    let (_dir, root) = root_with(&config(json!([
        {"name": "wgs84", "source": {"type": "file", "path": "data/nybb.gpkg"}, "target": {"dataset": "local/nybb.gpkg"}},
        {"name": "kept", "source": {"type": "file", "path": "data/nybb.gpkg"}, "transform": {"keep_crs": true},
         "target": {"dataset": "local/nybb_2263.gpkg"}}
    ])));
    let projected = root.join("data/nybb.gpkg");
    let status = std::process::Command::new("ogr2ogr")
        .args(["-f", "GPKG"])
        .arg(&projected)
        .arg(test_data("nybb/nybb.shp"))
        .args(["-nln", "nybb"])
        .status()
        .unwrap();
    assert!(status.success());
    for job in ["wgs84", "kept"] {
        let (ok, out, err) = sync(&root, &["run", job]).await;
        assert!(ok, "{job}: {out}{err}");
    }
    let srs = |file: &str| -> i64 {
        rusqlite::Connection::open(root.join("userdata/local").join(file))
            .unwrap()
            .query_row("SELECT srs_id FROM gpkg_geometry_columns", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(srs("nybb.gpkg"), 4326);
    assert_eq!(srs("nybb_2263.gpkg"), 2263);
    // Reprojected as GDAL reprojects (within a millimetre or so); kept exactly as stored.
    let reprojected = |file: &Path| -> Value {
        let output = std::process::Command::new("ogr2ogr")
            .args(["-f", "GeoJSON", "/vsistdout/", "-t_srs", "EPSG:4326"])
            .arg(file)
            .output()
            .unwrap();
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let ours = gdal_read(&root.join("userdata/local/nybb.gpkg"), None);
    let theirs = reprojected(&projected);
    let (a, b) = (by_key(&ours, "BoroCode"), by_key(&theirs, "BoroCode"));
    assert_eq!(a.len(), 5);
    for (code, feature) in &a {
        let (mut p, mut q) = (Vec::new(), Vec::new());
        flatten(&feature["geometry"]["coordinates"], &mut p);
        flatten(&b[code]["geometry"]["coordinates"], &mut q);
        assert_eq!(p.len(), q.len(), "{code}");
        let worst = p
            .iter()
            .zip(&q)
            .map(|(s, t)| (s.0 - t.0).abs().max((s.1 - t.1).abs()))
            .fold(0.0, f64::max);
        assert!(worst < 1e-7, "{code}: {worst} degrees from GDAL");
    }
    assert_same_data(
        &gdal_read(&root.join("userdata/local/nybb_2263.gpkg"), None),
        &gdal_read(&projected, None),
        "BoroCode",
        "kept",
    );
}

/// The other download formats: a zipped Shapefile, a CSV and a GeoPackage, each named by its
/// `format` (the URLs say nothing), compared with what GDAL reads from the same bytes.
#[tokio::test(flavor = "multi_thread")]
async fn http_sources_in_every_download_format() {
    let scratch = tempfile::tempdir().unwrap();
    let zip = scratch.path().join("nybb.zip");
    let status = std::process::Command::new("zip")
        .arg("-j")
        .arg(&zip)
        .args(["nybb.shp", "nybb.shx", "nybb.dbf", "nybb.prj"].map(|f| test_data("nybb").join(f)))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("zip is needed by the tests");
    assert!(status.success());
    let files: HashMap<&str, Vec<u8>> = HashMap::from([
        ("/a", std::fs::read(&zip).unwrap()),
        (
            "/b",
            std::fs::read(test_data("naturalearth_cities.csv")).unwrap(),
        ),
        (
            "/c",
            std::fs::read(test_data("naturalearth_lowres.gpkg")).unwrap(),
        ),
    ]);
    let (addr, _) = loopback(Arc::new(move |seen: &Seen| {
        match files.get(seen.path.as_str()) {
            Some(bytes) => (200, vec![], bytes.clone()),
            None => (404, vec![], Vec::new()),
        }
    }))
    .await;
    let (_dir, root) = root_with(&config(json!([
        {"name": "zip", "source": {"type": "http", "url": format!("http://{addr}/a"), "format": "zip"},
         "target": {"dataset": "local/nybb.gpkg"}},
        {"name": "csv", "source": {"type": "http", "url": format!("http://{addr}/b"), "format": "csv",
           "open_options": {"X_POSSIBLE_NAMES": "X", "Y_POSSIBLE_NAMES": "Y"}},
         "target": {"dataset": "local/cities.gpkg"}},
        {"name": "gpkg", "source": {"type": "http", "url": format!("http://{addr}/c"), "format": "gpkg"},
         "target": {"dataset": "local/countries.gpkg"}},
        {"name": "guess", "source": {"type": "http", "url": format!("http://{addr}/b")},
         "target": {"dataset": "local/guess.gpkg"}}
    ])));
    for job in ["zip", "csv", "gpkg"] {
        let (ok, out, err) = sync(&root, &["run", job]).await;
        assert!(ok, "{job}: {out}{err}");
    }
    let count = |file: &str| {
        gdal_read(&root.join("userdata/local").join(file), None)["features"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count("nybb.gpkg"), 5);
    assert_eq!(count("cities.gpkg"), 243);
    assert_eq!(count("countries.gpkg"), 177);
    let nybb = gdal_read(&root.join("userdata/local/nybb.gpkg"), None);
    assert!(by_key(&nybb, "BoroName").contains_key("\"Manhattan\""));
    // Without a format or an extension in the URL, the run says what to set.
    let (ok, _, err) = sync(&root, &["run", "guess"]).await;
    assert!(!ok && err.contains("set the source's `format`"), "{err}");
}

/// At most `max_concurrent_runs` run at once (the others wait their turn), and the journal
/// keeps the newest `keep_runs` of each job.
#[tokio::test(flavor = "multi_thread")]
async fn runs_are_limited_at_once_and_the_journal_keeps_the_newest() {
    let addr = stalling_server().await;
    let mut config = config(json!([
        {"name": "a", "source": {"type": "http", "url": format!("http://{addr}/a.geojson")},
         "target": {"dataset": "local/a.gpkg"}},
        {"name": "b", "source": {"type": "http", "url": format!("http://{addr}/b.geojson")},
         "target": {"dataset": "local/b.gpkg"}}
    ]));
    config["sync"]["max_concurrent_runs"] = json!(1);
    let server = Process::start(&config.to_string(), |_| {}).await;
    let client = server.client();
    for job in ["a", "b"] {
        let started = client
            .post(server.url(&format!("/admin/jobs/{job}/run")))
            .header("x-pozi-admin", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(started.status(), 202);
    }
    common::process::eventually("one worker", Duration::from_secs(20), || {
        server.children().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        server.children().len(),
        1,
        "a second run started past the limit"
    );
    drop(server);

    let (_dir, root) = root_with(
        &json!({"listen": ["127.0.0.1:0"], "sync": {"keep_runs": 2, "jobs": [
            {"name": "cities", "source": {"type": "file", "path": "data/naturalearth_cities.geojson"},
             "target": {"dataset": "local/cities.gpkg"}}
        ]}}),
    );
    for _ in 0..3 {
        assert!(sync(&root, &["run", "cities"]).await.0);
    }
    assert_eq!(journal_runs(&root, "cities").len(), 2);
}
