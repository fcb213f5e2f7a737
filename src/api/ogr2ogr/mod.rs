//! `/ogr2ogr?source=<path>&options=<opts>`, compatible with existing web app configurations:
//! the options are ogr2ogr's, with `|` for spaces. GeoPackage and SQLite sources are answered
//! natively with streamed GeoJSON; `-where` and `-sql` run on a read-only connection that
//! cannot reach other files.

use std::path::PathBuf;
use std::sync::Arc;

pub mod gdal;
pub mod options;

use self::gdal::Gdal;
use self::options::{Options, parse};
use super::error::ApiError;
use super::reply::{Body, Response, labelled};
use crate::encoding::Encoding;
use crate::gis::query::limits::QueryError;
use crate::gis::query::plan::{Plan, Reuse};
use crate::gis::query::run::{Found, NoAnswer, find_and_execute, lookup};
use crate::gis::store::{Catalog, Dataset};
use crate::safe_path;

/// Extensions answered natively.
const NATIVE: &[&str] = &["gpkg", "sqlite", "sqlite3", "db"];

/// Why a source is refused before it is looked for, if it is: GDAL would read these as a
/// connection to a database or another host, or a virtual file, never as a file in the folder.
fn refused_source(source: &str) -> Option<&'static str> {
    // GDAL's virtual file systems are folders named `vsi…` (`/vsizip/`, `/vsicurl/`…).
    let mut segments = source.split(['/', '\\']).filter(|s| !s.is_empty());
    let virtual_folder = segments
        .next()
        .and_then(|first| first.get(..3))
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("vsi"))
        && segments.next().is_some();
    if source.contains(':') || source.starts_with(r"\\") {
        Some(
            "connection strings, URLs, drive letters and network paths are not accepted; name a file in the site's folder (database layers are named in the server's config)",
        )
    } else if virtual_folder {
        Some("GDAL virtual file paths (/vsi…) are not accepted")
    } else if source.starts_with(['<', '{', '[']) {
        Some("inline definitions are not accepted; name a file in the site's folder")
    } else {
        None
    }
}

/// Answers one `/ogr2ogr` request against `folder` (the host's userdata folder).
pub async fn answer(
    catalog: Arc<Catalog>,
    gdal: &Gdal,
    folder: PathBuf,
    source: Option<&str>,
    options: &str,
    encoding: Encoding,
) -> Result<Response, ApiError> {
    let Some(source) = source.filter(|s| !s.is_empty()) else {
        return Err(ApiError::bad_request(
            "missing parameter",
            "source is required",
        ));
    };
    let raw_options = options;
    let options = parse(options).map_err(|e| ApiError::bad_request("bad options", e.0))?;
    if let Some(reason) = refused_source(source) {
        return Err(ApiError::bad_request("bad source", reason));
    }
    let segments = match safe_path::segments(&format!("/{}", source.trim_start_matches('/'))) {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => return Err(ApiError::bad_request("bad source", "empty path")),
        Err(e) => return Err(ApiError::bad_request("bad source", e.0)),
    };
    let path = segments.iter().fold(folder.clone(), |p, s| p.join(s));
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let converted = crate::gis::source::readers::Format::of(&path).is_some();
    if !NATIVE.contains(&extension.as_str()) && !converted {
        if !path.is_file() {
            return Err(ApiError::not_found(
                "not found",
                format!("{source}: no such dataset"),
            ));
        }
        // Formats not read natively (MapInfo TAB, VRT…) go to GDAL when it is installed.
        return gdal
            .answer(&path, source, &folder, &options, encoding)
            .await;
    }
    let client_sql = options.sql.is_some() || options.filter.is_some();
    let found = if converted {
        // Other formats are converted once into a GeoPackage kept in the state folder: that
        // needs a query thread, and looking the conversion up, planning and the query share
        // its trip.
        let open = crate::gis::source::readers::OpenOptions::parse(&options.open_options)
            .map_err(|e| ApiError::bad_request("bad options", e.to_string()))?;
        let (c, shown, raw) = (catalog.clone(), source.to_owned(), raw_options.to_owned());
        find_and_execute(&catalog, move || {
            let converted = c
                .converted(&path, &shown, &open)
                .map_err(|e| Instead::Error(ApiError::dataset(&e)))?;
            let dataset = c.datasets.get(&converted, &shown).map_err(|e| {
                Instead::Error(ApiError::query(&QueryError::Dataset(e), client_sql))
            })?;
            prepare(&c, dataset, &options, &raw, encoding)
        })
        .await
    } else {
        // A GeoPackage is looked up off the query threads, so that an answer kept in the
        // response cache never waits behind running queries.
        let dataset = lookup(&catalog, &path, source)
            .await
            .map_err(|e| ApiError::query(&e, client_sql))?;
        match prepare(&catalog, dataset, &options, raw_options, encoding) {
            Ok(found) => find_and_execute(&catalog, move || Ok(found)).await,
            Err(instead) => Err(NoAnswer::Before(instead)),
        }
    };
    let (stream, dataset) = match found {
        Ok(found) => found,
        Err(NoAnswer::Before(Instead::Kept(body))) => {
            return Ok(labelled(Response::new(body.into()), encoding));
        }
        Err(NoAnswer::Before(Instead::Error(e))) => return Err(e),
        Err(NoAnswer::Query(e)) => return Err(ApiError::query(&e, client_sql)),
    };
    let (stream, used) = crate::encoding::compressors().compress(stream, encoding);
    let body = if catalog.responses.enabled() {
        Body::stream(
            catalog
                .responses
                .tee(answer_key(&dataset, raw_options, used), stream),
        )
    } else {
        Body::stream(stream)
    };
    Ok(labelled(Response::new(body), used))
}

/// What a request is answered with when no query runs for it.
enum Instead {
    /// A bad request, or a dataset that cannot be read.
    Error(ApiError),
    /// The answer kept in the response cache.
    Kept(bytes::Bytes),
}

/// The plan for `options` on `dataset` (handing the dataset back with the answer), or the
/// answer kept for them in the response cache.
fn prepare(
    catalog: &Catalog,
    dataset: Arc<Dataset>,
    options: &Options,
    raw_options: &str,
    encoding: Encoding,
) -> Result<Found<Arc<Dataset>>, Instead> {
    let selection = options.selection();
    let bad = |e: &dyn std::error::Error| {
        Instead::Error(ApiError::bad_request("bad request", e.to_string()))
    };
    let plan = match &options.sql {
        Some(sql) => {
            Plan::statement(sql, dataset.layers.first(), &selection).map_err(|e| bad(&e))?
        }
        None => {
            let layer = dataset
                .layer(options.layer.as_deref())
                .map_err(|e| bad(&e))?;
            let (mut plan, candidates) = Plan::selection(layer, &selection).map_err(|e| bad(&e))?;
            plan.reuse = candidates.and_then(|c| Reuse::of(&catalog.features, &dataset, &plan, c));
            plan
        }
    };
    if let Some(body) = catalog
        .responses
        .get(&answer_key(&dataset, raw_options, encoding))
    {
        return Err(Instead::Kept(body));
    }
    Ok(Found {
        dataset: dataset.clone(),
        plan,
        limit: options.limit,
        with: dataset,
    })
}

/// The response cache's key for an answer: the dataset's own path, not the source as asked
/// (two sites' folders may hold files of the same name, size and time). Answers are kept as
/// sent, compressed or not.
fn answer_key(dataset: &Dataset, raw_options: &str, encoding: Encoding) -> String {
    format!(
        "{}|{}|{}|{raw_options}",
        dataset.version(),
        dataset.path().display(),
        encoding.token()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Result<Response, ApiError>) -> Vec<u8> {
        use http_body_util::BodyExt;
        response
            .unwrap_or_else(ApiError::into_response)
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default()
    }

    /// A box whose features were all read before is answered from copies, byte for byte as
    /// when the rows were read; a new version of the file is read afresh.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn repeated_boxes_are_answered_from_copies() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/naturalearth_lowres.gpkg");
        std::fs::copy(&data, dir.path().join("countries.gpkg")).unwrap_or_else(|e| panic!("{e}"));
        let catalog = Arc::new(
            Catalog::default()
                .with_response_cache(0)
                .with_feature_cache(1 << 24),
        );
        let ask = |options: &'static str| {
            let catalog = catalog.clone();
            let folder = dir.path().to_owned();
            async move {
                body(
                    answer(
                        catalog,
                        &Gdal::new(&crate::config::GdalConfig::default()),
                        folder,
                        Some("countries.gpkg"),
                        options,
                        Encoding::Identity,
                    )
                    .await,
                )
                .await
            }
        };
        // Features are copied on their second read.
        let cold = ask("-spat|100|-50|180|0").await;
        assert_eq!(catalog.features.stats().features, 0);
        let again = ask("-spat|100|-50|180|0").await;
        assert_eq!(catalog.features.stats().hits, 0);
        assert!(catalog.features.stats().features > 0);
        assert_eq!(again, cold);
        let warm = ask("-spat|100|-50|180|0").await;
        assert_eq!(catalog.features.stats().hits, 1);
        assert_eq!(
            String::from_utf8_lossy(&warm),
            String::from_utf8_lossy(&cold)
        );
        // A box inside the first, cutting through countries: from copies, as read afresh.
        let inner = ask("-spat|120|-40|150|-20").await;
        assert_eq!(catalog.features.stats().hits, 2);
        let fresh = body(
            answer(
                Arc::new(Catalog::default()),
                &Gdal::new(&crate::config::GdalConfig::default()),
                dir.path().to_owned(),
                Some("countries.gpkg"),
                "-spat|120|-40|150|-20",
                Encoding::Identity,
            )
            .await,
        )
        .await;
        assert_eq!(
            String::from_utf8_lossy(&inner),
            String::from_utf8_lossy(&fresh)
        );
        // A filter or a tolerance is not answered from copies.
        let _ = ask("-spat|100|-50|180|0|-where|pop_est>0").await;
        let _ = ask("-spat|100|-50|180|0|-simplify|0.1").await;
        assert_eq!(catalog.features.stats().hits, 2);
    }

    #[test]
    fn connection_strings_and_virtual_files_are_refused() {
        for source in [
            "PG:host=x",
            "/vsizip/a.zip/b.shp",
            "VSICURL/http/x",
            "\\\\server\\share\\x.tab",
            "{\"type\":1}",
            "<OGRVRTDataSource/>",
        ] {
            assert!(refused_source(source).is_some(), "{source} accepted");
        }
        for source in ["vsitors.geojson", "roads.tab", "sub/x.gpkg", "ab\u{e9}cd"] {
            assert!(refused_source(source).is_none(), "{source} refused");
        }
    }
}
