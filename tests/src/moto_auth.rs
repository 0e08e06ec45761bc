//! The AWS of the connection checks' tests: the moto that
//! `scripts/services.sh` runs with signatures and IAM policies enforced
//! (trust policies' `sts:ExternalId` conditions included), on a port of its
//! own. Each test makes its own IAM user there (Tether's identity), its own
//! roles and buckets, with the admin user made when that moto started.
//!
//! Endpoints and keys are set on each SDK configuration, never in the
//! process's environment, which the other tests' shared moto lives in.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use aws_types::service_config::{LoadServiceConfig, ServiceConfigKey};
use serde_json::{json, Value};

use crate::service_var;

/// S3 at one address, every other service at another.
#[derive(Debug)]
struct Endpoints {
    s3: String,
    others: String,
}

impl LoadServiceConfig for Endpoints {
    fn load_config(&self, key: ServiceConfigKey<'_>) -> Option<String> {
        match (key.service_id(), key.env()) {
            ("S3", "AWS_ENDPOINT_URL") => Some(self.s3.clone()),
            (_, "AWS_ENDPOINT_URL") => Some(self.others.clone()),
            _ => None,
        }
    }
}

/// An AWS configuration with these keys, S3 at `s3` and STS and IAM at
/// `others`.
fn sdk(s3: &str, others: &str, key_id: &str, secret: &str) -> SdkConfig {
    let credentials = Credentials::new(key_id, secret, None, None, "tether-test");
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(others)
        .service_config(Endpoints { s3: s3.to_owned(), others: others.to_owned() })
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build()
}

/// One test's own IAM user on the auth-enforcing moto, and the admin's
/// clients to make roles and buckets for it.
#[derive(Debug)]
pub struct AwsAccount {
    /// The moto's address.
    pub url: String,
    pub iam: aws_sdk_iam::Client,
    /// The admin's S3 client (path-style).
    pub s3: aws_sdk_s3::Client,
    /// Tether's identity: the test's IAM user.
    pub tether: SdkConfig,
    /// That user's ARN, which trust policies name.
    pub tether_arn: String,
    keys: (String, String),
}

impl AwsAccount {
    /// Makes the IAM user `tether-{id}`, allowed to assume roles.
    pub async fn new(id: &str) -> Self {
        let url = service_var("TETHER_TEST_MOTO_AUTH_URL");
        let keys_file = service_var("TETHER_TEST_MOTO_AUTH_KEYS");
        let keys = std::fs::read_to_string(&keys_file).unwrap_or_else(|e| {
            panic!(
                "cannot read the auth moto's admin keys at {keys_file} ({e}): run scripts/services.sh start"
            )
        });
        let mut keys = keys.split_whitespace();
        let (Some(admin_id), Some(admin_secret)) = (keys.next(), keys.next()) else {
            panic!("{keys_file} does not hold an access key and its secret: run scripts/services.sh start")
        };
        let admin = sdk(&url, &url, admin_id, admin_secret);
        let iam = aws_sdk_iam::Client::new(&admin);
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&admin).force_path_style(true).build(),
        );
        let user = format!("tether-{id}");
        let created = iam.create_user().user_name(&user).send().await.unwrap_or_else(|e| {
            panic!(
                "the auth moto at {url} refused to make an IAM user (is it running? scripts/services.sh start): {}",
                aws_sdk_iam::error::DisplayErrorContext(e)
            )
        });
        let tether_arn = created.user().map(|u| u.arn().to_owned()).expect("the new user's ARN");
        let policy = json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["sts:AssumeRole", "sts:GetCallerIdentity"], "Resource": "*"}]});
        iam.put_user_policy()
            .user_name(&user)
            .policy_name("tether")
            .policy_document(policy.to_string())
            .send()
            .await
            .expect("give Tether's user sts:AssumeRole");
        let key =
            iam.create_access_key().user_name(&user).send().await.expect("an access key for Tether's user");
        let key = key.access_key().expect("the access key");
        let keys = (key.access_key_id().to_owned(), key.secret_access_key().to_owned());
        let tether = sdk(&url, &url, &keys.0, &keys.1);
        Self { url, iam, s3, tether, tether_arn, keys }
    }

    /// Tether's identity with S3 at another address (a silent store).
    pub fn tether_with_s3_at(&self, s3: &str) -> SdkConfig {
        sdk(s3, &self.url, &self.keys.0, &self.keys.1)
    }

    /// Tether's keys, for a `tetherctl` process.
    pub fn tether_keys(&self) -> (&str, &str) {
        (&self.keys.0, &self.keys.1)
    }

    /// A role with this trust policy and permission policy; returns its ARN.
    pub async fn role(&self, name: &str, trust: &Value, permissions: &Value) -> String {
        let role = self
            .iam
            .create_role()
            .role_name(name)
            .assume_role_policy_document(trust.to_string())
            .max_session_duration(21_600)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!("create the role {name}: {}", aws_sdk_iam::error::DisplayErrorContext(e))
            });
        self.iam
            .put_role_policy()
            .role_name(name)
            .policy_name("tether")
            .policy_document(permissions.to_string())
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!("give {name} its policy: {}", aws_sdk_iam::error::DisplayErrorContext(e))
            });
        role.role().map(|r| r.arn().to_owned()).expect("the new role's ARN")
    }

    /// A bucket in `region`.
    pub async fn bucket(&self, name: &str, region: &str) {
        let location = CreateBucketConfiguration::builder()
            .location_constraint(BucketLocationConstraint::from(region))
            .build();
        self.s3
            .create_bucket()
            .bucket(name)
            .create_bucket_configuration(location)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create {name}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
    }

    pub async fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        self.s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body.to_vec()))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!("put s3://{bucket}/{key}: {}", aws_sdk_s3::error::DisplayErrorContext(e))
            });
    }
}
