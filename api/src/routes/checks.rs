//! Bucket set-up that works the first time (contract §9):
//! `POST /v1/workspaces/{workspace_id}/connection-checks` tries every step an
//! import and this API will take, with the identities they will use, and
//! `GET /v1/setup/aws` writes the policies a customer pastes. Both are thin
//! over `tether_shared::checks`, which `tetherctl check` and `tetherctl setup
//! aws` run too, so the two answers cannot differ.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use tether_shared::checks::setup::{AwsSetup, SetupError};
use tether_shared::checks::{CheckRequest, Report};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use super::{json_body, workspace};
use crate::error::{ApiError, ErrorBody};
use crate::AppState;

/// A check answers within 15 s whatever the store does (the engine stops
/// at 14 s); this only guards against a bug.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);
/// The query parameters of `GET /v1/setup/aws`.
const SETUP_PARAMETERS: [&str; 4] = ["bucket", "prefix", "external_id", "origin"];

pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/workspaces/{workspace_id}/connection-checks", post(check))
        .route("/v1/setup/aws", get(setup_aws))
        .layer(RequestBodyLimitLayer::new(super::MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, ANSWER_WITHIN))
}

/// The body of a connection check.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the body, which is validated by hand
pub(crate) struct ConnectionCheckRequest {
    /// The `source` of an ImportRequest, under the same rules (contract §2);
    /// its `external_id` or `impersonate_service_account` is the workspace's
    /// own, chosen by the platform.
    #[schema(value_type = Object)]
    source: Value,
    /// How the bucket will be imported; `cors` is checked for `link` only.
    #[schema(default = "link", nullable = false, pattern = "^(link|copy)$")]
    mode: Option<String>,
    /// The web origin images will be shown on; default: the first of
    /// `TETHER_API_ALLOWED_ORIGINS`.
    #[schema(nullable = false, example = "https://app.example.com")]
    origin: Option<String>,
}

/// Tests a bucket the way imports and this API will use it.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{workspace_id}/connection-checks",
    params(("workspace_id" = String, Path, description = "The workspace whose bucket is checked")),
    request_body(content = ConnectionCheckRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Every check of the provider, in order", body = Report),
        (status = 400, description = "Invalid body: the message names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 415, description = "Body not application/json", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn check(
    State(state): State<Arc<AppState>>,
    Path(workspace_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Report>, ApiError> {
    workspace(&workspace_id)?;
    let body = json_body(&headers, body)?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::InvalidRequest(format!(
            "The body is not valid JSON ({e}): send {{\"source\": {{...}}, \"mode\": \"link\"}}"
        ))
    })?;
    let request = CheckRequest::from_body(&value, state.checker.validation_options())
        .map_err(|why| ApiError::InvalidRequest(capitalised(&why)))?;
    Ok(Json(state.checker.run(&request).await))
}

/// The three JSON objects a customer pastes.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documents the answer, which the checks module writes
pub(crate) struct AwsSetupPolicies {
    /// Lets only Tether's own principal assume the role, only with the
    /// workspace's ExternalId.
    #[schema(value_type = Object)]
    trust_policy: Value,
    /// `s3:GetBucketLocation`, `s3:GetBucketCORS` and `s3:ListBucket` on the
    /// bucket (limited to the prefix), `s3:GetObject` under the prefix.
    #[schema(value_type = Object)]
    permission_policy: Value,
    /// `{"CORSRules": [...]}`: `GET` and `HEAD` from the origin.
    #[schema(value_type = Object)]
    cors_rules: Value,
}

/// Writes the AWS policies for a bucket, a prefix and a workspace's
/// ExternalId.
#[utoipa::path(
    get,
    path = "/v1/setup/aws",
    params(
        ("bucket" = String, Query, description = "The customer's bucket"),
        ("prefix" = Option<String>, Query, description = "Limit the role to keys under this prefix"),
        ("external_id" = String, Query, description = "The workspace's ExternalId"),
        ("origin" = Option<String>, Query, description = "The web origin of the CORS rules; default: the first of TETHER_API_ALLOWED_ORIGINS"),
    ),
    responses(
        (status = 200, description = "The policies, ready to paste", body = AwsSetupPolicies),
        (status = 400, description = "A parameter is missing or invalid: the message names it", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 503, description = "STS did not say who Tether is", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn setup_aws(
    State(state): State<Arc<AppState>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|_| {
        ApiError::InvalidRequest(
            "The query string could not be read: give bucket, external_id and optionally prefix and origin"
                .into(),
        )
    })?;
    if let Some(unknown) = query.keys().find(|k| !SETUP_PARAMETERS.contains(&k.as_str())) {
        return Err(ApiError::InvalidRequest(format!(
            "`{}` is not a parameter of the AWS set-up: give bucket, external_id and optionally prefix and origin",
            unknown.chars().take(64).collect::<String>().escape_debug()
        )));
    }
    let required = |name: &str| {
        query.get(name).map(String::as_str).ok_or_else(|| {
            ApiError::InvalidRequest(format!("`{name}` is missing: give bucket and external_id"))
        })
    };
    let setup = AwsSetup::new(
        required("bucket")?,
        query.get("prefix").map(String::as_str),
        required("external_id")?,
        query.get("origin").map(String::as_str),
        state.checker.default_origin(),
    )
    .map_err(setup_error)?;
    let policies = setup.policies_for_tether(&state.sdk).await.map_err(setup_error)?;
    Ok(Json(policies))
}

fn setup_error(error: SetupError) -> ApiError {
    match error {
        SetupError::Invalid(why) => ApiError::InvalidRequest(capitalised(&why)),
        identity @ SetupError::Identity(_) => {
            tracing::warn!(error = %identity, "No AWS set-up: Tether's own principal is unknown.");
            ApiError::Unavailable(format!("{identity}: try again shortly"))
        }
    }
}

/// The checks module's sentences start lower-case (they follow a field
/// name elsewhere); the error object's message is a sentence.
fn capitalised(why: &str) -> String {
    let mut chars = why.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
