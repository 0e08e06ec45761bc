//! Where copy mode writes (`TETHER_DESTINATION`: `s3://`, `gs://` or
//! `file://`): the platform's storage,
//! written with Tether's own identity, never the customer's. One small trait,
//! one module per kind of destination. The access API reads copies back
//! through the same trait, and only from inside the destination: a stored
//! URL elsewhere (another bucket, a path outside the directory) is refused.
//!
//! Destination keys are derived from (workspace, dataset, source URL), never
//! joined from the source key: a key such as `../../etc/passwd` is data, and
//! must not choose where bytes land. Re-copying an object overwrites the same
//! key.

pub mod file;
pub mod gcs;
#[cfg(any(test, feature = "testing"))]
pub mod memory;
pub mod s3;
mod verify;

use std::fmt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

pub use self::verify::verified;
use crate::model::{FailureCode, Scope};
use crate::storage::gcs::GcsApi;
use crate::storage::{ByteChunks, ByteRange, ObjectBody, StorageError};

/// Why a copy could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("TETHER_DESTINATION is {0}")]
    BadUrl(String),
    /// Reading the source failed, or its bytes failed verification.
    #[error(transparent)]
    Source(#[from] StorageError),
    /// The platform's storage refused or failed the write.
    #[error("writing the copy failed: {0}")]
    Write(String),
}

impl DestinationError {
    /// How far the error reaches: the source's own scope, a failed write
    /// is transient, a bad destination fails the import.
    pub fn scope(&self) -> Scope {
        match self {
            DestinationError::Source(e) => e.scope(),
            DestinationError::Write(_) => Scope::Transient,
            DestinationError::BadUrl(_) => Scope::Import,
        }
    }

    /// Whether another attempt may succeed.
    pub fn is_transient(&self) -> bool {
        self.scope().is_transient()
    }

    /// The contract's failure code (§3).
    pub fn code(&self) -> FailureCode {
        match self {
            DestinationError::Source(e) => e.code(),
            DestinationError::Write(_) | DestinationError::BadUrl(_) => FailureCode::Unavailable,
        }
    }
}

/// Where a copy lies, once its stored URL is known to be inside the
/// destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyAt {
    S3 { bucket: String, key: String },
    Gcs { bucket: String, key: String },
    File(std::path::PathBuf),
}

/// The platform's storage.
#[async_trait::async_trait]
pub trait Destination: Send + Sync + fmt::Debug {
    /// Writes the whole stream at `key`, or nothing at all: a stream that
    /// ends in an error leaves no object behind. Returns the stored URL.
    /// The size is not asked for: the caller wraps the source in
    /// [`verified`], which ends the stream in an error unless it holds
    /// exactly the listed bytes.
    async fn write(&self, key: &str, chunks: ByteChunks) -> Result<String, DestinationError>;

    /// Where the copy at `stored_url` lies, or `None` if that URL is not
    /// inside this destination.
    fn locate(&self, stored_url: &str) -> Option<CopyAt>;

    /// Reads (`range` of) the copy at `stored_url`. A copy that is not
    /// there, or not inside this destination, is
    /// [`StorageError::ObjectNotFound`].
    async fn read(&self, stored_url: &str, range: Option<ByteRange>) -> Result<ObjectBody, StorageError>;
}

/// The key of a stored `scheme://bucket/key` URL inside `bucket` under
/// `prefix` (empty, or without slashes at its ends), if it lies there.
fn key_under(stored_url: &str, scheme: &str, bucket: &str, prefix: &str) -> Option<String> {
    let key =
        stored_url.strip_prefix(scheme)?.strip_prefix("://")?.strip_prefix(bucket)?.strip_prefix('/')?;
    let inside = prefix.is_empty() || key.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'));
    (inside && !key.is_empty()).then(|| key.to_owned())
}

/// The error of a copy that cannot be read where the row says it is.
fn copy_missing(stored_url: &str, why: &str) -> StorageError {
    StorageError::ObjectNotFound(format!("the copy {stored_url} {why}"))
}

/// How copies are cut into parts, and how many part buffers a worker may
/// hold at once: its copy memory is bounded by `budget` x `bytes`, whatever
/// the object sizes and however many copies run.
#[derive(Debug, Clone)]
pub struct Parts {
    /// Part size (`TETHER_COPY_PART_BYTES`).
    pub bytes: usize,
    /// Parts of one object uploading at once (`s3://`).
    pub in_flight: usize,
    budget: Arc<tokio::sync::Semaphore>,
}

impl Parts {
    /// `buffer_bytes` is the worker's budget for part buffers (at least one part).
    pub fn new(bytes: usize, in_flight: usize, buffer_bytes: usize) -> Self {
        let permits = (buffer_bytes / bytes.max(1)).max(1);
        Self { bytes, in_flight: in_flight.max(1), budget: Arc::new(tokio::sync::Semaphore::new(permits)) }
    }

    /// Waits for room for one more part buffer.
    pub(crate) async fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, DestinationError> {
        Arc::clone(&self.budget)
            .acquire_owned()
            .await
            .map_err(|_| DestinationError::Write("the part budget was closed".into()))
    }
}

/// Opens `TETHER_DESTINATION`: `s3://bucket/prefix`, `gs://bucket/prefix`
/// or `file:///dir`.
pub async fn open(
    url: &str,
    sdk: &aws_config::SdkConfig,
    force_path_style: bool,
    gcs: &GcsApi,
    parts: Parts,
) -> Result<Arc<dyn Destination>, DestinationError> {
    if let Some(path) = url.strip_prefix("file://") {
        return Ok(Arc::new(file::FileDestination::create(path).await?));
    }
    for scheme in ["s3", "gs"] {
        let Some(rest) = url.strip_prefix(scheme).and_then(|r| r.strip_prefix("://")) else { continue };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(DestinationError::BadUrl(format!(
                "{url:?}, which names no bucket: use {scheme}://bucket/prefix"
            )));
        }
        return Ok(if scheme == "s3" {
            Arc::new(s3::S3Destination::new(sdk, force_path_style, bucket, prefix, parts))
        } else {
            Arc::new(gcs::GcsDestination::new(gcs.clone(), bucket, prefix, parts))
        });
    }
    Err(DestinationError::BadUrl(format!(
        "{url:?}: use s3://bucket/prefix, gs://bucket/prefix or file:///absolute/dir"
    )))
}

/// Reads chunks until `part_bytes` are buffered or the stream ends; tells
/// which.
pub(crate) async fn fill(
    chunks: &mut ByteChunks,
    part_bytes: usize,
) -> Result<(Bytes, bool), DestinationError> {
    let mut buffer = BytesMut::new();
    while buffer.len() < part_bytes {
        match chunks.next().await {
            Some(chunk) => buffer.extend_from_slice(&chunk?),
            None => return Ok((buffer.freeze(), true)),
        }
    }
    Ok((buffer.freeze(), false))
}

/// The destination key of a source object: `workspace/dataset/xx/<sha256 of
/// the source URL>.<ext>`. Workspace and dataset ids were validated (letters,
/// digits, `._-`, starting with a letter or digit), the rest is hex: no key
/// can climb out of the destination.
pub fn object_key(workspace_id: &str, dataset_id: &str, source_url: &str) -> String {
    let digest = format!("{:x}", Sha256::digest(source_url.as_bytes()));
    let name = source_url.rsplit('/').next().unwrap_or_default();
    let extension = name
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .filter(|ext| (1..=10).contains(&ext.len()) && ext.chars().all(|c| c.is_ascii_alphanumeric()))
        .map(|ext| format!(".{ext}"))
        .unwrap_or_default();
    format!("{workspace_id}/{dataset_id}/{}/{digest}{extension}", &digest[..2])
}

#[cfg(test)]
mod tests {
    use super::{key_under, object_key};

    #[test]
    fn only_urls_inside_the_destination_are_located() {
        let at = |url| key_under(url, "s3", "dest", "pre");
        assert_eq!(at("s3://dest/pre/ws/ds/ab/x.jpg").as_deref(), Some("pre/ws/ds/ab/x.jpg"));
        assert_eq!(at("s3://dest/prefix/x.jpg"), None, "another prefix");
        assert_eq!(at("s3://dest2/pre/x.jpg"), None, "another bucket");
        assert_eq!(at("gs://dest/pre/x.jpg"), None, "another store");
        assert_eq!(at("s3://dest/pre"), None);
        assert_eq!(key_under("gs://dest/x", "gs", "dest", "").as_deref(), Some("x"));
        assert_eq!(key_under("gs://dest/", "gs", "dest", ""), None);
    }

    #[test]
    fn keys_are_derived_and_cannot_escape() {
        let hostile = [
            "s3://b/../../etc/passwd",
            "s3://b//abs/path.jpg",
            "s3://b/a/../../../x.jpg",
            "s3://b/nul\0byte.jpg",
            "s3://b/ctrl\u{1b}[31m.png",
            "s3://b/back\\slash\\..\\x.jpg",
            "s3://b/dots/...",
        ];
        for url in hostile {
            let key = object_key("ws", "ds", url);
            assert!(key.starts_with("ws/ds/"), "{key}");
            assert!(key.split('/').all(|s| !s.is_empty() && s != "." && s != ".."), "{key}");
            assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || "./_-".contains(c)), "{key}");
        }
        let long = format!("s3://b/{}.jpg", "k".repeat(5000));
        assert!(object_key("ws", "ds", &long).len() < 160);
        assert_eq!(object_key("ws", "ds", "s3://b/a.JPG"), object_key("ws", "ds", "s3://b/a.JPG"));
        assert_ne!(object_key("ws", "ds", "s3://b/a.jpg"), object_key("ws", "ds2", "s3://b/a.jpg"));
        assert!(object_key("ws", "ds", "s3://b/a.JPG").ends_with(".jpg"));
    }

    /// Only a short, plain extension of the key's last segment survives
    /// (lower-cased): not control characters, spaces, non-ASCII, a
    /// 300-character extension, or anything past a slash.
    #[test]
    fn only_plain_short_extensions_survive() {
        let cases = [
            ("s3://b/x.jpg/../a.exe", Some("exe")),
            ("s3://b/a.JPG%00.sh", Some("sh")),
            ("s3://b/a.tar.GZ", Some("gz")),
            ("s3://b/photo", None),
            ("s3://b/dir.d/photo", None),
            ("s3://b/trailing.", None),
            ("s3://b/a.j\u{1}pg", None),
            ("s3://b/a.jp\ng", None),
            ("s3://b/a.jp g", None),
            ("s3://b/a.j\u{202e}gp", None),
            ("s3://b/a.jpé", None),
            ("s3://b/a.jpg%2F..", None),
            ("s3://b/a.abcdefghijk", None),
        ];
        let long = format!("s3://b/a.{}", "e".repeat(300));
        for (url, expected) in cases.iter().copied().chain([(long.as_str(), None)]) {
            let key = object_key("ws", "ds", url);
            let name = key.rsplit('/').next().unwrap_or_default();
            let extension = name.split_once('.').map(|(_, e)| e);
            assert_eq!(extension, expected, "{url:?} gave {key:?}");
            let (digest, _) = name.split_once('.').unwrap_or((name, ""));
            assert!(digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()), "{key:?}");
        }
    }
}
