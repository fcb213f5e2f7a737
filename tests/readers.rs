//! GeoJSON, newline-delimited GeoJSON and CSV sources through `/ogr2ogr`: converted once into a
//! GeoPackage that GDAL opens without warnings, and answered with the same features as GDAL.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

#[allow(
    unused_imports,
    reason = "each test file uses some of the shared helpers"
)]
use common::gis::*;

use std::path::Path;
use std::process::Command;

use common::TestServer;
use reqwest::StatusCode;

async fn server() -> TestServer {
    TestServer::start("{}", |root| {
        let local = root.join("userdata/local");
        for name in ["naturalearth_cities.geojson", "naturalearth_cities.csv"] {
            std::fs::copy(test_data(name), local.join(name)).unwrap();
        }
        gdal_write("GeoJSONSeq", &test_data("naturalearth_cities.geojson"), &local.join("cities.geojsonl"), &[]);
        std::fs::write(
            local.join("sites.csv"),
            "id;name;wkt\n1;Town hall;POINT (144.96 -37.81)\n2;Depot;LINESTRING (145 -37.8, 145.1 -37.9)\n3;Café;\n",
        )
        .unwrap();
    })
    .await
}

#[tokio::test]
async fn geojson_sources_give_the_same_features_as_gdal() {
    let server = server().await;
    let file = test_data("naturalearth_cities.geojson");
    for (options, argv) in [
        ("", vec![]),
        (
            "-where|name|LIKE|'Mel%'",
            vec!["-where", "name LIKE 'Mel%'"],
        ),
        (
            "-spat|140|-45|155|-10",
            vec!["-spat", "140", "-45", "155", "-10"],
        ),
    ] {
        let (status, body) = ours(&server, "naturalearth_cities.geojson", options).await;
        assert_eq!(status, StatusCode::OK, "{options}: {body}");
        // Converted sources are written in spatial order: the same features as GDAL's, in
        // another order.
        let (body, expected) = (sorted(&body), sorted(&gdal(&file, &argv)));
        assert_eq!(
            features(&body).len(),
            features(&expected).len(),
            "{options}"
        );
        for (a, b) in features(&body).iter().zip(features(&expected)) {
            assert!(
                same(&a["properties"], &b["properties"]) && same(&a["geometry"], &b["geometry"]),
                "{options}: {a} vs {b}"
            );
        }
    }
    // `-limit` takes the first features in the converted file's (spatial) order: as many as
    // asked, each one of the source's.
    let (_, limited) = ours(&server, "naturalearth_cities.geojson", "-limit|10").await;
    let all = gdal(&file, &[]);
    assert_eq!(features(&limited).len(), 10);
    for feature in features(&limited) {
        assert!(
            features(&all)
                .iter()
                .any(|f| same(&f["properties"], &feature["properties"])),
            "{feature} is not in the source"
        );
    }
    // Newline-delimited GeoJSON reads the same.
    let (_, seq) = ours(&server, "cities.geojsonl", "-where|name|=|'Melbourne'").await;
    assert_eq!(features(&seq).len(), 1);
    assert_eq!(features(&seq)[0]["properties"]["name"], "Melbourne");
    server.stop().await;
}

#[tokio::test]
async fn csv_sources_with_coordinates_or_wkt() {
    let server = server().await;
    let (status, body) = ours(
        &server,
        "naturalearth_cities.csv",
        "-where|name|=|'Canberra'",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let canberra = &features(&body)[0];
    // Properties as GDAL reads the file (every column text, no blank trailing column)...
    let expected = gdal(
        &test_data("naturalearth_cities.csv"),
        &["-where", "name = 'Canberra'"],
    );
    assert_eq!(canberra["properties"], features(&expected)[0]["properties"]);
    // ...and a point from the X and Y columns.
    assert_eq!(canberra["geometry"]["type"], "Point");
    assert_eq!(
        canberra["geometry"]["coordinates"][0].as_f64().unwrap(),
        canberra["properties"]["X"]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    );

    let (_, sites) = ours(&server, "sites.csv", "").await;
    let sites = features(&sites);
    assert_eq!(sites.len(), 3);
    // Converted sources list features in spatial order, those without a geometry last.
    let site = |id: &str| sites.iter().find(|f| f["properties"]["id"] == id).unwrap();
    assert_eq!(site("1")["geometry"]["type"], "Point");
    assert_eq!(site("2")["geometry"]["type"], "LineString");
    assert!(sites[2]["geometry"].is_null());
    assert_eq!(sites[2]["properties"]["name"], "Café");
    let (_, boxed) = ours(&server, "sites.csv", "-spat|144.9|-37.85|145.0|-37.8").await;
    assert_eq!(features(&boxed).len(), 2, "{boxed}");
    server.stop().await;
}

#[tokio::test]
async fn the_written_geopackages_open_in_gdal_without_warnings() {
    let server = server().await;
    for source in [
        "naturalearth_cities.geojson",
        "naturalearth_cities.csv",
        "sites.csv",
        "cities.geojsonl",
    ] {
        assert_eq!(
            ours(&server, source, "-limit|1").await.0,
            StatusCode::OK,
            "{source}"
        );
    }
    let cache = server.root.join("state/cache");
    let files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gpkg"))
        .collect();
    assert_eq!(files.len(), 4, "{files:?}");
    for file in files {
        let output = Command::new("ogrinfo")
            .args(["-al", "-so"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stderr.trim().is_empty(),
            "{}: {stderr}",
            file.display()
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("Feature Count:") && stdout.contains("WGS 84"),
            "{stdout}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_changed_source_is_converted_again_and_a_broken_one_is_a_clear_error() {
    let server = server().await;
    let local = server.root.join("userdata/local");
    std::fs::write(local.join("one.geojson"), r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"v":1},"geometry":null}]}"#).unwrap();
    let (_, first) = ours(&server, "one.geojson", "").await;
    assert_eq!(features(&first)[0]["properties"]["v"], 1);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    std::fs::write(local.join("one.geojson"), r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"v":2},"geometry":null},{"type":"Feature","properties":{"v":3},"geometry":null}]}"#).unwrap();
    let (_, second) = ours(&server, "one.geojson", "").await;
    assert_eq!(features(&second).len(), 2);
    let cached = std::fs::read_dir(server.root.join("state/cache"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|e| e == "gpkg"))
        .count();
    assert_eq!(cached, 1, "the old conversion was not removed");

    std::fs::write(local.join("broken.geojson"), r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{},"geometry":{"type":"Point","coordinates":"x"}}]}"#).unwrap();
    let (status, body) = ours(&server, "broken.geojson", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("broken.geojson"),
        "{body}"
    );
    let (status, _) = ours(&server, "absent.geojson", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}

/// A GeoJSON file as QGIS exports a GeoPackage layer (its `fid` as a property), with a `geom`
/// property and two differing only in case: converted with those renamed as ogr2ogr renames
/// fields a GeoPackage cannot hold twice, every value kept (ogr2ogr itself fails on this file).
#[tokio::test]
async fn properties_named_as_the_id_or_geometry_are_renamed() {
    let server = server().await;
    let local = server.root.join("userdata/local");
    std::fs::write(
        local.join("exported.geojson"),
        r#"{"type":"FeatureCollection","features":[
{"type":"Feature","properties":{"fid":"A-1","geom":"kerb","Name":"x","name":"y"},"geometry":{"type":"Point","coordinates":[145,-37]}},
{"type":"Feature","properties":{"fid":"A-2","geom":"pit","Name":"x2","name":"y2"},"geometry":{"type":"Point","coordinates":[146,-38]}}]}"#,
    )
    .unwrap();
    let (status, body) = ours(&server, "exported.geojson", "-where|fid2='A-2'").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(features(&body).len(), 1, "{body}");
    assert_eq!(
        features(&body)[0]["properties"],
        serde_json::json!({"fid2": "A-2", "geom2": "pit", "Name": "x2", "name2": "y2"})
    );
    assert_eq!(
        features(&body)[0]["geometry"]["coordinates"],
        serde_json::json!([146.0, -38.0])
    );
    server.stop().await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test]
async fn shapefiles_plain_zipped_and_projected_match_gdal() {
    let server = server().await;
    let local = server.root.join("userdata/local");
    copy_dir(&test_data("nybb"), &local.join("nybb"));
    copy_dir(&test_data("naturalearth_lowres"), &local.join("countries"));
    for (archive, folder) in [("countries.zip", "countries"), ("boroughs.shz", "nybb")] {
        let status = Command::new("zip")
            .arg("-qj")
            .arg(local.join(archive))
            .args(
                std::fs::read_dir(local.join(folder))
                    .unwrap()
                    .flatten()
                    .map(|e| e.path()),
            )
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "zip is needed (Debian package zip)"
        );
    }
    // New York boroughs: EPSG:2263 (US feet) in the .prj, reprojected as GDAL does.
    let (status, boroughs) = ours(&server, "nybb/nybb.shp", "").await;
    assert_eq!(status, StatusCode::OK, "{boroughs}");
    assert_matches_gdal(
        &sorted(&boroughs),
        &sorted(&gdal(&test_data("nybb/nybb.shp"), &["-t_srs", "EPSG:4326"])),
        "nybb",
    );
    let (_, zipped) = ours(&server, "boroughs.shz", "-where|BoroName|=|'Brooklyn'").await;
    assert_eq!(features(&zipped).len(), 1);
    assert_eq!(features(&zipped)[0]["properties"]["BoroName"], "Brooklyn");
    // Countries: attributes (UTF-8 by .cpg), and the same query answers.
    for (source, options, argv) in [
        (
            "countries/naturalearth_lowres.shp",
            "-where|continent='Oceania'",
            vec!["-where", "continent='Oceania'"],
        ),
        (
            "countries.zip",
            "-spat|140|-45|155|-10",
            vec!["-spat", "140", "-45", "155", "-10"],
        ),
    ] {
        let (status, body) = ours(&server, source, options).await;
        assert_eq!(status, StatusCode::OK, "{source}: {body}");
        assert_matches_gdal(
            &sorted(&body),
            &sorted(&gdal(
                &test_data("naturalearth_lowres/naturalearth_lowres.shp"),
                &argv,
            )),
            source,
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn csv_open_options_choose_the_separator_columns_and_encoding() {
    let server = server().await;
    // Latin-1 bytes (é = 0xE9), pipes, and coordinate columns with names of their own.
    let mut bytes = b"site|east_deg|north_deg\nCaf".to_vec();
    bytes.push(0xe9);
    bytes.extend_from_slice(b"|144.96|-37.81\nDepot|145.1|-37.9\n");
    std::fs::write(server.root.join("userdata/local/assets.csv"), bytes).unwrap();

    let options = "-oo|SEPARATOR=PIPE|-oo|X_POSSIBLE_NAMES=east_deg|-oo|Y_POSSIBLE_NAMES=north_deg|-oo|ENCODING=ISO-8859-1";
    let (status, body) = ours(&server, "assets.csv", options).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let list = features(&body);
    assert_eq!(list.len(), 2);
    // In spatial order: found by name.
    let cafe = list
        .iter()
        .find(|f| f["properties"]["site"] == "Café")
        .unwrap();
    let depot = list
        .iter()
        .find(|f| f["properties"]["site"] == "Depot")
        .unwrap();
    assert_eq!(cafe["geometry"]["coordinates"][0], 144.96);
    assert_eq!(depot["geometry"]["coordinates"][1], -37.9);
    // Coordinate columns named through the options are numbers, as GDAL reads them.
    assert_eq!(cafe["properties"]["east_deg"], 144.96);
    // GDAL 3.6 has no SEPARATOR or ENCODING open option: compared on a plain CSV.
    let plain_csv = server.root.join("userdata/local/assets_plain.csv");
    std::fs::write(
        &plain_csv,
        "site,east_deg,north_deg\nCafe,144.96,-37.81\nDepot,145.1,-37.9\nBin,,-37.9\n",
    )
    .unwrap();
    let xy = "-oo|X_POSSIBLE_NAMES=east_deg|-oo|Y_POSSIBLE_NAMES=north_deg";
    let (_, ours_plain) = ours(&server, "assets_plain.csv", xy).await;
    let argv: Vec<&str> = xy.split('|').collect();
    let gdal_plain = gdal(&plain_csv, &argv);
    // GDAL leaves an empty cell's field out; this server writes it as null.
    // Sorted by properties: converted sources come in spatial order, GDAL's in file order.
    let first_two = |v: &serde_json::Value| serde_json::json!({"features": features(&common::gis::sorted(v))[..2].to_vec()});
    assert_same_properties(
        &first_two(&ours_plain),
        &first_two(&gdal_plain),
        "assets_plain.csv",
    );
    let cafe_plain = features(&ours_plain)
        .iter()
        .find(|f| f["properties"]["site"] == "Cafe")
        .unwrap();
    assert_eq!(cafe_plain["properties"]["east_deg"], 144.96);
    assert!(features(&ours_plain)[2]["properties"]["east_deg"].is_null());
    assert!(features(&ours_plain)[2]["geometry"].is_null());
    assert!(features(&ours_plain)[2]["properties"].get("geom").is_none());

    // Without the options the file is still read, differently: one column, no geometry.
    let (_, plain) = ours(&server, "assets.csv", "").await;
    assert!(features(&plain)[0]["geometry"].is_null());

    for (bad, wanted) in [
        ("-oo|SEPARATOR=DASH", "SEPARATOR=DASH"),
        ("-oo|ENCODING=KLINGON", "unknown encoding"),
        ("-oo|FOO=1", "supported are SEPARATOR"),
        ("-oo|NOEQUALS", "expected KEY=VALUE"),
    ] {
        let (status, body) = ours(&server, "assets.csv", bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(wanted),
            "{bad}: {body}"
        );
    }
    server.stop().await;
}
