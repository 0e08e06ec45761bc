//! `file:///dir`: copies as files under one directory (the embedded default
//! that `make demo` uses). Each copy is written to a temporary file beside
//! its final name, synced, then renamed: a reader never sees half a copy.
//! Reads are confined to the directory: a stored path is resolved (`..`,
//! symbolic links) before it is opened, and refused unless it lies inside.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{copy_missing, CopyAt, Destination, DestinationError};
use crate::storage::{ByteChunks, ByteRange, ObjectBody, StorageError};

/// Bytes read from a file at a time while streaming it.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug)]
pub struct FileDestination {
    root: PathBuf,
}

impl FileDestination {
    /// Creates the directory if needed; it must be absolute.
    pub async fn create(path: &str) -> Result<Self, DestinationError> {
        let root = Path::new(path);
        if !root.is_absolute() {
            return Err(DestinationError::BadUrl(format!(
                "file://{path}, not an absolute directory: use file:///absolute/dir"
            )));
        }
        let cannot = |e| DestinationError::BadUrl(format!("file://{path}, which cannot be created: {e}"));
        tokio::fs::create_dir_all(root).await.map_err(cannot)?;
        // Resolved once, so that reads compare resolved paths with it.
        let root = tokio::fs::canonicalize(root).await.map_err(cannot)?;
        Ok(Self { root })
    }
}

#[async_trait::async_trait]
impl Destination for FileDestination {
    async fn write(&self, key: &str, mut chunks: ByteChunks) -> Result<String, DestinationError> {
        // `key` comes from `object_key`: plain segments, no `..`.
        let path = self.root.join(key);
        let dir = path.parent().unwrap_or(&self.root);
        let io = |e: std::io::Error| DestinationError::Write(format!("{}: {e}", path.display()));
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
        let temporary =
            dir.join(format!(".{}.{}.part", key.rsplit('/').next().unwrap_or("copy"), uuid::Uuid::new_v4()));
        let written = async {
            let mut file = tokio::fs::File::create(&temporary).await.map_err(io)?;
            while let Some(chunk) = chunks.next().await {
                file.write_all(&chunk?).await.map_err(io)?;
            }
            file.sync_all().await.map_err(io)?;
            tokio::fs::rename(&temporary, &path).await.map_err(io)
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&temporary).await;
        }
        written.map(|()| format!("file://{}", path.display()))
    }

    fn locate(&self, stored_url: &str) -> Option<CopyAt> {
        let path = Path::new(stored_url.strip_prefix("file://")?);
        // Lexically inside; `read` also resolves links before opening.
        let plain = path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::RootDir));
        (plain && path.starts_with(&self.root) && path != self.root).then(|| CopyAt::File(path.to_owned()))
    }

    async fn read(&self, stored_url: &str, range: Option<ByteRange>) -> Result<ObjectBody, StorageError> {
        let outside = || copy_missing(stored_url, "is not inside TETHER_DESTINATION");
        let Some(CopyAt::File(path)) = self.locate(stored_url) else { return Err(outside()) };
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => copy_missing(stored_url, "is gone"),
            _ => StorageError::Unavailable(format!("reading {stored_url} failed: {e}")),
        };
        let resolved = tokio::fs::canonicalize(&path).await.map_err(io)?;
        if !resolved.starts_with(&self.root) {
            return Err(outside());
        }
        let mut file = tokio::fs::File::open(&resolved).await.map_err(io)?;
        let total = file.metadata().await.map_err(io)?.len();
        let (first, size) = match range {
            Some(range) => (range.first, range.bytes().min(total.saturating_sub(range.first))),
            None => (0, total),
        };
        file.seek(SeekFrom::Start(first)).await.map_err(io)?;
        let url = stored_url.to_owned();
        let chunks = futures_util::stream::unfold((file.take(size), url), |(mut file, url)| async move {
            let mut buffer = BytesMut::with_capacity(READ_CHUNK);
            match file.read_buf(&mut buffer).await {
                Ok(0) => None,
                Ok(_) => Some((Ok(buffer.freeze()), (file, url))),
                Err(e) => Some((
                    Err(StorageError::Unavailable(format!("reading {url} broke off: {e}"))),
                    (file, url),
                )),
            }
        });
        Ok(ObjectBody { size, total, md5: None, chunks: Box::pin(chunks) })
    }
}
