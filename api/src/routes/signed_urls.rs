//! `POST /v1/workspaces/{workspace_id}/signed-urls` (contract §8): 1-1000
//! image ids in, one URL or one per-id error for each out, in the order
//! asked. The body is validated by hand, field by field, so that every
//! refusal names the field and says what a valid value is.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use tether_shared::db::access::AccessImage;
use tether_shared::signing::{SignedUrl, Validity};
use tether_shared::telemetry::metrics;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use uuid::Uuid;

use super::{json_body, workspace};
use crate::error::{ApiError, ErrorBody};
use crate::urls::{self, Delivery, Refused};
use crate::AppState;

pub(crate) const MAX_IDS: usize = 1000;
pub(crate) const MIN_EXPIRES_IN: u32 = 60;
pub(crate) const MAX_EXPIRES_IN: u32 = 43_200;
const DEFAULT_EXPIRES_IN: u32 = 900;
/// A request that has not been answered by then gets 503.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/workspaces/{workspace_id}/signed-urls", post(sign))
        .layer(RequestBodyLimitLayer::new(super::MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, ANSWER_WITHIN))
}

/// The request body.
#[derive(Debug, PartialEq, Eq, utoipa::ToSchema)]
pub(crate) struct SignedUrlsRequest {
    /// 1-1000 distinct ids of `tether.images`.
    #[schema(min_items = 1, max_items = 1000)]
    image_ids: Vec<Uuid>,
    /// How long the URLs must last at least.
    #[schema(minimum = 60, maximum = 43200, default = 900, nullable = false)]
    expires_in_seconds: Option<u32>,
    #[schema(default = "direct", nullable = false)]
    delivery: Option<Delivery>,
}

/// Every id asked for is in exactly one of the two lists, each in the
/// order asked.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SignedUrls {
    urls: Vec<SignedUrlItem>,
    errors: Vec<UrlError>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SignedUrlItem {
    image_id: Uuid,
    /// A secret: whoever holds it may read the image until `expires_at`.
    url: String,
    /// RFC 3339 UTC, whole seconds, `Z`; may be sooner than asked for S3
    /// links (the session that signed it ends sooner).
    #[schema(example = "2026-11-28T10:20:00Z")]
    expires_at: String,
    delivery: Delivery,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct UrlError {
    image_id: Uuid,
    /// `not_found`, `access_denied`, `not_signable` or `unavailable`.
    code: String,
    message: String,
}

/// Hands out URLs for images of one workspace.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{workspace_id}/signed-urls",
    params(("workspace_id" = String, Path, description = "The workspace whose images are asked for")),
    request_body(content = SignedUrlsRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "A URL or an error for every id", body = SignedUrls),
        (status = 400, description = "Invalid body or workspace id", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 415, description = "Body not application/json", body = ErrorBody),
        (status = 503, description = "Postgres unreachable", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn sign(
    State(state): State<Arc<AppState>>,
    Path(workspace_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SignedUrls>, ApiError> {
    workspace(&workspace_id)?;
    let body = json_body(&headers, body)?;
    let request = parse(&body)?;
    let delivery = request.delivery.unwrap_or(Delivery::Direct);
    let images = state.store.images_for_access(Some(&workspace_id), &request.image_ids).await?;
    let validity =
        state.window.validity(Utc::now(), request.expires_in_seconds.unwrap_or(DEFAULT_EXPIRES_IN));
    let made = match delivery {
        Delivery::Direct => urls::direct(&state, &images, validity).await,
        Delivery::Proxy => images
            .iter()
            .map(|image| {
                let url = urls::proxy_url(&state, image.image_id, validity.expires_at);
                Ok(SignedUrl {
                    url: tether_shared::secrets::Secret::new(url),
                    expires_at: validity.expires_at,
                })
            })
            .collect(),
    };
    let answer = answer(&request.image_ids, &images, made, delivery, validity);
    tracing::info!(
        workspace_id,
        delivery = delivery.as_str(),
        asked = request.image_ids.len(),
        urls = answer.urls.len(),
        errors = answer.errors.len(),
        "URLs handed out."
    );
    Ok(Json(answer))
}

/// Puts each id asked for in one of the two lists, in the order asked.
fn answer(
    asked: &[Uuid],
    images: &[AccessImage],
    made: Vec<Result<SignedUrl, Refused>>,
    delivery: Delivery,
    validity: Validity,
) -> SignedUrls {
    let mut found: HashMap<Uuid, (&AccessImage, Result<SignedUrl, Refused>)> =
        images.iter().zip(made).map(|(image, made)| (image.image_id, (image, made))).collect();
    let m = metrics();
    let mut answer = SignedUrls { urls: Vec::new(), errors: Vec::new() };
    for id in asked {
        let made = found.remove(id).map(|(image, made)| (urls::provider_label(image), made));
        match made {
            Some((provider, Ok(signed))) => {
                m.api_urls_signed.with_label_values(&[provider, delivery.as_str()]).inc();
                answer.urls.push(SignedUrlItem {
                    image_id: *id,
                    url: signed.url.expose().to_owned(),
                    expires_at: rfc3339(signed.expires_at.min(validity.expires_at)),
                    delivery,
                });
            }
            Some((_, Err(refused))) => answer.errors.push(error(*id, delivery, refused)),
            None => answer.errors.push(error(
                *id,
                delivery,
                Refused {
                    code: "not_found",
                    message: "No image with this id in this workspace: check the id and the workspace".into(),
                },
            )),
        }
    }
    answer
}

fn error(image_id: Uuid, delivery: Delivery, refused: Refused) -> UrlError {
    metrics().api_url_errors.with_label_values(&[delivery.as_str(), refused.code]).inc();
    UrlError { image_id, code: refused.code.to_owned(), message: refused.message }
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Reads and checks the body; the error names the field and the fix.
fn parse(body: &[u8]) -> Result<SignedUrlsRequest, ApiError> {
    let invalid = |message: String| ApiError::InvalidRequest(message);
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        invalid(format!(
            "The body is not valid JSON ({e}): send {{\"image_ids\": [...], \"expires_in_seconds\": 900, \"delivery\": \"direct\"}}"
        ))
    })?;
    let Value::Object(fields) = value else {
        return Err(invalid("The body is not a JSON object: send {\"image_ids\": [...]}".into()));
    };
    const FIELDS: [&str; 3] = ["image_ids", "expires_in_seconds", "delivery"];
    if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(invalid(format!(
            "Field `{}` is not part of the request: allowed are image_ids, expires_in_seconds and delivery",
            unknown.escape_debug()
        )));
    }
    Ok(SignedUrlsRequest {
        image_ids: image_ids(&fields)?,
        expires_in_seconds: expires_in(&fields)?,
        delivery: delivery(&fields)?,
    })
}

fn image_ids(fields: &Map<String, Value>) -> Result<Vec<Uuid>, ApiError> {
    let invalid = |message: String| ApiError::InvalidRequest(message);
    let items = match fields.get("image_ids") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid("Field `image_ids` must be an array of image ids (UUIDs)".into())),
        None => return Err(invalid("Field `image_ids` is missing: list 1-1000 image ids".into())),
    };
    if items.is_empty() || items.len() > MAX_IDS {
        return Err(invalid(format!(
            "Field `image_ids` has {} ids: ask for 1 to {MAX_IDS} per request",
            items.len()
        )));
    }
    let mut ids = Vec::with_capacity(items.len());
    let mut seen = HashSet::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let id = item.as_str().and_then(|s| Uuid::try_parse(s).ok()).ok_or_else(|| {
            let shown: String = item.to_string().chars().take(80).collect();
            invalid(format!("Field `image_ids[{i}]` is {shown}, not an image id: give UUIDs such as 9b2c1f4e-8a55-4a36-9a34-3c0f4b1f2e10"))
        })?;
        if !seen.insert(id) {
            return Err(invalid(format!(
                "Field `image_ids[{i}]` repeats the id {id}: ask for each image once"
            )));
        }
        ids.push(id);
    }
    Ok(ids)
}

fn expires_in(fields: &Map<String, Value>) -> Result<Option<u32>, ApiError> {
    let Some(value) = fields.get("expires_in_seconds") else { return Ok(None) };
    value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| (MIN_EXPIRES_IN..=MAX_EXPIRES_IN).contains(n))
        .map(Some)
        .ok_or_else(|| {
            let shown: String = value.to_string().chars().take(40).collect();
            ApiError::InvalidRequest(format!(
                "Field `expires_in_seconds` is {shown}: give a whole number of seconds from {MIN_EXPIRES_IN} to {MAX_EXPIRES_IN}"
            ))
        })
}

fn delivery(fields: &Map<String, Value>) -> Result<Option<Delivery>, ApiError> {
    match fields.get("delivery") {
        None => Ok(None),
        Some(Value::String(s)) if s == "direct" => Ok(Some(Delivery::Direct)),
        Some(Value::String(s)) if s == "proxy" => Ok(Some(Delivery::Proxy)),
        Some(other) => {
            let shown: String = other.to_string().chars().take(40).collect();
            Err(ApiError::InvalidRequest(format!(
                "Field `delivery` is {shown}: use \"direct\" (a URL of the store) or \"proxy\" (a URL of tether-api)"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str) -> String {
        match parse(body.as_bytes()) {
            Err(ApiError::InvalidRequest(message)) => message,
            other => panic!("{body} was not refused: {other:?}"),
        }
    }

    #[test]
    fn bodies_are_checked_field_by_field() {
        let id = "9b2c1f4e-8a55-4a36-9a34-3c0f4b1f2e10";
        let ok = parse(
            format!(r#"{{"image_ids":["{id}"],"expires_in_seconds":60,"delivery":"proxy"}}"#).as_bytes(),
        )
        .expect("valid");
        assert_eq!(ok.expires_in_seconds, Some(60));
        assert_eq!(ok.delivery, Some(Delivery::Proxy));
        let defaults = parse(format!(r#"{{"image_ids":["{id}"]}}"#).as_bytes()).expect("valid");
        assert_eq!((defaults.expires_in_seconds, defaults.delivery), (None, None));

        assert!(refused("{").contains("not valid JSON"));
        assert!(refused("[]").contains("not a JSON object"));
        assert!(refused(r#"{"image_id":[]}"#).contains("`image_id` is not part"));
        assert!(refused(r#"{}"#).contains("`image_ids` is missing"));
        assert!(refused(r#"{"image_ids":[]}"#).contains("has 0 ids"));
        assert!(refused(r#"{"image_ids":"x"}"#).contains("must be an array"));
        assert!(refused(r#"{"image_ids":["nope"]}"#).contains("`image_ids[0]` is \"nope\""));
        assert!(refused(r#"{"image_ids":[7]}"#).contains("`image_ids[0]` is 7"));
        assert!(refused(&format!(r#"{{"image_ids":["{id}","{id}"]}}"#)).contains("`image_ids[1]` repeats"));
        let many: Vec<String> = (0..1001).map(|_| format!("\"{}\"", Uuid::new_v4())).collect();
        assert!(refused(&format!(r#"{{"image_ids":[{}]}}"#, many.join(","))).contains("has 1001 ids"));
        for bad in ["59", "43201", "-1", "900.5", "\"900\"", "null"] {
            let message = refused(&format!(r#"{{"image_ids":["{id}"],"expires_in_seconds":{bad}}}"#));
            assert!(message.contains("`expires_in_seconds`") && message.contains("60 to 43200"), "{message}");
        }
        assert!(refused(&format!(r#"{{"image_ids":["{id}"],"delivery":"both"}}"#)).contains("`delivery`"));
    }
}
