//! `file:///dir`: copies as files under one directory (the embedded default
//! that `make demo` uses). Each copy is written to a temporary file beside
//! its final name, synced, then renamed: a reader never sees half a copy.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{Destination, DestinationError};
use crate::storage::ByteChunks;

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
        tokio::fs::create_dir_all(root)
            .await
            .map_err(|e| DestinationError::BadUrl(format!("file://{path}, which cannot be created: {e}")))?;
        Ok(Self { root: root.to_owned() })
    }
}

#[async_trait::async_trait]
impl Destination for FileDestination {
    async fn write(&self, key: &str, _size: u64, mut chunks: ByteChunks) -> Result<String, DestinationError> {
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
}
