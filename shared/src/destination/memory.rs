//! A [`Destination`] held in memory, for unit tests (see
//! [`crate::storage::memory`]): writes keep whole objects or nothing, as
//! the real destinations do, and a destination can be made to refuse every
//! write.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::{CopyAt, Destination, DestinationError};
use crate::storage::{memory, ByteChunks, ByteRange, ObjectBody, StorageError};

/// Copies in memory, by key; stored URLs are `memory://key`.
#[derive(Debug, Default)]
pub struct MemoryDestination {
    copies: Mutex<BTreeMap<String, Bytes>>,
    /// Every write fails with this (the platform's storage is down).
    refuse: Option<&'static str>,
}

const SCHEME: &str = "memory://";

impl MemoryDestination {
    /// A destination whose every write fails with `why`.
    pub fn refusing(why: &'static str) -> Self {
        Self { refuse: Some(why), ..Self::default() }
    }

    /// The copies written, by key.
    pub fn copies(&self) -> BTreeMap<String, Bytes> {
        self.copies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

#[async_trait::async_trait]
impl Destination for MemoryDestination {
    async fn write(&self, key: &str, mut chunks: ByteChunks) -> Result<String, DestinationError> {
        if let Some(why) = self.refuse {
            return Err(DestinationError::Write(why.to_owned()));
        }
        let mut buffer = BytesMut::new();
        while let Some(chunk) = chunks.next().await {
            // An error leaves nothing behind: the buffer is dropped.
            buffer.extend_from_slice(&chunk?);
        }
        self.copies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.to_owned(), buffer.freeze());
        Ok(format!("{SCHEME}{key}"))
    }

    /// No [`CopyAt`] names memory: nothing signs or proxies from it.
    fn locate(&self, _stored_url: &str) -> Option<CopyAt> {
        None
    }

    async fn read(&self, stored_url: &str, range: Option<ByteRange>) -> Result<ObjectBody, StorageError> {
        let key = stored_url.strip_prefix(SCHEME).unwrap_or(stored_url);
        let bytes =
            self.copies().get(key).cloned().ok_or_else(|| super::copy_missing(stored_url, "is not there"))?;
        Ok(memory::body(bytes, range))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::verified;
    use crate::model::{FailureCode, Scope};
    use crate::storage::memory::MemorySource;
    use crate::storage::ObjectSource;

    /// The one classifier of destination errors: a source error keeps its
    /// own scope and code, a failed write is retried, a bad destination
    /// fails the import.
    #[test]
    fn every_destination_error_has_its_scope_and_code() {
        let s = String::new;
        let cases: Vec<(DestinationError, Scope, FailureCode)> = vec![
            (DestinationError::BadUrl(s()), Scope::Import, FailureCode::Unavailable),
            (DestinationError::Write(s()), Scope::Transient, FailureCode::Unavailable),
            (StorageError::Changed(s()).into(), Scope::Object, FailureCode::ChangedDuringCopy),
            (StorageError::Corrupt(s()).into(), Scope::Object, FailureCode::ChecksumMismatch),
            (StorageError::Throttled(s()).into(), Scope::Transient, FailureCode::Throttled),
            (StorageError::BucketNotFound(s()).into(), Scope::Import, FailureCode::NotFound),
        ];
        for (error, scope, code) in cases {
            assert_eq!((error.scope(), error.code()), (scope, code), "{error:?}");
            assert_eq!(error.is_transient(), scope == Scope::Transient, "{error:?}");
        }
    }

    #[tokio::test]
    async fn a_refusing_destination_is_an_outage_not_a_failed_object() {
        let source = MemorySource::default().with("a.jpg", b"a");
        let body = source.read("a.jpg", None, None).await.expect("read");
        let refused = MemoryDestination::refusing("503 from the platform's storage");
        let error = refused.write("k", verified(body, 1, "s3://b/a.jpg".into())).await.expect_err("refused");
        assert_eq!(error.scope(), Scope::Transient);
        assert!(refused.copies().is_empty());
    }

    #[tokio::test]
    async fn a_stream_that_fails_leaves_no_copy() {
        let source = MemorySource::default().with("a.jpg", b"abcd");
        let destination = MemoryDestination::default();
        let short = source.read("a.jpg", None, None).await.expect("read");
        // Listed with 5 bytes, the stream delivers 4: verification fails it.
        let error =
            destination.write("k", verified(short, 5, "s3://b/a.jpg".into())).await.expect_err("short");
        assert_eq!(error.code(), FailureCode::ChangedDuringCopy);
        let whole = source.read("a.jpg", None, None).await.expect("read");
        let url = destination.write("k2", verified(whole, 4, "s3://b/a.jpg".into())).await.expect("written");
        let copies = destination.copies();
        assert_eq!(copies.keys().collect::<Vec<_>>(), ["k2"]);
        let back = destination.read(&url, Some(ByteRange { first: 1, last: 2 })).await.expect("read back");
        assert_eq!((back.size, back.total), (2, 4));
    }
}
