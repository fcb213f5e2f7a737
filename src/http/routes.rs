//! The route table, written once: which handler answers a path, in the order they are
//! matched, and the dispatch to each.
//!
//! | path                          | route        | methods          |
//! |-------------------------------|--------------|------------------|
//! | `/health`, `/health/live`, `/health/ready` | health | GET, HEAD  |
//! | `/ogr2ogr`                    | `/ogr2ogr`   | GET, HEAD        |
//! | `/features`, `/features/…`    | OGC API      | GET, HEAD        |
//! | `/search`                     | search       | GET, HEAD        |
//! | `/admin/…`                    | admin        | GET, HEAD, POST (`admin.allow`, token) |
//! | `/metrics`                    | metrics      | GET, HEAD (`admin.allow`, token, unless public) |
//! | `/` (no `index.html`), `/status` | status    | GET, HEAD        |
//! | a configured proxy prefix     | proxy        | any              |
//! | anything else                 | static files | GET, HEAD        |
//!
//! `/health`, `/ogr2ogr` and `/search` take a trailing slash too. A path under an API name
//! that the API does not have (`/health/x`) gets 404; another method on a route gets 405.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::TryStreamExt;
use http::header::{self, HeaderMap};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use super::cors::Cors;
use super::host::HostFolders;
use super::proxy::{Forward, Proxy};
use super::static_files::{FileRequest, StaticFiles};
use crate::api::error::ApiError;
use crate::api::reply::Response;
use crate::ops::health::Health;

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
    /// Whether `/metrics` is served, and to whom.
    pub metrics: crate::config::MetricsConfig,
    /// Proxies whose forwarding headers are believed.
    pub trusted: super::forwarded::Trusted,
    /// The status page.
    pub status: crate::ops::status::StatusPage,
    /// Access log settings.
    pub access_log: crate::config::AccessLog,
    /// The connection limits a new connection is served under (a reload changes them for the
    /// connections accepted after it).
    pub limits: crate::config::Limits,
    /// Open datasets.
    pub catalog: Arc<crate::gis::store::Catalog>,
    /// GDAL for `/ogr2ogr` sources not read natively.
    pub gdal: Arc<crate::api::ogr2ogr::gdal::Gdal>,
    /// The unified search index file.
    pub search_index: std::path::PathBuf,
    /// The operators' API.
    pub admin: crate::api::admin::Admin,
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

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/health`.
    Health,
    /// `/ogr2ogr`.
    Ogr2ogr,
    /// `/features` and below.
    Features,
    /// `/search`.
    Search,
    /// `/admin/` and below.
    Admin,
    /// `/metrics`.
    Metrics,
    /// The status page: `/` (unless the host folder has an `index.html`) and `/status`.
    Status,
    /// A reverse-proxy prefix.
    Proxy,
    /// A static file.
    File,
}

/// The API routes by first path segment: matched before the proxy prefixes and files.
const API_ROUTES: &[(&str, Route)] = &[
    ("health", Route::Health),
    ("ogr2ogr", Route::Ogr2ogr),
    ("features", Route::Features),
    ("search", Route::Search),
    ("admin", Route::Admin),
    ("metrics", Route::Metrics),
];

impl Route {
    /// The route of `path` on `site`.
    #[must_use]
    pub fn of(site: &Site, path: &str) -> Self {
        let first = path
            .strip_prefix('/')
            .unwrap_or(path)
            .split('/')
            .next()
            .unwrap_or_default();
        if path == "/" || first == "status" {
            Self::Status
        } else if let Some((_, route)) = API_ROUTES.iter().find(|(name, _)| *name == first) {
            *route
        } else if site.proxy.route_for(path).is_some() {
            Self::Proxy
        } else {
            Self::File
        }
    }

    /// The class requests on this route are counted in.
    #[must_use]
    pub fn class(self) -> crate::ops::metrics::RouteClass {
        use crate::ops::metrics::RouteClass;
        match self {
            Self::Health => RouteClass::Health,
            Self::Ogr2ogr => RouteClass::Ogr2ogr,
            Self::Features => RouteClass::Features,
            Self::Search => RouteClass::Search,
            Self::Admin => RouteClass::Admin,
            Self::Metrics => RouteClass::Metrics,
            Self::Status => RouteClass::Health,
            Self::Proxy => RouteClass::Proxy,
            Self::File => RouteClass::Static,
        }
    }

    /// Whether the route takes any method; the others take GET and HEAD only.
    fn any_method(self) -> bool {
        matches!(self, Self::Proxy | Self::Admin)
    }
}

/// Connection facts the routes need.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client's address (as a trusted proxy gave it, when the request came through one).
    pub peer: SocketAddr,
    /// Whether the client used HTTPS (as a trusted proxy said, when through one).
    pub tls: bool,
    /// The trusted proxy's own address, when the request came through one.
    pub proxy: Option<std::net::IpAddr>,
}

impl ConnInfo {
    /// Who is asking, for the operators' access rules.
    fn caller<'a>(&self, headers: &'a http::HeaderMap) -> crate::api::access::Caller<'a> {
        crate::api::access::Caller::of(self.peer.ip(), headers, self.proxy.is_some())
    }
}

/// Runs `work` off the async threads (it reads files or a journal): its answer, or a JSON 500
/// saying `what` failed.
async fn blocking(
    what: &'static str,
    work: impl FnOnce() -> Response + Send + 'static,
) -> Response {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|_| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, what, None).into_response()
    })
}

/// The path prefix a trusted proxy serves this server under (`X-Forwarded-Prefix`), in a
/// request's extensions.
#[derive(Debug, Clone)]
pub struct ForwardedPrefix(pub String);

/// Answers a request on `route` (errors as JSON).
pub async fn dispatch(
    site: Arc<Site>,
    conn: ConnInfo,
    route: Route,
    request: Request<Incoming>,
) -> Response {
    answer(&site, conn, route, request)
        .await
        .unwrap_or_else(ApiError::into_response)
}

async fn answer(
    site: &Arc<Site>,
    conn: ConnInfo,
    route: Route,
    request: Request<Incoming>,
) -> Result<Response, ApiError> {
    let method = request.method();
    let path = request.uri().path();
    let exact = |name: &str| {
        path.strip_prefix('/')
            .and_then(|p| p.strip_prefix(name))
            .is_some_and(|rest| rest.is_empty() || rest == "/")
    };
    let not_found = || ApiError::not_found("not found", format!("no such path: {path}"));
    let known = match route {
        Route::Health => exact("health") || exact("health/live") || exact("health/ready"),
        Route::Ogr2ogr => exact("ogr2ogr"),
        Route::Search => exact("search"),
        Route::Metrics => exact("metrics"),
        Route::Status => path == "/" || exact("status"),
        Route::Features | Route::Admin | Route::Proxy | Route::File => true,
    };
    if !known {
        return Err(not_found());
    }
    if !route.any_method() && method != Method::GET && method != Method::HEAD {
        return Err(ApiError {
            allow: Some("GET, HEAD"),
            ..ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
                Some(format!("{path} answers GET and HEAD, not {method}")),
            )
        });
    }
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match route {
        Route::Health if exact("health/live") => Ok(crate::api::health::live()),
        Route::Health if exact("health/ready") => Ok(crate::api::health::ready(&site.health)),
        Route::Health => {
            // Sync jobs' checks read their journal: off the async threads.
            let site = site.clone();
            Ok(blocking("health failed", move || {
                crate::api::health::answer(&site.health)
            })
            .await)
        }
        Route::Ogr2ogr => {
            let query = query(&request);
            let folder = site.hosts.search_path(host).swap_remove(0);
            crate::api::ogr2ogr::answer(
                site.catalog.clone(),
                &site.gdal,
                folder,
                query.get("source").map(String::as_str),
                query.get("options").map_or("", String::as_str),
                crate::encoding::accepted(headers),
            )
            .await
        }
        Route::Features => {
            let scheme = if conn.tls { "https" } else { "http" };
            let prefix = request
                .extensions()
                .get::<ForwardedPrefix>()
                .map_or("", |p| p.0.as_str());
            let context = crate::api::features::RequestContext {
                folder: site.hosts.search_path(host).swap_remove(0),
                base: format!("{scheme}://{}{prefix}", host.unwrap_or("localhost")),
                headers,
            };
            let rest = path.strip_prefix("/features").unwrap_or_default();
            crate::api::features::answer(site.catalog.clone(), context, rest, &query(&request))
                .await
        }
        Route::Search => {
            let mut query = query(&request);
            crate::api::search::answer(
                site.catalog.clone(),
                site.search_index.clone(),
                query.remove("q"),
                query.remove("limit"),
                crate::encoding::accepted(headers),
            )
            .await
        }
        Route::Status => {
            // A host folder's own index.html keeps the root; the status page is then /status.
            let own_index = path == "/"
                && site
                    .hosts
                    .search_path(host)
                    .iter()
                    .any(|folder| folder.join("index.html").is_file());
            if own_index {
                return Ok(serve_file(site, method, "/index.html", headers).await);
            }
            let admin = site.admin.access.admits(&conn.caller(headers));
            let fragment = query(&request).get("fragment").is_some_and(|v| v == "1");
            let site = site.clone();
            Ok(blocking("status page failed", move || {
                crate::api::health::html(site.status.render(admin, fragment))
            })
            .await)
        }
        Route::Metrics => {
            if !site.metrics.enabled {
                return Err(not_found());
            }
            if !site.metrics.public {
                site.admin.access.check(&conn.caller(headers))?;
            }
            Ok(blocking("metrics failed", crate::api::health::metrics).await)
        }
        Route::Admin => {
            let query = query(&request);
            let caller = crate::api::admin::Caller {
                access: conn.caller(headers),
                marked: headers
                    .get(crate::api::admin::ADMIN_HEADER)
                    .is_some_and(|v| v.as_bytes() == b"1"),
            };
            crate::api::admin::answer(
                &site.admin,
                caller,
                method,
                path,
                query
                    .get("limit")
                    .or_else(|| query.get("lines"))
                    .map(String::as_str),
            )
            .await
        }
        Route::Proxy => {
            let Some(route) = site.proxy.route_for(path).cloned() else {
                return Err(not_found());
            };
            let (parts, body) = request.into_parts();
            let body = sync_wrapper::SyncStream::new(
                http_body_util::BodyDataStream::new(body).map_err(std::io::Error::other),
            );
            let forward = Forward {
                method: parts.method,
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().map(str::to_owned),
                headers: parts.headers,
                peer: Some(conn.peer),
                tls: conn.tls,
                proxy: conn.proxy,
                prefix: parts
                    .extensions
                    .get::<ForwardedPrefix>()
                    .map(|p| p.0.clone()),
            };
            site.proxy.forward(&route, forward, body).await
        }
        Route::File => Ok(serve_file(site, method, path, headers).await),
    }
}

/// The query parameters of a request; a name given twice keeps its last value.
fn query<B>(request: &Request<B>) -> HashMap<String, String> {
    request
        .uri()
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect::<HashMap<String, String>>()
        })
        .unwrap_or_default()
}

/// A static file from the request host's folders (or a JSON 400/404).
pub async fn serve_file(site: &Site, method: &Method, path: &str, headers: &HeaderMap) -> Response {
    let segments = match crate::safe_path::segments(path) {
        Ok(segments) => segments,
        Err(e) => return ApiError::bad_request("bad path", e.0).into_response(),
    };
    // Refused files answer as if absent: a client learns nothing of them.
    if !site.servable(&segments) {
        return ApiError::not_found("not found", path).into_response();
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let folders = site.hosts.search_path(host);
    let request = FileRequest { method, headers };
    match site.files.serve(&folders, &segments, &request).await {
        Some(response) => response,
        None => ApiError::not_found("not found", path).into_response(),
    }
}
