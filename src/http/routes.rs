//! Routing with warp filters: `/health`, reverse-proxy prefixes, static files.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use futures::StreamExt;
use http::header::{self, HeaderMap};
use http::{Method, StatusCode};
use warp::filters::path::FullPath;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::cors::Cors;
use super::error_body;
use super::host::HostFolders;
use super::proxy::{Forward, Proxy};
use super::static_files::{FileRequest, StaticFiles};
use crate::ops::health::Health;
use crate::safe_path;

/// Everything the routes serve from, built once per listener start.
#[derive(Debug)]
pub struct Site {
    /// Host to folder.
    pub hosts: HostFolders,
    /// Static files.
    pub files: StaticFiles,
    /// CORS policy.
    pub cors: Cors,
    /// Reverse proxy.
    pub proxy: Proxy,
    /// The health document.
    pub health: Health,
    /// Open datasets.
    pub catalog: Arc<crate::gis::store::gpkg::Catalog>,
    /// The unified search index file.
    pub search_index: std::path::PathBuf,
    /// Extensions never served as static files, lower case without the dot.
    pub refused: Vec<String>,
}

impl Site {
    /// Whether the file at `segments` may be served as a static file: no name starting with a
    /// dot (but `.well-known`), and no refused extension.
    #[must_use]
    pub fn servable(&self, segments: &[String]) -> bool {
        let hidden = segments
            .iter()
            .any(|s| s.starts_with('.') && s != ".well-known");
        let refused = segments.last().is_some_and(|name| {
            std::path::Path::new(name)
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| self.refused.iter().any(|r| r.eq_ignore_ascii_case(e)))
        });
        !hidden && !refused
    }
}

/// First path segments that belong to the APIs rather than to static files.
const API_PREFIXES: &[&str] = &["health", "ogr2ogr", "features", "search"];

impl Site {
    /// Whether `path` is answered by an API or the reverse proxy rather than a static file.
    #[must_use]
    pub fn is_api_path(&self, path: &str) -> bool {
        let first = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        API_PREFIXES.contains(&first) || self.proxy.route_for(path).is_some()
    }
}

/// The request's headers, moved out of the request once by the pipeline so that routes share
/// them instead of copying the map.
#[derive(Debug, Clone)]
pub struct RequestHeaders(pub Arc<HeaderMap>);

/// The request's headers as shared by the pipeline.
fn request_headers() -> impl Filter<Extract = (Arc<HeaderMap>,), Error = Infallible> + Clone {
    warp::ext::optional::<RequestHeaders>()
        .map(|h: Option<RequestHeaders>| h.map(|h| h.0).unwrap_or_default())
}

/// Connection facts the routes need, put in each request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// The whole router.
pub fn routes(
    site: Arc<Site>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let with_site = warp::any().map(move || site.clone());
    let get_or_head = warp::get().or(warp::head()).unify();

    let health = warp::path!("health")
        .and(get_or_head)
        .and(with_site.clone())
        .map(|site: Arc<Site>| site.health.response());

    let ogr2ogr = warp::path!("ogr2ogr")
        .and(get_or_head)
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .and(request_headers())
        .and(with_site.clone())
        .then(
            |query: std::collections::HashMap<String, String>,
             headers: Arc<HeaderMap>,
             site: Arc<Site>| async move {
                let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
                let folder = site.hosts.search_path(host).swap_remove(0);
                let options = query.get("options").map_or("", String::as_str);
                crate::api::ogr2ogr::answer(
                    site.catalog.clone(),
                    folder,
                    query.get("source").map(String::as_str),
                    options,
                    crate::encoding::accepted(&headers),
                )
                .await
            },
        );

    let features = warp::path("features")
        .and(warp::path::tail())
        .and(get_or_head)
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .and(request_headers())
        .and(warp::ext::optional::<ConnInfo>())
        .and(with_site.clone())
        .then(
            |tail: warp::filters::path::Tail,
             query: std::collections::HashMap<String, String>,
             headers: Arc<HeaderMap>,
             conn: Option<ConnInfo>,
             site: Arc<Site>| async move {
                let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
                let scheme = if conn.is_some_and(|c| !c.tls) {
                    "http"
                } else {
                    "https"
                };
                let context = crate::api::features::RequestContext {
                    folder: site.hosts.search_path(host).swap_remove(0),
                    base: format!("{scheme}://{}", host.unwrap_or("localhost")),
                    headers: &headers,
                };
                crate::api::features::answer(site.catalog.clone(), context, tail.as_str(), &query)
                    .await
            },
        );

    let search = warp::path!("search")
        .and(get_or_head)
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .and(request_headers())
        .and(with_site.clone())
        .then(
            |mut query: std::collections::HashMap<String, String>,
             headers: Arc<HeaderMap>,
             site: Arc<Site>| async move {
                crate::api::search::answer(
                    site.catalog.clone(),
                    site.search_index.clone(),
                    query.remove("q"),
                    query.remove("limit"),
                    crate::encoding::accepted(&headers),
                )
                .await
            },
        );

    let proxy = warp::path::full()
        .and(with_site.clone())
        .and_then(|path: FullPath, site: Arc<Site>| async move {
            if site.proxy.route_for(path.as_str()).is_some() {
                Ok((path, site))
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
        .and(warp::method())
        .and(
            warp::query::raw()
                .map(Some)
                .or(warp::any().map(|| None))
                .unify(),
        )
        .and(request_headers())
        .and(warp::ext::optional::<ConnInfo>())
        .and(warp::body::stream())
        .then(
            |path: FullPath,
             site: Arc<Site>,
             method: Method,
             query: Option<String>,
             headers: Arc<HeaderMap>,
             conn: Option<ConnInfo>,
             body| async move {
                let Some(route) = site.proxy.route_for(path.as_str()).cloned() else {
                    return error_body(StatusCode::NOT_FOUND, "not found", None);
                };
                let body = sync_stream(body);
                let request = Forward {
                    method,
                    path: path.as_str().to_owned(),
                    query,
                    headers: Arc::unwrap_or_clone(headers),
                    peer: conn.map(|c| c.peer),
                    tls: conn.is_some_and(|c| c.tls),
                };
                site.proxy.forward(&route, request, body).await
            },
        );

    // Static files: the pipeline answers GET and HEAD for them before the router; this route
    // gives other methods on file paths their 405, ahead of the other routes' rejections.
    let files = warp::path::full()
        .and(with_site)
        .and_then(|path: FullPath, site: Arc<Site>| async move {
            if site.is_api_path(path.as_str()) {
                Err(warp::reject::not_found())
            } else {
                Ok((path, site))
            }
        })
        .untuple_one()
        .and(get_or_head)
        .and(warp::method())
        .and(request_headers())
        .then(
            |path: FullPath, site: Arc<Site>, method: Method, headers: Arc<HeaderMap>| async move {
                serve_file(&site, &method, path.as_str(), &headers).await
            },
        );

    files
        .or(health)
        .unify()
        .or(ogr2ogr)
        .unify()
        .or(features)
        .unify()
        .or(search)
        .unify()
        .or(proxy)
        .unify()
        .recover(rejection)
        .unify()
}

/// A static file from the request host's folders (or a JSON 400/404).
pub async fn serve_file(site: &Site, method: &Method, path: &str, headers: &HeaderMap) -> Response {
    let segments = match safe_path::segments(path) {
        Ok(segments) => segments,
        Err(e) => return error_body(StatusCode::BAD_REQUEST, "bad path", Some(e.0)),
    };
    // Refused files answer as if absent: a client learns nothing of them.
    if !site.servable(&segments) {
        return error_body(StatusCode::NOT_FOUND, "not found", Some(path));
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let folders = site.hosts.search_path(host);
    let request = FileRequest { method, headers };
    match site.files.serve(&folders, &segments, &request).await {
        Some(response) => response,
        None => error_body(StatusCode::NOT_FOUND, "not found", Some(path)),
    }
}

/// warp's body stream made `Sync` and of plain bytes, for the proxy client.
fn sync_stream(
    body: impl futures::Stream<Item = Result<impl Buf + Send + 'static, warp::Error>> + Send + 'static,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let item = chunk
                .map(|mut b| b.copy_to_bytes(b.remaining()))
                .map_err(std::io::Error::other);
            if tx.send(item).await.is_err() {
                break;
            }
        }
    });
    tokio_stream_from(rx)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + Sync + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn rejection(rejection: Rejection) -> Result<Response, Infallible> {
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "not found")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        (StatusCode::LENGTH_REQUIRED, "length required")
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        (StatusCode::BAD_REQUEST, "invalid query")
    } else {
        (StatusCode::BAD_REQUEST, "bad request")
    };
    Ok(error_body(status, message, None))
}
