//! `/ogr2ogr` against GDAL's own ogr2ogr on the same GeoPackage: the same features for the
//! same options, and clear errors for bad requests. GDAL (`gdal-bin`) is installed by
//! `scripts/test`.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

#[allow(
    unused_imports,
    reason = "each test file uses some of the shared helpers"
)]
use common::gis::*;

use std::path::Path;

use common::{TestServer, gunzip, unbrotli};
use reqwest::StatusCode;
use serde_json::Value;

async fn server() -> TestServer {
    TestServer::start("{}", |root| {
        std::fs::copy(
            test_data("naturalearth_lowres.gpkg"),
            root.join("userdata/local/naturalearth_lowres.gpkg"),
        )
        .unwrap();
        std::fs::write(root.join("userdata/local/roads.tab"), "!table\n").unwrap();
    })
    .await
}

#[tokio::test]
async fn the_same_features_as_gdal_for_the_same_options() {
    let server = server().await;
    let file = test_data("naturalearth_lowres.gpkg");
    let cases: &[(&str, &[&str])] = &[
        (
            "-where|continent='Oceania'",
            &["-where", "continent='Oceania'"],
        ),
        (
            "-where|name|=|'New|Zealand'",
            &["-where", "name = 'New Zealand'"],
        ),
        ("-select|name,pop_est", &["-select", "name,pop_est"]),
        (
            "-spat|140|-45|155|-10",
            &["-spat", "140", "-45", "155", "-10"],
        ),
        (
            "-spat|-10|35|30|60|-select|name|-where|pop_est|>|10000000",
            &[
                "-spat",
                "-10",
                "35",
                "30",
                "60",
                "-select",
                "name",
                "-where",
                "pop_est > 10000000",
            ],
        ),
        ("-limit|5", &["-limit", "5"]),
        (
            "-f|GeoJSON|-t_srs|EPSG:4326|-where|\"iso_a3 IN ('AUS', 'NZL', 'FJI')\"",
            &["-where", "iso_a3 IN ('AUS', 'NZL', 'FJI')"],
        ),
        (
            "-sql|SELECT|name,|continent,|geom|FROM|naturalearth_lowres|WHERE|continent|=|'Africa'|ORDER|BY|name",
            &[
                "-sql",
                "SELECT name, continent, geom FROM naturalearth_lowres WHERE continent = 'Africa' ORDER BY name",
            ],
        ),
    ];
    for (options, argv) in cases {
        let (status, body) = ours(&server, "naturalearth_lowres.gpkg", options).await;
        assert_eq!(status, StatusCode::OK, "{options}: {body}");
        assert_same_features(&body, &gdal(&file, argv), options);
    }
    // -simplify keeps every feature and reduces the vertices.
    let (_, full) = ours(
        &server,
        "naturalearth_lowres.gpkg",
        "-where|name='Australia'",
    )
    .await;
    let (_, simple) = ours(
        &server,
        "naturalearth_lowres.gpkg",
        "-where|name='Australia'|-simplify|0.5",
    )
    .await;
    let count = |v: &Value| v.to_string().matches('[').count();
    assert!(
        count(&simple) < count(&full) / 2,
        "{} vs {}",
        count(&simple),
        count(&full)
    );
    server.stop().await;
}

#[tokio::test]
async fn the_output_is_rfc_7946_geojson() {
    let server = server().await;
    let response = server
        .client()
        .get(server.url("/ogr2ogr"))
        .query(&[
            ("source", "naturalearth_lowres.gpkg"),
            ("options", "-where|continent='Oceania'"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/geo+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "FeatureCollection");
    assert!(body.get("crs").is_none(), "RFC 7946 has no crs member");
    assert_eq!(body["features"].as_array().unwrap().len(), 7);
    for feature in body["features"].as_array().unwrap() {
        assert_eq!(feature["type"], "Feature");
        // Stored as MultiPolygons; those of one part are written as that Polygon, as GDAL
        // writes RFC 7946.
        let parts = feature["geometry"]["coordinates"].as_array().unwrap().len();
        let kind = feature["geometry"]["type"].as_str().unwrap();
        if kind == "MultiPolygon" {
            assert!(parts > 1, "{feature}");
        } else {
            assert_eq!(kind, "Polygon");
        }
    }
    let kinds: std::collections::HashSet<&str> = body["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["geometry"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_json_errors() {
    let server = server().await;
    let source = "naturalearth_lowres.gpkg";
    let cases: &[(&str, &str, StatusCode, &str)] = &[
        (
            source,
            "-where|nosuch=1",
            StatusCode::BAD_REQUEST,
            "no such column: nosuch",
        ),
        (
            source,
            "-where|name='x'|)",
            StatusCode::BAD_REQUEST,
            "syntax error",
        ),
        (
            source,
            "-select|name,nosuch",
            StatusCode::BAD_REQUEST,
            "unknown field \"nosuch\"",
        ),
        (
            source,
            "-sql|SELECT|*|FROM|nosuch",
            StatusCode::BAD_REQUEST,
            "no such table: nosuch",
        ),
        (
            source,
            "-sql|DELETE|FROM|naturalearth_lowres",
            StatusCode::BAD_REQUEST,
            "not authorized",
        ),
        (
            source,
            "-sql|DROP|TABLE|naturalearth_lowres",
            StatusCode::BAD_REQUEST,
            "not authorized",
        ),
        (
            source,
            "-sql|ATTACH|'/etc/passwd'|AS|x",
            StatusCode::BAD_REQUEST,
            "not authorized",
        ),
        (
            source,
            "-sql|SELECT|load_extension('mod_spatialite')",
            StatusCode::BAD_REQUEST,
            "not authorized",
        ),
        (
            source,
            "-where|1=1;|DELETE|FROM|naturalearth_lowres",
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            source,
            "-spat|1|2|3",
            StatusCode::BAD_REQUEST,
            "-spat needs four numbers",
        ),
        (
            source,
            "-zfield|height",
            StatusCode::BAD_REQUEST,
            "unsupported option -zfield",
        ),
        (source, "-limit|lots", StatusCode::BAD_REQUEST, "-limit"),
        (
            source,
            "nosuchlayer",
            StatusCode::BAD_REQUEST,
            "no layer named \"nosuchlayer\"",
        ),
        (
            "missing.gpkg",
            "",
            StatusCode::NOT_FOUND,
            "missing.gpkg: no such dataset",
        ),
        (
            "../naturalearth_lowres.gpkg",
            "",
            StatusCode::BAD_REQUEST,
            "dot segments",
        ),
        (
            "..%2fstate%2fschedules.sqlite",
            "",
            StatusCode::BAD_REQUEST,
            "bad source",
        ),
        (
            "resourcecheck/local.json",
            "",
            StatusCode::BAD_REQUEST,
            "not a FeatureCollection: no \"features\" array",
        ),
        (
            "roads.tab",
            "",
            StatusCode::BAD_REQUEST,
            "ogr2ogr refused the request",
        ),
        (
            "missing.shp",
            "",
            StatusCode::NOT_FOUND,
            "missing.shp: no such dataset",
        ),
        (
            "MSSQL:server=127.0.0.1,1;database=gis;trusted_connection=yes",
            "",
            StatusCode::BAD_REQUEST,
            "connection strings, URLs, drive letters and network paths are not accepted",
        ),
        ("", "", StatusCode::BAD_REQUEST, "source is required"),
    ];
    for (source, options, status, wanted) in cases {
        let (got, body) = ours(&server, source, options).await;
        assert_eq!(got, *status, "{source} {options}: {body}");
        assert_eq!(body["status"], status.as_u16(), "{source} {options}");
        let text = format!(
            "{} {}",
            body["error"].as_str().unwrap_or_default(),
            body["detail"].as_str().unwrap_or_default()
        );
        assert!(text.contains(wanted), "{source} {options}: {body}");
        assert!(
            !text.contains("/tmp") && !text.contains("userdata"),
            "{source} {options} reveals a server path: {body}"
        );
    }
    // The dataset is untouched.
    let (_, all) = ours(&server, source, "").await;
    assert_eq!(all["features"].as_array().unwrap().len(), 177);
    server.stop().await;
}

#[tokio::test]
async fn a_dataset_replaced_by_rename_is_served_at_the_next_request() {
    let server = server().await;
    let folder = server.root.join("userdata/local");
    let (_, before) = ours(
        &server,
        "naturalearth_lowres.gpkg",
        "-where|continent='Oceania'",
    )
    .await;
    assert_eq!(before["features"].as_array().unwrap().len(), 7);
    // Publish a new version: only the Oceania countries, written aside and renamed into place.
    let next = folder.join("next.gpkg.tmp");
    gdal_convert(
        &folder.join("naturalearth_lowres.gpkg"),
        &next,
        &[
            "-where",
            "continent = 'Oceania' AND name <> 'Fiji'",
            "-nln",
            "naturalearth_lowres",
        ],
    );
    std::fs::rename(&next, folder.join("naturalearth_lowres.gpkg")).unwrap();
    let (_, after) = ours(&server, "naturalearth_lowres.gpkg", "").await;
    assert_eq!(after["features"].as_array().unwrap().len(), 6);
    server.stop().await;
}

#[tokio::test]
async fn layers_in_other_systems_are_reprojected_as_gdal_does() {
    let server = server().await;
    let folder = server.root.join("userdata/local");
    // New York boroughs as shipped: EPSG:2263, US survey feet.
    gdal_convert(
        &test_data("nybb/nybb.shp"),
        &folder.join("nybb.gpkg"),
        &["-nln", "nybb", "-nlt", "MULTIPOLYGON"],
    );
    let (status, ours_nybb) = ours(&server, "nybb.gpkg", "").await;
    assert_eq!(status, StatusCode::OK, "{ours_nybb}");
    let gdal_nybb = gdal(&folder.join("nybb.gpkg"), &["-t_srs", "EPSG:4326"]);
    let worst = max_difference(&ours_nybb, &gdal_nybb);
    assert!(worst < 1e-6, "nybb differs from GDAL by {worst} degrees");
    assert!(
        ours_nybb["features"][0]["geometry"]["coordinates"][0][0][0][0]
            .as_f64()
            .unwrap()
            < -73.0
    );

    // Australia in the Australian and web systems.
    for code in [28354, 28355, 28356, 7854, 7855, 7856, 3111, 7899, 3857] {
        let file = folder.join(format!("aus_{code}.gpkg"));
        let target = format!("EPSG:{code}");
        gdal_convert(
            &test_data("naturalearth_lowres.gpkg"),
            &file,
            &[
                "-t_srs",
                &target,
                "-where",
                "name IN ('Australia', 'New Zealand')",
                "-nln",
                "countries",
            ],
        );
        let (status, body) = ours(&server, &format!("aus_{code}.gpkg"), "").await;
        assert_eq!(status, StatusCode::OK, "EPSG:{code}: {body}");
        let worst = max_difference(&body, &gdal(&file, &["-t_srs", "EPSG:4326"]));
        assert!(
            worst < 1e-6,
            "EPSG:{code} differs from GDAL by {worst} degrees"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn formats_not_read_natively_are_answered_by_gdal() {
    let server = server().await;
    let folder = server.root.join("userdata/local");
    gdal_write(
        "MapInfo File",
        &test_data("naturalearth_lowres.gpkg"),
        &folder.join("countries.tab"),
        &[],
    );
    let (status, body) = ours(
        &server,
        "countries.tab",
        "-where|continent='Oceania'|-select|name",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let expected = gdal(
        &folder.join("countries.tab"),
        &[
            "-where",
            "continent='Oceania'",
            "-select",
            "name",
            "-t_srs",
            "EPSG:4326",
        ],
    );
    let names = |v: &Value| {
        let mut n: Vec<String> = v["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["properties"]["name"].as_str().unwrap().to_owned())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&body), names(&expected));
    assert_eq!(names(&body).len(), 7);
    // Options are rebuilt, never passed through a shell: metacharacters are part of a value.
    let (status, body) = ours(&server, "countries.tab", "-where|name='x';touch|/tmp/pwned").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(!Path::new("/tmp/pwned").exists());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_during_a_replacement_finishes_from_its_version() {
    let server = server().await;
    let folder = server.root.join("userdata/local");
    // 100,000 generated points: a response of several megabytes, held back by the client.
    generated_points(100_000, &folder.join("points.gpkg"));
    gdal_convert(
        &test_data("naturalearth_lowres.gpkg"),
        &folder.join("small.gpkg.tmp"),
        &["-limit", "3", "-nln", "points"],
    );

    let mut response = server
        .client()
        .get(server.url("/ogr2ogr"))
        .query(&[("source", "points.gpkg"), ("options", "")])
        .send()
        .await
        .unwrap();
    let mut body = response.chunk().await.unwrap().unwrap().to_vec();
    // Publish a new version while the first response is still streaming.
    std::fs::rename(folder.join("small.gpkg.tmp"), folder.join("points.gpkg")).unwrap();
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    let old: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        old["features"].as_array().unwrap().len(),
        100_000,
        "the first answer mixed versions"
    );
    let (_, new) = ours(&server, "points.gpkg", "").await;
    assert_eq!(new["features"].as_array().unwrap().len(), 3);
    server.stop().await;
}

/// Boxes over the same features, with the response cache off: the first reads rows, later ones
/// are answered from rendered copies (wholly or partly), and every answer must still be GDAL's,
/// for polygons (copies straddling a box edge are tested against their geometry) and points.
#[tokio::test]
async fn repeated_and_overlapping_boxes_answer_as_gdal_does() {
    let server = TestServer::start(r#"{"data": {"response_cache_mb": 0}}"#, |root| {
        std::fs::copy(
            test_data("naturalearth_lowres.gpkg"),
            root.join("userdata/local/countries.gpkg"),
        )
        .unwrap();
    })
    .await;
    let folder = server.root.join("userdata/local");
    generated_points(20_000, &folder.join("points.gpkg"));

    let boxes: &[&[&str]] = &[
        &["100", "-50", "180", "0"],
        &["100", "-50", "180", "0"],
        &["120", "-45", "160", "-10"],
        &["60", "-40", "150", "10"],
        &["60", "-40", "150", "10"],
        &["100", "-50", "180", "0", "-limit", "3"],
        &["-20", "-20", "0", "0"],
        &["144", "-38", "146", "-36"],
        &["144", "-38", "146", "-36"],
        &["145", "-37.5", "146.5", "-36", "-limit", "10"],
        &["144.5", "-37.5", "145.5", "-36.5"],
    ];
    for source in ["countries.gpkg", "points.gpkg"] {
        for args in boxes {
            let mut argv = vec!["-spat"];
            argv.extend_from_slice(args);
            let options = argv.join("|");
            let (status, body) = ours(&server, source, &options).await;
            assert_eq!(status, StatusCode::OK, "{source} {options}: {body}");
            let expected = gdal(&folder.join(source), &argv);
            if !features(&expected).is_empty() {
                assert_same_features(&body, &expected, &format!("{source} {options}"));
            } else {
                assert!(features(&body).is_empty(), "{source} {options}: {body}");
            }
        }
    }
    server.stop().await;
}

/// A GeoPackage written by QGIS (tests/data/qgis_written.gpkg, made by
/// tests/data/qgis_fixture.py with PyQGIS): two layers in one file, one of them in MGA zone 55
/// with date, boolean and null values and a feature without a geometry, and QGIS's
/// `layer_styles` table. Each layer answers as GDAL reads it, and OGC API Features lists them.
#[tokio::test]
async fn a_geopackage_written_by_qgis_reads_as_gdal_reads_it() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qgis_written.gpkg");
    let server = TestServer::start("{}", |root| {
        std::fs::copy(&fixture, root.join("userdata/local/qgis.gpkg")).unwrap();
    })
    .await;
    for (options, argv) in [
        ("countries", vec!["countries"]),
        // A BOOLEAN column taken straight into -sql stays a boolean.
        (
            "-sql|SELECT|kind,|active|FROM|assets",
            vec!["-sql", "SELECT kind, active FROM assets"],
        ),
        ("assets", vec!["assets", "-t_srs", "EPSG:4326"]),
        (
            "assets|-where|active",
            vec!["assets", "-where", "active", "-t_srs", "EPSG:4326"],
        ),
        (
            "assets|-spat|320500|5812500|323000|5815000",
            vec![
                "assets",
                "-spat",
                "320500",
                "5812500",
                "323000",
                "5815000",
                "-t_srs",
                "EPSG:4326",
            ],
        ),
    ] {
        let (status, ours) = ours(&server, "qgis.gpkg", options).await;
        assert_eq!(status, StatusCode::OK, "{options}: {ours}");
        // GDAL cannot reproject QGIS's stand-in for a missing geometry (an empty point): its
        // properties are compared as stored, its coordinates with that feature skipped.
        let stored: Vec<&str> = argv
            .iter()
            .copied()
            .take_while(|a| *a != "-t_srs")
            .collect();
        let gdal_coordinates = gdal(&fixture, &[argv.as_slice(), &["-skipfailures"]].concat());
        let gdal = gdal_as_stored(&fixture, &stored);
        assert_same_properties(&ours, &gdal, options);
        assert!(!features(&ours).is_empty(), "{options}");
        for (a, b) in features(&ours).iter().zip(features(&gdal)) {
            assert_eq!(
                a["geometry"].is_null(),
                b["geometry"].is_null(),
                "{options}"
            );
        }
        let with_geometry = |v: &serde_json::Value| {
            serde_json::json!({
                "features": features(v).iter().filter(|f| !f["geometry"].is_null()).cloned().collect::<Vec<_>>()
            })
        };
        let worst = max_difference(&with_geometry(&ours), &with_geometry(&gdal_coordinates));
        assert!(worst < 1e-6, "{options}: differs by {worst} degrees");
    }
    let (_, collections) = server.get_json("/features/collections").await;
    let ids: Vec<&str> = collections["collections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    for layer in ["qgis.countries", "qgis.assets"] {
        assert!(ids.contains(&layer), "{layer} not in {ids:?}");
    }
    // The feature without a geometry is neither inside nor outside a CQL2 geometry: `NOT`
    // does not select it (SQL's NULL), while every feature with one meets the world.
    let (_, all) = server
        .get_json("/features/collections/qgis.assets/items")
        .await;
    let with_geometry = features(&all)
        .iter()
        .filter(|f| !f["geometry"].is_null())
        .count();
    assert!(
        with_geometry < features(&all).len(),
        "the fixture lost its feature without geometry"
    );
    for (filter, wanted) in [
        (
            "S_INTERSECTS(geometry, BBOX(-180, -90, 180, 90))",
            with_geometry,
        ),
        ("NOT S_INTERSECTS(geometry, BBOX(-180, -90, 180, 90))", 0),
        (
            "S_INTERSECTS(geometry, BBOX(-180, -90, 180, 90)) OR NOT S_INTERSECTS(geometry, BBOX(-180, -90, 180, 90))",
            with_geometry,
        ),
    ] {
        let encoded: String = filter
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let (status, body) = server
            .get_json(&format!(
                "/features/collections/qgis.assets/items?filter={encoded}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{filter}: {body}");
        assert_eq!(body["numberMatched"], wanted, "{filter}: {body}");
    }
    server.stop().await;
}

/// GET with an `Accept-Encoding`: status, `Content-Encoding`, `Vary` and the body as sent.
async fn get_encoded(
    server: &TestServer,
    path: &str,
    accept: &str,
) -> (StatusCode, Option<String>, Option<String>, Vec<u8>) {
    let response = server
        .client()
        .get(server.url(path))
        .header("accept-encoding", accept)
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (status, encoding, vary) = (
        response.status(),
        header("content-encoding"),
        header("vary"),
    );
    (
        status,
        encoding,
        vary,
        response.bytes().await.unwrap().to_vec(),
    )
}

#[tokio::test]
async fn answers_are_compressed_as_the_client_accepts() {
    let server = server().await;
    let whole = "/ogr2ogr?source=naturalearth_lowres.gpkg&options=";
    let (status, encoding, vary, plain) = get_encoded(&server, whole, "identity").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(encoding, None);
    assert_eq!(vary.as_deref(), Some("accept-encoding"));
    let plain_json: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(features(&plain_json).len(), 177);
    // Twice each: the second answer comes from the response cache, compressed as it was sent.
    for _ in 0..2 {
        let (status, encoding, _, body) = get_encoded(&server, whole, "gzip, deflate, br").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(encoding.as_deref(), Some("br"));
        assert!(
            body.len() * 2 < plain.len(),
            "{} of {}",
            body.len(),
            plain.len()
        );
        assert_eq!(unbrotli(&body), plain);
        let (_, encoding, _, body) = get_encoded(&server, whole, "gzip").await;
        assert_eq!(encoding.as_deref(), Some("gzip"));
        assert!(
            body.len() * 2 < plain.len(),
            "{} of {}",
            body.len(),
            plain.len()
        );
        assert_eq!(gunzip(&body), plain);
    }
    let (_, encoding, _, body) = get_encoded(&server, whole, "br;q=0, gzip;q=0").await;
    assert_eq!(encoding, None);
    assert_eq!(body, plain);

    // OGC API Features and search answers too.
    let items = "/features/collections/naturalearth_lowres/items?limit=50";
    let (_, _, _, plain) = get_encoded(&server, items, "identity").await;
    let (status, encoding, _, body) = get_encoded(&server, items, "gzip").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(encoding.as_deref(), Some("gzip"));
    let (a, b): (Value, Value) = (
        serde_json::from_slice(&plain).unwrap(),
        serde_json::from_slice(&gunzip(&body)).unwrap(),
    );
    assert_eq!(a["features"], b["features"]);
    server.stop().await;
}

/// A field named twice in `-select` is written once: a feature's properties are a JSON
/// object, whose keys are unique.
#[tokio::test]
async fn a_field_selected_twice_is_written_once() {
    let server = server().await;
    let (status, text) = ours_text(
        &server,
        "naturalearth_lowres.gpkg",
        "-select|name,NAME,name|-limit|1",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The text as sent: a parser would keep one of two equal keys and hide the other.
    assert_eq!(text.matches("\"name\":").count(), 2, "{text}"); // the collection's and one
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    let properties = &features(&body)[0]["properties"];
    assert_eq!(
        properties.as_object().map(serde_json::Map::len),
        Some(1),
        "{properties}"
    );
    server.stop().await;
}
