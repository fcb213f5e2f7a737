//! OGC API Features under `/features/`: the documents, paging and filters, and GDAL's OAPIF
//! driver as a real client (gdal-bin is installed by `scripts/test`).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

#[allow(
    unused_imports,
    reason = "each test file uses some of the shared helpers"
)]
use common::gis::*;

use std::process::Command;

use common::TestServer;
use reqwest::{StatusCode, header};
use serde_json::Value;

async fn server() -> TestServer {
    TestServer::start("{}", |root| {
        let local = root.join("userdata/local");
        std::fs::copy(
            test_data("naturalearth_lowres.gpkg"),
            local.join("countries.gpkg"),
        )
        .unwrap();
        std::fs::create_dir_all(local.join("places")).unwrap();
        gdal_convert(
            &test_data("naturalearth_cities.geojson"),
            &local.join("places/cities.gpkg"),
            &["-nln", "cities"],
        );
    })
    .await
}

async fn get(server: &TestServer, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let response = server.client().get(server.url(path)).send().await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let text = response.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn landing_conformance_api_and_collections() {
    let server = server().await;
    let (status, _, landing) = get(&server, "/features/").await;
    assert_eq!(status, StatusCode::OK);
    let rels: Vec<&str> = landing["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["rel"].as_str().unwrap())
        .collect();
    for rel in ["self", "service-desc", "conformance", "data"] {
        assert!(rels.contains(&rel), "{rel} missing: {landing}");
    }
    let (_, _, conformance) = get(&server, "/features/conformance").await;
    let classes = conformance["conformsTo"].to_string();
    assert!(
        classes.contains("ogcapi-features-1/1.0/conf/core") && classes.contains("conf/geojson"),
        "{classes}"
    );
    let (status, headers, api) = get(&server, "/features/api").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/vnd.oai.openapi+json")
    );
    assert!(api["openapi"].as_str().unwrap().starts_with("3."));
    assert!(api["paths"]["/collections/{collectionId}/items"]["get"].is_object());

    let (_, _, collections) = get(&server, "/features/collections").await;
    let ids: Vec<&str> = collections["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    // Beside the two datasets of the test, the sample every new root gets.
    assert_eq!(ids, ["countries", "naturalearth_lowres", "places.cities"]);
    let (_, _, countries) = get(&server, "/features/collections/countries").await;
    assert_eq!(countries["extent"]["spatial"]["bbox"][0][0], -180.0);
    assert!(
        countries["links"]
            .to_string()
            .contains("/features/collections/countries/items")
    );
    let (status, _, missing) = get(&server, "/features/collections/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing["status"], 404);
    server.stop().await;
}

#[tokio::test]
async fn items_page_filter_and_answer_single_features() {
    let server = server().await;
    let (status, headers, page) = get(&server, "/features/collections/countries/items").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/geo+json");
    assert_eq!(page["numberMatched"], 177);
    assert_eq!(page["numberReturned"], 100);
    assert_eq!(page["features"].as_array().unwrap().len(), 100);

    // Walk the pages through the next links.
    let mut seen = Vec::new();
    let mut url = server.url("/features/collections/countries/items?limit=50");
    loop {
        let response = server.client().get(&url).send().await.unwrap();
        let page: Value = response.json().await.unwrap();
        seen.extend(
            page["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["id"].as_i64().unwrap()),
        );
        let next = page["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["rel"] == "next")
            .map(|l| l["href"].as_str().unwrap().to_owned());
        match next {
            Some(next) => {
                url = next.replace(
                    &format!("https://127.0.0.1:{}", server.addr.port()),
                    &server.url(""),
                )
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 177);
    seen.dedup();
    assert_eq!(seen.len(), 177, "pages overlap");

    let (_, _, second) = get(
        &server,
        "/features/collections/countries/items?limit=50&offset=50",
    )
    .await;
    assert!(
        second["links"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["rel"] == "prev")
    );

    let (_, _, oceania) = get(
        &server,
        "/features/collections/countries/items?continent=Oceania",
    )
    .await;
    assert_eq!(oceania["numberMatched"], 7);
    let (_, _, boxed) = get(
        &server,
        "/features/collections/places.cities/items?bbox=140,-45,155,-10",
    )
    .await;
    let names: Vec<&str> = boxed["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["properties"]["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"Sydney") && names.contains(&"Melbourne"),
        "{names:?}"
    );
    assert!(boxed["features"].as_array().unwrap().iter().all(|f| {
        let c = &f["geometry"]["coordinates"];
        (140.0..=155.0).contains(&c[0].as_f64().unwrap())
            && (-45.0..=-10.0).contains(&c[1].as_f64().unwrap())
    }));

    let first_id = page["features"][0]["id"].as_i64().unwrap();
    let (status, _, feature) = get(
        &server,
        &format!("/features/collections/countries/items/{first_id}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(feature["type"], "Feature");
    assert_eq!(feature["id"], first_id);
    assert_eq!(feature["properties"], page["features"][0]["properties"]);
    assert!(feature["links"].to_string().contains("\"collection\""));
    assert_eq!(
        get(&server, "/features/collections/countries/items/999999")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&server, "/features/collections/countries/items/abc")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_queries_are_400_and_etags_give_304() {
    let server = server().await;
    for query in [
        "limit=0",
        "limit=x",
        "offset=-1",
        "bbox=1,2,3",
        "bbox=5,5,1,1",
        "colour=red",
        "f=html",
        "bbox-crs=EPSG:3857",
    ] {
        let (status, _, body) = get(
            &server,
            &format!("/features/collections/countries/items?{query}"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["status"], 400, "{query}");
    }
    let (_, _, big) = get(&server, "/features/collections/countries/items?limit=50000").await;
    assert_eq!(big["numberReturned"], 177);

    let response = server
        .client()
        .get(server.url("/features/collections/countries/items?continent=Asia"))
        .send()
        .await
        .unwrap();
    let etag = response.headers()[header::ETAG].clone();
    let again = server
        .client()
        .get(server.url("/features/collections/countries/items?continent=Asia"))
        .header(header::IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let other = server
        .client()
        .get(server.url("/features/collections/countries/items?continent=Africa"))
        .header(header::IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gdal_oapif_lists_every_collection_and_reads_every_feature() {
    let server = server().await;
    let cert = server.root.join("state/self-signed.cer");
    let endpoint = format!("OAPIF:{}", server.url("/features"));
    let gdal = |args: Vec<String>| {
        let cert = cert.clone();
        tokio::task::spawn_blocking(move || {
            let output = Command::new(&args[0])
                .args(&args[1..])
                .env("CURL_CA_BUNDLE", &cert)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8(output.stdout).unwrap()
        })
    };
    let listing = gdal(vec!["ogrinfo".into(), "-ro".into(), endpoint.clone()])
        .await
        .unwrap();
    assert!(
        listing.contains("countries") && listing.contains("places.cities"),
        "{listing}"
    );
    for (layer, expected) in [("countries", 177), ("places.cities", 243)] {
        let summary = gdal(vec![
            "ogrinfo".into(),
            "-ro".into(),
            "-so".into(),
            endpoint.clone(),
            layer.into(),
        ])
        .await
        .unwrap();
        assert!(
            summary.contains(&format!("Feature Count: {expected}")),
            "{summary}"
        );
        let all = gdal(vec![
            "ogr2ogr".into(),
            "-f".into(),
            "GeoJSON".into(),
            "/vsistdout/".into(),
            endpoint.clone(),
            layer.into(),
        ])
        .await
        .unwrap();
        let collection: Value = serde_json::from_str(&all).unwrap();
        assert_eq!(
            collection["features"].as_array().unwrap().len(),
            expected,
            "{layer}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_layer_in_mga_is_served_in_wgs84_with_bbox_in_wgs84() {
    let server = server().await;
    let file = server.root.join("userdata/local/mga55.gpkg");
    gdal_convert(
        &test_data("naturalearth_lowres.gpkg"),
        &file,
        &[
            "-t_srs",
            "EPSG:28355",
            "-where",
            "name IN ('Australia', 'Papua New Guinea')",
            "-nln",
            "oceania",
        ],
    );
    let (_, _, collection) = get(&server, "/features/collections/mga55").await;
    let bbox = collection["extent"]["spatial"]["bbox"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect::<Vec<_>>();
    assert!(
        bbox[0] > 100.0 && bbox[0] < 180.0 && bbox[1] < -30.0,
        "extent not in degrees: {bbox:?}"
    );
    let (status, _, items) = get(
        &server,
        "/features/collections/mga55/items?bbox=144,-39,146,-37",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{items}");
    let names: Vec<&str> = items["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["properties"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Australia"]);
    let first = &items["features"][0]["geometry"]["coordinates"][0][0][0];
    assert!(
        (110.0..=160.0).contains(&first[0].as_f64().unwrap()),
        "{first}"
    );
    // A CQL2 geometry is in CRS84 too, and is moved into the layer's system to be tested.
    let (status, _, point) = get(
        &server,
        &format!(
            "/features/collections/mga55/items?filter={}",
            url_encode("S_INTERSECTS(geometry, POINT(145 -37.8))")
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{point}");
    assert_eq!(point["numberMatched"], 1, "{point}");
    assert_eq!(point["features"][0]["properties"]["name"], "Australia");
    // A world box: cut to the layer's extent before it is projected (its corners, far from
    // the zone, would land anywhere).
    let (_, _, all) = get(&server, "/features/collections/mga55/items").await;
    let (status, _, world) = get(
        &server,
        "/features/collections/mga55/items?bbox=-180,-90,180,90",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{world}");
    assert_eq!(world["numberMatched"], all["numberMatched"], "{world}");
    let (_, _, elsewhere) = get(
        &server,
        "/features/collections/mga55/items?bbox=-20,10,-10,20",
    )
    .await;
    assert_eq!(elsewhere["numberMatched"], 0, "{elsewhere}");
    // The same for a CQL2 box, whose edges are also bent into the projection.
    for (filter, wanted) in [
        (
            "S_INTERSECTS(geometry, BBOX(-180, -90, 180, 90))",
            &all["numberMatched"],
        ),
        (
            "S_INTERSECTS(geometry, BBOX(-20, 10, -10, 20))",
            &serde_json::json!(0),
        ),
        (
            "NOT S_INTERSECTS(geometry, BBOX(-180, -90, 180, 90))",
            &serde_json::json!(0),
        ),
    ] {
        let (status, _, body) = get(
            &server,
            &format!(
                "/features/collections/mga55/items?filter={}",
                url_encode(filter)
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{filter}: {body}");
        assert_eq!(&body["numberMatched"], wanted, "{filter}: {body}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_dataset_dropped_in_appears_within_seconds_and_a_removed_one_goes() {
    let server = server().await;
    let local = server.root.join("userdata/local");
    std::fs::copy(
        test_data("naturalearth_lowres.gpkg"),
        local.join("added.gpkg"),
    )
    .unwrap();
    common::eventually("the new collection is listed", || async {
        let (_, _, list) = get(&server, "/features/collections").await;
        list["collections"].to_string().contains("\"added\"")
    })
    .await;
    assert_eq!(
        get(&server, "/features/collections/added/items?limit=1")
            .await
            .0,
        StatusCode::OK
    );
    std::fs::remove_file(local.join("added.gpkg")).unwrap();
    common::eventually("the removed collection is gone", || async {
        get(&server, "/features/collections/added").await.0 == StatusCode::NOT_FOUND
    })
    .await;
    server.stop().await;
}

/// Names of the features of a collection.
fn names(collection: &Value) -> Vec<String> {
    let mut names: Vec<String> = collection["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["properties"]["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// GDAL's answer to `-spat` on the countries.
fn gdal_spat(bbox: [&str; 4]) -> Vec<String> {
    let mut options = vec!["-spat"];
    options.extend(bbox);
    names(&gdal(&test_data("naturalearth_lowres.gpkg"), &options))
}

#[tokio::test]
async fn bbox_tests_each_geometry_and_may_cross_the_antimeridian() {
    let server = server().await;
    // A box that Indonesia's bounds reach but its islands do not.
    let (status, _, boxed) = get(
        &server,
        "/features/collections/countries/items?bbox=140,-45,180,-10",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{boxed}");
    let expected = gdal_spat(["140", "-45", "180", "-10"]);
    assert_eq!(names(&boxed), expected);
    assert!(!expected.contains(&"Indonesia".to_owned()));
    assert_eq!(boxed["numberMatched"], expected.len());

    // Paging agrees with the count.
    let mut paged = Vec::new();
    for offset in (0..expected.len()).step_by(2) {
        let (_, _, page) = get(
            &server,
            &format!(
                "/features/collections/countries/items?bbox=140,-45,180,-10&limit=2&offset={offset}"
            ),
        )
        .await;
        assert_eq!(page["numberMatched"], expected.len());
        paged.extend(names(&page));
    }
    paged.sort();
    assert_eq!(paged, expected);

    // West edge greater than east: the box crosses the antimeridian.
    let (status, _, crossing) = get(
        &server,
        "/features/collections/countries/items?bbox=170,-50,-170,-10",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{crossing}");
    let mut expected = gdal_spat(["170", "-50", "180", "-10"]);
    expected.extend(gdal_spat(["-180", "-50", "-170", "-10"]));
    expected.sort();
    expected.dedup();
    assert!(expected.contains(&"Fiji".to_owned()) && expected.contains(&"New Zealand".to_owned()));
    assert_eq!(names(&crossing), expected);
    assert_eq!(crossing["numberMatched"], expected.len());

    // With a property filter too.
    let (_, _, filtered) = get(
        &server,
        "/features/collections/countries/items?bbox=170,-50,-170,-10&name=Fiji",
    )
    .await;
    assert_eq!(names(&filtered), vec!["Fiji".to_owned()]);
    assert_eq!(filtered["numberMatched"], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queryables_let_gdal_filter_on_the_server() {
    let server = TestServer::start("{}", |root| {
        generated_points(25_000, &root.join("userdata/local/assets.gpkg"));
    })
    .await;
    // The queryables, and each collection's properties as parameters in the API document.
    let (status, _, queryables) = get(&server, "/features/collections/assets/queryables").await;
    assert_eq!(status, StatusCode::OK, "{queryables}");
    assert_eq!(queryables["properties"]["category"]["type"], "string");
    assert_eq!(queryables["properties"]["value"]["type"], "number");
    assert_eq!(queryables["additionalProperties"], false);
    let (_, _, api) = get(&server, "/features/api").await;
    let parameters = api["paths"]["/collections/assets/items"]["get"]["parameters"]
        .as_array()
        .unwrap();
    assert!(
        parameters
            .iter()
            .any(|p| p["name"] == "category" && p["in"] == "query")
    );
    let (_, _, conformance) = get(&server, "/features/conformance").await;
    assert!(conformance["conformsTo"].to_string().contains("queryables"));

    // What the server counts itself, for the comparison below.
    let (_, _, bridges) = get(
        &server,
        "/features/collections/assets/items?category=bridge&limit=1",
    )
    .await;
    let expected = bridges["numberMatched"].as_u64().unwrap();
    assert!(expected > 100, "{expected}");

    // GDAL's OAPIF driver sends the attribute filter to the server: a few requests, not one
    // per page of the whole layer.
    let cert = server.root.join("state/self-signed.cer");
    let endpoint = format!("OAPIF:{}", server.url("/features"));
    let output = tokio::task::spawn_blocking(move || {
        Command::new("ogrinfo")
            .args([
                "-ro",
                "--debug",
                "on",
                "-where",
                "category = 'bridge'",
                "-so",
            ])
            .arg(&endpoint)
            .arg("assets")
            .env("CURL_CA_BUNDLE", &cert)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("Feature Count: {expected}")),
        "{stdout}"
    );
    let fetches = stderr
        .lines()
        .filter(|l| l.contains("HTTP: Fetch("))
        .count();
    assert!(
        stderr.contains("category=bridge"),
        "the filter was not sent: {stderr}"
    );
    assert!(fetches < 20, "{fetches} requests:\n{stderr}");
    server.stop().await;
}

#[tokio::test]
async fn cql2_text_filters_select_what_gdal_selects() {
    let server = server().await;
    for filter in [
        "continent = 'Oceania' AND pop_est > 1000000",
        "name LIKE 'N%'",
        "iso_a3 IN ('AUS', 'NZL', 'FJI')",
        "pop_est BETWEEN 1000000 AND 5000000",
        "NOT (continent = 'Africa') AND gdp_md_est < 1000",
        "continent = 'Asia' OR (continent = 'Europe' AND pop_est >= 50000000)",
    ] {
        let encoded: String = url_encode(filter);
        let (status, _, ours) = get(
            &server,
            &format!("/features/collections/countries/items?limit=1000&filter-lang=cql2-text&filter={encoded}"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{filter}: {ours}");
        let expected = names(&gdal(
            &test_data("naturalearth_lowres.gpkg"),
            &["-where", filter],
        ));
        assert!(!expected.is_empty(), "{filter}");
        assert_eq!(names(&ours), expected, "{filter}");
        assert_eq!(ours["numberMatched"], expected.len(), "{filter}");
    }
    // With a box too.
    let (_, _, boxed) = get(
        &server,
        &format!(
            "/features/collections/countries/items?bbox=140,-45,180,-10&filter={}",
            url_encode("pop_est < 1000000")
        ),
    )
    .await;
    let expected = names(&gdal(
        &test_data("naturalearth_lowres.gpkg"),
        &[
            "-spat",
            "140",
            "-45",
            "180",
            "-10",
            "-where",
            "pop_est < 1000000",
        ],
    ));
    assert!(!expected.is_empty());
    assert_eq!(names(&boxed), expected);
    assert_eq!(boxed["numberMatched"], expected.len());

    // A long chain of operators is as deep for SQLite as nesting: refused by the parser,
    // not by SQLite with a 500.
    let chain = format!("filter=pop_est%3D1{}", "%2B1".repeat(2_000));
    let (status, _, body) = get(
        &server,
        &format!("/features/collections/countries/items?{chain}"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("operators")
    );
    for (query, wanted) in [
        ("filter=colour%3D'red'", "unknown property"),
        ("filter=name%3D'x'&filter-lang=cql2-json", "only cql2-text"),
        ("filter-lang=cql2-text", "without a filter"),
        (
            "filter=name%3Dsqlite_version()",
            "functions are not allowed",
        ),
        ("filter=name%3Dlower(name)", "functions are not allowed"),
        ("filter=name%3D'x'%3B%20DROP%20TABLE%20t", "not allowed"),
        ("filter=name%20IN%20(SELECT%20name%20FROM%20t)", "filter"),
    ] {
        let (status, _, body) = get(
            &server,
            &format!("/features/collections/countries/items?{query}"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(
            body["detail"].as_str().unwrap_or_default().contains(wanted),
            "{query}: {body}"
        );
    }
    server.stop().await;
}

/// A query value, percent-encoded.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// CQL2's `S_INTERSECTS` (OGC API Features Part 3 with CQL2's spatial functions): the features
/// whose geometry meets a point, a box or a polygon, as GDAL selects those meeting the same
/// geometry; joined to other conditions by AND; refused (400) where this server cannot honour
/// it.
#[tokio::test]
async fn cql2_s_intersects_selects_what_gdal_selects() {
    let server = server().await;
    let ask = |filter: &str| {
        let (server, filter) = (&server, filter.to_owned());
        async move {
            get(
                server,
                &format!(
                    "/features/collections/countries/items?limit=1000&filter-lang=cql2-text&filter={}",
                    url_encode(&filter)
                ),
            )
            .await
        }
    };
    // A box: as bbox= and as GDAL's -spat (each geometry tested, not its bounds).
    let (status, _, boxed) = ask("S_INTERSECTS(geometry, BBOX(140, -45, 180, -10))").await;
    assert_eq!(status, StatusCode::OK, "{boxed}");
    let expected = gdal_spat(["140", "-45", "180", "-10"]);
    assert_eq!(names(&boxed), expected);
    assert_eq!(boxed["numberMatched"], expected.len());
    // A polygon, either argument first: GDAL's -clipsrc keeps the features meeting it.
    let triangle = "POLYGON((110 -10, 155 -10, 130 -45, 110 -10))";
    let clipped = |extra: &[&str]| {
        let mut options = vec!["-clipsrc", triangle];
        options.extend(extra);
        names(&gdal(&test_data("naturalearth_lowres.gpkg"), &options))
    };
    let expected = clipped(&[]);
    assert!(expected.contains(&"Australia".to_owned()) && !expected.contains(&"Fiji".to_owned()));
    for filter in [
        format!("S_INTERSECTS(geometry, {triangle})"),
        format!("s_intersects({triangle}, \"geometry\")"),
    ] {
        let (status, _, ours) = ask(&filter).await;
        assert_eq!(status, StatusCode::OK, "{filter}: {ours}");
        assert_eq!(names(&ours), expected, "{filter}");
        assert_eq!(ours["numberMatched"], expected.len(), "{filter}");
    }
    // Joined to a comparison by AND, and paged.
    let filter = format!("S_INTERSECTS(geometry, {triangle}) AND pop_est > 20000000");
    let expected = clipped(&["-where", "pop_est > 20000000"]);
    assert!(!expected.is_empty());
    let (_, _, ours) = ask(&filter).await;
    assert_eq!(names(&ours), expected);
    let (_, _, first) = get(
        &server,
        &format!(
            "/features/collections/countries/items?limit=1&filter={}",
            url_encode(&filter)
        ),
    )
    .await;
    assert_eq!(first["numberMatched"], expected.len());
    assert_eq!(first["numberReturned"], 1);
    // A point inside Australia, and one in the sea.
    let (_, _, point) = ask("S_INTERSECTS(geometry, POINT(133 -25))").await;
    assert_eq!(names(&point), vec!["Australia".to_owned()]);
    let (_, _, sea) = ask("S_INTERSECTS(geometry, POINT(-140 -40))").await;
    assert_eq!(names(&sea), Vec::<String>::new());
    assert_eq!(sea["numberMatched"], 0);
    // Under OR and NOT (tested in SQL by a function registered for the query).
    let (status, _, either) = ask(&format!(
        "S_INTERSECTS(geometry, {triangle}) OR name = 'Fiji'"
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{either}");
    let mut wanted = clipped(&[]);
    wanted.push("Fiji".to_owned());
    wanted.sort();
    assert_eq!(names(&either), wanted);
    assert_eq!(either["numberMatched"], wanted.len());
    let (_, _, outside) = ask(&format!(
        "NOT S_INTERSECTS(geometry, {triangle}) AND continent = 'Oceania'"
    ))
    .await;
    let oceania = names(&gdal(
        &test_data("naturalearth_lowres.gpkg"),
        &["-where", "continent = 'Oceania'"],
    ));
    let inside = clipped(&[]);
    let wanted: Vec<String> = oceania
        .into_iter()
        .filter(|n| !inside.contains(n))
        .collect();
    assert!(wanted.contains(&"Fiji".to_owned()) && !wanted.contains(&"Australia".to_owned()));
    assert_eq!(names(&outside), wanted);
    assert_eq!(outside["numberMatched"], wanted.len());
    // Refused: a malformed geometry, another property, a geometry not read.
    for (filter, wanted) in [
        (
            "S_INTERSECTS(geometry, POLYGON((1 2, 3)))".to_owned(),
            "number",
        ),
        ("S_INTERSECTS(name, POINT(1 2))".to_owned(), "geometry"),
        (
            "S_INTERSECTS(geometry, BBOX(-1e155, -1e155, 1e155, 1e155))".to_owned(),
            "outside CRS84",
        ),
        ("S_INTERSECTS(geometry, CIRCLE(1 2))".to_owned(), "CIRCLE"),
    ] {
        let (status, _, body) = ask(&filter).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{filter}: {body}");
        assert!(
            body["detail"].as_str().unwrap_or_default().contains(wanted),
            "{filter}: {body}"
        );
    }
    server.stop().await;
}

/// A GeoPackage written without a spatial index (`-lco SPATIAL_INDEX=NO`) answers `bbox` and
/// `S_INTERSECTS` by reading the table, as GDAL does, not with a 500.
#[tokio::test]
async fn layers_without_a_spatial_index_answer_boxes() {
    let server = server().await;
    gdal_convert(
        &test_data("naturalearth_lowres.gpkg"),
        &server.root.join("userdata/local/noindex.gpkg"),
        &["-lco", "SPATIAL_INDEX=NO", "-nln", "noindex"],
    );
    let expected = gdal_spat(["140", "-45", "180", "-10"]);
    for query in [
        "bbox=140,-45,180,-10".to_owned(),
        format!(
            "filter={}",
            url_encode("S_INTERSECTS(geometry, BBOX(140, -45, 180, -10))")
        ),
    ] {
        let mut answer = Value::Null;
        // The folder listing is trusted for a second.
        for _ in 0..50 {
            let (status, _, body) = get(
                &server,
                &format!("/features/collections/noindex/items?limit=1000&{query}"),
            )
            .await;
            answer = body;
            if status != StatusCode::NOT_FOUND {
                assert_eq!(status, StatusCode::OK, "{query}: {answer}");
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(names(&answer), expected, "{query}");
        assert_eq!(answer["numberMatched"], expected.len(), "{query}");
    }
    server.stop().await;
}

/// The route table: HEAD as GET without a body, `Allow` on a 405, a trailing slash on the
/// single-path APIs (its error cases are in `tests/https.rs`, with the other error answers).
#[tokio::test]
async fn routes_answer_as_documented() {
    let server = server().await;
    let client = server.client();
    // HEAD: the headers of GET, its length, no body (over HTTP/2 too, where body bytes on a
    // HEAD answer are a protocol error). (`/health/live` for the health route: `/health`'s
    // uptime changes between two requests.)
    for path in [
        "/health/live",
        "/features/collections",
        "/features/nothing",
        "/index.html",
    ] {
        let get = client.get(server.url(path)).send().await.unwrap();
        let (get_status, get_length) = (get.status(), get.bytes().await.unwrap().len());
        let head = client.head(server.url(path)).send().await.unwrap();
        let version = head.version();
        assert_eq!(
            version,
            reqwest::Version::HTTP_2,
            "the client negotiates HTTP/2"
        );
        assert_eq!(head.status(), get_status, "HEAD {path} over {version:?}");
        assert_eq!(
            head.headers().get("content-length").and_then(|v| v
                .to_str()
                .ok()?
                .parse::<usize>()
                .ok()),
            Some(get_length),
            "HEAD {path} over {version:?}"
        );
        assert!(
            head.bytes().await.unwrap().is_empty(),
            "HEAD {path} had a body"
        );
    }
    let not_allowed = client.post(server.url("/health")).send().await.unwrap();
    assert_eq!(
        not_allowed
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok()),
        Some("GET, HEAD")
    );
    // A trailing slash on the single-path APIs, and the landing page with one.
    for path in ["/health", "/health/", "/features/"] {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    server.stop().await;
}
