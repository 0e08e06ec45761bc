//! The three providers' emulators behind one test handle, so that the
//! conformance suite runs the very same cases against S3 (moto), GCS
//! (fake-gcs-server) and Azure Blob (Azurite). Each test gets its own bucket
//! or container, named after the test's id.

use aws_sdk_s3::primitives::ByteStream;
use base64::Engine;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use crate::{service_var, TestEnv};

/// Azurite's development account.
pub const AZURE_ACCOUNT: &str = "devstoreaccount1";
/// Keeps unreserved characters; `/` is kept too where `PATH` is used.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
const PATH: &AsciiSet = &UNRESERVED.remove(b'/');

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    S3,
    Gcs,
    Azure,
}

/// A bucket (or container) of one provider, made for one test.
#[derive(Debug)]
pub struct TestBucket {
    pub provider: Provider,
    pub name: String,
    s3: aws_sdk_s3::Client,
    http: reqwest::Client,
}

impl TestEnv {
    /// This test's bucket at `provider` (the S3 one exists already).
    pub async fn bucket(&self, provider: Provider) -> TestBucket {
        let bucket = TestBucket {
            provider,
            name: self.bucket.clone(),
            s3: self.s3.clone(),
            http: reqwest::Client::new(),
        };
        match provider {
            Provider::S3 => {}
            Provider::Gcs => {
                let url = format!("{}/storage/v1/b", gcs_host());
                let response = bucket.http.post(&url).json(&json!({ "name": bucket.name })).send().await;
                check(response, "create a GCS bucket (is fake-gcs-server running?)").await;
            }
            Provider::Azure => {
                let url = format!("{}?restype=container&{}", bucket.container_url(), bucket.admin_sas());
                check(bucket.http.put(&url).send().await, "create an Azure container (is Azurite running?)")
                    .await;
            }
        }
        bucket
    }
}

fn gcs_host() -> String {
    service_var("STORAGE_EMULATOR_HOST").trim_end_matches('/').to_owned()
}

pub(crate) async fn put_s3(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: &[u8]) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("put s3://{bucket}/{key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
}

/// Empties and deletes an S3 bucket, if it exists; errors are ignored (it
/// is clean-up).
pub(crate) async fn delete_s3_bucket(s3: &aws_sdk_s3::Client, bucket: &str) {
    loop {
        let Ok(page) = s3.list_objects_v2().bucket(bucket).send().await else { return };
        let ids: Vec<_> = page
            .contents()
            .iter()
            .filter_map(|o| aws_sdk_s3::types::ObjectIdentifier::builder().key(o.key()?).build().ok())
            .collect();
        if ids.is_empty() {
            break;
        }
        let Ok(delete) = aws_sdk_s3::types::Delete::builder().set_objects(Some(ids)).quiet(true).build()
        else {
            return;
        };
        if s3.delete_objects().bucket(bucket).delete(delete).send().await.is_err() {
            return;
        }
    }
    let _ = s3.delete_bucket().bucket(bucket).send().await;
}

/// Deletes a test's GCS bucket and Azure container named `name`, with what
/// they hold, where the test made them (best effort: a missing one is fine).
pub(crate) async fn delete_gcs_and_azure(s3: &aws_sdk_s3::Client, name: &str) {
    let bucket = |provider| TestBucket {
        provider,
        name: name.to_owned(),
        s3: s3.clone(),
        http: reqwest::Client::new(),
    };
    let gcs = bucket(Provider::Gcs);
    let objects = format!("{}/storage/v1/b/{name}/o", gcs_host());
    loop {
        let Ok(response) = gcs.http.get(&objects).query(&[("fields", "items(name)")]).send().await else {
            break;
        };
        let listing: Value = response.json().await.unwrap_or_default();
        let names: Vec<String> = listing["items"]
            .as_array()
            .map(|items| items.iter().filter_map(|i| i["name"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        if names.is_empty() {
            break;
        }
        for object in names {
            let _ = gcs
                .http
                .delete(format!("{objects}/{}", utf8_percent_encode(&object, UNRESERVED)))
                .send()
                .await;
        }
    }
    let _ = gcs.http.delete(format!("{}/storage/v1/b/{name}", gcs_host())).send().await;
    let azure = bucket(Provider::Azure);
    let url = format!("{}?restype=container&{}", azure.container_url(), azure.admin_sas());
    let _ = azure.http.delete(&url).send().await;
}

/// Panics with the response's status and body unless it succeeded.
async fn check(response: reqwest::Result<reqwest::Response>, what: &str) -> reqwest::Response {
    let response = response.unwrap_or_else(|e| panic!("{what}: {e}"));
    if !response.status().is_success() {
        let status = response.status();
        panic!("{what}: {status} {}", response.text().await.unwrap_or_default());
    }
    response
}

impl TestBucket {
    /// The URL Tether records for `key` (`source_url`).
    pub fn url(&self, key: &str) -> String {
        match self.provider {
            Provider::S3 => format!("s3://{}/{key}", self.name),
            Provider::Gcs => format!("gs://{}/{key}", self.name),
            Provider::Azure => format!("azure://{AZURE_ACCOUNT}/{}/{key}", self.name),
        }
    }

    /// The request's `source` for this bucket, or for `bucket` instead.
    pub fn source_named(&self, bucket: &str, prefixes: &[&str]) -> Value {
        match self.provider {
            Provider::S3 => json!({
                "provider": "s3", "bucket": bucket, "prefixes": prefixes,
                "role_arn": "arn:aws:iam::123456789012:role/tether-test", "external_id": "ext-7ed6d782",
            }),
            Provider::Gcs => json!({
                "provider": "gcs", "bucket": bucket, "prefixes": prefixes,
                "impersonate_service_account": "importer@ws-test.iam.gserviceaccount.com",
            }),
            Provider::Azure => json!({
                "provider": "azure", "account": AZURE_ACCOUNT, "container": bucket, "prefixes": prefixes,
                "sas_token": self.sas("rl", chrono::Duration::hours(2)),
            }),
        }
    }

    /// A link request for `prefixes` of this bucket into `dataset`.
    pub fn request(&self, env: &TestEnv, dataset: &str, prefixes: &[&str]) -> Value {
        let mut request = env.request(dataset, prefixes);
        request["source"] = self.source_named(&self.name, prefixes);
        request
    }

    pub async fn put(&self, key: &str, body: &[u8]) {
        match self.provider {
            Provider::S3 => put_s3(&self.s3, &self.name, key, body).await,
            Provider::Gcs => {
                let url = format!("{}/upload/storage/v1/b/{}/o", gcs_host(), self.name);
                let request = self
                    .http
                    .post(url)
                    .query(&[("uploadType", "media"), ("name", key)])
                    .header("content-type", "application/octet-stream")
                    .body(body.to_vec());
                check(request.send().await, &format!("upload gs://{}/{key}", self.name)).await;
            }
            Provider::Azure => {
                let request = self
                    .http
                    .put(self.blob_url(key))
                    .header("x-ms-blob-type", "BlockBlob")
                    .header("content-type", "application/octet-stream")
                    .body(body.to_vec());
                check(request.send().await, &format!("upload {}", self.url(key))).await;
            }
        }
    }

    /// Puts a blob whose name has `.` or `..` path segments (Azure only).
    /// The name travels as one URL path segment, its `/`s encoded as `%2F`:
    /// every URL parser (reqwest's too) folds a `..` segment, or its
    /// `%2E%2E` spelling, away, but Azurite decodes the `%2F`s and stores
    /// the name as given (`a/../b.jpg`).
    pub async fn put_with_dot_segments(&self, key: &str, body: &[u8]) {
        assert_eq!(self.provider, Provider::Azure, "only Azure names are sent this way");
        let url =
            format!("{}/{}?{}", self.container_url(), utf8_percent_encode(key, UNRESERVED), self.admin_sas());
        let request = self
            .http
            .put(url)
            .header("x-ms-blob-type", "BlockBlob")
            .header("content-type", "application/octet-stream")
            .body(body.to_vec());
        check(request.send().await, &format!("upload {}", self.url(key))).await;
    }

    /// A folder as the provider's console makes one: an empty `dir/` object
    /// on S3 and GCS; on Azure (whose blob names cannot end in `/`), an empty
    /// `dir` blob marked `hdi_isfolder`, as hierarchical-namespace accounts
    /// list their directories.
    pub async fn put_folder_marker(&self, dir: &str) {
        if self.provider != Provider::Azure {
            return self.put(dir, b"").await;
        }
        let request = self
            .http
            .put(self.blob_url(dir.trim_end_matches('/')))
            .header("x-ms-blob-type", "BlockBlob")
            .header("x-ms-meta-hdi_isfolder", "true")
            // Azurite wants a length, which an empty body would not send.
            .header("content-length", "0");
        check(request.send().await, &format!("create the folder {}", self.url(dir))).await;
    }

    pub async fn delete(&self, key: &str) {
        match self.provider {
            Provider::S3 => {
                self.s3.delete_object().bucket(&self.name).key(key).send().await.expect("delete");
            }
            Provider::Gcs => {
                let url = format!(
                    "{}/storage/v1/b/{}/o/{}",
                    gcs_host(),
                    self.name,
                    utf8_percent_encode(key, UNRESERVED)
                );
                check(self.http.delete(url).send().await, "delete a GCS object").await;
            }
            Provider::Azure => {
                check(self.http.delete(self.blob_url(key)).send().await, "delete a blob").await;
            }
        }
    }

    /// Puts objects 16 at a time.
    pub async fn put_all(&self, objects: &[(String, Vec<u8>)]) {
        use futures_util::StreamExt;
        futures_util::stream::iter(objects).for_each_concurrent(16, |(key, body)| self.put(key, body)).await;
    }

    fn container_url(&self) -> String {
        let endpoint = service_var("TETHER_AZURE_BLOB_ENDPOINT").replace("{account}", AZURE_ACCOUNT);
        format!("{endpoint}/{}", self.name)
    }

    fn blob_url(&self, key: &str) -> String {
        format!("{}/{}?{}", self.container_url(), utf8_percent_encode(key, PATH), self.admin_sas())
    }

    fn admin_sas(&self) -> String {
        self.sas("racwdl", chrono::Duration::hours(2))
    }

    /// An account SAS for Azurite with `permissions`, valid for `valid_for`
    /// from now (negative: expired), signed with the development key.
    pub fn sas(&self, permissions: &str, valid_for: chrono::Duration) -> String {
        let expiry = (chrono::Utc::now() + valid_for).format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let version = "2022-11-02";
        // Account SAS string-to-sign (versions from 2020-12-06 on).
        let to_sign = format!("{AZURE_ACCOUNT}\n{permissions}\nb\nsco\n\n{expiry}\n\n\n{version}\n\n");
        let key = base64::engine::general_purpose::STANDARD
            .decode(service_var("TETHER_TEST_AZURITE_KEY"))
            .expect("TETHER_TEST_AZURITE_KEY is base64");
        let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key), to_sign.as_bytes());
        let signature = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
        let enc = |s: &str| utf8_percent_encode(s, UNRESERVED).to_string();
        format!("sv={version}&ss=b&srt=sco&sp={permissions}&se={}&sig={}", enc(&expiry), enc(&signature))
    }

    /// The bytes of `gs://bucket/key` in the GCS emulator (a `gs://` copy).
    pub async fn gcs_get(bucket: &str, key: &str) -> Vec<u8> {
        let url = format!(
            "{}/storage/v1/b/{bucket}/o/{}?alt=media",
            gcs_host(),
            utf8_percent_encode(key, UNRESERVED)
        );
        let response = check(reqwest::Client::new().get(url).send().await, "download a GCS object").await;
        response.bytes().await.expect("read the body").to_vec()
    }
}
