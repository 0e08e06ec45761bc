//! `GET|HEAD /v1/content/{image_id}?expires=&kid=&sig=` (contract §8): the
//! image's bytes through tether-api, for links that cannot be signed
//! (Azure), copies in a `file://` destination, and browsers that should
//! not need a bucket CORS rule. No bearer token: the URL's signature is the
//! permission ([`crate::capability`]).
//!
//! Checks run in the contract's order: the signature (403), then
//! `If-None-Match` (304, without calling the store), then the store's read,
//! conditional on the image's ETag for a link (410 when the object is gone
//! or changed). Customer bytes are served from tether-api's own origin, so
//! only image types are served as such, with `nosniff` and a sandboxing
//! CSP; anything else is an attachment.
//!
//! Each stream is pumped by a task of its own through a channel of
//! [`BUFFERED_CHUNKS`]: memory per stream is a few chunks, a client that
//! stops reading for [`CLIENT_IDLE`] (or goes away) ends only its own
//! stream, and at most `TETHER_API_MAX_STREAMS` run at once.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, IF_RANGE, RANGE, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::map_response;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use chrono::Utc;
use futures_util::StreamExt;
use tether_shared::db::access::AccessImage;
use tether_shared::storage::{ByteChunks, ByteRange, ObjectBody, StorageError};
use tether_shared::telemetry::metrics;
use tokio::sync::OwnedSemaphorePermit;
use tower_http::cors::{AllowOrigin, CorsLayer};
use uuid::Uuid;

use crate::capability::Refusal;
use crate::error::{ApiError, ErrorBody};
use crate::urls::{link_key, no_credentials, provider_label};
use crate::AppState;

/// How far ahead a URL may expire: the longest `expires_in_seconds`; the
/// window is added to it.
const MAX_AHEAD_SECS: i64 = 43_200;
/// Time for the store to start answering (504 past it).
const STORE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time the store may pause between two chunks before the stream is cut.
const STORE_IDLE: Duration = Duration::from_secs(60);
/// Time a client may take to accept the next chunk before its stream is cut.
const CLIENT_IDLE: Duration = Duration::from_secs(60);
/// Chunks buffered between the store and the client, per stream (a store
/// chunk is a few KiB to 64 KiB).
const BUFFERED_CHUNKS: usize = 8;

pub(crate) fn router(origins: &[String]) -> Router<Arc<AppState>> {
    // Exact origins only, never `*`, never credentials (the default).
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok())))
        .allow_methods([Method::GET, Method::HEAD])
        .allow_headers([RANGE, IF_NONE_MATCH])
        .expose_headers([ETAG, CONTENT_RANGE, ACCEPT_RANGES, CONTENT_LENGTH]);
    Router::new()
        .route("/v1/content/{image_id}", get(content).head(content))
        .layer(map_response(security_headers))
        .layer(cors)
}

/// The query of a content URL; every part is checked by hand (a bad one is
/// 403, not 400).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ContentQuery {
    /// Unix time the URL expires at.
    expires: Option<String>,
    /// The id of the key that signed the URL.
    kid: Option<String>,
    /// Unpadded base64url HMAC-SHA256 of the image id and `expires`.
    sig: Option<String>,
}

/// Serves (part of) an image, as the URL's signature permits.
#[utoipa::path(
    method(get, head),
    path = "/v1/content/{image_id}",
    params(("image_id" = Uuid, Path, description = "The image, lowercase hyphenated"), ContentQuery),
    responses(
        (status = 200, description = "The image's bytes", content_type = "application/octet-stream"),
        (status = 206, description = "One Range of them", content_type = "application/octet-stream"),
        (status = 304, description = "If-None-Match matched the image's ETag"),
        (status = 403, description = "Missing, malformed, wrong or expired signature", body = ErrorBody),
        (status = 404, description = "The image no longer exists", body = ErrorBody),
        (status = 410, description = "source_missing, source_changed or copy_missing", body = ErrorBody),
        (status = 416, description = "The Range lies past the end", body = ErrorBody),
        (status = 502, description = "The store failed", body = ErrorBody),
        (status = 503, description = "Postgres unreachable, or too many streams", body = ErrorBody),
        (status = 504, description = "The store did not answer in time", body = ErrorBody),
    ),
)]
pub(crate) async fn content(
    State(state): State<Arc<AppState>>,
    method: Method,
    Path(image_id): Path<String>,
    query: Result<Query<ContentQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (image_id, expires) = permitted(&state, &image_id, query.ok().map(|q| q.0))?;
    let image = state
        .store
        .images_for_access(None, &[image_id])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::NotFound("This image no longer exists in Tether".into()))?;
    let etag = image.etag.as_deref().map(|e| format!("\"{e}\""));
    let mut response = Response::builder()
        .header(CACHE_CONTROL, format!("private, max-age={}", (expires - Utc::now().timestamp()).max(0)))
        .header(ACCEPT_RANGES, "bytes");
    if let Some(etag) = &etag {
        response = response.header(ETAG, etag);
    }
    if etag.as_deref().is_some_and(|etag| none_match(&headers, etag)) {
        return built(response.status(StatusCode::NOT_MODIFIED).body(Body::empty()));
    }
    let (content_type, attachment) = content_type(&image.source_url);
    response = response.header(CONTENT_TYPE, content_type);
    if attachment {
        response = response.header(CONTENT_DISPOSITION, "attachment");
    }
    let size = u64::try_from(image.size_bytes).unwrap_or(0);
    let range = requested_range(&headers, etag.as_deref(), size)?;
    if method == Method::HEAD {
        // A one-byte read tells whether the object is still there unchanged.
        drop(open(&state, &image, (size > 0).then_some(ByteRange { first: 0, last: 0 })).await?);
        let length = range.map_or(size, ByteRange::bytes);
        return built(ranged(response, range, size).header(CONTENT_LENGTH, length).body(Body::empty()));
    }
    let permit = Arc::clone(&state.streams).try_acquire_owned().map_err(|_| {
        ApiError::Unavailable(
            "tether-api is serving as many streams as it may (TETHER_API_MAX_STREAMS): try again shortly"
                .into(),
        )
    })?;
    let body = open(&state, &image, range).await?;
    tracing::debug!(%image_id, bytes = body.size, ranged = range.is_some(), "Streaming an image.");
    let response = ranged(response, range, body.total).header(CONTENT_LENGTH, body.size);
    built(response.body(pump(body.chunks, permit, provider_label(&image), image_id)))
}

/// The image id and expiry of a URL whose signature holds, or 403.
fn permitted(state: &AppState, image_id: &str, query: Option<ContentQuery>) -> Result<(Uuid, i64), ApiError> {
    let refuse = |why: &str| {
        tracing::debug!(reason = why, "Refused a content URL.");
        ApiError::Forbidden(format!("{why}: ask the platform for a new URL"))
    };
    let malformed = "This URL's signature is missing or malformed";
    let image_id = Uuid::try_parse(image_id).map_err(|_| refuse(malformed))?;
    let query = query.ok_or_else(|| refuse(malformed))?;
    let (Some(expires), Some(kid), Some(sig)) = (query.expires, query.kid, query.sig) else {
        return Err(refuse(malformed));
    };
    let expires: i64 = expires.parse().map_err(|_| refuse(malformed))?;
    state.content.verify(image_id, expires, &kid, &sig).map_err(|refusal| match refusal {
        Refusal::Malformed => refuse(malformed),
        Refusal::UnknownKey => refuse("This URL was signed with a key tether-api does not hold"),
        Refusal::Wrong => refuse("This URL's signature does not match it"),
    })?;
    let now = Utc::now().timestamp();
    if expires <= now {
        return Err(refuse("This URL has expired"));
    }
    if expires - now > MAX_AHEAD_SECS + state.window.seconds() {
        return Err(refuse("This URL expires further ahead than tether-api ever signs"));
    }
    Ok((image_id, expires))
}

/// Whether `If-None-Match` names the image's ETag (or `*`).
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag == etag)
}

/// The one byte range asked for, resolved against `size`. Several ranges,
/// a malformed header, or an `If-Range` that names another version mean the
/// whole object (RFC 9110 lets a server ignore them); a range past the end
/// is 416.
fn requested_range(
    headers: &HeaderMap,
    etag: Option<&str>,
    size: u64,
) -> Result<Option<ByteRange>, ApiError> {
    let Some(spec) = headers.get(RANGE).and_then(|v| v.to_str().ok()) else { return Ok(None) };
    if let Some(if_range) = headers.get(IF_RANGE).and_then(|v| v.to_str().ok()) {
        if Some(if_range.trim()) != etag {
            return Ok(None);
        }
    }
    let Some(spec) = spec.trim().strip_prefix("bytes=").filter(|s| !s.contains(',')) else { return Ok(None) };
    let Some((first, last)) = spec.split_once('-') else { return Ok(None) };
    let (first, last) = (first.trim(), last.trim());
    let range = match (first.parse::<u64>(), last.parse::<u64>()) {
        // `bytes=-N`: the last N bytes.
        _ if first.is_empty() => match last.parse::<u64>() {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => (size.saturating_sub(n), size.saturating_sub(1)),
        },
        (Ok(first), _) if last.is_empty() => (first, size.saturating_sub(1)),
        (Ok(first), Ok(last)) if first <= last => (first, last.min(size.saturating_sub(1))),
        _ => return Ok(None),
    };
    if size == 0 {
        return Ok(None);
    }
    if range.0 >= size {
        return Err(ApiError::RangeNotSatisfiable { size });
    }
    Ok(Some(ByteRange { first: range.0, last: range.1 }))
}

/// 206 and `Content-Range` for a range, 200 otherwise.
fn ranged(
    response: axum::http::response::Builder,
    range: Option<ByteRange>,
    total: u64,
) -> axum::http::response::Builder {
    match range {
        Some(r) => response
            .status(StatusCode::PARTIAL_CONTENT)
            .header(CONTENT_RANGE, format!("bytes {}-{}/{total}", r.first, r.last)),
        None => response.status(StatusCode::OK),
    }
}

fn built(response: Result<Response, axum::http::Error>) -> Result<Response, ApiError> {
    response.map_err(|e| ApiError::Internal(format!("tether-api built an invalid response ({e})")))
}

/// `Content-Type` from the key's extension: image types as such, anything
/// else as an attachment of `application/octet-stream`.
fn content_type(source_url: &str) -> (&'static str, bool) {
    let name = source_url.rsplit('/').next().unwrap_or_default();
    let extension = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match extension.as_str() {
        "jpg" | "jpeg" => ("image/jpeg", false),
        "png" => ("image/png", false),
        "gif" => ("image/gif", false),
        "webp" => ("image/webp", false),
        "bmp" => ("image/bmp", false),
        "tif" | "tiff" => ("image/tiff", false),
        _ => ("application/octet-stream", true),
    }
}

/// Every content response, errors included, is served as foreign bytes.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let fixed: [(HeaderName, &str); 3] = [
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (CONTENT_SECURITY_POLICY, "sandbox; default-src 'none'"),
        (REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Reads (a range of) the image: a link from the customer's bucket with its
/// import's credentials, conditional on the stored ETag; a copy from
/// inside `TETHER_DESTINATION`.
async fn open(
    state: &AppState,
    image: &AccessImage,
    range: Option<ByteRange>,
) -> Result<ObjectBody, ApiError> {
    let read = async {
        if image.copied {
            let destination = state.destination.as_ref().ok_or_else(|| {
                StorageError::Unavailable("tether-api has no TETHER_DESTINATION to read copies from".into())
            })?;
            return destination.read(image.stored_url.as_deref().unwrap_or_default(), range).await;
        }
        let credentials =
            image.credentials.as_ref().ok_or_else(|| StorageError::AccessDenied(no_credentials().message))?;
        let key = link_key(image, &credentials.source).ok_or_else(|| {
            StorageError::Unavailable("the image's URL does not match its import's bucket".into())
        })?;
        let source = state
            .sources
            .open(&credentials.source, credentials.import_id, credentials.sealed_secret.as_deref())
            .await?;
        source.read(key, image.etag.as_deref(), range).await
    };
    let read = tokio::time::timeout(STORE_TIMEOUT, read).await.map_err(|_| ApiError::SourceUnavailable {
        timed_out: true,
        message: "The image's store did not answer in time: try again shortly".into(),
    })?;
    read.map_err(|error| {
        tracing::warn!(image_id = %image.image_id, code = error.code().as_str(), %error, "Cannot read an image.");
        gone_or_unavailable(image.copied, &error)
    })
}

fn gone_or_unavailable(copied: bool, error: &StorageError) -> ApiError {
    let gone = |code, message: &str| ApiError::Gone { code, message: message.to_owned() };
    match (copied, error) {
        (true, StorageError::ObjectNotFound(_)) => gone("copy_missing", "The image's copy is missing from the platform's storage"),
        (false, StorageError::ObjectNotFound(_) | StorageError::BucketNotFound(_)) => {
            gone("source_missing", "The image's object was deleted from its bucket since it was imported")
        }
        (false, StorageError::Changed(_)) => {
            gone("source_changed", "The image's object changed in its bucket since it was imported: import it again")
        }
        (_, StorageError::AccessDenied(_) | StorageError::Credentials(_) | StorageError::CredentialsExpired(_)) => {
            ApiError::SourceUnavailable {
                timed_out: false,
                message: "The image's store refused Tether's credentials: the customer's access must be renewed by a new import".into(),
            }
        }
        _ => ApiError::SourceUnavailable {
            timed_out: false,
            message: "The image's store failed to serve it: try again shortly".into(),
        },
    }
}

/// Moves the store's chunks to the client through a small channel, in a
/// task that holds the stream's permit; see the module's documentation.
fn pump(
    mut chunks: ByteChunks,
    permit: OwnedSemaphorePermit,
    provider: &'static str,
    image_id: Uuid,
) -> Body {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(BUFFERED_CHUNKS);
    tokio::spawn(async move {
        let _permit = permit;
        let m = metrics();
        m.api_streams_in_flight.inc();
        let streamed = m.api_bytes_streamed.with_label_values(&[provider]);
        loop {
            let next = match tokio::time::timeout(STORE_IDLE, chunks.next()).await {
                Ok(next) => next,
                Err(_) => Some(Err(StorageError::Unavailable("the store stopped sending".into()))),
            };
            let chunk = match next {
                None => break,
                Some(Ok(chunk)) => chunk,
                Some(Err(error)) => {
                    tracing::warn!(%image_id, %error, "The store broke off a stream; cutting it.");
                    let _ = sender.send(Err(std::io::Error::other("the store broke off"))).await;
                    break;
                }
            };
            let len = chunk.len() as u64;
            if sender.send_timeout(Ok(chunk), CLIENT_IDLE).await.is_err() {
                tracing::debug!(%image_id, "The client went away or stopped reading; closing its stream.");
                break;
            }
            streamed.inc_by(len);
        }
        m.api_streams_in_flight.dec();
    });
    Body::from_stream(futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(spec: &str, size: u64) -> Result<Option<(u64, u64)>, u16> {
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, HeaderValue::from_str(spec).expect("header"));
        requested_range(&headers, Some("\"e\""), size)
            .map(|r| r.map(|r| (r.first, r.last)))
            .map_err(|e| e.status_and_code().0.as_u16())
    }

    #[test]
    fn one_range_is_served_and_anything_else_is_the_whole_object() {
        assert_eq!(range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=-500", 100), Ok(Some((0, 99))));
        assert_eq!(range("bytes=50-500", 100), Ok(Some((50, 99))));
        assert_eq!(range("bytes=100-", 100), Err(416));
        assert_eq!(range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(range("bytes=9-1", 100), Ok(None));
        assert_eq!(range("items=0-1", 100), Ok(None));
        assert_eq!(range("bytes=0-0", 0), Ok(None));
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, HeaderValue::from_static("bytes=0-1"));
        headers.insert(IF_RANGE, HeaderValue::from_static("\"old\""));
        assert_eq!(requested_range(&headers, Some("\"e\""), 10).ok().flatten(), None, "another version");
    }

    #[test]
    fn only_image_types_are_served_as_such() {
        assert_eq!(content_type("s3://b/a/x.JPG"), ("image/jpeg", false));
        assert_eq!(content_type("gs://b/x.tiff"), ("image/tiff", false));
        assert_eq!(content_type("s3://b/page.html"), ("application/octet-stream", true));
        assert_eq!(content_type("s3://b/x.svg"), ("application/octet-stream", true));
        assert_eq!(content_type("s3://b/noext"), ("application/octet-stream", true));
    }

    #[test]
    fn if_none_match_lists_and_weak_tags_match() {
        let mut headers = HeaderMap::new();
        headers.insert(IF_NONE_MATCH, HeaderValue::from_static("\"a\", W/\"e\""));
        assert!(none_match(&headers, "\"e\""));
        assert!(!none_match(&headers, "\"f\""));
        headers.insert(IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(none_match(&headers, "\"f\""));
    }
}
