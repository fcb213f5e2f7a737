//! `/ogr2ogr?source=<path>&options=<opts>`, compatible with existing web app configurations:
//! the options are ogr2ogr's, with `|` for spaces. GeoPackage and SQLite sources are answered
//! natively with streamed GeoJSON; `-where` and `-sql` run on a read-only connection that
//! cannot reach other files.

use std::path::PathBuf;
use std::sync::Arc;

use http::header::{self, HeaderValue};

use super::error::ApiError;
use super::gdal::Gdal;
use super::reply::{Body, Response};
use crate::encoding::Encoding;
use crate::gis::query::limits::QueryError;
use crate::gis::query::plan::{Plan, Reuse, Selection};
use crate::gis::query::run::{execute, lookup};
use crate::gis::store::Catalog;
use crate::safe_path;

/// What the options ask for.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Options {
    /// A layer named after the source, as ogr2ogr takes it.
    pub layer: Option<String>,
    /// `-where`: an SQL expression on the layer's fields.
    pub filter: Option<String>,
    /// `-sql`: a whole SELECT statement.
    pub sql: Option<String>,
    /// `-select`: the fields to keep.
    pub select: Option<Vec<String>>,
    /// `-spat xmin ymin xmax ymax`.
    pub spat: Option<[f64; 4]>,
    /// `-limit N`.
    pub limit: Option<u64>,
    /// `-nln`: the output collection's name.
    pub name: Option<String>,
    /// `-simplify tolerance`, in the data's units (degrees for WGS 84).
    pub simplify: Option<f64>,
    /// `-oo KEY=VALUE` open options for CSV and Shapefile sources.
    pub open_options: Vec<(String, String)>,
}

/// Options that take a value and are passed over (output is always RFC 7946 GeoJSON in
/// WGS 84, which is what these ask for in existing configurations).
const ACCEPTED: &[&str] = &["-f", "-t_srs", "-lco", "-dialect", "-s_srs", "-a_srs"];
/// Options without a value that are passed over.
const ACCEPTED_FLAGS: &[&str] = &[
    "-skipfailures",
    "-overwrite",
    "-progress",
    "-q",
    "--quiet",
    "-preserve_fid",
];
/// Options answered natively (each takes a value).
const NATIVE_OPTIONS: &[&str] = &[
    "-oo",
    "-where",
    "-sql",
    "-select",
    "-spat",
    "-limit",
    "-nln",
    "-simplify",
];

/// Whether `token` is an option this parser knows, which ends a multi-token `-where` or `-sql`.
fn is_option(token: &str) -> bool {
    [NATIVE_OPTIONS, ACCEPTED, ACCEPTED_FLAGS]
        .iter()
        .any(|list| list.contains(&token))
}

impl Options {
    /// What the options ask of a layer.
    #[must_use]
    pub fn selection(&self) -> Selection {
        Selection {
            fields: self.select.clone(),
            filter: self.filter.clone(),
            spat: self.spat,
            limit: self.limit,
            simplify: self.simplify,
            name: self.name.clone(),
        }
    }
}

/// Splits options on `|` and spaces, keeping double-quoted text together.
fn tokens(options: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in options.chars() {
        match c {
            '"' => quoted = !quoted,
            '|' | ' ' if !quoted => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Parses ogr2ogr options.
///
/// # Errors
/// A message naming the option that is unknown, unsupported or malformed.
pub fn parse(options: &str) -> Result<Options, String> {
    let tokens = tokens(options);
    let mut parsed = Options::default();
    let mut i = 0;
    let value = |i: usize, option: &str| {
        tokens
            .get(i + 1)
            .cloned()
            .ok_or_else(|| format!("{option} needs a value"))
    };
    while i < tokens.len() {
        let token = tokens[i].as_str();
        match token {
            "-where" | "-sql" => {
                // Everything up to the next option: `|` stands for spaces inside the expression.
                let mut j = i + 1;
                while j < tokens.len() && !is_option(&tokens[j]) {
                    j += 1;
                }
                if j == i + 1 {
                    return Err(format!("{token} needs a value"));
                }
                let text = tokens[i + 1..j].join(" ");
                if token == "-where" {
                    parsed.filter = Some(text);
                } else {
                    parsed.sql = Some(text);
                }
                i = j;
                continue;
            }
            "-select" => {
                let fields: Vec<String> = value(i, token)?
                    .split(',')
                    .map(|f| f.trim().to_owned())
                    .filter(|f| !f.is_empty())
                    .collect();
                parsed.select = Some(fields);
                i += 2;
            }
            "-spat" => {
                let numbers: Vec<f64> = (1..=4)
                    .map(|k| {
                        tokens
                            .get(i + k)
                            .and_then(|t| t.parse::<f64>().ok())
                            .filter(|v| v.is_finite())
                    })
                    .collect::<Option<_>>()
                    .ok_or_else(|| "-spat needs four numbers: xmin ymin xmax ymax".to_owned())?;
                if numbers[0] > numbers[2] || numbers[1] > numbers[3] {
                    return Err("-spat: xmin must not exceed xmax, nor ymin ymax".to_owned());
                }
                parsed.spat = Some([numbers[0], numbers[1], numbers[2], numbers[3]]);
                i += 5;
            }
            "-limit" => {
                let text = value(i, token)?;
                // SQLite's LIMIT is a signed 64-bit integer.
                parsed.limit = Some(
                    text.parse::<u64>()
                        .ok()
                        .filter(|n| i64::try_from(*n).is_ok())
                        .ok_or_else(|| {
                            format!(
                                "-limit: {text:?} is not a whole number from 0 to {}",
                                i64::MAX
                            )
                        })?,
                );
                i += 2;
            }
            "-oo" => {
                let pair = value(i, token)?;
                let (key, val) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("-oo {pair}: expected KEY=VALUE"))?;
                parsed.open_options.push((key.to_owned(), val.to_owned()));
                crate::gis::source::readers::OpenOptions::parse(&parsed.open_options)
                    .map_err(|e| e.0)?;
                i += 2;
            }
            "-nln" => {
                parsed.name = Some(value(i, token)?);
                i += 2;
            }
            "-simplify" => {
                let text = value(i, token)?;
                let tolerance = text
                    .parse::<f64>()
                    .ok()
                    .filter(|t| t.is_finite() && *t >= 0.0);
                parsed.simplify =
                    Some(tolerance.ok_or_else(|| {
                        format!("-simplify: {text:?} is not a non-negative number")
                    })?);
                i += 2;
            }
            "-f" => {
                let format = value(i, token)?;
                if !format.eq_ignore_ascii_case("geojson") {
                    return Err(format!("-f {format}: only GeoJSON output is served"));
                }
                i += 2;
            }
            "-t_srs" => {
                let srs = value(i, token)?;
                if !["EPSG:4326", "WGS84", "CRS84", "OGC:CRS84"]
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(&srs))
                {
                    return Err(format!("-t_srs {srs}: output is always WGS 84 (EPSG:4326)"));
                }
                i += 2;
            }
            _ if ACCEPTED.contains(&token) => i += 2,
            _ if ACCEPTED_FLAGS.contains(&token) => i += 1,
            _ if token.starts_with('-')
                && token.len() > 1
                && !token[1..].starts_with(|c: char| c.is_ascii_digit()) =>
            {
                return Err(format!(
                    "unsupported option {token}; supported: -where, -sql, -select, -spat, -limit, -nln, -f GeoJSON, -t_srs EPSG:4326"
                ));
            }
            _ => {
                if parsed.layer.is_some() {
                    return Err(format!(
                        "unexpected {token:?}: only one layer name may follow the options"
                    ));
                }
                parsed.layer = Some(token.to_owned());
                i += 1;
            }
        }
    }
    Ok(parsed)
}

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
    let options = parse(options).map_err(|e| ApiError::bad_request("bad options", e))?;
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
    // Other formats are converted once into a GeoPackage kept in the state folder.
    let path = if converted {
        let (c, shown) = (catalog.clone(), source.to_owned());
        let open = crate::gis::source::readers::OpenOptions::parse(&options.open_options)
            .map_err(|e| ApiError::bad_request("bad options", e.to_string()))?;
        match catalog
            .queries
            .run(move || c.converted(&path, &shown, &open))
            .await
        {
            Ok(Ok(converted)) => converted,
            Ok(Err(e)) => return Err(ApiError::dataset(&e)),
            Err(e) => return Err(ApiError::query(&QueryError::from(e), client_sql)),
        }
    } else {
        path
    };
    let dataset = lookup(&catalog, &path, source)
        .await
        .map_err(|e| ApiError::query(&e, client_sql))?;
    let selection = options.selection();
    let bad = |e: &dyn std::error::Error| ApiError::bad_request("bad request", e.to_string());
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
    // The dataset's own path, not the source as asked: two sites' folders may hold files of
    // the same name, size and time. Answers are kept as sent, compressed or not.
    let key = |encoding: Encoding| {
        format!(
            "{}|{}|{}|{raw_options}",
            dataset.version(),
            dataset.path().display(),
            encoding.token()
        )
    };
    if let Some(body) = catalog.responses.get(&key(encoding)) {
        return Ok(labelled(Response::new(body.into()), encoding));
    }
    let stream = execute(&catalog, dataset.clone(), plan, options.limit)
        .await
        .map_err(|e| ApiError::query(&e, client_sql))?;
    let (stream, used) = crate::encoding::compressors().compress(stream, encoding);
    let body = if catalog.responses.enabled() {
        Body::stream(catalog.responses.tee(key(used), stream))
    } else {
        Body::stream(stream)
    };
    Ok(labelled(Response::new(body), used))
}

/// A streamed `application/geo+json` response, compressed with `encoding` when a compressor is
/// free.
pub fn geojson_response(
    stream: impl futures::Stream<Item = crate::gis::query::run::Chunk> + Send + Sync + 'static,
    encoding: Encoding,
) -> Response {
    let (stream, used) = crate::encoding::compressors().compress(stream, encoding);
    labelled(Response::new(Body::stream(stream)), used)
}

/// Marks a GeoJSON response as such, with its content encoding.
fn labelled(mut response: Response, encoding: Encoding) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/geo+json"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if encoding != Encoding::Identity {
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(encoding.token()),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_as_the_web_app_writes_them() {
        let o = parse("-where|continent='Oceania'").unwrap_or_default();
        assert_eq!(o.filter.as_deref(), Some("continent='Oceania'"));
        let o =
            parse("-where|name|=|'New|Zealand'|-select|name,pop_est|-limit|5").unwrap_or_default();
        assert_eq!(o.filter.as_deref(), Some("name = 'New Zealand'"));
        assert_eq!(
            o.select,
            Some(vec!["name".to_owned(), "pop_est".to_owned()])
        );
        assert_eq!(o.limit, Some(5));
        let o = parse("-f|GeoJSON|-t_srs|EPSG:4326|-spat|140|-45|155|-10|countries")
            .unwrap_or_default();
        assert_eq!(o.spat, Some([140.0, -45.0, 155.0, -10.0]));
        assert_eq!(o.layer.as_deref(), Some("countries"));
        let o = parse("-where|\"pop_est > 1000000\"").unwrap_or_default();
        assert_eq!(o.filter.as_deref(), Some("pop_est > 1000000"));
        let o = parse("-spat|-10|-10.5|10|10").unwrap_or_default();
        assert_eq!(o.spat, Some([-10.0, -10.5, 10.0, 10.0]));
    }

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

    #[test]
    fn bad_options_are_named() {
        for (options, wanted) in [
            ("-spat|1|2|3", "-spat needs four numbers"),
            ("-limit|x", "-limit: \"x\""),
            ("-where", "-where needs a value"),
            ("-zfield|z", "unsupported option -zfield"),
            ("-f|CSV", "only GeoJSON"),
            ("-t_srs|EPSG:3857", "always WGS 84"),
            ("a|b", "only one layer name"),
        ] {
            let error = parse(options).unwrap_err();
            assert!(error.contains(wanted), "{options}: {error}");
        }
    }
}
