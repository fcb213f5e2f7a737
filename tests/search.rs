//! Unified search: an FTS5 index built from datasets named in the config, prefix matching,
//! ranking by weight, GeoJSON answers, and rebuilds that replace the index atomically.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

#[allow(
    unused_imports,
    reason = "each test file uses some of the shared helpers"
)]
use common::gis::*;

use common::{TestServer, eventually};
use reqwest::StatusCode;
use serde_json::Value;

const CONFIG: &str = r#"{"search": {"rebuild": "*/2 * * * * *", "sources": [
    {"source": "local/countries.gpkg", "category": "Country", "search_field": "name", "key_field": "iso_a3", "map_layer": "Countries", "weight": 2.0},
    {"source": "local/naturalearth_cities.geojson", "category": "City", "search_field": "name"}
]}}"#;

/// A server whose index over the countries and cities has been built.
async fn indexed_server() -> TestServer {
    let server = TestServer::start(CONFIG, |root| {
        let local = root.join("userdata/local");
        std::fs::copy(
            test_data("naturalearth_lowres.gpkg"),
            local.join("countries.gpkg"),
        )
        .unwrap();
    })
    .await;
    eventually("the index is built", || async {
        search(&server, "q=melb").await.0 == StatusCode::OK
    })
    .await;
    server
}

async fn search(server: &TestServer, query: &str) -> (StatusCode, Value) {
    server.get_json(&format!("/search?{query}")).await
}

fn names(body: &Value) -> Vec<String> {
    body["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["properties"]["display_text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn prefix_search_with_ranking_and_the_original_columns() {
    let server = indexed_server().await;

    let (_, body) = search(&server, "q=melb").await;
    assert_eq!(names(&body), ["Melbourne"]);
    let melbourne = &body["features"][0];
    assert_eq!(melbourne["properties"]["category"], "City");
    assert_eq!(melbourne["geometry"]["type"], "Point");
    assert!((melbourne["geometry"]["coordinates"][0].as_f64().unwrap() - 144.97).abs() < 0.01);

    // "new" matches countries and cities; the heavier source (countries) ranks first.
    let (_, body) = search(&server, "q=new&limit=20").await;
    let results = names(&body);
    assert!(results.len() >= 4, "{results:?}");
    let first_city = body["features"]
        .as_array()
        .unwrap()
        .iter()
        .position(|f| f["properties"]["category"] == "City");
    let last_country = body["features"]
        .as_array()
        .unwrap()
        .iter()
        .rposition(|f| f["properties"]["category"] == "Country");
    assert!(last_country < first_city, "{results:?}");
    let country = &body["features"][0]["properties"];
    assert_eq!(country["map_layer"], "Countries");
    assert_eq!(country["map_layer_id_field"], "iso_a3");
    assert_eq!(country["search_key"], country["map_layer_id"]);
    assert_eq!(country["bbox"].as_array().unwrap().len(), 4);

    // Every word must match, as a prefix; limit caps the answer.
    assert_eq!(
        names(&search(&server, "q=new+zeal").await.1),
        ["New Zealand"]
    );
    assert_eq!(
        search(&server, "q=a&limit=3").await.1["features"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert!(
        search(&server, "q=zzzzqqq").await.1["features"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    for bad in ["", "q=", "q=%20%2B", "q=x&limit=0", "q=x&limit=lots"] {
        let (status, body) = search(&server, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_rebuild_picks_up_changed_data_and_a_failed_one_keeps_the_index() {
    let server = indexed_server().await;
    let cities = server
        .root
        .join("userdata/local/naturalearth_cities.geojson");
    std::fs::write(&cities, r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"name":"Wangaratta"},"geometry":{"type":"Point","coordinates":[146.31,-36.36]}}]}"#).unwrap();
    eventually("the new data is searchable", || async {
        names(&search(&server, "q=wanga").await.1) == ["Wangaratta"]
    })
    .await;
    assert!(names(&search(&server, "q=melb").await.1).is_empty());

    // A broken source fails the rebuild; the previous index keeps answering.
    std::fs::write(&cities, "{ not json").unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(names(&search(&server, "q=wanga").await.1), ["Wangaratta"]);
    server.stop().await;
}
