//! Helpers for the GIS tests: the test data in `tests/data`, `/ogr2ogr` requests, GDAL's own answers,
//! and comparisons of feature collections.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "shared test helpers"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;
use serde_json::Value;

use super::TestServer;

/// A file of `tests/data` (see its README for origins and licences).
pub fn test_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// `/ogr2ogr?source=…&options=…` on the server: status and parsed body.
pub async fn ours(server: &TestServer, source: &str, options: &str) -> (StatusCode, Value) {
    let (status, body) = ours_text(server, source, options).await;
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")),
    )
}

/// This server's `/ogr2ogr` answer as the text it sent.
pub async fn ours_text(server: &TestServer, source: &str, options: &str) -> (StatusCode, String) {
    let response = server
        .client()
        .get(server.url("/ogr2ogr"))
        .query(&[("source", source), ("options", options)])
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.text().await.unwrap())
}

/// GDAL's answer to the same request (`|` becoming argument breaks), as RFC 7946 GeoJSON (7
/// decimal places, counter-clockwise exterior rings, one-part multi-geometries as their part),
/// which is what this server writes.
pub fn gdal(file: &Path, options: &[&str]) -> Value {
    gdal_run(
        file.as_os_str(),
        &[&["-lco", "RFC7946=YES"], options].concat(),
    )
}

/// GDAL's answer in the layer's own system, at full precision (for properties of features
/// that GDAL cannot reproject).
pub fn gdal_as_stored(file: &Path, options: &[&str]) -> Value {
    gdal_run(file.as_os_str(), options)
}

/// What GDAL reads at `endpoint` (`OAPIF:https://…`, `WFS:https://…`) with `options`, as
/// GeoJSON; the test servers' self-signed certificates are accepted.
pub async fn gdal_read_url(endpoint: &str, options: &[&str]) -> Value {
    let endpoint = endpoint.to_owned();
    let options: Vec<String> = options.iter().map(|&o| o.to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        gdal_run(endpoint.as_ref(), &options)
    })
    .await
    .unwrap()
}

fn gdal_run(source: &std::ffi::OsStr, options: &[&str]) -> Value {
    assert!(
        Path::new("/usr/bin/ogr2ogr").exists(),
        "ogr2ogr is missing: run scripts/test, which installs gdal-bin"
    );
    let output = Command::new("ogr2ogr")
        .args(["-f", "GeoJSON", "/vsistdout/"])
        .arg(source)
        .args(options)
        .env("GDAL_HTTP_UNSAFESSL", "YES")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Converts a file with GDAL into `format` (`GPKG`, `MapInfo File`, `GeoJSONSeq`…).
pub fn gdal_write(format: &str, from: &Path, to: &Path, extra: &[&str]) {
    let output = Command::new("ogr2ogr")
        .args(["-f", format])
        .arg(to)
        .arg(from)
        .args(extra)
        .output()
        .expect("ogr2ogr (gdal-bin) is needed: run scripts/test");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `count` points from `scripts/gen_points.py`, converted by GDAL into the GeoPackage
/// `gpkg` as the layer `points` (the GeoJSON is written beside it first).
pub fn generated_points(count: usize, gpkg: &Path) {
    let geojson = gpkg.with_extension("geojson");
    let generator = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gen_points.py");
    let status = Command::new("python3")
        .arg(generator)
        .arg(count.to_string())
        .arg("--out")
        .arg(&geojson)
        .status()
        .unwrap();
    assert!(status.success());
    gdal_convert(&geojson, gpkg, &["-nln", "points"]);
    std::fs::remove_file(geojson).unwrap();
}

/// Converts a file into a GeoPackage with GDAL.
pub fn gdal_convert(from: &Path, to: &Path, extra: &[&str]) {
    gdal_write("GPKG", from, to, extra);
}

/// The features of a collection.
pub fn features(v: &Value) -> &Vec<Value> {
    v["features"].as_array().unwrap()
}

/// Equal JSON, numbers within a relative 1e-9.
pub fn same(a: &Value, b: &Value) -> bool {
    same_with(a, b, &|x, y| (x - y).abs() <= 1e-9 * x.abs().max(1.0))
}

/// Equal JSON, numbers compared by `equal`.
fn same_with(a: &Value, b: &Value, equal: &dyn Fn(f64, f64) -> bool) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => equal(x.as_f64().unwrap(), y.as_f64().unwrap()),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_with(a, b, equal))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_with(v, w, equal)))
        }
        _ => a == b,
    }
}

/// A coordinate this server wrote (rounded to 7 decimal places) against GDAL's RFC 7946 one:
/// equal, except that GDAL also shortens a value ending in a run of nines or zeros
/// (`-37.499999` becomes `-37.5`), which moves it by at most 1e-6.
pub fn same_coordinate(ours: f64, gdal: f64) -> bool {
    let decimals = |v: f64| {
        let text = v.to_string();
        text.split_once('.').map_or(0, |(_, d)| d.len())
    };
    ours == gdal || ((ours - gdal).abs() <= 1.000_000_1e-6 && decimals(gdal) < 7)
}

/// The same number of features, in the same order, with the same properties.
pub fn assert_same_properties(ours: &Value, gdal: &Value, what: &str) {
    let (a, b) = (features(ours), features(gdal));
    assert_eq!(a.len(), b.len(), "{what}: feature count");
    for (x, y) in a.iter().zip(b) {
        assert!(
            same(&x["properties"], &y["properties"]),
            "{what}: properties {} vs {}",
            x["properties"],
            y["properties"]
        );
    }
}

/// The same features, in the same order, with the same properties and geometries.
pub fn assert_same_features(ours: &Value, gdal: &Value, what: &str) {
    assert_same_properties(ours, gdal, what);
    assert!(!features(ours).is_empty(), "{what}: no features");
    for (x, y) in features(ours).iter().zip(features(gdal)) {
        assert!(
            same_geometry(&x["geometry"], &y["geometry"]),
            "{what}: geometry of {}: {} (ours) vs {} (GDAL)",
            x["properties"],
            x["geometry"],
            y["geometry"]
        );
    }
}

/// The same geometry. GDAL's RFC 7946 writer re-stitches the parts of a geometry that reaches
/// the antimeridian (Russia, Fiji, Antarctica), so those must have the same vertices; all
/// others must be equal, parts, ring order and orientation included.
pub fn same_geometry(ours: &Value, gdal: &Value) -> bool {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    flatten(&ours["coordinates"], &mut a);
    flatten(&gdal["coordinates"], &mut b);
    if !b.iter().any(|(x, _)| x.abs() == 180.0) {
        return same_with(ours, gdal, &same_coordinate);
    }
    let sorted = |v: &Vec<(f64, f64)>| {
        let mut k = v.clone();
        k.sort_by(|p, q| p.partial_cmp(q).unwrap());
        k.dedup();
        k
    };
    let (a, b) = (sorted(&a), sorted(&b));
    ours["type"] == gdal["type"]
        && a.len() == b.len()
        && a.iter()
            .zip(&b)
            .all(|(p, q)| same_coordinate(p.0, q.0) && same_coordinate(p.1, q.1))
}

/// Every coordinate pair of a GeoJSON `coordinates` member.
pub fn flatten(coordinates: &Value, out: &mut Vec<(f64, f64)>) {
    match coordinates.as_array() {
        Some(items) if items.first().is_some_and(Value::is_number) => {
            out.push((items[0].as_f64().unwrap(), items[1].as_f64().unwrap()))
        }
        Some(items) => items.iter().for_each(|c| flatten(c, out)),
        None => {}
    }
}

/// The largest coordinate difference, in degrees, between two collections of the same features.
pub fn max_difference(ours: &Value, gdal: &Value) -> f64 {
    let (a, b) = (features(ours), features(gdal));
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        let (mut p, mut q) = (Vec::new(), Vec::new());
        flatten(&x["geometry"]["coordinates"], &mut p);
        flatten(&y["geometry"]["coordinates"], &mut q);
        assert_eq!(p.len(), q.len(), "vertex counts of {}", x["properties"]);
        for ((x1, y1), (x2, y2)) in p.iter().zip(&q) {
            worst = worst.max((x1 - x2).abs()).max((y1 - y2).abs());
        }
    }
    worst
}

/// The same properties, and coordinates within 1e-6 degrees.
pub fn assert_matches_gdal(ours: &Value, gdal: &Value, what: &str) {
    assert_same_properties(ours, gdal, what);
    for (a, b) in features(ours).iter().zip(features(gdal)) {
        assert_eq!(
            a["geometry"]["type"], b["geometry"]["type"],
            "{what}: geometry type of {}",
            a["properties"]
        );
    }
    let worst = max_difference(ours, gdal);
    assert!(worst < 1e-6, "{what}: differs by {worst} degrees");
}

/// The collection with its features sorted by their properties: for sources converted by this
/// server, whose features come in spatial order (GDAL gives them in file order).
pub fn sorted(collection: &Value) -> Value {
    let mut list = features(collection).to_vec();
    list.sort_by_key(|f| f["properties"].to_string());
    serde_json::json!({"type": "FeatureCollection", "features": list})
}
