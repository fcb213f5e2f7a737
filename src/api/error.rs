//! Why a request was not answered as asked, and the one place such an error becomes a JSON
//! response: `{"status": …, "error": …, "detail": …}`.

use http::StatusCode;
use http::header::{self, HeaderValue};

use super::reply::Response;
use crate::gis::query::admission::Busy;
use crate::gis::query::limits::QueryError;
use crate::gis::store::DatasetError;

/// An error answer: its status, a short fixed text, and what exactly was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A short, fixed description (`"bad query"`, `"not found"`).
    pub error: &'static str,
    /// What exactly was wrong, for the person reading it.
    pub detail: Option<String>,
    /// Seconds after which to try again (503 when busy).
    pub retry_after: Option<u64>,
    /// The methods the path takes (405).
    pub allow: Option<&'static str>,
}

impl ApiError {
    /// An error of `status`.
    #[must_use]
    pub fn new(status: StatusCode, error: &'static str, detail: Option<String>) -> Self {
        Self {
            status,
            error,
            detail,
            retry_after: None,
            allow: None,
        }
    }

    /// A 400.
    #[must_use]
    pub fn bad_request(error: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, Some(detail.into()))
    }

    /// A 404.
    #[must_use]
    pub fn not_found(error: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error, Some(detail.into()))
    }

    /// A 503 for work refused because too much is running and waiting.
    #[must_use]
    pub fn busy(busy: &Busy) -> Self {
        Self {
            retry_after: Some(busy.retry_after.as_secs().max(1)),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                Some(busy.to_string()),
            )
        }
    }

    /// A failed query. `client_sql` says whether the statement held the client's own SQL
    /// (`-sql`, `-where`): then a failure is the request's fault (400); otherwise a statement
    /// this server made failed, which is the server's (500), or it ran out of time or memory
    /// (503).
    #[must_use]
    pub fn query(error: &QueryError, client_sql: bool) -> Self {
        let detail = error.to_string();
        let (status, text) = match error {
            QueryError::Busy(busy) => return Self::busy(busy),
            QueryError::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "server stopping"),
            QueryError::Gone => (StatusCode::BAD_REQUEST, "client went away"),
            QueryError::Stalled(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            QueryError::Dataset(e) => return Self::dataset(e),
            QueryError::TimedOut(_)
            | QueryError::TooLarge(_)
            | QueryError::OutOfMemory
            | QueryError::Sql(_)
                if client_sql =>
            {
                (StatusCode::BAD_REQUEST, "query refused")
            }
            QueryError::TimedOut(_) | QueryError::TooLarge(_) | QueryError::OutOfMemory => {
                tracing::warn!(error = %detail, "query stopped at a limit");
                (StatusCode::SERVICE_UNAVAILABLE, "query stopped at a limit")
            }
            QueryError::Sql(_) | QueryError::Internal => {
                tracing::error!(error = %detail, "query failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "query failed")
            }
        };
        Self::new(status, text, Some(detail))
    }

    /// A dataset that could not be used.
    #[must_use]
    pub fn dataset(error: &DatasetError) -> Self {
        let text = match error {
            DatasetError::NotFound(_) => return Self::not_found("not found", error.to_string()),
            DatasetError::UnknownLayer { .. } => "bad request",
            DatasetError::Open { .. } => "bad dataset",
        };
        Self::bad_request(text, error.to_string())
    }

    /// The JSON response.
    #[must_use]
    pub fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "status": self.status.as_u16(), "error": self.error });
        if let Some(detail) = self.detail {
            body["detail"] = serde_json::Value::from(detail);
        }
        let mut response = super::reply::json(self.status, &body, "application/json");
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(methods) = self.allow {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(methods));
        }
        response
    }
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> Self {
        Self::query(&error, false)
    }
}

impl From<DatasetError> for ApiError {
    fn from(error: DatasetError) -> Self {
        Self::dataset(&error)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.error)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}
