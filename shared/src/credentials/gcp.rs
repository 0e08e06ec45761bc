//! Google Cloud access tokens: Tether's own identity through gcp_auth
//! (service-account key, metadata server or gcloud user), and the customer's
//! workspace service account impersonated with it through the IAM
//! Credentials `generateAccessToken` call, which gcp_auth does not offer.
//!
//! Impersonated tokens live an hour; they are cached per service account and
//! renewed `refresh_margin` before they expire, one call at a time per
//! account however many pages ask at once.
//!
//! Signing as a service account (V4 signed URLs, connection checks) is the
//! IAM Credentials `signBlob` call, made with Tether's own identity: Tether
//! never holds the account's key.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::{DateTime, Utc};
use gcp_auth::TokenProvider;

use super::slots::Slots;
use super::CredentialError;
use crate::secrets::Secret;
use crate::telemetry::metrics;

/// Read-write access to Cloud Storage: only for the destination of copies.
const READ_WRITE_SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";
/// Reads of customers' buckets: a token that cannot write or delete, so
/// that no bug can change a customer's data, whatever the account may do.
const READ_ONLY_SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_only";
const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const IAM_CREDENTIALS: &str = "https://iamcredentials.googleapis.com/v1";
/// The longest lifetime `generateAccessToken` grants without an org policy.
const IMPERSONATION_LIFETIME: &str = "3600s";

/// Whose token a Cloud Storage call needs, and for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcsAccess<'a> {
    /// Reading a customer's bucket: as the workspace's service account, or
    /// with Tether's own identity when `None`; read-only either way.
    Source(Option<&'a str>),
    /// Writing copies to (and reading them back from) the destination:
    /// Tether's own identity, read-write.
    Destination,
}

impl<'a> GcsAccess<'a> {
    /// The OAuth scope the token is asked for.
    fn scope(self) -> &'static str {
        match self {
            GcsAccess::Source(_) => READ_ONLY_SCOPE,
            GcsAccess::Destination => READ_WRITE_SCOPE,
        }
    }

    /// The impersonated service account, if any.
    pub fn account(self) -> Option<&'a str> {
        match self {
            GcsAccess::Source(account) => account,
            GcsAccess::Destination => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Cached {
    token: Secret,
    expires: DateTime<Utc>,
}

/// Hands out bearer tokens for Cloud Storage calls.
pub struct GcpTokens {
    http: reqwest::Client,
    refresh_margin: Duration,
    own: tokio::sync::OnceCell<Arc<dyn TokenProvider>>,
    impersonated: Slots<String, Cached>,
}

impl std::fmt::Debug for GcpTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpTokens").field("refresh_margin", &self.refresh_margin).finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignedBlob {
    signed_blob: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeneratedToken {
    access_token: String,
    expire_time: DateTime<Utc>,
}

impl GcpTokens {
    pub fn new(http: reqwest::Client, refresh_margin: Duration) -> Self {
        Self { http, refresh_margin, own: tokio::sync::OnceCell::new(), impersonated: Slots::new() }
    }

    /// Tether's own identity, found on first use: an installation that never
    /// imports from GCS needs none.
    async fn own(&self, scope: &str) -> Result<Secret, CredentialError> {
        let provider = self
            .own
            .get_or_try_init(|| async { gcp_auth::provider().await })
            .await
            .map_err(|e| {
                CredentialError::Unavailable(format!(
                    "Tether has no Google Cloud identity ({e}): set GOOGLE_APPLICATION_CREDENTIALS to a service-account key, or run on GCP with a service account"
                ))
            })?;
        let token = provider.token(&[scope]).await.map_err(|e| {
            CredentialError::Unavailable(format!("Google Cloud refused Tether's own token: {e}"))
        })?;
        Ok(Secret::new(token.as_str()))
    }

    /// A token for Cloud Storage, scoped to what `access` needs: the
    /// impersonated service account's, or Tether's own.
    pub async fn token(&self, access: GcsAccess<'_>) -> Result<Secret, CredentialError> {
        let Some(account) = access.account() else { return self.own(access.scope()).await };
        let slot = self.impersonated.get(&account.to_owned());
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref() {
            let left = (c.expires - Utc::now()).to_std().unwrap_or_default();
            if left > self.refresh_margin {
                return Ok(c.token.clone());
            }
        }
        let fresh = self.impersonate(account).await?;
        let left = (fresh.expires - Utc::now()).num_seconds();
        metrics().credential_expiry.with_label_values(&["gcs"]).set(left);
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Forgets an impersonated token that Cloud Storage refused before its time.
    pub async fn invalidate(&self, account: &str) {
        self.impersonated.invalidate(&account.to_owned()).await;
    }

    async fn impersonate(&self, account: &str) -> Result<Cached, CredentialError> {
        // Impersonation is for reading customers' buckets only.
        let body = serde_json::json!({ "scope": [READ_ONLY_SCOPE], "lifetime": IMPERSONATION_LIFETIME });
        let generated: GeneratedToken =
            self.iam_credentials(account, "generateAccessToken", &body, "impersonate").await?;
        Ok(Cached { token: Secret::new(generated.access_token), expires: generated.expire_time })
    }

    /// Signs `payload` as the service account `account` (RSA SHA-256 with
    /// one of its Google-managed keys), through IAM Credentials `signBlob`.
    pub async fn sign_blob(&self, account: &str, payload: &[u8]) -> Result<Vec<u8>, CredentialError> {
        let body = serde_json::json!({ "payload": BASE64.encode(payload) });
        let signed: SignedBlob = self.iam_credentials(account, "signBlob", &body, "sign as").await?;
        BASE64.decode(signed.signed_blob).map_err(|e| {
            CredentialError::Unavailable(format!(
                "IAM Credentials answered signBlob with a signature that is not base64: {e}"
            ))
        })
    }

    /// Calls the IAM Credentials method `method` on `account` with Tether's
    /// own identity; `verb` says what a refusal did not allow.
    async fn iam_credentials<T: serde::de::DeserializeOwned>(
        &self,
        account: &str,
        method: &str,
        body: &serde_json::Value,
        verb: &str,
    ) -> Result<T, CredentialError> {
        let own = self.own(CLOUD_PLATFORM_SCOPE).await?;
        let url = format!("{IAM_CREDENTIALS}/projects/-/serviceAccounts/{account}:{method}");
        let response =
            self.http.post(url).bearer_auth(own.expose()).json(body).send().await.map_err(|e| {
                CredentialError::Unavailable(format!(
                    "IAM Credentials could not be reached: {}",
                    e.without_url()
                ))
            })?;
        let status = response.status().as_u16();
        match status {
            200 => response.json().await.map_err(|e| {
                CredentialError::Unavailable(format!("IAM Credentials answered unreadably: {}", e.without_url()))
            }),
            403 | 404 => Err(CredentialError::Refused {
                sentence: format!(
                    "Tether may not {verb} the service account {account}: check that it exists and that the platform granted Tether's service account roles/iam.serviceAccountTokenCreator on it"
                ),
            }),
            _ => Err(CredentialError::Unavailable(format!("IAM Credentials answered {method} with {status}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::GcsAccess;

    #[test]
    fn customer_buckets_are_read_with_read_only_tokens() {
        for access in
            [GcsAccess::Source(None), GcsAccess::Source(Some("importer@acme.iam.gserviceaccount.com"))]
        {
            assert_eq!(access.scope(), "https://www.googleapis.com/auth/devstorage.read_only");
        }
        assert_eq!(GcsAccess::Destination.scope(), "https://www.googleapis.com/auth/devstorage.read_write");
        assert_eq!(GcsAccess::Destination.account(), None);
    }
}
