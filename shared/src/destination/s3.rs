//! `s3://bucket/prefix`: copies as S3 objects, written with Tether's own AWS
//! identity. Objects that fit in one part are one PutObject, larger ones a
//! multipart upload with up to `parts.in_flight` parts uploading at once
//! while the next is read, as a large copy is otherwise bounded by one
//! connection's speed. Every buffered part holds a permit of the worker's
//! part budget ([`Parts`]), so memory is bounded whatever the object sizes.

use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

use super::{copy_missing, fill, key_under, CopyAt, Destination, DestinationError, Parts};
use crate::storage::s3::object_body;
use crate::storage::{ByteChunks, ByteRange, ObjectBody, StorageError};

/// S3's smallest part (all but the last).
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;

#[derive(Debug)]
pub struct S3Destination {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    parts: Parts,
}

impl S3Destination {
    pub fn new(
        sdk: &aws_config::SdkConfig,
        force_path_style: bool,
        bucket: &str,
        prefix: &str,
        parts: Parts,
    ) -> Self {
        Self {
            client: platform_client(sdk, force_path_style),
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            parts: Parts { bytes: parts.bytes.max(MIN_PART_BYTES), ..parts },
        }
    }

    async fn multipart(
        &self,
        key: &str,
        first: (Bytes, OwnedSemaphorePermit),
        chunks: &mut ByteChunks,
    ) -> Result<(), DestinationError> {
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| write_error(&self.bucket, key, e))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_owned();
        let result = self.upload_parts(key, &upload_id, first, chunks).await;
        if result.is_err() {
            // Best effort: a lifecycle rule should clean up what this misses.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    /// Uploads parts as they are read, up to `parts.in_flight` at once; each
    /// part's budget permit is released once it is uploaded. An error drops
    /// the uploads still running (the JoinSet aborts them).
    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: (Bytes, OwnedSemaphorePermit),
        chunks: &mut ByteChunks,
    ) -> Result<(), DestinationError> {
        let mut uploads: JoinSet<Result<CompletedPart, DestinationError>> = JoinSet::new();
        let mut done = Vec::new();
        let mut number = 0;
        let mut next = Some(first);
        while let Some((body, permit)) = next.take() {
            number += 1;
            let request = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(body));
            let (bucket, key_owned) = (self.bucket.clone(), key.to_owned());
            uploads.spawn(async move {
                let uploaded = request.send().await.map_err(|e| write_error(&bucket, &key_owned, e));
                drop(permit);
                let etag = uploaded?.e_tag().map(str::to_owned);
                Ok(CompletedPart::builder().part_number(number).set_e_tag(etag).build())
            });
            while uploads.len() >= self.parts.in_flight {
                done.push(joined(uploads.join_next().await)?);
            }
            let permit = self.parts.permit().await?;
            let (body, _) = fill(chunks, self.parts.bytes).await?;
            if !body.is_empty() {
                next = Some((body, permit));
            }
        }
        while let Some(part) = uploads.join_next().await {
            done.push(joined(Some(part))?);
        }
        done.sort_by_key(|p| p.part_number());
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
            .send()
            .await
            .map_err(|e| write_error(&self.bucket, key, e))?;
        Ok(())
    }
}

/// An S3 client with Tether's own identity, for the platform's storage.
pub(crate) fn platform_client(sdk: &aws_config::SdkConfig, force_path_style: bool) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(force_path_style)
        // S3-compatible stores reject the checksums the SDK adds by default.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// The outcome of one part's upload task.
fn joined(
    part: Option<Result<Result<CompletedPart, DestinationError>, tokio::task::JoinError>>,
) -> Result<CompletedPart, DestinationError> {
    match part {
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(DestinationError::Write(format!("a part upload stopped: {e}"))),
        None => Err(DestinationError::Write("a part upload went missing".into())),
    }
}

fn write_error<E: std::error::Error + Send + Sync + 'static, R: std::fmt::Debug>(
    bucket: &str,
    key: &str,
    error: aws_sdk_s3::error::SdkError<E, R>,
) -> DestinationError {
    DestinationError::Write(format!("s3://{bucket}/{key}: {}", DisplayErrorContext(error)))
}

#[async_trait::async_trait]
impl Destination for S3Destination {
    async fn write(&self, key: &str, mut chunks: ByteChunks) -> Result<String, DestinationError> {
        let key = if self.prefix.is_empty() { key.to_owned() } else { format!("{}/{key}", self.prefix) };
        let permit = self.parts.permit().await?;
        let (first, ended) = fill(&mut chunks, self.parts.bytes).await?;
        if ended {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .body(ByteStream::from(first))
                .send()
                .await
                .map_err(|e| write_error(&self.bucket, &key, e))?;
        } else {
            self.multipart(&key, (first, permit), &mut chunks).await?;
        }
        Ok(format!("s3://{}/{key}", self.bucket))
    }

    fn locate(&self, stored_url: &str) -> Option<CopyAt> {
        let key = key_under(stored_url, "s3", &self.bucket, &self.prefix)?;
        Some(CopyAt::S3 { bucket: self.bucket.clone(), key })
    }

    async fn read(&self, stored_url: &str, range: Option<ByteRange>) -> Result<ObjectBody, StorageError> {
        let Some(CopyAt::S3 { key, .. }) = self.locate(stored_url) else {
            return Err(copy_missing(stored_url, "is not inside TETHER_DESTINATION"));
        };
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .set_range(range.map(ByteRange::header))
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(error) if error.is_no_such_key() => copy_missing(stored_url, "is gone"),
                _ => StorageError::Unavailable(format!(
                    "reading {stored_url} failed: {}",
                    DisplayErrorContext(e)
                )),
            })?;
        Ok(object_body(output, None, stored_url.to_owned()))
    }
}
