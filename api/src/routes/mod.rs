//! The HTTP surface, one module per resource: [`signed_urls`],
//! [`content`], [`checks`] (connection checks and set-up policies) and
//! [`openapi`]. Each module's `router()` holds its routes
//! and the layers that concern only them (body limit and timeout for the
//! JSON endpoint, CORS for the content); [`router`] merges them and wraps
//! the whole in what applies everywhere: bearer tokens, the error object
//! for whatever a layer refused, metrics and tracing.
//!
//! To add a resource: write
//! `routes/NAME.rs` with a `pub(crate) fn router() -> Router<Arc<AppState>>`
//! using [`crate::AppState`] and [`crate::error::ApiError`], merge it below,
//! and list its handlers in `openapi.rs`. Paths under `/v1/` need a bearer
//! token unless `auth::is_public` says otherwise.

pub(crate) mod checks;
pub(crate) mod content;
pub(crate) mod openapi;
pub(crate) mod signed_urls;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{MatchedPath, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::Response;
use axum::Router;
use tether_shared::contract::is_identifier;
use tether_shared::telemetry::metrics;
use tower_http::trace::TraceLayer;

use crate::error::{shape_bare_errors, ApiError};
use crate::{auth, AppState};

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(signed_urls::router())
        .merge(content::router(&state.origins))
        .merge(checks::router())
        .merge(openapi::router())
        .fallback(|| async {
            ApiError::NotFound("No such path: the API's paths are listed in GET /v1/openapi.json".into())
        })
        .layer(from_fn_with_state(Arc::clone(&state), auth::require_token))
        .layer(from_fn(shape_bare_errors))
        .layer(from_fn(observe))
        // The span names the route, never the URI: a content URL's query is
        // its signature.
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            tracing::debug_span!("request", method = %request.method(), route = route(request))
        }))
        .with_state(state)
}

/// The matched route (its template, `{image_id}` and all), or `unmatched`.
fn route(request: &Request) -> &str {
    request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str)
}

/// Counts every answer by route and status class, and times it.
async fn observe(request: Request, next: Next) -> Response {
    let route = route(&request).to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let m = metrics();
    m.api_request_duration.with_label_values(&[route.as_str()]).observe(started.elapsed().as_secs_f64());
    let class = format!("{}xx", response.status().as_u16() / 100);
    m.api_requests.with_label_values(&[route.as_str(), class.as_str()]).inc();
    response
}

/// Largest JSON request body (contract §8: larger is 413).
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Refuses a workspace id in a path that cannot be one.
fn workspace(workspace_id: &str) -> Result<(), ApiError> {
    if is_identifier(workspace_id) {
        Ok(())
    } else {
        Err(ApiError::InvalidRequest(
            "The workspace id in the path is not one: use 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit".into(),
        ))
    }
}

/// A JSON endpoint's body: `application/json` (else 415), within
/// [`MAX_BODY_BYTES`] (else 413).
fn json_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::UnsupportedMediaType);
    }
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
        _ => ApiError::InvalidRequest("The request body could not be read: send it again".into()),
    })
}
