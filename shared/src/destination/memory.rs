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
    use crate::contract::{parse_request, ImportRequest, ValidationOptions};
    use crate::destination::verified;
    use crate::model::state::Tally;
    use crate::model::{FailureCode, ImportState, Scope};
    use crate::storage::memory::{MemorySource, Read};
    use crate::storage::{ListQuery, ObjectSource};

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

    fn request(max_object_bytes: u64) -> ImportRequest {
        let body = format!(
            r#"{{"version":1,"import_id":"3f0c1f4e-8a55-4a36-9a34-3c0f4b1f2e10","workspace_id":"w","dataset_id":"d","mode":"copy",
              "source":{{"provider":"s3","bucket":"acme-images","role_arn":"arn:aws:iam::111122223333:role/r","external_id":"ext-1"}},
              "filter":{{"max_object_bytes":{max_object_bytes}}}}}"#
        );
        parse_request(body.as_bytes(), Some("application/json"), ValidationOptions::default())
            .expect("valid")
            .request
    }

    /// Copies every object of `source` into `destination` as a copy task
    /// does (the listing's size and ETag, the bytes verified on the way),
    /// and tallies what became of each: the rules of contract §2 and §3
    /// from store behaviour to the import's final state.
    async fn import(
        source: &MemorySource,
        destination: &MemoryDestination,
        request: &ImportRequest,
    ) -> Tally {
        let query = ListQuery {
            prefix: "",
            token: None,
            max_keys: 1000,
            delimiter: None,
            start_at: None,
            end_before: None,
        };
        let page = source.list_page(query).await.expect("a page");
        let mut tally = Tally { listed: page.objects.len() as i64, ..Tally::default() };
        let mut codes = BTreeMap::<&str, i64>::new();
        for object in &page.objects {
            if !request.filter.matches(&object.key) {
                tally.filtered += 1;
                continue;
            }
            let code = if object.size > request.filter.max_object_bytes {
                Some(FailureCode::TooLarge)
            } else if crate::model::failure::unsupported_key(&object.key, false).is_some() {
                Some(FailureCode::UnsupportedKey)
            } else {
                let url = request.source.url(&object.key);
                let copied = match source.read(&object.key, object.etag.as_deref(), None).await {
                    Ok(body) => destination.write(&object.key, verified(body, object.size, url)).await,
                    Err(error) => Err(error.into()),
                };
                match copied {
                    Ok(_) => None,
                    Err(error) if error.scope() == Scope::Import => {
                        tally.import_error = Some(error.to_string());
                        None
                    }
                    Err(error) => Some(error.code()),
                }
            };
            if let Some(code) = code {
                tally.failed += 1;
                *codes.entry(code.as_str()).or_default() += 1;
            }
        }
        tally.object_failures = codes.into_iter().map(|(code, n)| (code.to_owned(), n)).collect();
        tally
    }

    fn gone(key: &str) -> StorageError {
        StorageError::ObjectNotFound(format!("{key} was deleted"))
    }

    fn denied(key: &str) -> StorageError {
        StorageError::AccessDenied(format!("{key} may not be read"))
    }

    fn no_bucket(_: &str) -> StorageError {
        StorageError::BucketNotFound("the bucket is gone".into())
    }

    #[tokio::test]
    async fn per_object_failures_decide_the_import_state() {
        let good =
            || MemorySource::default().with("a.jpg", b"aaaa").with("b.png", b"bb").with("notes.txt", b"n");
        let cases: Vec<(&str, MemorySource, u64, ImportState, &[&str], Option<&str>)> = vec![
            ("all copied", good(), 100, ImportState::Succeeded, &["a.jpg", "b.png"], None),
            (
                "one too large",
                good(),
                3,
                ImportState::PartiallySucceeded,
                &["b.png"],
                Some("1 of 2 matching objects failed (too_large: 1)"),
            ),
            (
                "all too large",
                good(),
                1,
                ImportState::Failed,
                &[],
                Some("Every matching object failed (too_large: 2)"),
            ),
            (
                "deleted after listing",
                good().with_read("c.jpg", b"c", Read::Fails(gone)),
                100,
                ImportState::PartiallySucceeded,
                &["a.jpg", "b.png"],
                Some("not_found: 1"),
            ),
            (
                "fewer bytes than listed",
                good().with_read("c.jpg", b"cccc", Read::Other(Bytes::from_static(b"cc"))),
                100,
                ImportState::PartiallySucceeded,
                &["a.jpg", "b.png"],
                Some("changed_during_copy: 1"),
            ),
            (
                "denied and a NUL key",
                good().with_read("c.jpg", b"c", Read::Fails(denied)).with("d\0.jpg", b"d"),
                100,
                ImportState::PartiallySucceeded,
                &["a.jpg", "b.png"],
                Some("2 of 4 matching objects failed (access_denied: 1, unsupported_key: 1)"),
            ),
            (
                "the bucket vanished",
                good().with_read("c.jpg", b"c", Read::Fails(no_bucket)),
                100,
                ImportState::Failed,
                &["a.jpg", "b.png"],
                Some("the bucket is gone"),
            ),
            (
                "only filtered objects",
                MemorySource::default().with("notes.txt", b"n"),
                100,
                ImportState::Failed,
                &[],
                Some("matched the filter"),
            ),
            (
                "an empty bucket",
                MemorySource::default(),
                100,
                ImportState::Failed,
                &[],
                Some("Nothing was found"),
            ),
        ];
        for (name, source, max_object_bytes, state, copied, error) in cases {
            let request = request(max_object_bytes);
            let destination = MemoryDestination::default();
            let (decided, sentence) = import(&source, &destination, &request).await.decide(&request);
            assert_eq!(decided, state, "{name}: {sentence:?}");
            let keys: Vec<String> = destination.copies().into_keys().collect();
            assert_eq!(keys, copied, "{name}: only whole, verified copies are kept");
            match error {
                None => assert_eq!(sentence, None, "{name}"),
                Some(words) => {
                    assert!(sentence.as_deref().unwrap_or_default().contains(words), "{name}: {sentence:?}")
                }
            }
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
}
