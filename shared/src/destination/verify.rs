//! Verifies an object's bytes while they stream: the size must be the listed
//! size, and where the source gave a usable MD5 (a single-part ETag), the MD5
//! must match. A mismatch ends the stream with an error, so the destination
//! discards the write instead of keeping a silently different copy.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use md5::{Digest, Md5};

use crate::storage::{ByteChunks, ObjectBody, StorageError};

struct Verified {
    inner: ByteChunks,
    url: String,
    expected_size: u64,
    expected_md5: Option<[u8; 16]>,
    md5: Md5,
    seen: u64,
    done: bool,
}

/// Wraps `body` so that it fails at the end unless it had `listed_size`
/// bytes and the MD5 the source announced.
pub fn verified(body: ObjectBody, listed_size: u64, url: String) -> ByteChunks {
    if body.size != listed_size {
        let error = StorageError::Changed(format!(
            "{url} is {} bytes now but was {listed_size} when listed; requeue the import to copy it",
            body.size
        ));
        return Box::pin(futures_util::stream::once(async move { Err(error) }));
    }
    Box::pin(Verified {
        inner: body.chunks,
        url,
        expected_size: listed_size,
        expected_md5: body.md5,
        md5: Md5::new(),
        seen: 0,
        done: false,
    })
}

impl Verified {
    fn finish(&mut self) -> Option<StorageError> {
        self.done = true;
        if self.seen != self.expected_size {
            return Some(StorageError::Corrupt(format!(
                "{} delivered {} bytes instead of {}",
                self.url, self.seen, self.expected_size
            )));
        }
        let expected = self.expected_md5?;
        let actual: [u8; 16] = std::mem::take(&mut self.md5).finalize().into();
        (actual != expected).then(|| {
            StorageError::Corrupt(format!("{}: the MD5 of the bytes read does not match its ETag", self.url))
        })
    }
}

impl Stream for Verified {
    type Item = Result<bytes::Bytes, StorageError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                self.seen += chunk.len() as u64;
                if self.seen > self.expected_size {
                    return Poll::Ready(self.finish().map(Err));
                }
                if self.expected_md5.is_some() {
                    self.md5.update(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(error))) => {
                self.done = true;
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => Poll::Ready(self.finish().map(Err)),
        }
    }
}
