//! The URLs of `POST /v1/workspaces/{id}/signed-urls`: for each image, a
//! direct URL signed for its store, or a proxy URL of tether-api, or the
//! reason there is none (a per-id code of contract §8).
//!
//! Direct URLs are signed with the credentials the image's row calls for:
//! a link with those of the most recent import of its dataset and bucket
//! that did not fail (found by the same query that found the image), a
//! copy with Tether's own identity, inside `TETHER_DESTINATION` only.
//! Signers are built once per import and request. GCS signatures are kept
//! for the rest of their window ([`SignatureCache`]): as an impersonated
//! account each is an IAM Credentials call with its own quota, and RSA
//! signing with Tether's key costs about a millisecond.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tether_shared::contract::Source;
use tether_shared::credentials::CredentialError;
use tether_shared::db::access::AccessImage;
use tether_shared::destination::CopyAt;
use tether_shared::signing::gcs::GcsSigning;
use tether_shared::signing::s3::OwnS3;
use tether_shared::signing::{SignError, SignedUrl, Signer, Validity};
use tether_shared::storage::StorageError;
use tether_shared::telemetry::metrics;
use uuid::Uuid;

use crate::AppState;

/// Signatures (GCS) kept at most; past this the cache starts afresh.
const CACHE_ENTRIES: usize = 100_000;
/// Images one task signs at once (GCS signBlob calls overlap).
const SIGNING_CONCURRENCY: usize = 16;
/// Images per signing task: a 1000-id request is eight tasks.
const CHUNK: usize = 125;

/// `direct` (the store's own URL) or `proxy` (tether-api's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Delivery {
    Direct,
    Proxy,
}

impl Delivery {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Delivery::Direct => "direct",
            Delivery::Proxy => "proxy",
        }
    }
}

/// Why an image got no URL: a per-id code of contract §8 and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub code: &'static str,
    pub message: String,
}

impl Refused {
    fn unavailable(message: impl Into<String>) -> Self {
        Self { code: "unavailable", message: message.into() }
    }
}

impl From<SignError> for Refused {
    fn from(error: SignError) -> Self {
        match error {
            SignError::NotSignable(message) => Self { code: "not_signable", message },
            SignError::Credentials(CredentialError::Refused { sentence }) => {
                Self { code: "access_denied", message: sentence }
            }
            SignError::Credentials(CredentialError::Unavailable(reason)) => Self::unavailable(format!(
                "Credentials to sign with are unavailable for now ({reason}): try again shortly"
            )),
        }
    }
}

impl From<StorageError> for Refused {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::Credentials(e) => SignError::Credentials(e).into(),
            other => Self::unavailable(format!("The store failed ({other}): try again shortly")),
        }
    }
}

/// What signing needs beyond the sources: Tether's own identities and the
/// GCS signature cache.
#[derive(Debug)]
pub(crate) struct Signing {
    pub own_s3: Arc<OwnS3>,
    pub gcs: GcsSigning,
    pub cache: SignatureCache,
}

/// The provider label of an image's metrics (never an id).
pub(crate) fn provider_label(image: &AccessImage) -> &'static str {
    let scheme = |url: &str| url.split_once("://").map(|(s, _)| s).unwrap_or_default().to_owned();
    match (image.copied, scheme(image.stored_url.as_deref().unwrap_or_default()).as_str()) {
        (true, "s3") => "copy-s3",
        (true, "gs") => "copy-gs",
        (true, _) => "copy-file",
        (false, _) => match scheme(&image.source_url).as_str() {
            "s3" => "s3",
            "gs" => "gcs",
            _ => "azure",
        },
    }
}

/// The object key of a link, from its URL and its import's source.
pub(crate) fn link_key<'a>(image: &'a AccessImage, source: &Source) -> Option<&'a str> {
    image.source_url.strip_prefix(&source.url(""))
}

/// The proxy URL of `image_id`, valid until `expires_at`.
pub(crate) fn proxy_url(state: &AppState, image_id: Uuid, expires_at: DateTime<Utc>) -> String {
    let query = state.content.query(image_id, expires_at.timestamp());
    format!("{}/v1/content/{}?{query}", state.public_url, image_id.hyphenated())
}

/// A signer for the objects of one import, or why there is none.
type ImportSigner = Result<(Arc<dyn Signer>, Option<String>), Refused>;

/// Direct URLs for `images`, in their order. Chunks of [`CHUNK`] images
/// are signed by tasks of their own, so that a large request uses every
/// core (presigning is CPU work).
pub(crate) async fn direct(
    state: &Arc<AppState>,
    images: &[AccessImage],
    validity: Validity,
) -> Vec<Result<SignedUrl, Refused>> {
    let mut signers: HashMap<Uuid, ImportSigner> = HashMap::new();
    for image in images.iter().filter(|i| !i.copied) {
        if let Some(credentials) = &image.credentials {
            if let std::collections::hash_map::Entry::Vacant(entry) = signers.entry(credentials.import_id) {
                entry.insert(link_signer(state, &credentials.source).await);
            }
        }
    }
    let signers = Arc::new(signers);
    let tasks: Vec<_> = images
        .chunks(CHUNK)
        .map(|chunk| {
            let (state, signers, chunk) = (Arc::clone(state), Arc::clone(&signers), chunk.to_vec());
            tokio::spawn(async move {
                let signed: Vec<_> =
                    chunk.iter().map(|image| sign_one(&state, image, &signers, validity)).collect();
                futures_util::stream::iter(signed).buffered(SIGNING_CONCURRENCY).collect::<Vec<_>>().await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(images.len());
    for (task, chunk) in tasks.into_iter().zip(images.chunks(CHUNK)) {
        match task.await {
            Ok(signed) => results.extend(signed),
            Err(error) => {
                let refused =
                    Refused::unavailable(format!("Signing stopped unexpectedly ({error}): try again"));
                results.extend(chunk.iter().map(|_| Err(refused.clone())));
            }
        }
    }
    results
}

/// The signer of an import's bucket, and the identity its signatures are
/// cached under (GCS only).
async fn link_signer(state: &AppState, source: &Source) -> ImportSigner {
    match source {
        Source::S3(s3) => Ok((Arc::new(state.sources.s3().open(s3).await?), None)),
        Source::Gcs(gcs) => {
            let account = gcs.impersonate_service_account.as_deref();
            let identity = format!("{}\n{}", account.unwrap_or("tether"), gcs.bucket);
            Ok((Arc::new(state.signing.gcs.bucket(&gcs.bucket, account)), Some(identity)))
        }
        Source::Azure(_) => Err(Refused {
            code: "not_signable",
            message: "Azure Blob links cannot be signed: their only credential is the customer's SAS token, which never reaches a browser; ask for delivery proxy".into(),
        }),
    }
}

async fn sign_one(
    state: &AppState,
    image: &AccessImage,
    signers: &HashMap<Uuid, ImportSigner>,
    validity: Validity,
) -> Result<SignedUrl, Refused> {
    if image.copied {
        return sign_copy(state, image, validity).await;
    }
    let credentials = image.credentials.as_ref().ok_or_else(no_credentials)?;
    let key = link_key(image, &credentials.source)
        .ok_or_else(|| Refused::unavailable("The image's URL does not match its import's bucket"))?;
    let (signer, identity) = match signers.get(&credentials.import_id) {
        Some(Ok(ready)) => ready,
        Some(Err(refused)) => return Err(refused.clone()),
        None => return Err(no_credentials()),
    };
    match identity {
        Some(identity) => cached(state, signer.as_ref(), identity, key, validity).await,
        None => Ok(signer.sign_get(key, validity).await?),
    }
}

/// The error of a link whose dataset and bucket have no import left that
/// did not fail.
pub(crate) fn no_credentials() -> Refused {
    Refused {
        code: "access_denied",
        message: "No import of this image's dataset and bucket that did not fail is left to take credentials from: import the bucket into the dataset again with working credentials".into(),
    }
}

async fn sign_copy(state: &AppState, image: &AccessImage, validity: Validity) -> Result<SignedUrl, Refused> {
    let destination = state.destination.as_ref().ok_or_else(|| {
        Refused::unavailable("tether-api has no TETHER_DESTINATION, so it cannot serve copies: ask the operators to set the workers' destination on tether-api too")
    })?;
    let stored = image.stored_url.as_deref().unwrap_or_default();
    match destination.locate(stored) {
        Some(CopyAt::S3 { bucket, key }) => Ok(state.signing.own_s3.bucket(&bucket).sign_get(&key, validity).await?),
        Some(CopyAt::Gcs { bucket, key }) => {
            let identity = format!("tether\n{bucket}");
            cached(state, &state.signing.gcs.bucket(&bucket, None), &identity, &key, validity).await
        }
        Some(CopyAt::File(_)) => Err(Refused {
            code: "not_signable",
            message: "Copies kept in a file:// destination have no URL of their own: ask for delivery proxy".into(),
        }),
        None => Err(Refused::unavailable(
            "The image's copy is not inside tether-api's TETHER_DESTINATION: check that tether-api has the workers' destination",
        )),
    }
}

async fn cached(
    state: &AppState,
    signer: &dyn Signer,
    identity: &str,
    key: &str,
    validity: Validity,
) -> Result<SignedUrl, Refused> {
    let name = format!("{identity}\n{key}");
    if let Some(hit) = state.signing.cache.get(&name, validity) {
        metrics().api_signature_cache.with_label_values(&["hit"]).inc();
        return Ok(hit);
    }
    metrics().api_signature_cache.with_label_values(&["miss"]).inc();
    let signed = signer.sign_get(key, validity).await?;
    state.signing.cache.put(name, validity, signed.clone());
    Ok(signed)
}

/// Signatures of the current window, by (identity, bucket, key) and expiry;
/// a new window empties it, as no URL of the last one is asked for again.
#[derive(Debug, Default)]
pub(crate) struct SignatureCache {
    inner: Mutex<WindowSignatures>,
}

/// The window the signatures were made in, and the signatures.
type WindowSignatures = (Option<DateTime<Utc>>, HashMap<(String, DateTime<Utc>), SignedUrl>);

impl SignatureCache {
    fn get(&self, name: &str, validity: Validity) -> Option<SignedUrl> {
        let inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if inner.0 != Some(validity.start) {
            return None;
        }
        inner.1.get(&(name.to_owned(), validity.expires_at)).cloned()
    }

    fn put(&self, name: String, validity: Validity, signed: SignedUrl) {
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if inner.0 != Some(validity.start) || inner.1.len() >= CACHE_ENTRIES {
            inner.1.clear();
            inner.0 = Some(validity.start);
        }
        inner.1.insert((name, validity.expires_at), signed);
    }
}
