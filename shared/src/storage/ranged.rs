//! One large object read as several ranged GETs at once. A single GET is
//! one TCP connection, and one connection does not fill the line to a store
//! (S3 serves each about 100 MB/s at best); rclone and the AWS CLI split a
//! large download for the same reason. [`RangedReads::read`] streams the
//! object's first range at once while the next ones are fetched in the
//! background, and yields every byte in order, so the copy's whole-object
//! checks (size, MD5) still apply to what it writes.
//!
//! Each range is pinned to the listed version (the same ETag/generation
//! precondition as a whole read) and must hold exactly its length, or the
//! read fails as a changed or corrupt object. A range fetched ahead is
//! buffered, and only with a permit of the worker's copy buffer budget
//! (`TETHER_COPY_BUFFER_BYTES`), taken without waiting: where the budget is
//! spent, the next range is read when its turn comes instead, so the budget
//! bounds memory and can never deadlock the copies that share it.
//!
//! Ranges pay only where the store serves them at the cost of their own
//! bytes. moto does not: it reads the whole object for every ranged GET,
//! under a lock per object, so a 1 GiB object in 8 MiB ranges costs it 128
//! whole reads (docs/ranged-reads.md has the figures). The debug log says,
//! per range, how long the store took to answer and how long the copy
//! waited for it, which tells such a store from a slow line.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::{ByteChunks, ByteRange, ObjectBody, ObjectSource, StorageError};

/// How large objects are split (`TETHER_COPY_RANGE_*`).
#[derive(Debug, Clone)]
pub struct RangedReads {
    /// Objects of at least this many bytes are read in ranges.
    pub from_bytes: u64,
    /// Bytes of one range.
    pub range_bytes: u64,
    /// Ranges of one object in flight at once, the streamed one included.
    pub parallel: usize,
    /// Permits of `range_bytes` each: the buffers all ranged reads of a
    /// worker may hold.
    pub budget: Arc<Semaphore>,
}

/// A range read ahead: its bytes, and the budget they hold until consumed.
type Fetched = Result<(Bytes, OwnedSemaphorePermit), StorageError>;

enum Ahead {
    Fetching(JoinHandle<Fetched>),
    /// No budget was free when its turn to be fetched ahead came.
    OnDemand(ByteRange),
}

struct Joined {
    source: Arc<dyn ObjectSource>,
    key: String,
    etag: String,
    url: String,
    total: u64,
    /// The range being streamed, and how many of its bytes are still due.
    current: Option<(ByteChunks, u64)>,
    ahead: VecDeque<Ahead>,
    rest: std::vec::IntoIter<ByteRange>,
}

impl RangedReads {
    /// Reads all of `key` (`size` bytes as listed, version `etag`): in
    /// ranges when it is large enough and its version is known, else with
    /// one GET.
    pub async fn read(
        &self,
        source: Arc<dyn ObjectSource>,
        key: &str,
        etag: Option<&str>,
        size: u64,
        url: String,
    ) -> Result<ObjectBody, StorageError> {
        let range_bytes = self.range_bytes.max(1);
        let etag = match etag {
            Some(etag) if self.parallel > 1 && size >= self.from_bytes.max(2 * range_bytes) => etag,
            _ => return source.read(key, etag, None).await,
        };
        let mut ranges: Vec<ByteRange> = (0..size)
            .step_by(usize::try_from(range_bytes).unwrap_or(usize::MAX))
            .map(|first| ByteRange { first, last: (first + range_bytes).min(size) - 1 })
            .collect::<Vec<_>>();
        let first = ranges.remove(0);
        let body = source.read(key, Some(etag), Some(first)).await?;
        if body.total != size {
            return Err(StorageError::Changed(format!(
                "{url} is {} bytes now but was {size} when listed; requeue the import to copy it",
                body.total
            )));
        }
        let md5 = body.md5;
        let mut joined = Joined {
            source,
            key: key.to_owned(),
            etag: etag.to_owned(),
            url,
            total: size,
            current: Some((body.chunks, first.bytes())),
            ahead: VecDeque::new(),
            rest: ranges.into_iter(),
        };
        joined.fetch_ahead(self);
        let budget = self.clone();
        let chunks = futures_util::stream::unfold(Some((joined, budget)), |state| async move {
            let (mut joined, budget) = state?;
            match joined.next().await {
                Ok(Some(chunk)) => {
                    joined.fetch_ahead(&budget);
                    Some((Ok(chunk), Some((joined, budget))))
                }
                Ok(None) => None,
                Err(error) => Some((Err(error), None)),
            }
        });
        Ok(ObjectBody { size, total: size, md5, chunks: Box::pin(chunks) })
    }
}

impl Joined {
    /// Keeps `parallel - 1` ranges queued behind the streamed one, each
    /// fetched in the background where the budget has room.
    fn fetch_ahead(&mut self, reads: &RangedReads) {
        while self.ahead.len() + 1 < reads.parallel {
            let Some(range) = self.rest.next() else { return };
            let Ok(permit) = Arc::clone(&reads.budget).try_acquire_owned() else {
                self.ahead.push_back(Ahead::OnDemand(range));
                continue;
            };
            let (source, key, etag, url) =
                (Arc::clone(&self.source), self.key.clone(), self.etag.clone(), self.url.clone());
            let fetch = async move {
                let started = Instant::now();
                let body = source.read(&key, Some(&etag), Some(range)).await?;
                let answered = started.elapsed();
                let mut chunks = checked(body, range, &url)?;
                let mut buffer = BytesMut::with_capacity(usize::try_from(range.bytes()).unwrap_or(0));
                while let Some(chunk) = chunks.next().await {
                    buffer.extend_from_slice(&chunk?);
                }
                short(buffer.len() as u64, range, &url)?;
                tracing::debug!(
                    %url,
                    first = range.first,
                    answered_ms = answered.as_millis() as u64,
                    read_ms = started.elapsed().as_millis() as u64,
                    "A range was read ahead."
                );
                Ok((buffer.freeze(), permit))
            };
            self.ahead.push_back(Ahead::Fetching(tokio::spawn(fetch)));
        }
    }

    /// The next chunk in the object's order.
    async fn next(&mut self) -> Result<Option<Bytes>, StorageError> {
        loop {
            if let Some((chunks, due)) = &mut self.current {
                match chunks.next().await {
                    Some(chunk) => {
                        let chunk = chunk?;
                        *due = due
                            .checked_sub(chunk.len() as u64)
                            .ok_or_else(|| corrupt(&self.url, self.total))?;
                        return Ok(Some(chunk));
                    }
                    None if *due == 0 => self.current = None,
                    None => return Err(corrupt(&self.url, self.total)),
                }
            }
            match self.ahead.pop_front() {
                None => return Ok(None),
                Some(Ahead::Fetching(handle)) => {
                    let waited = Instant::now();
                    let fetched = handle.await;
                    tracing::debug!(url = %self.url, waited_ms = waited.elapsed().as_millis() as u64, "The copy waited for a range read ahead.");
                    let (bytes, _permit) = fetched.map_err(|e| {
                        StorageError::Unavailable(format!("reading a range of {} stopped: {e}", self.url))
                    })??;
                    return Ok(Some(bytes));
                }
                Some(Ahead::OnDemand(range)) => {
                    tracing::debug!(url = %self.url, first = range.first, "A range is read when its turn comes (the read-ahead budget is spent).");
                    let body = self.source.read(&self.key, Some(&self.etag), Some(range)).await?;
                    self.current = Some((checked(body, range, &self.url)?, range.bytes()));
                }
            }
        }
    }
}

fn corrupt(url: &str, total: u64) -> StorageError {
    StorageError::Corrupt(format!(
        "{url} ({total} bytes) delivered a range with more or fewer bytes than it holds"
    ))
}

/// A copy that fails or is dropped stops the ranges still being fetched.
impl Drop for Joined {
    fn drop(&mut self) {
        for ahead in &self.ahead {
            if let Ahead::Fetching(handle) = ahead {
                handle.abort();
            }
        }
    }
}

/// A range's body, once its announced length is the range's.
fn checked(body: ObjectBody, range: ByteRange, url: &str) -> Result<ByteChunks, StorageError> {
    short(body.size, range, url)?;
    Ok(body.chunks)
}

fn short(bytes: u64, range: ByteRange, url: &str) -> Result<(), StorageError> {
    if bytes == range.bytes() {
        Ok(())
    } else {
        Err(StorageError::Corrupt(format!(
            "{url} delivered {bytes} bytes for bytes {}-{} of the object",
            range.first, range.last
        )))
    }
}
