//! Bearer tokens (`TETHER_API_TOKENS`): the platform's backend is the only
//! caller that presents one. Every path under `/v1/` but the content and
//! the OpenAPI document needs one (contract §8).
//!
//! Tokens are compared in constant time: each accepted token is kept as its
//! HMAC under a key made at start-up, and a presented token is checked with
//! `ring::hmac::verify`, which compares tags in constant time; so neither a
//! token's length nor a matching prefix shows in the response time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ring::hmac;
use tether_shared::secrets::Secret;

use crate::error::ApiError;
use crate::AppState;

/// The accepted bearer tokens, as tags only.
#[derive(Clone)]
pub(crate) struct Tokens {
    key: hmac::Key,
    tags: Arc<Vec<hmac::Tag>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("count", &self.tags.len()).finish_non_exhaustive()
    }
}

impl Tokens {
    pub(crate) fn new(tokens: &[Secret]) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &rand::random::<[u8; 32]>());
        let tags = tokens.iter().map(|t| hmac::sign(&key, t.expose().as_bytes())).collect();
        Self { key, tags: Arc::new(tags) }
    }

    /// Whether `presented` is one of the tokens; every token is tried, so
    /// the time taken does not tell which one matched.
    pub(crate) fn accepts(&self, presented: &str) -> bool {
        self.tags.iter().fold(false, |found, tag| {
            hmac::verify(&self.key, presented.as_bytes(), tag.as_ref()).is_ok() | found
        })
    }
}

/// Paths that need no bearer token: the content (its URL's signature is the
/// permission) and the OpenAPI document.
fn is_public(path: &str) -> bool {
    path.starts_with("/v1/content/") || path == "/v1/openapi.json" || !path.starts_with("/v1/")
}

/// Lets a request through only with `Authorization: Bearer TOKEN`.
pub(crate) async fn require_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if is_public(request.uri().path()) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match presented {
        None => ApiError::Unauthorized(
            "This endpoint needs Authorization: Bearer TOKEN, TOKEN one of tether-api's TETHER_API_TOKENS"
                .into(),
        )
        .into_response(),
        Some(token) if state.tokens.accepts(token) => next.run(request).await,
        Some(_) => ApiError::Unauthorized(
            "The bearer token is not one of tether-api's TETHER_API_TOKENS: present a current token".into(),
        )
        .into_response(),
    }
}
