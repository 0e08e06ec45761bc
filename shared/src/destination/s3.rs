//! `s3://bucket/prefix`: copies as S3 objects, written with Tether's own AWS
//! identity. Objects that fit in one part are one PutObject, larger ones a
//! multipart upload whose next part is read while the current one uploads
//! (reading and writing at once: a copy is not the sum of the two), so at
//! most two parts are buffered per copy and memory is bounded by
//! 2 x (copies at once) x (part size) whatever the object size.

use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use super::{fill, Destination, DestinationError};
use crate::storage::ByteChunks;

/// S3's smallest part (all but the last).
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;

#[derive(Debug)]
pub struct S3Destination {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    part_bytes: usize,
}

impl S3Destination {
    pub fn new(
        sdk: &aws_config::SdkConfig,
        force_path_style: bool,
        bucket: &str,
        prefix: &str,
        part_bytes: usize,
    ) -> Self {
        let config = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(force_path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        Self {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            part_bytes: part_bytes.max(MIN_PART_BYTES),
        }
    }

    async fn multipart(
        &self,
        key: &str,
        first: Bytes,
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

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: Bytes,
        chunks: &mut ByteChunks,
    ) -> Result<(), DestinationError> {
        let mut parts = Vec::new();
        let mut body = first;
        loop {
            let number = i32::try_from(parts.len() + 1).unwrap_or(i32::MAX);
            let upload = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(body))
                .send();
            let (uploaded, next) = tokio::join!(upload, fill(chunks, self.part_bytes));
            let uploaded = uploaded.map_err(|e| write_error(&self.bucket, key, e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(uploaded.e_tag().map(str::to_owned))
                    .build(),
            );
            let (next, _) = next?;
            if next.is_empty() {
                break;
            }
            body = next;
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| write_error(&self.bucket, key, e))?;
        Ok(())
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
    async fn write(&self, key: &str, _size: u64, mut chunks: ByteChunks) -> Result<String, DestinationError> {
        let key = if self.prefix.is_empty() { key.to_owned() } else { format!("{}/{key}", self.prefix) };
        let (first, ended) = fill(&mut chunks, self.part_bytes).await?;
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
            self.multipart(&key, first, &mut chunks).await?;
        }
        Ok(format!("s3://{}/{key}", self.bucket))
    }
}
