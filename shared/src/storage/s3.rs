//! Amazon S3 (and S3-compatible stores) as an [`ObjectSource`]: ListObjectsV2
//! one page at a time, with the customer's role assumed through STS.
//!
//! Requests are signed for the bucket's own region. A request that names no
//! region learns it from `GetBucketLocation`, once per bucket and process
//! ([`BucketRegions`]); a region that turns out wrong (S3 answers
//! `PermanentRedirect`, `AuthorizationHeaderMalformed` or a 301 naming the
//! bucket's region) is corrected and the request sent again, not failed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_s3::config::{IdentityCache, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::types::{BucketLocationConstraint, EncodingType, ServerSideEncryption};
use chrono::DateTime;
use percent_encoding::percent_decode_str;

use super::{
    range_total, ByteRange, ListPage, ListQuery, ObjectBody, ObjectMeta, ObjectSource, StorageError,
};
use crate::contract::S3Source;
use crate::credentials::slots::Slots;
use crate::credentials::sts::{RoleKey, StsCredentials};

/// Where requests go when nothing better is known: S3 answers
/// `GetBucketLocation` for a bucket of any region there.
const FALLBACK_REGION: &str = "us-east-1";

/// The region of each bucket, as S3 itself said it (`GetBucketLocation`, or
/// the region a refusal named). Shared by everything in a process that reads
/// S3 (imports, checks, signing); a bucket does not move, and an entry that
/// went stale (bucket deleted and made again elsewhere) is corrected by the
/// next refusal.
#[derive(Debug)]
pub struct BucketRegions {
    known: Mutex<HashMap<String, String>>,
    /// One `GetBucketLocation` per bucket at a time; filled once it was asked,
    /// even if refused, so that a role without `s3:GetBucketLocation` is not
    /// asked again on every page.
    asked: Slots<String, ()>,
}

impl Default for BucketRegions {
    fn default() -> Self {
        Self { known: Mutex::new(HashMap::new()), asked: Slots::new() }
    }
}

impl BucketRegions {
    /// The bucket's region, if S3 said it.
    pub fn get(&self, bucket: &str) -> Option<String> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner).get(bucket).cloned()
    }

    fn learn(&self, bucket: &str, region: &str) {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(bucket.to_owned(), region.to_owned());
    }
}

/// S3 clients per (role, region), all sharing one HTTP connection pool and
/// one STS cache.
#[derive(Debug)]
struct Clients {
    base: aws_sdk_s3::config::Builder,
    sts: Arc<StsCredentials>,
    built: Mutex<HashMap<(RoleKey, String), aws_sdk_s3::Client>>,
}

impl Clients {
    fn get(&self, role: &RoleKey, region: &str) -> aws_sdk_s3::Client {
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        built
            .entry((role.clone(), region.to_owned()))
            .or_insert_with(|| {
                let config = self
                    .base
                    .clone()
                    .region(Region::new(region.to_owned()))
                    .credentials_provider(self.sts.provider(role.clone()))
                    .build();
                aws_sdk_s3::Client::from_conf(config)
            })
            .clone()
    }
}

/// Opens S3 buckets with the customer's role, in the bucket's own region.
#[derive(Debug)]
pub struct S3Sources {
    clients: Arc<Clients>,
    regions: Arc<BucketRegions>,
    /// `AWS_REGION`: where a bucket of unknown region is asked first.
    default_region: String,
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
        let default_region = sdk.region().map_or_else(|| FALLBACK_REGION.to_owned(), ToString::to_string);
        let clients = Arc::new(Clients { base, sts, built: Mutex::new(HashMap::new()) });
        Self { clients, regions: Arc::default(), default_region }
    }

    /// Shares the bucket regions learnt here with the rest of the process
    /// (connection checks and signing learn and use them too).
    pub fn sharing_regions(mut self, regions: Arc<BucketRegions>) -> Self {
        self.regions = regions;
        self
    }

    /// A source for the request's bucket. Assumes the role first, so that a
    /// refusal surfaces here as a clear credentials error; then settles the
    /// region: the one S3 named before, else the request's, else the one
    /// `GetBucketLocation` says.
    pub async fn open(&self, source: &S3Source) -> Result<S3Bucket, StorageError> {
        let role = RoleKey { role_arn: source.role_arn.clone(), external_id: source.external_id.clone() };
        self.clients.sts.credentials(&role).await?;
        let known = self.regions.get(&source.bucket);
        let region =
            known.clone().or_else(|| source.region.clone()).unwrap_or_else(|| self.default_region.clone());
        let bucket = S3Bucket {
            current: Mutex::new((region.clone(), self.clients.get(&role, &region))),
            clients: Arc::clone(&self.clients),
            regions: Arc::clone(&self.regions),
            bucket: source.bucket.clone(),
            role,
        };
        if known.is_none() && source.region.is_none() {
            bucket.discover_region().await?;
        }
        Ok(bucket)
    }
}

/// One S3 bucket, readable with the customer's role.
#[derive(Debug)]
pub struct S3Bucket {
    clients: Arc<Clients>,
    regions: Arc<BucketRegions>,
    bucket: String,
    role: RoleKey,
    /// The region requests are signed for, and its client; it moves when S3
    /// names another.
    current: Mutex<(String, aws_sdk_s3::Client)>,
}

#[async_trait::async_trait]
impl ObjectSource for S3Bucket {
    async fn list_page(&self, query: ListQuery<'_>) -> Result<ListPage, StorageError> {
        let page = self.call(|client| self.list_once(client, query)).await?;
        // StartAfter is exclusive: we asked from just before `start_at`; S3
        // has no end key.
        Ok(page.within(&query))
    }

    async fn read(
        &self,
        key: &str,
        etag: Option<&str>,
        range: Option<ByteRange>,
    ) -> Result<ObjectBody, StorageError> {
        self.call(|client| self.read_once(client, key, etag, range)).await
    }
}

/// A failed S3 call, before it is retried or reported.
enum Failure {
    Storage(StorageError),
    /// S3 said the bucket is in `region`: sign for it and try again.
    WrongRegion {
        region: String,
        error: StorageError,
    },
}

impl From<Failure> for StorageError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Storage(error) | Failure::WrongRegion { error, .. } => error,
        }
    }
}

impl S3Bucket {
    /// The region requests are signed for: the bucket's own, once S3 said it.
    pub fn region(&self) -> String {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).0.clone()
    }

    /// The client for the bucket's current region.
    pub(crate) fn client(&self) -> aws_sdk_s3::Client {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).1.clone()
    }

    pub fn name(&self) -> &str {
        &self.bucket
    }

    /// What signing a URL for this bucket needs: the client of its region
    /// and the role's session cache.
    pub(crate) fn signing_parts(&self) -> (aws_sdk_s3::Client, &StsCredentials, &RoleKey) {
        (self.client(), &self.clients.sts, &self.role)
    }

    fn move_to(&self, region: &str) {
        self.regions.learn(&self.bucket, region);
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) =
            (region.to_owned(), self.clients.get(&self.role, region));
    }

    /// Runs `call` with the current client. If S3 named another region, moves
    /// there and runs it again; if S3 refused the session (expired or revoked
    /// before its time), renews it and runs it again. Once each.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, StorageError>
    where
        F: Fn(aws_sdk_s3::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let (mut moved, mut renewed) = (false, false);
        loop {
            match call(self.client()).await {
                Ok(value) => return Ok(value),
                Err(Failure::WrongRegion { region, error }) => {
                    if moved || region == self.region() {
                        return Err(error);
                    }
                    tracing::info!(bucket = %self.bucket, from = %self.region(), to = %region, "S3 says the bucket is in another region; using that one.");
                    self.move_to(&region);
                    moved = true;
                }
                Err(Failure::Storage(StorageError::CredentialsExpired(reason))) if !renewed => {
                    tracing::info!(role_arn = %self.role.role_arn, %reason, "S3 refused the session; renewing it once.");
                    self.clients.sts.invalidate(&self.role).await;
                    renewed = true;
                }
                Err(failure) => return Err(failure.into()),
            }
        }
    }

    /// The bucket's region by `GetBucketLocation`; learnt for the process.
    pub async fn location(&self) -> Result<String, StorageError> {
        let region = self
            .call(|client| async move {
                let output = client
                    .get_bucket_location()
                    .bucket(&self.bucket)
                    .send()
                    .await
                    .map_err(|e| self.failed(e, |e| self.classify("", e)))?;
                Ok(location_region(output.location_constraint()))
            })
            .await?;
        self.move_to(&region);
        Ok(region)
    }

    /// Reads the first byte of `key`: proof that the role may read objects,
    /// without downloading one (a connection check).
    pub(crate) async fn first_byte(&self, key: &str) -> Result<(), StorageError> {
        self.call(|client| async move {
            let read = client.get_object().bucket(&self.bucket).key(key).range("bytes=0-0").send().await;
            match read {
                Ok(output) => output.body.collect().await.map(drop).map_err(|e| {
                    Failure::Storage(StorageError::Unavailable(format!(
                        "reading s3://{}/{key} broke off: {e}",
                        self.bucket
                    )))
                }),
                // An empty object has no first byte, but it was readable.
                Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 416 => Ok(()),
                Err(e) => Err(self.failed(e, |e| self.classify_read(key, e))),
            }
        })
        .await
    }

    /// Settles the region of a bucket nobody named one for: asks S3 once per
    /// bucket and process. A role that may not ask stays on the default
    /// region, and the first refusal that names the right one moves it.
    async fn discover_region(&self) -> Result<(), StorageError> {
        let slot = self.regions.asked.get(&self.bucket);
        let mut asked = slot.lock().await;
        if let Some(region) = self.regions.get(&self.bucket) {
            self.move_to(&region);
            return Ok(());
        }
        if asked.is_some() {
            return Ok(());
        }
        match self.location().await {
            Ok(_) => {}
            Err(StorageError::AccessDenied(reason)) => {
                tracing::info!(bucket = %self.bucket, %reason, "The role may not call GetBucketLocation; trying the default region.");
            }
            Err(error) => return Err(error),
        }
        *asked = Some(());
        Ok(())
    }

    /// Classifies a failed call with `classify`, unless S3 named the
    /// bucket's region in it.
    fn failed<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
        &self,
        error: SdkError<E>,
        classify: impl FnOnce(SdkError<E>) -> StorageError,
    ) -> Failure {
        match region_hint(&error) {
            Some(region) => Failure::WrongRegion { region, error: classify(error) },
            None => Failure::Storage(classify(error)),
        }
    }

    async fn list_once(&self, client: aws_sdk_s3::Client, query: ListQuery<'_>) -> Result<ListPage, Failure> {
        let prefix = query.prefix;
        let start_after = query.start_at.map(just_before);
        let output = client
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
            .map_err(|e| self.failed(e, |e| self.classify(prefix, e)))?;
        let next = output.next_continuation_token;
        if output.is_truncated == Some(true) && next.is_none() {
            // Ending here would silently drop the rest of the listing.
            return Err(Failure::Storage(StorageError::Unavailable(format!(
                "S3 said the listing of s3://{}/{prefix} goes on but gave no continuation token",
                self.bucket
            ))));
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
        client: aws_sdk_s3::Client,
        key: &str,
        etag: Option<&str>,
        range: Option<ByteRange>,
    ) -> Result<ObjectBody, Failure> {
        let output = client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_if_match(etag.map(|e| format!("\"{e}\"")))
            .set_range(range.map(ByteRange::header))
            .send()
            .await
            .map_err(|e| self.failed(e, |e| self.classify_read(key, e)))?;
        // KMS- and customer-key-encrypted objects have ETags that are not MD5s.
        let plain = output.sse_customer_algorithm().is_none()
            && !matches!(
                output.server_side_encryption(),
                Some(ServerSideEncryption::AwsKms | ServerSideEncryption::AwsKmsDsse)
            );
        let md5 = output.e_tag().filter(|_| plain).and_then(etag_md5);
        Ok(object_body(output, md5, format!("s3://{}/{key}", self.bucket)))
    }
}

/// A StartAfter for a listing from `start_at` on (StartAfter is
/// exclusive): its last character one less, then U+10FFFF, the largest; no
/// key lies between that and `start_at` but such as begin with it, which
/// the caller drops. Where the last character has none below it, the rest
/// of the key, a proper prefix and so before it.
fn just_before(start_at: &str) -> String {
    let mut chars = start_at.chars();
    let Some(last) = chars.next_back() else { return String::new() };
    let below = match u32::from(last) {
        0 => None,
        0xE000 => Some('\u{D7FF}'),
        code => char::from_u32(code - 1),
    };
    match below {
        Some(below) => format!("{}{below}\u{10FFFF}", chars.as_str()),
        None => chars.as_str().to_owned(),
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

/// The region a `LocationConstraint` stands for: none is us-east-1, and
/// `EU` the old name of eu-west-1.
pub(crate) fn location_region(constraint: Option<&BucketLocationConstraint>) -> String {
    match constraint.map(BucketLocationConstraint::as_str) {
        None | Some("") => "us-east-1".to_owned(),
        Some("EU") => "eu-west-1".to_owned(),
        Some(region) => region.to_owned(),
    }
}

/// The bucket's region, when S3 refused a request for being signed for
/// another one: from the `x-amz-bucket-region` header, else from the
/// `<Region>` of the error body (`AuthorizationHeaderMalformed` has only that).
fn region_hint<E: ProvideErrorMetadata>(error: &SdkError<E>) -> Option<String> {
    let SdkError::ServiceError(service) = error else { return None };
    let raw = service.raw();
    let code = service.err().code().unwrap_or_default();
    let misdirected = raw.status().as_u16() == 301
        || matches!(
            code,
            "PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException"
        );
    if !misdirected {
        return None;
    }
    let from_body = || {
        let body = std::str::from_utf8(raw.body().bytes()?).ok()?;
        let (_, rest) = body.split_once("<Region>")?;
        rest.split_once("</Region>").map(|(region, _)| region.trim())
    };
    let region = raw.headers().get("x-amz-bucket-region").or_else(from_body)?;
    let plausible = !region.is_empty()
        && region.len() <= 32
        && region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    plausible.then(|| region.to_owned())
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
    use super::{etag_md5, just_before};

    #[test]
    fn a_listing_starts_just_before_its_first_key() {
        assert_eq!(just_before("flat/001"), "flat/000\u{10FFFF}");
        assert!(just_before("flat/001").as_str() > "flat/000999.jpg");
        assert!(just_before("flat/001").as_str() < "flat/001");
        assert_eq!(just_before("a\0"), "a");
        assert_eq!(just_before(""), "");
        assert_eq!(just_before("x\u{E000}"), "x\u{D7FF}\u{10FFFF}");
    }

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
