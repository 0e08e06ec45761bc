//! Amazon S3 (and S3-compatible stores) as an [`ObjectSource`]: ListObjectsV2
//! one page at a time, with the customer's role assumed through STS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_sdk_s3::config::{IdentityCache, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::types::{EncodingType, ServerSideEncryption};
use chrono::DateTime;
use percent_encoding::percent_decode_str;

use super::{
    range_total, ByteRange, ListPage, ListQuery, ObjectBody, ObjectMeta, ObjectSource, StorageError,
};
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
    pub fn new(sdk: &aws_config::SdkConfig, sts: Arc<StsCredentials>, force_path_style: bool) -> Self {
        let base = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(force_path_style)
            // Our provider caches with its own margin; the SDK's cache would
            // hold credentials until seconds before they expire.
            .identity_cache(IdentityCache::no_cache())
            // S3-compatible stores reject the checksums the SDK adds by default.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        Self { base, sts, default_region: sdk.region().cloned(), clients: Mutex::new(HashMap::new()) }
    }

    /// A source for the request's bucket. Assumes the role first, so that a
    /// refusal surfaces here as a clear credentials error.
    pub async fn open(&self, source: &S3Source) -> Result<S3Bucket, StorageError> {
        let key = RoleKey { role_arn: source.role_arn.clone(), external_id: source.external_id.clone() };
        self.sts.credentials(&key).await?;
        let region = source.region.clone().map(Region::new).or_else(|| self.default_region.clone());
        let region_name = region.as_ref().map(ToString::to_string).unwrap_or_default();
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let client = clients
            .entry((key.clone(), region_name))
            .or_insert_with(|| {
                let config = self
                    .base
                    .clone()
                    .region(region)
                    .credentials_provider(self.sts.provider(key.clone()))
                    .build();
                aws_sdk_s3::Client::from_conf(config)
            })
            .clone();
        Ok(S3Bucket { client, bucket: source.bucket.clone(), sts: Arc::clone(&self.sts), role: key })
    }
}

/// One S3 bucket, readable with the customer's role.
#[derive(Debug, Clone)]
pub struct S3Bucket {
    client: aws_sdk_s3::Client,
    bucket: String,
    sts: Arc<StsCredentials>,
    role: RoleKey,
}

impl S3Bucket {
    /// What signing a URL for this bucket needs: the client (its region and
    /// endpoint) and the role's session cache.
    pub(crate) fn parts(&self) -> (&aws_sdk_s3::Client, &str, &StsCredentials, &RoleKey) {
        (&self.client, &self.bucket, &self.sts, &self.role)
    }
}

#[async_trait::async_trait]
impl ObjectSource for S3Bucket {
    async fn list_page(&self, query: ListQuery<'_>) -> Result<ListPage, StorageError> {
        let page = self.renewing(|| self.list_once(query)).await?;
        // StartAfter is exclusive: we asked from just before `start_at`.
        Ok(page.drop_before(query.start_at))
    }

    async fn read(
        &self,
        key: &str,
        etag: Option<&str>,
        range: Option<ByteRange>,
    ) -> Result<ObjectBody, StorageError> {
        self.renewing(|| self.read_once(key, etag, range)).await
    }
}

impl S3Bucket {
    /// Runs `call`; if S3 refused the session (expired or revoked before its
    /// time), renews it once and runs `call` again.
    async fn renewing<T, F, Fut>(&self, call: F) -> Result<T, StorageError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StorageError>>,
    {
        match call().await {
            Err(StorageError::CredentialsExpired(reason)) => {
                tracing::info!(role_arn = %self.role.role_arn, %reason, "S3 refused the session; renewing it once.");
                self.sts.invalidate(&self.role).await;
                call().await
            }
            other => other,
        }
    }

    async fn list_once(&self, query: ListQuery<'_>) -> Result<ListPage, StorageError> {
        let prefix = query.prefix;
        // StartAfter is exclusive: start after `start_at` without its last
        // character, a proper prefix of it and so before it.
        let start_after = query.start_at.map(|s| {
            let mut chars = s.chars();
            chars.next_back();
            chars.as_str().to_owned()
        });
        let output = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .max_keys(i32::try_from(query.max_keys).unwrap_or(1000))
            .set_continuation_token(query.token.map(str::to_owned))
            .set_delimiter(query.delimiter.map(str::to_owned))
            .set_start_after(start_after.filter(|s| !s.is_empty()))
            // Keys may hold characters XML cannot carry (control characters):
            // S3 then sends them, and the common prefixes, URL-encoded.
            .encoding_type(EncodingType::Url)
            .send()
            .await
            .map_err(|e| self.classify(prefix, e))?;
        let next = output.next_continuation_token;
        if output.is_truncated == Some(true) && next.is_none() {
            // Ending here would silently drop the rest of the listing.
            return Err(StorageError::Unavailable(format!(
                "S3 said the listing of s3://{}/{prefix} goes on but gave no continuation token",
                self.bucket
            )));
        }
        // The SDK's strings are moved, not copied: a page is 1,000 of them.
        let objects = output
            .contents
            .unwrap_or_default()
            .into_iter()
            .filter_map(|o| {
                Some(ObjectMeta {
                    size: u64::try_from(o.size.unwrap_or(0)).unwrap_or(0),
                    etag: o.e_tag.map(unquoted),
                    last_modified: o
                        .last_modified
                        .and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
                    key: url_decoded(o.key?),
                })
            })
            .collect();
        let prefixes = output
            .common_prefixes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| Some(url_decoded(p.prefix?)))
            .collect();
        Ok(ListPage { objects, prefixes, next })
    }

    async fn read_once(
        &self,
        key: &str,
        etag: Option<&str>,
        range: Option<ByteRange>,
    ) -> Result<ObjectBody, StorageError> {
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_if_match(etag.map(|e| format!("\"{e}\"")))
            .set_range(range.map(ByteRange::header))
            .send()
            .await
            .map_err(|e| self.classify_read(key, e))?;
        let size = output.content_length().unwrap_or(0);
        let whole = range_total(output.content_range()).is_none_or(|total| i64::try_from(total) == Ok(size));
        // KMS- and customer-key-encrypted objects have ETags that are not MD5s.
        let plain = output.sse_customer_algorithm().is_none()
            && !matches!(
                output.server_side_encryption(),
                Some(ServerSideEncryption::AwsKms | ServerSideEncryption::AwsKmsDsse)
            );
        let md5 = output.e_tag().filter(|_| plain && whole).and_then(etag_md5);
        Ok(object_body(output, md5, format!("s3://{}/{key}", self.bucket)))
    }
}

/// A GetObject response as an [`ObjectBody`]; `url` names the object in
/// the errors of a stream that breaks off.
pub(crate) fn object_body(output: GetObjectOutput, md5: Option<[u8; 16]>, url: String) -> ObjectBody {
    let size = u64::try_from(output.content_length().unwrap_or(0)).unwrap_or(0);
    let total = range_total(output.content_range()).unwrap_or(size);
    let chunks = futures_util::stream::unfold((output.body, url), |(mut body, url)| async move {
        let next = body.next().await?;
        let item = next.map_err(|e| StorageError::Unavailable(format!("reading {url} broke off: {e}")));
        Some((item, (body, url)))
    });
    ObjectBody { size, total, md5, chunks: Box::pin(chunks) }
}

/// An ETag without its surrounding quotes, in place.
fn unquoted(mut etag: String) -> String {
    if etag.len() >= 2 && etag.starts_with('"') && etag.ends_with('"') {
        etag.pop();
        etag.remove(0);
    }
    etag
}

/// A key or prefix as `encoding-type=url` sent it, decoded; the string is
/// reused when there was nothing to decode (nearly always).
fn url_decoded(encoded: String) -> String {
    match percent_decode_str(&encoded).decode_utf8_lossy() {
        std::borrow::Cow::Borrowed(_) => encoded,
        std::borrow::Cow::Owned(decoded) => decoded,
    }
}

/// The MD5 in a single-part ETag (32 hex digits); multipart ETags end in `-N`.
fn etag_md5(etag: &str) -> Option<[u8; 16]> {
    let hex = etag.trim_matches('"');
    if hex.len() != 32 {
        return None;
    }
    let mut md5 = [0u8; 16];
    for (i, byte) in md5.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(md5)
}

impl S3Bucket {
    fn classify_read<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
        &self,
        key: &str,
        error: SdkError<E>,
    ) -> StorageError {
        let url = format!("s3://{}/{key}", self.bucket);
        match &error {
            SdkError::ServiceError(service) => {
                match (service.raw().status().as_u16(), service.err().code()) {
                    (412, _) | (_, Some("PreconditionFailed")) => StorageError::Changed(format!(
                        "{url} changed after it was listed; requeue the import to copy the new version"
                    )),
                    (_, Some("NoSuchBucket")) => self.classify("", error),
                    (404, _) | (_, Some("NoSuchKey")) => {
                        StorageError::ObjectNotFound(format!("{url} was deleted after it was listed"))
                    }
                    (403, _) => StorageError::AccessDenied(format!(
                        "Access denied reading {url}: the role needs s3:GetObject on this object"
                    )),
                    _ => self.classify("", error),
                }
            }
            _ => self.classify("", error),
        }
    }

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
            (_, "ExpiredToken" | "InvalidToken" | "TokenRefreshRequired" | "InvalidAccessKeyId") => {
                StorageError::CredentialsExpired(format!("S3 {status} {code}"))
            }
            (_, "AccessDenied") | (403, _) => StorageError::AccessDenied(format!(
                "Access denied listing s3://{bucket}/{prefix}: the role needs s3:ListBucket on arn:aws:s3:::{bucket} for this prefix"
            )),
            (_, "SlowDown") | (429, _) | (503, _) => StorageError::Throttled(format!("S3 {status} {code}")),
            _ => StorageError::Unavailable(format!("S3 {status} {code}: {}", service.err().message().unwrap_or_default())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::etag_md5;

    #[test]
    fn etags_lose_their_quotes_and_keys_their_encoding() {
        assert_eq!(super::unquoted("\"abc\"".into()), "abc");
        assert_eq!(super::unquoted("abc".into()), "abc");
        assert_eq!(super::url_decoded("a/h%25/x%20y".into()), "a/h%/x y");
    }

    #[test]
    fn only_single_part_etags_are_md5s() {
        assert_eq!(etag_md5("\"d41d8cd98f00b204e9800998ecf8427e\"").map(|m| m[0]), Some(0xd4));
        assert_eq!(etag_md5("d41d8cd98f00b204e9800998ecf8427e-3"), None);
        assert_eq!(etag_md5("zz1d8cd98f00b204e9800998ecf8427e"), None);
    }
}
