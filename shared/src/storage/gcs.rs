//! Google Cloud Storage as an [`ObjectSource`], over the JSON API with
//! reqwest: one `objects.list` page per call, media downloads conditional on
//! the listed generation. The customer's workspace service account is
//! impersonated with Tether's own identity ([`GcpTokens`]); with
//! `STORAGE_EMULATOR_HOST` set, requests go to the emulator without auth.
//!
//! A GCS object's `etag` in Tether's tables is its *generation*: the number
//! GCS's own preconditions (`ifGenerationMatch`) use, which changes whenever
//! the object's bytes are replaced.

use std::sync::Arc;

use base64::Engine;
use chrono::{DateTime, Utc};
use percent_encoding::utf8_percent_encode;
use reqwest::{RequestBuilder, Response, StatusCode};

use super::{
    http_body, unreachable, ByteRange, ListPage, ListQuery, ObjectBody, ObjectMeta, ObjectSource,
    StorageError, DOWNLOAD_TIMEOUT, UNRESERVED,
};
use crate::contract::GcsSource;
use crate::credentials::gcp::{GcpTokens, GcsAccess};

const GCS: &str = "https://storage.googleapis.com";

/// An object name as one URL path segment (`/` included, as `%2F`).
pub(crate) fn segment(name: &str) -> String {
    utf8_percent_encode(name, UNRESERVED).to_string()
}

/// The Cloud Storage JSON API: where it is and how calls are authorised.
/// Shared by the GCS source and the `gs://` destination.
#[derive(Debug, Clone)]
pub struct GcsApi {
    http: reqwest::Client,
    base: String,
    /// `None` against an emulator: no auth.
    tokens: Option<Arc<GcpTokens>>,
}

impl GcsApi {
    /// `emulator` is `STORAGE_EMULATOR_HOST`; unset, the real GCS.
    pub fn new(http: reqwest::Client, emulator: Option<&str>, tokens: Arc<GcpTokens>) -> Self {
        match emulator.filter(|e| !e.is_empty()) {
            Some(host) => {
                let host = host.trim_end_matches('/');
                let base = if host.contains("://") { host.to_owned() } else { format!("http://{host}") };
                Self { http, base, tokens: None }
            }
            None => Self { http, base: GCS.to_owned(), tokens: Some(tokens) },
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A media download of the object at `url` (`alt=media` and `query`),
    /// of `range` only when given.
    pub(crate) fn download(
        &self,
        url: &str,
        query: &[(&str, &str)],
        range: Option<ByteRange>,
    ) -> RequestBuilder {
        let request = self.http.get(url).query(&[("alt", "media")]).query(query).timeout(DOWNLOAD_TIMEOUT);
        match range {
            Some(range) => request.header(reqwest::header::RANGE, range.header()),
            None => request,
        }
    }

    /// Sends `request` with a bearer token for `access`; a 401 renews an
    /// impersonated token once.
    pub(crate) async fn send(
        &self,
        request: impl Fn() -> RequestBuilder,
        access: GcsAccess<'_>,
    ) -> Result<Response, StorageError> {
        let Some(tokens) = &self.tokens else {
            return request().send().await.map_err(|e| unreachable("GCS", &e));
        };
        let token = tokens.token(access).await?;
        let response =
            request().bearer_auth(token.expose()).send().await.map_err(|e| unreachable("GCS", &e))?;
        match (response.status(), access.account()) {
            (StatusCode::UNAUTHORIZED, Some(account)) => {
                tracing::info!(account, "GCS refused the impersonated token; renewing it once.");
                tokens.invalidate(account).await;
                let token = tokens.token(access).await?;
                request().bearer_auth(token.expose()).send().await.map_err(|e| unreachable("GCS", &e))
            }
            _ => Ok(response),
        }
    }
}

/// Builds a [`GcsBucket`] per request.
#[derive(Debug, Clone)]
pub struct GcsSources {
    api: GcsApi,
}

impl GcsSources {
    pub fn new(api: GcsApi) -> Self {
        Self { api }
    }

    pub fn open(&self, source: &GcsSource) -> GcsBucket {
        GcsBucket {
            api: self.api.clone(),
            bucket: source.bucket.clone(),
            impersonate: source.impersonate_service_account.clone(),
        }
    }
}

/// One GCS bucket, read as the workspace's service account.
#[derive(Debug)]
pub struct GcsBucket {
    api: GcsApi,
    bucket: String,
    impersonate: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Listing {
    #[serde(default)]
    items: Vec<Item>,
    #[serde(default)]
    prefixes: Vec<String>,
    next_page_token: Option<String>,
}

#[derive(serde::Deserialize)]
struct Item {
    name: String,
    /// GCS sends 64-bit numbers as strings.
    size: Option<String>,
    generation: Option<String>,
    updated: Option<DateTime<Utc>>,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(serde::Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: String,
}

#[async_trait::async_trait]
impl ObjectSource for GcsBucket {
    async fn list_page(&self, list: ListQuery<'_>) -> Result<ListPage, StorageError> {
        let prefix = list.prefix;
        let url = self.api.url(&format!("/storage/v1/b/{}/o", segment(&self.bucket)));
        let max = list.max_keys.clamp(1, 1000).to_string();
        let response = self
            .api
            .send(
                || {
                    let mut query = vec![
                        ("prefix", prefix),
                        ("maxResults", max.as_str()),
                        ("fields", "items(name,size,generation,updated),prefixes,nextPageToken"),
                    ];
                    let optional = [
                        ("pageToken", list.token),
                        ("delimiter", list.delimiter),
                        ("startOffset", list.start_at),
                        ("endOffset", list.end_before),
                    ];
                    query.extend(optional.into_iter().filter_map(|(name, value)| Some((name, value?))));
                    self.api.http().get(&url).query(&query)
                },
                GcsAccess::Source(self.impersonate.as_deref()),
            )
            .await?;
        if !response.status().is_success() {
            return Err(self.refused(response, prefix, None).await);
        }
        let listing: Listing = response.json().await.map_err(|e| {
            StorageError::Unavailable(format!(
                "GCS answered the listing of gs://{}/{prefix} unreadably: {}",
                self.bucket,
                e.without_url()
            ))
        })?;
        let objects = listing
            .items
            .into_iter()
            .map(|item| ObjectMeta {
                size: item.size.and_then(|s| s.parse().ok()).unwrap_or(0),
                etag: item.generation,
                last_modified: item.updated,
                key: item.name,
            })
            .collect();
        // The emulator returns every prefix on the first page, whatever the offsets.
        Ok(ListPage {
            objects,
            prefixes: listing.prefixes,
            next: listing.next_page_token.filter(|t| !t.is_empty()),
        }
        .within(&list))
    }

    async fn read(
        &self,
        key: &str,
        etag: Option<&str>,
        range: Option<ByteRange>,
    ) -> Result<ObjectBody, StorageError> {
        let url = self.object_url(key);
        let response = self
            .api
            .send(
                || {
                    let generation = etag.map(|generation| ("ifGenerationMatch", generation));
                    self.api.download(&url, generation.as_slice(), range)
                },
                GcsAccess::Source(self.impersonate.as_deref()),
            )
            .await?;
        if !response.status().is_success() {
            return Err(self.refused(response, "", Some(key)).await);
        }
        // GCS answers a failed precondition with 412; a store that ignores
        // the precondition (the emulator) is caught by the generation served.
        let served = response.headers().get("x-goog-generation").and_then(|v| v.to_str().ok());
        if let (Some(listed), Some(served)) = (etag, served) {
            if listed != served {
                return Err(StorageError::Changed(format!(
                    "gs://{}/{key} changed after it was listed; requeue the import to copy the new version",
                    self.bucket
                )));
            }
        }
        let md5 = response
            .headers()
            .get_all("x-goog-hash")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|h| h.trim().strip_prefix("md5="))
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok());
        Ok(http_body(response, md5, format!("gs://{}/{key}", self.bucket)))
    }
}

impl GcsBucket {
    fn object_url(&self, key: &str) -> String {
        self.api.url(&format!("/storage/v1/b/{}/o/{}", segment(&self.bucket), segment(key)))
    }

    /// Reads the first byte of `key`: proof that the account may read
    /// objects, without downloading one (a connection check).
    pub(crate) async fn first_byte(&self, key: &str) -> Result<(), StorageError> {
        let url = self.object_url(key);
        let response = self
            .api
            .send(
                || self.api.http().get(&url).query(&[("alt", "media")]).header("range", "bytes=0-0"),
                GcsAccess::Source(self.impersonate.as_deref()),
            )
            .await?;
        match response.status() {
            status if status.is_success() => {
                response.bytes().await.map(drop).map_err(|e| unreachable("GCS", &e))
            }
            // An empty object has no first byte, but it was readable.
            StatusCode::RANGE_NOT_SATISFIABLE => Ok(()),
            _ => Err(self.refused(response, "", Some(key)).await),
        }
    }

    /// What a refusal means; `key` is set for reads.
    async fn refused(&self, response: Response, prefix: &str, key: Option<&str>) -> StorageError {
        let status = response.status().as_u16();
        let message = response.json::<ErrorBody>().await.map(|b| b.error.message).unwrap_or_default();
        let bucket = &self.bucket;
        let who = match &self.impersonate {
            Some(account) => format!("the service account {account}"),
            None => "Tether's service account".to_owned(),
        };
        let bucket_gone = message.to_ascii_lowercase().contains("bucket");
        match (status, key) {
            (404, _) if key.is_none() || bucket_gone => StorageError::BucketNotFound(format!(
                "The bucket gs://{bucket} does not exist: check source.bucket"
            )),
            (404, Some(key)) => StorageError::ObjectNotFound(format!("gs://{bucket}/{key} was deleted after it was listed")),
            (412, Some(key)) => StorageError::Changed(format!(
                "gs://{bucket}/{key} changed after it was listed; requeue the import to copy the new version"
            )),
            (401 | 403, None) => StorageError::AccessDenied(format!(
                "Access denied listing gs://{bucket}/{prefix}: grant {who} roles/storage.objectViewer (storage.objects.list) on the bucket"
            )),
            (401 | 403, Some(key)) => StorageError::AccessDenied(format!(
                "Access denied reading gs://{bucket}/{key}: grant {who} roles/storage.objectViewer (storage.objects.get) on the bucket"
            )),
            (429 | 503, _) => StorageError::Throttled(format!("GCS {status}")),
            _ => StorageError::Unavailable(format!("GCS {status}: {message}")),
        }
    }
}
