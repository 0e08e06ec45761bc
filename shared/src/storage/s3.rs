//! Amazon S3 (and S3-compatible stores) as an [`ObjectSource`]: ListObjectsV2
//! one page at a time, with the customer's role assumed through STS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_sdk_s3::config::{
    IdentityCache, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use chrono::DateTime;

use super::{ListPage, ObjectMeta, ObjectSource, StorageError};
use crate::contract::S3Source;
use crate::credentials::sts::{RoleKey, StsCredentials};

/// Builds S3 clients per (role, ExternalId, region), all sharing one HTTP
/// connection pool and one STS cache.
#[derive(Debug)]
pub struct S3Sources {
    base: aws_sdk_s3::config::Builder,
    sts: Arc<StsCredentials>,
    default_region: Option<Region>,
    clients: Mutex<HashMap<(RoleKey, String), aws_sdk_s3::Client>>,
}

impl S3Sources {
    /// `sdk` is Tether's own AWS configuration (endpoints, HTTP client);
    /// `force_path_style` is `TETHER_S3_FORCE_PATH_STYLE`.
    pub fn new(
        sdk: &aws_config::SdkConfig,
        sts: Arc<StsCredentials>,
        force_path_style: bool,
    ) -> Self {
        let base = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(force_path_style)
            // Our provider caches with its own margin; the SDK's cache would
            // hold credentials until seconds before they expire.
            .identity_cache(IdentityCache::no_cache())
            // S3-compatible stores reject the checksums the SDK adds by default.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        Self {
            base,
            sts,
            default_region: sdk.region().cloned(),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// A source for the request's bucket. Assumes the role first, so that a
    /// refusal surfaces here as a clear credentials error.
    pub async fn open(&self, source: &S3Source) -> Result<S3Bucket, StorageError> {
        let key = RoleKey {
            role_arn: source.role_arn.clone(),
            external_id: source.external_id.clone(),
        };
        self.sts.credentials(&key).await?;
        let region = source
            .region
            .clone()
            .map(Region::new)
            .or_else(|| self.default_region.clone());
        let region_name = region.as_ref().map(ToString::to_string).unwrap_or_default();
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let client = clients
            .entry((key.clone(), region_name))
            .or_insert_with(|| {
                let config = self
                    .base
                    .clone()
                    .region(region)
                    .credentials_provider(self.sts.provider(key))
                    .build();
                aws_sdk_s3::Client::from_conf(config)
            })
            .clone();
        Ok(S3Bucket {
            client,
            bucket: source.bucket.clone(),
        })
    }
}

/// One S3 bucket, readable with the customer's role.
#[derive(Debug, Clone)]
pub struct S3Bucket {
    client: aws_sdk_s3::Client,
    bucket: String,
}

#[async_trait::async_trait]
impl ObjectSource for S3Bucket {
    async fn list_page(
        &self,
        prefix: &str,
        token: Option<&str>,
        max_keys: u32,
    ) -> Result<ListPage, StorageError> {
        let output = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .max_keys(i32::try_from(max_keys).unwrap_or(1000))
            .set_continuation_token(token.map(str::to_owned))
            .send()
            .await
            .map_err(|e| self.classify(prefix, e))?;
        let next = output.next_continuation_token().map(str::to_owned);
        if output.is_truncated() == Some(true) && next.is_none() {
            // Ending here would silently drop the rest of the listing.
            return Err(StorageError::Unavailable(format!(
                "S3 said the listing of s3://{}/{prefix} goes on but gave no continuation token",
                self.bucket
            )));
        }
        let objects = output
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectMeta {
                    key: o.key()?.to_owned(),
                    size: u64::try_from(o.size().unwrap_or(0)).unwrap_or(0),
                    etag: o.e_tag().map(|e| e.trim_matches('"').to_owned()),
                    last_modified: o
                        .last_modified()
                        .and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
                })
            })
            .collect();
        Ok(ListPage { objects, next })
    }
}

impl S3Bucket {
    fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
        &self,
        prefix: &str,
        error: SdkError<E>,
    ) -> StorageError {
        let bucket = &self.bucket;
        let SdkError::ServiceError(service) = &error else {
            return StorageError::Unavailable(format!(
                "S3 could not be reached: {}",
                DisplayErrorContext(&error)
            ));
        };
        let status = service.raw().status().as_u16();
        let code = service.err().code().unwrap_or_default();
        match (status, code) {
            (_, "NoSuchBucket") | (404, _) => StorageError::BucketNotFound(format!(
                "The bucket s3://{bucket} does not exist: check source.bucket (and that it is in the region the request names)"
            )),
            (301, _) | (_, "PermanentRedirect") | (_, "AuthorizationHeaderMalformed") => StorageError::BucketNotFound(format!(
                "The bucket s3://{bucket} is in another region: set source.region to the bucket's region"
            )),
            (_, "AccessDenied") | (403, _) => StorageError::AccessDenied(format!(
                "Access denied listing s3://{bucket}/{prefix}: the role needs s3:ListBucket on arn:aws:s3:::{bucket} for this prefix"
            )),
            (_, "SlowDown") | (429, _) | (503, _) => StorageError::Throttled(format!("S3 {status} {code}")),
            _ => StorageError::Unavailable(format!("S3 {status} {code}: {}", service.err().message().unwrap_or_default())),
        }
    }
}
