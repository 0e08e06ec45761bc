//! An [`ObjectSource`] held in memory, for unit tests (here, and in other
//! crates through the `testing` feature): the outcome rules
//! and the error classifiers are tested against it in milliseconds, where
//! the integration tests need five services. Each object is bytes, or a
//! fault that its read answers with, so a test sets up exactly the store
//! behaviour a rule is about.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{ByteRange, ListPage, ListQuery, ObjectBody, ObjectMeta, ObjectSource, StorageError};

/// What reading an object does.
#[derive(Debug, Clone)]
pub enum Read {
    /// Delivers the bytes the object was listed with.
    Bytes,
    /// Delivers these bytes instead (a source that changed, or lies).
    Other(&'static [u8]),
    /// Fails with this error, built afresh for each read.
    Fails(fn(&str) -> StorageError),
}

#[derive(Debug, Clone)]
struct Object {
    bytes: Bytes,
    read: Read,
}

/// A bucket in memory; keys in byte order, as the stores list them.
#[derive(Debug, Default)]
pub struct MemorySource {
    objects: BTreeMap<String, Object>,
}

impl MemorySource {
    /// Adds an object that reads back as `bytes`.
    pub fn with(self, key: &str, bytes: &[u8]) -> Self {
        self.with_read(key, bytes, Read::Bytes)
    }

    /// Adds an object listed with `bytes` whose read does `read`.
    pub fn with_read(mut self, key: &str, bytes: &[u8], read: Read) -> Self {
        self.objects.insert(key.to_owned(), Object { bytes: Bytes::copy_from_slice(bytes), read });
        self
    }

    /// The ETag the listing gives an object: its size, as hex.
    fn etag(object: &Object) -> String {
        format!("{:x}", object.bytes.len())
    }
}

#[async_trait::async_trait]
impl ObjectSource for MemorySource {
    async fn list_page(&self, query: ListQuery<'_>) -> Result<ListPage, StorageError> {
        let after = query.token.or(query.start_at).unwrap_or("");
        let mut page = ListPage::default();
        let mut entries = 0;
        for (key, object) in self.objects.range(after.to_owned()..) {
            if query.token.is_some_and(|t| key.as_str() <= t) || !key.starts_with(query.prefix) {
                continue;
            }
            if query.end_before.is_some_and(|end| key.as_str() >= end) {
                break;
            }
            if entries == query.max_keys {
                page.next = page.objects.last().map(|o| o.key.clone());
                break;
            }
            let rest = &key[query.prefix.len()..];
            match query.delimiter.and_then(|d| rest.find(d).map(|at| at + d.len())) {
                Some(end) => {
                    let prefix = format!("{}{}", query.prefix, &rest[..end]);
                    if !page.prefixes.contains(&prefix) {
                        page.prefixes.push(prefix);
                    }
                }
                None => {
                    entries += 1;
                    page.objects.push(ObjectMeta {
                        key: key.clone(),
                        size: object.bytes.len() as u64,
                        etag: Some(Self::etag(object)),
                        last_modified: None,
                    });
                }
            }
        }
        Ok(page)
    }

    async fn read(
        &self,
        key: &str,
        etag: Option<&str>,
        range: Option<ByteRange>,
    ) -> Result<ObjectBody, StorageError> {
        let object = self
            .objects
            .get(key)
            .ok_or_else(|| StorageError::ObjectNotFound(format!("memory://{key} is gone")))?;
        if etag.is_some_and(|e| e != Self::etag(object)) {
            return Err(StorageError::Changed(format!("memory://{key} changed")));
        }
        let bytes = match &object.read {
            Read::Bytes => object.bytes.clone(),
            Read::Other(bytes) => Bytes::from_static(bytes),
            Read::Fails(error) => return Err(error(key)),
        };
        Ok(body(bytes, range))
    }
}

/// `bytes` (or `range` of them) as one chunk.
pub(crate) fn body(bytes: Bytes, range: Option<ByteRange>) -> ObjectBody {
    let total = bytes.len() as u64;
    let bytes = match range {
        Some(r) => bytes.slice(r.first as usize..=(r.last as usize).min(bytes.len().saturating_sub(1))),
        None => bytes,
    };
    let size = bytes.len() as u64;
    ObjectBody {
        size,
        total,
        md5: None,
        chunks: Box::pin(futures_util::stream::once(async move { Ok(bytes) })),
    }
}
