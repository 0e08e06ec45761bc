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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures_util::StreamExt;
    use md5::{Digest, Md5};

    use super::verified;
    use crate::storage::{ObjectBody, StorageError};

    /// A body of `chunks` that claims `size` bytes and, if given, an MD5.
    fn body(chunks: &[&'static [u8]], size: u64, md5: Option<[u8; 16]>) -> ObjectBody {
        let items: Vec<Result<Bytes, StorageError>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        ObjectBody { size, total: size, md5, chunks: Box::pin(futures_util::stream::iter(items)) }
    }

    /// The bytes that came through, or the code of the error that ended them.
    async fn read(body: ObjectBody, listed: u64) -> Result<Vec<u8>, &'static str> {
        let mut stream = verified(body, listed, "s3://b/k.jpg".into());
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.map_err(|e| e.code().as_str())?);
        }
        Ok(out)
    }

    fn md5(bytes: &[u8]) -> [u8; 16] {
        Md5::digest(bytes).into()
    }

    #[tokio::test]
    async fn the_listed_bytes_pass_and_anything_else_fails() {
        let good = md5(b"hello world");
        assert_eq!(read(body(&[b"hello ", b"world"], 11, Some(good)), 11).await, Ok(b"hello world".to_vec()));
        assert_eq!(read(body(&[b"hello ", b"world"], 11, None), 11).await, Ok(b"hello world".to_vec()));
        // Same length, other bytes: the MD5 tells.
        assert_eq!(read(body(&[b"hello ", b"WORLD"], 11, Some(good)), 11).await, Err("checksum_mismatch"));
        // Fewer or more bytes than announced: the count tells, MD5 or not.
        assert_eq!(read(body(&[b"hello "], 11, None), 11).await, Err("checksum_mismatch"));
        assert_eq!(read(body(&[b"hello ", b"world!"], 11, None), 11).await, Err("checksum_mismatch"));
        // Another size than listed: the object changed since.
        assert_eq!(read(body(&[b"hello"], 5, None), 11).await, Err("changed_during_copy"));
    }
}
