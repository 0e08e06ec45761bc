//! S3 presigned GETs: SigV4 query signing by the SDK's presigner, signed as
//! of the window's start. Links are signed with the customer's assumed-role
//! session from the same [`StsCredentials`] cache the workers use; copies
//! with Tether's own identity ([`OwnS3`]).
//!
//! A URL signed with temporary credentials dies with them, whatever its
//! `X-Amz-Expires` says; so its expiry is capped at the credentials' end
//! minus [`SESSION_SAFETY`], and the caller reads `expires_at`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sdk_s3::presigning::PresigningConfig;
use chrono::{DateTime, Utc};

use super::{SignError, SignedUrl, Signer, Validity};
use crate::credentials::CredentialError;
use crate::destination::s3::platform_client;
use crate::secrets::Secret;
use crate::storage::s3::S3Bucket;

/// A URL ends this long before the session it was signed with: clocks
/// differ, and a browser may start a download just before the end.
pub const SESSION_SAFETY: Duration = Duration::from_secs(60);

/// Presigns a GET of `bucket`/`key` with `credentials` (exactly those, so
/// the cap matches the session that signs).
pub(crate) async fn presign_get(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    validity: Validity,
    credentials: &Credentials,
) -> Result<SignedUrl, SignError> {
    let mut validity = validity;
    if let Some(end) = credentials.expiry() {
        let end = DateTime::<Utc>::from(end) - SESSION_SAFETY;
        validity.expires_at = validity.expires_at.min(end);
    }
    if validity.expires_at <= Utc::now() {
        return Err(CredentialError::Unavailable(
            "the session to sign with ends too soon; it is renewed on the next request".into(),
        )
        .into());
    }
    let config = PresigningConfig::builder()
        .start_time(SystemTime::from(validity.start))
        .expires_in(Duration::from_secs(validity.seconds()))
        .build()
        .map_err(|e| SignError::NotSignable(format!("S3 cannot sign a URL for that long: {e}")))?;
    let session = aws_sdk_s3::config::Builder::default().credentials_provider(credentials.clone());
    let request = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .customize()
        .config_override(session)
        .presigned(config)
        .await
        .map_err(|e| {
            CredentialError::Unavailable(format!(
                "the S3 presigner failed: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            ))
        })?;
    Ok(SignedUrl { url: Secret::new(request.uri()), expires_at: validity.expires_at })
}

#[async_trait::async_trait]
impl Signer for S3Bucket {
    async fn sign_get(&self, key: &str, validity: Validity) -> Result<SignedUrl, SignError> {
        let (client, sts, role) = self.signing_parts();
        let session = sts.credentials(role).await?;
        presign_get(&client, self.name(), key, validity, &session).await
    }
}

/// Tether's own AWS identity (the SDK's default chain), for signing copies;
/// its credentials are cached and renewed `refresh_margin` before they
/// expire, as the SDK's own cache is not reachable from outside a call.
#[derive(Debug)]
pub struct OwnS3 {
    client: aws_sdk_s3::Client,
    provider: Option<SharedCredentialsProvider>,
    refresh_margin: Duration,
    cached: tokio::sync::Mutex<Option<Credentials>>,
}

impl OwnS3 {
    pub fn new(sdk: &aws_config::SdkConfig, force_path_style: bool, refresh_margin: Duration) -> Self {
        Self {
            client: platform_client(sdk, force_path_style),
            provider: sdk.credentials_provider(),
            refresh_margin,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// A signer for one bucket of the platform's storage.
    pub fn bucket(self: &Arc<Self>, bucket: &str) -> OwnS3Bucket {
        OwnS3Bucket { own: Arc::clone(self), bucket: bucket.to_owned() }
    }

    async fn credentials(&self) -> Result<Credentials, CredentialError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            let left = c.expiry().map(|end| end.duration_since(SystemTime::now()).unwrap_or_default());
            if left.is_none_or(|left| left > self.refresh_margin) {
                return Ok(c.clone());
            }
        }
        let provider = self.provider.as_ref().ok_or_else(|| {
            CredentialError::Unavailable(
                "Tether has no AWS identity of its own: set AWS_ACCESS_KEY_ID or run with an instance or task role".into(),
            )
        })?;
        let fresh = provider.provide_credentials().await.map_err(|e| {
            CredentialError::Unavailable(format!(
                "Tether's own AWS credentials are unavailable: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            ))
        })?;
        *cached = Some(fresh.clone());
        Ok(fresh)
    }
}

/// One bucket of the platform's storage, signed for with Tether's identity.
#[derive(Debug)]
pub struct OwnS3Bucket {
    own: Arc<OwnS3>,
    bucket: String,
}

#[async_trait::async_trait]
impl Signer for OwnS3Bucket {
    async fn sign_get(&self, key: &str, validity: Validity) -> Result<SignedUrl, SignError> {
        let credentials = self.own.credentials().await?;
        presign_get(&self.own.client, &self.bucket, key, validity, &credentials).await
    }
}
