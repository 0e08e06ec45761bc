//! The one error type of the HTTP boundary. Every failure, whether a
//! handler's, an extractor's or a layer's (body limit, timeout, unknown
//! route, wrong method), reaches the client as the contract's error object
//! `{"error": {"code", "message"}}` (§8); status and code are decided in one
//! place, [`ApiError::status_and_code`].

use axum::extract::Request;
use axum::http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tether_shared::db::DbError;

/// Why a request failed; the message is a sentence for the caller that
/// names the problem and the fix, and never holds a secret.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("This path does not take that method: see the Allow header or GET /v1/openapi.json")]
    MethodNotAllowed,
    /// The image's object is gone or changed (`code`: `source_missing`,
    /// `source_changed` or `copy_missing`).
    #[error("{message}")]
    Gone { code: &'static str, message: String },
    #[error("The request body is larger than 1 MiB: ask for at most 1000 image ids per request")]
    TooLarge,
    #[error("The request body must be JSON: send it with Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("The Range starts past the end of the {size}-byte object: ask for bytes below {size}")]
    RangeNotSatisfiable { size: u64 },
    /// The store failed (502) or did not answer in time (504).
    #[error("{message}")]
    SourceUnavailable { timed_out: bool, message: String },
    /// Postgres is unreachable, or tether-api is at its limit.
    #[error("{0}")]
    Unavailable(String),
    /// A stored row is not what Tether wrote: a bug or a bad bulk load.
    #[error("{0}")]
    Internal(String),
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorObject,
}

/// What went wrong: a stable `code` for programs, a sentence for people.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorObject {
    /// `invalid_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `method_not_allowed`, `source_missing`, `source_changed`,
    /// `copy_missing`, `payload_too_large`, `unsupported_media_type`,
    /// `range_not_satisfiable`, `source_unavailable`, `unavailable`.
    code: String,
    message: String,
}

impl ApiError {
    /// The status and the contract's code of each error.
    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Gone { code, .. } => (StatusCode::GONE, code),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
            }
            ApiError::SourceUnavailable { timed_out: false, .. } => {
                (StatusCode::BAD_GATEWAY, "source_unavailable")
            }
            ApiError::SourceUnavailable { timed_out: true, .. } => {
                (StatusCode::GATEWAY_TIMEOUT, "source_unavailable")
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        match error {
            DbError::Corrupt(reason) => {
                tracing::error!(%reason, "A stored row is unreadable.");
                ApiError::Internal(
                    "A stored row is unreadable; the operators have been told in tether-api's log".into(),
                )
            }
            other => {
                tracing::warn!(error = %other, "Postgres failed.");
                ApiError::Unavailable("Postgres is unreachable from tether-api: try again shortly".into())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = ErrorBody { error: ErrorObject { code: code.to_owned(), message: self.to_string() } };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            ApiError::Unauthorized(_) => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::RangeNotSatisfiable { size } => {
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.insert(CONTENT_RANGE, value);
                }
            }
            _ => {}
        }
        response
    }
}

/// Turns the bare error responses of layers and of axum's router (413 from
/// the body limit, 503 from the timeout, 405, an empty 404) into the error
/// object, keeping their other headers (`Allow`).
pub(crate) async fn shape_bare_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json =
        response.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !status.is_client_error() && !status.is_server_error() || is_json {
        return response;
    }
    let error = match status {
        StatusCode::NOT_FOUND => {
            ApiError::NotFound("No such path: the API's paths are listed in GET /v1/openapi.json".into())
        }
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        StatusCode::UNAUTHORIZED => ApiError::Unauthorized("This endpoint needs a bearer token".into()),
        status if status.is_client_error() => ApiError::InvalidRequest(format!(
            "The request was refused ({status}): check it against GET /v1/openapi.json"
        )),
        _ => ApiError::Unavailable("tether-api could not answer in time: try again shortly".into()),
    };
    let (mut parts, _) = response.into_parts();
    let shaped = error.into_response();
    parts.headers.remove(CONTENT_LENGTH);
    for (name, value) in shaped.headers() {
        parts.headers.insert(name, value.clone());
    }
    parts.status = shaped.status();
    Response::from_parts(parts, shaped.into_body())
}
