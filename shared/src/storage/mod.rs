//! The storage boundary: one small trait every bucket provider implements,
//! so the worker lists and reads objects without knowing whose bucket it
//! is. One module per provider (S3, GCS, Azure Blob); [`Sources`] picks the
//! provider for a request's source and hands back a ready [`ObjectSource`].

pub mod azure;
pub mod budget;
pub mod gcs;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub mod ranged;
pub mod s3;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::Stream;

use uuid::Uuid;

use crate::contract::Source;
use crate::credentials::CredentialError;
use crate::model::{FailureCode, Scope};
use crate::secrets::{Secret, SecretsKey};

/// An object as a listing describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// Without surrounding quotes.
    pub etag: Option<String>,
    pub last_modified: Option<DateTime<Utc>>,
}

/// Characters that stay as they are in a URL path segment or query value
/// (RFC 3986 unreserved); the GCS and Azure modules encode everything else.
pub(crate) const UNRESERVED: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The delimiter of delimited listings: keys are rolled up at the first `/`
/// after the prefix, as a console shows folders.
pub const DELIMITER: &str = "/";

/// What one [`ObjectSource::list_page`] call asks for.
#[derive(Debug, Clone, Copy)]
pub struct ListQuery<'a> {
    pub prefix: &'a str,
    /// The previous page's [`ListPage::next`]; `None` for the first page.
    pub token: Option<&'a str>,
    /// At most this many entries (objects and, on some stores, prefixes).
    pub max_keys: u32,
    /// With a delimiter, keys that hold it after the prefix are not listed
    /// but rolled up into [`ListPage::prefixes`] (up to and including it).
    pub delimiter: Option<&'a str>,
    /// Only keys at or after this one (byte order). The same on every page
    /// of a listing.
    pub start_at: Option<&'a str>,
    /// Only keys before this one (byte order): the end of a key range that
    /// another task lists. The same on every page of a listing.
    pub end_before: Option<&'a str>,
}

/// One page of a listing and the token of the next one.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectMeta>,
    /// Common prefixes of a delimited listing, each ending in the delimiter.
    /// Stores differ in where they put them (on the page that covers them,
    /// or all on the first page, again on later ones), so a reader must not
    /// rely on their position.
    pub prefixes: Vec<String>,
    /// `None` when this page was the last.
    pub next: Option<String>,
}

impl ListPage {
    /// Drops what lies before `start_at`, for stores that cannot start a
    /// listing exactly there.
    fn drop_before(mut self, start_at: Option<&str>) -> Self {
        if let Some(start) = start_at {
            self.objects.retain(|o| o.key.as_str() >= start);
            self.prefixes.retain(|p| p.as_str() >= start || start.starts_with(p.as_str()));
        }
        self
    }

    /// Drops what lies at or after `end_before`, and ends the listing there.
    /// A range's end holds no delimiter after the task's prefix, so no
    /// sub-prefix reaches across it.
    fn cut_at(mut self, end_before: Option<&str>) -> Self {
        if let Some(end) = end_before {
            let (objects, prefixes) = (self.objects.len(), self.prefixes.len());
            self.objects.retain(|o| o.key.as_str() < end);
            self.prefixes.retain(|p| p.as_str() < end);
            if self.objects.len() < objects || self.prefixes.len() < prefixes {
                self.next = None;
            }
        }
        self
    }

    /// The page within `[start_at, end_before)`, for stores whose own
    /// bounds are inexact or missing.
    fn within(self, query: &ListQuery<'_>) -> Self {
        self.drop_before(query.start_at).cut_at(query.end_before)
    }
}

/// An object's bytes, as they arrive.
pub type ByteChunks = Pin<Box<dyn Stream<Item = Result<Bytes, StorageError>> + Send>>;

/// Bytes `first` to `last` (inclusive) of an object: one HTTP `Range`,
/// already resolved against the object's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub first: u64,
    pub last: u64,
}

impl ByteRange {
    /// The `Range` header value S3, GCS and Azure (`x-ms-range`) all read.
    pub fn header(self) -> String {
        format!("bytes={}-{}", self.first, self.last)
    }

    /// How many bytes the range holds (never none: `first <= last`).
    pub fn bytes(self) -> u64 {
        self.last - self.first + 1
    }
}

/// An object opened for reading.
pub struct ObjectBody {
    /// How many bytes `chunks` holds: the object's size, or the range's.
    pub size: u64,
    /// The whole object's size, whatever part of it was read.
    pub total: u64,
    /// The MD5 of the whole object, where the store vouches for one (an S3
    /// single-part ETag without KMS or customer-key encryption, GCS's
    /// `x-goog-hash`, Azure's blob MD5), also when only a range was read:
    /// only a reader of every byte ([`ranged`]) can check it.
    pub md5: Option<[u8; 16]>,
    pub chunks: ByteChunks,
}

impl fmt::Debug for ObjectBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectBody")
            .field("size", &self.size)
            .field("total", &self.total)
            .field("md5", &self.md5)
            .finish_non_exhaustive()
    }
}

/// The object's whole size from a `Content-Range: bytes a-b/total` header.
pub(crate) fn range_total(content_range: Option<&str>) -> Option<u64> {
    content_range?.rsplit_once('/')?.1.trim().parse().ok()
}

/// Why a storage call failed, in terms the worker acts on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The bucket (or container) does not exist: the whole import fails.
    #[error("{0}")]
    BucketNotFound(String),
    /// The identity may not do this (list a prefix, read an object).
    #[error("{0}")]
    AccessDenied(String),
    /// The object is gone (deleted since it was listed).
    #[error("{0}")]
    ObjectNotFound(String),
    /// The object changed since it was listed (the precondition failed).
    #[error("{0}")]
    Changed(String),
    /// The bytes read are not what the listing promised (size, checksum).
    #[error("{0}")]
    Corrupt(String),
    /// The store refused the session as expired or unknown: renew it.
    #[error("the store refused the session credentials: {0}")]
    CredentialsExpired(String),
    /// Credentials for the customer's bucket were refused or are unavailable.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// The store asked us to slow down (429, 503 SlowDown).
    #[error("throttled: {0}")]
    Throttled(String),
    /// 5xx, connection reset, timeout: worth retrying.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl StorageError {
    /// How far the error reaches (for a listing: the object scope means
    /// its prefix). The one place a storage error is classified.
    pub fn scope(&self) -> Scope {
        match self {
            StorageError::Credentials(error) => error.scope(),
            StorageError::Throttled(_)
            | StorageError::Unavailable(_)
            | StorageError::CredentialsExpired(_) => Scope::Transient,
            StorageError::BucketNotFound(_) => Scope::Import,
            StorageError::AccessDenied(_)
            | StorageError::ObjectNotFound(_)
            | StorageError::Changed(_)
            | StorageError::Corrupt(_) => Scope::Object,
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        self.scope().is_transient()
    }

    /// The contract's failure code (§3).
    pub fn code(&self) -> FailureCode {
        match self {
            StorageError::BucketNotFound(_) | StorageError::ObjectNotFound(_) => FailureCode::NotFound,
            StorageError::Changed(_) => FailureCode::ChangedDuringCopy,
            StorageError::Corrupt(_) => FailureCode::ChecksumMismatch,
            StorageError::AccessDenied(_)
            | StorageError::CredentialsExpired(_)
            | StorageError::Credentials(CredentialError::Refused { .. }) => FailureCode::AccessDenied,
            StorageError::Throttled(_) => FailureCode::Throttled,
            StorageError::Unavailable(_) | StorageError::Credentials(CredentialError::Unavailable(_)) => {
                FailureCode::Unavailable
            }
        }
    }
}

/// A bucket (or container) that Tether can list and read.
#[async_trait::async_trait]
pub trait ObjectSource: Send + Sync + fmt::Debug {
    /// Lists one page of `query`. A refused or failed listing is an error,
    /// never an empty page.
    async fn list_page(&self, query: ListQuery<'_>) -> Result<ListPage, StorageError>;

    /// Opens an object (or only `range` of it) for reading, only if its
    /// ETag is still `etag` (when given): a changed object is
    /// [`StorageError::Changed`], never a mix.
    async fn read(
        &self,
        key: &str,
        etag: Option<&str>,
        range: Option<ByteRange>,
    ) -> Result<ObjectBody, StorageError>;
}

/// Builds the [`ObjectSource`] for a request's source, with the
/// credentials that source calls for.
#[derive(Debug)]
pub struct Sources {
    s3: s3::S3Sources,
    gcs: gcs::GcsSources,
    azure: azure::AzureSources,
    /// Opens the SAS tokens the scheduler sealed; `None` if unset here.
    secrets: Option<SecretsKey>,
}

impl Sources {
    pub fn new(
        s3: s3::S3Sources,
        gcs: gcs::GcsSources,
        azure: azure::AzureSources,
        secrets: Option<SecretsKey>,
    ) -> Self {
        Self { s3, gcs, azure, secrets }
    }

    /// The S3 side, whose buckets also sign URLs with the customer's session.
    pub fn s3(&self) -> &s3::S3Sources {
        &self.s3
    }

    /// Opens the source of the import `import_id`; `sealed_secret` is what
    /// the scheduler stored for it (an Azure SAS token, sealed).
    pub async fn open(
        &self,
        source: &Source,
        import_id: Uuid,
        sealed_secret: Option<&[u8]>,
    ) -> Result<Arc<dyn ObjectSource>, StorageError> {
        match source {
            Source::S3(s) => Ok(Arc::new(self.s3.open(s).await?)),
            Source::Gcs(s) => Ok(Arc::new(self.gcs.open(s))),
            Source::Azure(s) => Ok(Arc::new(self.azure.open(s, self.reveal(import_id, sealed_secret)?))),
        }
    }

    fn reveal(&self, import_id: Uuid, sealed: Option<&[u8]>) -> Result<Secret, StorageError> {
        let refused = |sentence: &str| {
            StorageError::Credentials(CredentialError::Refused { sentence: sentence.to_owned() })
        };
        let Some(sealed) = sealed else {
            return Err(refused(
                "This Tether installation cannot keep SAS tokens (TETHER_SECRETS_KEY is unset on the scheduler): ask the operators to set it, then send the request again with a new import_id",
            ));
        };
        let Some(key) = &self.secrets else {
            return Err(refused(
                "This worker cannot decrypt the SAS token (TETHER_SECRETS_KEY is unset on the worker): ask the operators to give the workers the scheduler's key, then requeue the import",
            ));
        };
        key.open(sealed, import_id).map_err(|e| {
            refused(&format!(
                "This worker cannot use the import's SAS token: {e}; ask the operators to give schedulers and workers the same key, then requeue the import"
            ))
        })
    }
}

/// The HTTP client of GCS, Azure and IAM calls: one connection pool, and no
/// redirects (a redirect would carry an Azure URL, SAS token included,
/// elsewhere).
pub fn http_client(
    read_timeout: std::time::Duration,
    call_timeout: std::time::Duration,
) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .read_timeout(read_timeout)
        // Whole calls (headers and body) end within this; an object's
        // download sets its own ([`DOWNLOAD_TIMEOUT`]).
        .timeout(call_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.without_url().to_string())
}

/// How long an object's download may take in all: a copy's deadline is its
/// task's (`TETHER_TASK_TIMEOUT_SECS`); this only bounds a stray stream.
pub(crate) const DOWNLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// A transport failure (connection refused or reset, timeout), described
/// without the request's URL: an Azure URL carries the SAS token.
pub(crate) fn unreachable(provider: &str, error: &reqwest::Error) -> StorageError {
    let mut reason = String::new();
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(error);
    while let Some(e) = cause {
        reason = e.to_string();
        cause = e.source();
    }
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "broke off"
    };
    StorageError::Unavailable(format!("{provider} {kind}: {reason}"))
}

/// An HTTP response's body as an [`ObjectBody`]; `url` names the object in
/// the errors of a stream that breaks off.
pub(crate) fn http_body(response: reqwest::Response, md5: Option<[u8; 16]>, url: String) -> ObjectBody {
    let size = response.content_length().unwrap_or(0);
    let content_range = response.headers().get(reqwest::header::CONTENT_RANGE);
    let total = range_total(content_range.and_then(|v| v.to_str().ok())).unwrap_or(size);
    let chunks = futures_util::stream::unfold((response, url), |(mut response, url)| async move {
        match response.chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), (response, url))),
            Ok(None) => None,
            Err(e) => {
                let error = match unreachable("the store", &e) {
                    StorageError::Unavailable(reason) => {
                        StorageError::Unavailable(format!("reading {url} broke off: {reason}"))
                    }
                    other => other,
                };
                Some((Err(error), (response, url)))
            }
        }
    });
    ObjectBody { size, total, md5, chunks: Box::pin(chunks) }
}

#[cfg(test)]
mod tests {
    use super::memory::{MemorySource, Read};
    use super::*;

    /// The one classifier of storage errors: scope and failure code of
    /// each variant.
    #[test]
    fn every_storage_error_has_its_scope_and_code() {
        let s = String::new;
        let refused = || CredentialError::Refused { sentence: s() };
        let cases: Vec<(StorageError, Scope, FailureCode)> = vec![
            (StorageError::BucketNotFound(s()), Scope::Import, FailureCode::NotFound),
            (StorageError::AccessDenied(s()), Scope::Object, FailureCode::AccessDenied),
            (StorageError::ObjectNotFound(s()), Scope::Object, FailureCode::NotFound),
            (StorageError::Changed(s()), Scope::Object, FailureCode::ChangedDuringCopy),
            (StorageError::Corrupt(s()), Scope::Object, FailureCode::ChecksumMismatch),
            (StorageError::CredentialsExpired(s()), Scope::Transient, FailureCode::AccessDenied),
            (StorageError::Credentials(refused()), Scope::Import, FailureCode::AccessDenied),
            (
                StorageError::Credentials(CredentialError::Unavailable(s())),
                Scope::Transient,
                FailureCode::Unavailable,
            ),
            (StorageError::Throttled(s()), Scope::Transient, FailureCode::Throttled),
            (StorageError::Unavailable(s()), Scope::Transient, FailureCode::Unavailable),
        ];
        for (error, scope, code) in cases {
            assert_eq!((error.scope(), error.code()), (scope, code), "{error:?}");
            assert_eq!(error.is_transient(), scope == Scope::Transient, "{error:?}");
        }
    }

    fn query<'a>(prefix: &'a str, token: Option<&'a str>, delimiter: Option<&'a str>) -> ListQuery<'a> {
        ListQuery { prefix, token, max_keys: 2, delimiter, start_at: None, end_before: None }
    }

    #[tokio::test]
    async fn the_memory_source_lists_in_pages_and_reads_by_etag() {
        let source = MemorySource::default()
            .with("a/1.jpg", b"one")
            .with("a/2.jpg", b"two")
            .with("a/3.jpg", b"three")
            .with("a/sub/4.jpg", b"four")
            .with("b/5.jpg", b"five")
            .with_read("a/gone.jpg", b"x", Read::Fails(|k| StorageError::ObjectNotFound(k.to_owned())));
        let keys = |page: &ListPage| page.objects.iter().map(|o| o.key.clone()).collect::<Vec<_>>();
        let first = source.list_page(query("a/", None, None)).await.expect("a page");
        assert_eq!(keys(&first), ["a/1.jpg", "a/2.jpg"]);
        let second = source.list_page(query("a/", first.next.as_deref(), None)).await.expect("a page");
        assert_eq!(keys(&second), ["a/3.jpg", "a/gone.jpg"]);
        let last = source.list_page(query("a/", second.next.as_deref(), None)).await.expect("a page");
        assert_eq!((keys(&last), last.next), (vec!["a/sub/4.jpg".to_owned()], None));
        let delimited = source.list_page(ListQuery { max_keys: 10, ..query("a/", None, Some("/")) }).await;
        assert_eq!(delimited.expect("a page").prefixes, ["a/sub/"]);

        let etag = first.objects[0].etag.clone();
        let body = source.read("a/1.jpg", etag.as_deref(), None).await.expect("read");
        assert_eq!((body.size, body.total), (3, 3));
        let range = source.read("a/3.jpg", None, Some(ByteRange { first: 1, last: 2 })).await.expect("read");
        assert_eq!((range.size, range.total), (2, 5));
        let changed = source.read("a/1.jpg", Some("other"), None).await.expect_err("changed");
        assert!(matches!(changed, StorageError::Changed(_)), "{changed:?}");
        let missing = source.read("a/none.jpg", None, None).await.expect_err("missing");
        assert!(matches!(missing, StorageError::ObjectNotFound(_)), "{missing:?}");
        assert!(source.read("a/gone.jpg", None, None).await.is_err());
    }
}
