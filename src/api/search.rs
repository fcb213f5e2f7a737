//! `/search?q=…&limit=N`: the unified search index queried with prefix matching and ranking,
//! answered as GeoJSON points.

use std::path::PathBuf;
use std::sync::Arc;

use http::StatusCode;

use super::error::ApiError;
use super::reply::Response;
use crate::gis::query::limits::{QueryError, Watch};
use crate::gis::search::{DEFAULT_LIMIT, MAX_LIMIT, SearchError, match_expression, query};
use crate::gis::store::Catalog;

/// Answers `/search?q=…&limit=N` from the current index, on a query thread of `catalog` and
/// under its query limits.
///
/// # Errors
/// No words to search for, a bad limit, the index missing, or the query failing.
pub async fn answer(
    catalog: Arc<Catalog>,
    index: PathBuf,
    q: Option<String>,
    limit: Option<String>,
    encoding: crate::encoding::Encoding,
) -> Result<Response, ApiError> {
    let Some(expression) = q.as_deref().and_then(match_expression) else {
        return Err(ApiError::bad_request(
            "missing parameter",
            "q must hold at least one word",
        ));
    };
    let limit = match limit.map(|l| l.parse::<u32>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if n >= 1 => n.min(MAX_LIMIT),
        Some(_) => {
            return Err(ApiError::bad_request(
                "bad query",
                "limit must be a whole number from 1",
            ));
        }
    };
    let watch = Watch::new(catalog.queries.limits, None, catalog.queries.stop.clone());
    let body = catalog
        .queries
        .run(move || query(&index, &expression, limit, &watch))
        .await
        .map_err(|e| ApiError::query(&QueryError::from(e), false))?
        .map_err(|e| match e {
            SearchError::Unavailable(e) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "search index unavailable",
                Some(e),
            ),
            SearchError::Query(e) => ApiError::query(&e, false),
        })?;
    Ok(super::reply::geojson(
        futures::stream::once(async move { Ok(bytes::Bytes::from(body)) }),
        encoding,
    ))
}
