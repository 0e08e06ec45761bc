//! `gs://bucket/prefix`: copies as Cloud Storage objects, written with
//! Tether's own Google identity. An object that fits in one part is one
//! media upload; a larger one is a resumable upload sent a part at a time
//! and finalised only once the source stream has ended and verified, so a
//! broken or corrupt read leaves no object behind. Memory is one part per
//! copy, as for `s3://`.

use bytes::{Bytes, BytesMut};
use reqwest::header::{CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use reqwest::StatusCode;

use super::{copy_missing, fill, key_under, CopyAt, Destination, DestinationError, Parts};
use crate::credentials::gcp::GcsAccess;
use crate::storage::gcs::{segment, GcsApi};
use crate::storage::{http_body, ByteChunks, ByteRange, ObjectBody, StorageError};

/// Resumable uploads take parts in multiples of 256 KiB.
const QUANTUM: usize = 256 * 1024;

#[derive(Debug)]
pub struct GcsDestination {
    api: GcsApi,
    bucket: String,
    prefix: String,
    /// Resumable parts are whole multiples of 256 KiB.
    part_bytes: usize,
    parts: Parts,
}

impl GcsDestination {
    pub fn new(api: GcsApi, bucket: &str, prefix: &str, parts: Parts) -> Self {
        Self {
            api,
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            part_bytes: (parts.bytes / QUANTUM).max(1) * QUANTUM,
            parts,
        }
    }

    fn upload_url(&self, key: &str, kind: &str) -> String {
        self.api.url(&format!(
            "/upload/storage/v1/b/{}/o?uploadType={kind}&name={}",
            segment(&self.bucket),
            segment(key)
        ))
    }

    fn failed(&self, key: &str, what: impl std::fmt::Display) -> DestinationError {
        DestinationError::Write(format!("gs://{}/{key}: {what}", self.bucket))
    }

    fn expect(
        &self,
        key: &str,
        response: reqwest::Response,
        ok: &[StatusCode],
    ) -> Result<reqwest::Response, DestinationError> {
        if ok.contains(&response.status()) {
            Ok(response)
        } else {
            Err(self.failed(key, format!("GCS answered {}", response.status())))
        }
    }

    async fn resumable(
        &self,
        key: &str,
        mut buffer: BytesMut,
        chunks: &mut ByteChunks,
    ) -> Result<(), DestinationError> {
        let start = self
            .api
            .send(
                || {
                    self.api
                        .http()
                        .post(self.upload_url(key, "resumable"))
                        .header(CONTENT_TYPE, "application/json")
                        .body("{}")
                },
                GcsAccess::Destination,
            )
            .await
            .map_err(|e| self.failed(key, e))?;
        let start = self.expect(key, start, &[StatusCode::OK, StatusCode::CREATED])?;
        let session = start
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| self.failed(key, "GCS gave no upload session"))?;
        let sent = self.send_parts(key, &session, &mut buffer, chunks).await;
        if sent.is_err() {
            // Best effort: an abandoned session expires after a week anyway.
            let _ = self.api.send(|| self.api.http().delete(&session), GcsAccess::Destination).await;
        }
        sent
    }

    async fn send_parts(
        &self,
        key: &str,
        session: &str,
        buffer: &mut BytesMut,
        chunks: &mut ByteChunks,
    ) -> Result<(), DestinationError> {
        let mut offset = 0usize;
        loop {
            let (more, ended) = fill(chunks, self.part_bytes.saturating_sub(buffer.len())).await?;
            buffer.extend_from_slice(&more);
            if ended {
                let part: Bytes = buffer.split().freeze();
                let total = offset + part.len();
                let range = if part.is_empty() {
                    format!("bytes */{total}")
                } else {
                    format!("bytes {offset}-{}/{total}", total - 1)
                };
                let response = self.put(key, session, range, part).await?;
                self.expect(key, response, &[StatusCode::OK, StatusCode::CREATED])?;
                return Ok(());
            }
            // Whole quanta only; the rest waits for the next part.
            let len = buffer.len() / QUANTUM * QUANTUM;
            let part = buffer.split_to(len).freeze();
            let range = format!("bytes {offset}-{}/*", offset + len - 1);
            let response = self.put(key, session, range, part).await?;
            self.expect(key, response, &[StatusCode::PERMANENT_REDIRECT])?;
            offset += len;
        }
    }

    async fn put(
        &self,
        key: &str,
        session: &str,
        range: String,
        part: Bytes,
    ) -> Result<reqwest::Response, DestinationError> {
        self.api
            .send(
                || self.api.http().put(session).header(CONTENT_RANGE, range.as_str()).body(part.clone()),
                GcsAccess::Destination,
            )
            .await
            .map_err(|e| self.failed(key, e))
    }
}

#[async_trait::async_trait]
impl Destination for GcsDestination {
    async fn write(&self, key: &str, mut chunks: ByteChunks) -> Result<String, DestinationError> {
        let key = if self.prefix.is_empty() { key.to_owned() } else { format!("{}/{key}", self.prefix) };
        // One part buffered per copy, within the worker's part budget.
        let _permit = self.parts.permit().await?;
        let (first, ended) = fill(&mut chunks, self.part_bytes).await?;
        if ended {
            let response = self
                .api
                .send(
                    || {
                        self.api
                            .http()
                            .post(self.upload_url(&key, "media"))
                            .header(CONTENT_TYPE, "application/octet-stream")
                            .body(first.clone())
                    },
                    GcsAccess::Destination,
                )
                .await
                .map_err(|e| self.failed(&key, e))?;
            self.expect(&key, response, &[StatusCode::OK, StatusCode::CREATED])?;
        } else {
            self.resumable(&key, BytesMut::from(first), &mut chunks).await?;
        }
        Ok(format!("gs://{}/{key}", self.bucket))
    }

    fn locate(&self, stored_url: &str) -> Option<CopyAt> {
        let key = key_under(stored_url, "gs", &self.bucket, &self.prefix)?;
        Some(CopyAt::Gcs { bucket: self.bucket.clone(), key })
    }

    async fn read(&self, stored_url: &str, range: Option<ByteRange>) -> Result<ObjectBody, StorageError> {
        let Some(CopyAt::Gcs { key, .. }) = self.locate(stored_url) else {
            return Err(copy_missing(stored_url, "is not inside TETHER_DESTINATION"));
        };
        let url = self.api.url(&format!("/storage/v1/b/{}/o/{}", segment(&self.bucket), segment(&key)));
        let response = self.api.send(|| self.api.download(&url, &[], range), GcsAccess::Destination).await?;
        match response.status() {
            status if status.is_success() => Ok(http_body(response, None, stored_url.to_owned())),
            StatusCode::NOT_FOUND => Err(copy_missing(stored_url, "is gone")),
            status => {
                Err(StorageError::Unavailable(format!("reading {stored_url} failed: GCS answered {status}")))
            }
        }
    }
}
