//! The storage boundary: one small trait every bucket provider implements,
//! so the worker lists (and later reads) objects without knowing whose
//! bucket it is. One module per provider; [`Sources`] picks the provider
//! for a request's source and hands back a ready [`ObjectSource`].

pub mod s3;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::Stream;

use crate::contract::Source;
use crate::credentials::CredentialError;

/// An object as a listing describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// Without surrounding quotes.
    pub etag: Option<String>,
    pub last_modified: Option<DateTime<Utc>>,
}

/// One page of a listing and the token of the next one.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectMeta>,
    /// `None` when this page was the last.
    pub next: Option<String>,
}

/// An object's bytes, as they arrive.
pub type ByteChunks = Pin<Box<dyn Stream<Item = Result<Bytes, StorageError>> + Send>>;

/// An object opened for reading.
pub struct ObjectBody {
    /// What the store says the object's size is.
    pub size: u64,
    /// The MD5 of the bytes, where the store vouches for one (an S3
    /// single-part ETag without KMS or customer-key encryption).
    pub md5: Option<[u8; 16]>,
    pub chunks: ByteChunks,
}

impl fmt::Debug for ObjectBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectBody").field("size", &self.size).field("md5", &self.md5).finish_non_exhaustive()
    }
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
    /// This installation cannot read this kind of source.
    #[error("{0}")]
    Unsupported(String),
}

impl StorageError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StorageError::Throttled(_)
                | StorageError::Unavailable(_)
                | StorageError::CredentialsExpired(_)
                | StorageError::Credentials(CredentialError::Unavailable(_))
        )
    }

    /// The contract's failure code (§3).
    pub fn code(&self) -> &'static str {
        match self {
            StorageError::BucketNotFound(_) | StorageError::ObjectNotFound(_) => "not_found",
            StorageError::Changed(_) => "changed_during_copy",
            StorageError::Corrupt(_) => "checksum_mismatch",
            StorageError::AccessDenied(_)
            | StorageError::CredentialsExpired(_)
            | StorageError::Credentials(CredentialError::Refused { .. }) => "access_denied",
            StorageError::Throttled(_) => "throttled",
            StorageError::Unavailable(_)
            | StorageError::Credentials(CredentialError::Unavailable(_))
            | StorageError::Unsupported(_) => "unavailable",
        }
    }
}

/// A bucket (or container) that Tether can list and read.
#[async_trait::async_trait]
pub trait ObjectSource: Send + Sync + fmt::Debug {
    /// Lists one page of at most `max_keys` objects under `prefix`,
    /// continuing from `token`. A refused or failed listing is an error,
    /// never an empty page.
    async fn list_page(
        &self,
        prefix: &str,
        token: Option<&str>,
        max_keys: u32,
    ) -> Result<ListPage, StorageError>;

    /// Opens an object for reading, only if its ETag is still `etag` (when
    /// given): a changed object is [`StorageError::Changed`], never a mix.
    async fn read(&self, key: &str, etag: Option<&str>) -> Result<ObjectBody, StorageError>;
}

/// Builds the [`ObjectSource`] for a request's source, with the
/// credentials that source calls for.
#[derive(Debug)]
pub struct Sources {
    s3: s3::S3Sources,
}

impl Sources {
    pub fn new(s3: s3::S3Sources) -> Self {
        Self { s3 }
    }

    pub async fn open(&self, source: &Source) -> Result<Arc<dyn ObjectSource>, StorageError> {
        match source {
            Source::S3(s) => Ok(Arc::new(self.s3.open(s).await?)),
            Source::Gcs(_) | Source::Azure(_) => Err(StorageError::Unsupported(format!(
                "this Tether installation cannot read {} sources yet: import from S3, or ask the operators when {} support ships",
                source.provider(),
                source.provider()
            ))),
        }
    }
}
