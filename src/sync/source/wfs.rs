//! `wfs` sources: a WFS 2.0.0 (or 1.1.0) feature type read as GeoJSON with `GetFeature`, paged
//! with `startIndex` and `count` (`maxFeatures` in 1.1.0) in a stable `sortBy` order, asked in
//! EPSG:4326. Pages are written as newline-delimited GeoJSON, then staged.
//!
//! Axis order: GeoJSON is longitude, latitude; a server that labels its answer with the
//! `urn:ogc:def:crs:EPSG::4326` name (latitude first, as some do for WFS 2.0) has its
//! coordinates swapped back.

use std::io::Write;
use std::sync::atomic::Ordering;

use serde_json::Value;

use super::Staged;
use crate::config::sync::{SyncJob, SyncSource};
use crate::sync::{JobPaths, Progress, SyncError};

use super::MAX_PAGE_BYTES;

/// Reads a WFS feature type into the stage.
pub(super) fn stage(
    job: &SyncJob,
    paths: &JobPaths,
    layer: &str,
    progress: &Progress,
) -> Result<Staged, SyncError> {
    let lines = paths.state.join("wfs.ndjson");
    let written = super::runtime()?.block_on(fetch_all(job, &lines, progress));
    super::stage_lines(written, &lines, paths, layer, progress)
}

async fn fetch_all(
    job: &SyncJob,
    lines: &std::path::Path,
    progress: &Progress,
) -> Result<u64, SyncError> {
    let SyncSource::Wfs {
        url,
        type_name,
        version,
        sort_by,
        page_size,
        output_format,
        params,
    } = &job.source
    else {
        return Err(SyncError::Source("not a wfs source".to_owned()));
    };
    let client = super::client()?;
    let two = version != "1.1.0";
    // Many servers page only in a stable order: without `sort_by`, the feature type's first
    // property that is not a geometry.
    let sort_by = match sort_by {
        Some(sort) => Some(sort.clone()),
        None => first_property(&client, url, version, type_name).await,
    };
    let fail = |e: std::io::Error| SyncError::Source(format!("{}: {e}", lines.display()));
    let mut out = std::io::BufWriter::new(std::fs::File::create(lines).map_err(fail)?);
    let (mut start, mut bytes) = (0u64, 0u64);
    loop {
        let mut query: Vec<(String, String)> = vec![
            ("service".into(), "WFS".into()),
            ("version".into(), version.clone()),
            ("request".into(), "GetFeature".into()),
            (
                if two { "typeNames" } else { "typeName" }.into(),
                type_name.clone(),
            ),
            ("outputFormat".into(), output_format.clone()),
            ("srsName".into(), "EPSG:4326".into()),
            (
                if two { "count" } else { "maxFeatures" }.into(),
                page_size.to_string(),
            ),
            ("startIndex".into(), start.to_string()),
        ];
        if let Some(sort) = &sort_by {
            query.push(("sortBy".into(), sort.clone()));
        }
        query.extend(params.iter().map(|(k, v)| (k.clone(), v.clone())));
        let response = client
            .get(url)
            .query(&query)
            .send()
            .await
            .map_err(super::request_error)?;
        let status = response.status();
        let body = super::body_within(response, MAX_PAGE_BYTES).await?;
        if let Some(report) = exception(&body) {
            return Err(SyncError::Source(format!("WFS exception: {report}")));
        }
        if !status.is_success() {
            return Err(SyncError::Source(format!("the server answered {status}")));
        }
        let page: Value = serde_json::from_slice(&body)
            .map_err(|e| SyncError::Source(format!("a page is not GeoJSON: {e}")))?;
        let features = page
            .get("features")
            .and_then(Value::as_array)
            .ok_or_else(|| SyncError::Source("a page has no `features`".to_owned()))?;
        let swap = page
            .pointer("/crs/properties/name")
            .and_then(Value::as_str)
            .is_some_and(|n| n.contains("urn:ogc:def:crs:EPSG::4326"));
        for feature in features {
            let mut feature = feature.clone();
            if swap && let Some(g) = feature.get_mut("geometry") {
                swap_axes(g);
            }
            let text = feature.to_string();
            bytes += text.len() as u64 + 1;
            writeln!(out, "{text}").map_err(fail)?;
        }
        progress.row(features.len() as u64);
        progress.bytes.store(bytes, Ordering::Relaxed);
        let matched = page
            .get("numberMatched")
            .or_else(|| page.get("totalFeatures"))
            .and_then(Value::as_u64);
        start += features.len() as u64;
        let done = features.is_empty()
            || (features.len() as u64) < *page_size
            || matched.is_some_and(|m| start >= m);
        if done {
            break;
        }
    }
    out.flush().map_err(fail)?;
    Ok(bytes)
}

/// The first non-geometry property of a feature type, from `DescribeFeatureType` (`None` when
/// the server does not say).
async fn first_property(
    client: &reqwest::Client,
    url: &str,
    version: &str,
    type_name: &str,
) -> Option<String> {
    let two = version != "1.1.0";
    let response = client
        .get(url)
        .query(&[
            ("service", "WFS"),
            ("version", version),
            ("request", "DescribeFeatureType"),
            (if two { "typeNames" } else { "typeName" }, type_name),
        ])
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let bytes = super::body_within(response, MAX_PAGE_BYTES).await.ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut reader = quick_xml::Reader::from_str(&text);
    let mut in_sequence = 0usize;
    loop {
        match reader.read_event().ok()? {
            quick_xml::events::Event::Start(e) if e.local_name().as_ref() == b"sequence" => {
                in_sequence += 1;
            }
            quick_xml::events::Event::End(e) if e.local_name().as_ref() == b"sequence" => {
                in_sequence = in_sequence.saturating_sub(1);
            }
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e)
                if in_sequence > 0 && e.local_name().as_ref() == b"element" =>
            {
                let attribute = |name: &[u8]| {
                    e.attributes()
                        .flatten()
                        .find(|a| a.key.local_name().as_ref() == name)
                        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
                };
                let kind = attribute(b"type").unwrap_or_default();
                if let Some(name) = attribute(b"name")
                    && !kind.starts_with("gml:")
                {
                    return Some(name);
                }
            }
            quick_xml::events::Event::Eof => return None,
            _ => {}
        }
    }
}

/// The text of an OWS exception report, when `body` is one.
fn exception(body: &[u8]) -> Option<String> {
    let head = String::from_utf8_lossy(&body[..body.len().min(64 * 1024)]);
    if !head.contains("ExceptionReport") {
        return None;
    }
    let text = head
        .split_once("ExceptionText>")
        .and_then(|(_, rest)| rest.split_once("</"))
        .map_or_else(
            || head.chars().take(300).collect(),
            |(t, _)| t.trim().to_owned(),
        );
    Some(text)
}

/// Swaps x and y in every position of a GeoJSON geometry.
fn swap_axes(geometry: &mut Value) {
    fn walk(v: &mut Value) {
        if let Some(a) = v.as_array_mut() {
            if a.len() >= 2 && a.iter().all(Value::is_number) {
                a.swap(0, 1);
            } else {
                a.iter_mut().for_each(walk);
            }
        }
    }
    if let Some(c) = geometry.get_mut("coordinates") {
        walk(c);
    }
    if let Some(Value::Array(members)) = geometry.get_mut("geometries") {
        members.iter_mut().for_each(swap_axes);
    }
}
