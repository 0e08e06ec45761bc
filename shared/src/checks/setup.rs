//! The AWS set-up a customer pastes (contract §9): a trust policy that lets
//! only Tether's own principal assume the role, and only with the
//! workspace's ExternalId; a permission policy with exactly what imports,
//! checks and signing use, limited to the prefix; and CORS rules that let the
//! platform's pages load direct URLs. Written here rather than on a help page
//! so that they cannot drift from what Tether does.

use aws_sdk_sts::error::DisplayErrorContext;
use serde_json::{json, Value};

use super::{valid_origin, STEP_TIMEOUT};
use crate::contract::{external_id_ok, s3_bucket_ok, MAX_PREFIX_BYTES};

/// Why no set-up could be written.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A parameter is not valid; the sentence names it (400, exit 2).
    #[error("{0}")]
    Invalid(String),
    /// STS did not say who Tether is, so no trust policy can name it.
    #[error("Tether cannot tell its own AWS principal: {0}")]
    Identity(String),
}

/// What `GET /v1/setup/aws` and `tetherctl setup aws` are asked for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSetup {
    pub bucket: String,
    /// Empty: the whole bucket.
    pub prefix: String,
    pub external_id: String,
    pub origin: String,
}

impl AwsSetup {
    /// Checks each parameter; a refusal names it. `default_origin` (the
    /// first of `TETHER_API_ALLOWED_ORIGINS`) stands in for a missing origin.
    pub fn new(
        bucket: &str,
        prefix: Option<&str>,
        external_id: &str,
        origin: Option<&str>,
        default_origin: Option<&str>,
    ) -> Result<Self, SetupError> {
        if !s3_bucket_ok(bucket) {
            return Err(SetupError::Invalid(format!(
                "`bucket` is {:?}: give an S3 bucket name (3-63 lower-case letters, digits, dots and hyphens)",
                bucket.escape_debug().to_string()
            )));
        }
        let prefix = prefix.unwrap_or_default();
        if prefix.len() > MAX_PREFIX_BYTES || prefix.chars().any(char::is_control) {
            return Err(SetupError::Invalid(format!(
                "`prefix` is not a key prefix: give at most {MAX_PREFIX_BYTES} bytes without control characters"
            )));
        }
        if !external_id_ok(external_id) {
            return Err(SetupError::Invalid("`external_id` is not an ExternalId: give the workspace's (2-1224 characters of letters, digits and +=,.@:/-_)".into()));
        }
        let origin = match origin.or(default_origin) {
            Some(origin) => valid_origin(origin).map_err(|why| SetupError::Invalid(format!("`origin` {why}")))?,
            None => {
                return Err(SetupError::Invalid("`origin` is missing: give the platform's web origin, such as https://app.example.com (or set TETHER_API_ALLOWED_ORIGINS)".into()))
            }
        };
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            external_id: external_id.to_owned(),
            origin,
        })
    }

    /// The policies for Tether's own principal: the identity `sdk` holds,
    /// as STS `GetCallerIdentity` reports it.
    pub async fn policies_for_tether(&self, sdk: &aws_config::SdkConfig) -> Result<Value, SetupError> {
        let sts = aws_sdk_sts::Client::new(sdk);
        let caller = tokio::time::timeout(STEP_TIMEOUT, caller_arn(&sts))
            .await
            .map_err(|_| SetupError::Identity("STS did not answer GetCallerIdentity in time".into()))?
            .map_err(SetupError::Identity)?;
        Ok(self.policies(&caller))
    }

    /// `{"trust_policy", "permission_policy", "cors_rules"}` for the
    /// principal `caller_arn` (an ARN `GetCallerIdentity` reports).
    pub fn policies(&self, caller_arn: &str) -> Value {
        // The bucket lives in the caller's partition (aws, aws-cn, aws-us-gov).
        let partition = caller_arn.split(':').nth(1).filter(|p| p.starts_with("aws")).unwrap_or("aws");
        let bucket_arn = format!("arn:{partition}:s3:::{}", self.bucket);
        let escaped = iam_escaped(&self.prefix);
        let mut list = json!({
            "Sid": "TetherListsThePrefix",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket_arn,
        });
        if !self.prefix.is_empty() {
            list["Condition"] = json!({ "StringLike": { "s3:prefix": [format!("{escaped}*")] } });
        }
        json!({
            "trust_policy": {
                "Version": "2012-10-17",
                "Statement": [{
                    "Sid": "TetherAssumesWithTheWorkspaceExternalId",
                    "Effect": "Allow",
                    "Principal": { "AWS": trust_principal(caller_arn) },
                    "Action": "sts:AssumeRole",
                    "Condition": { "StringEquals": { "sts:ExternalId": self.external_id } },
                }],
            },
            "permission_policy": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "TetherReadsTheBucketsRegionAndCors",
                        "Effect": "Allow",
                        "Action": ["s3:GetBucketLocation", "s3:GetBucketCORS"],
                        "Resource": bucket_arn,
                    },
                    list,
                    {
                        "Sid": "TetherReadsObjects",
                        "Effect": "Allow",
                        "Action": "s3:GetObject",
                        "Resource": format!("{bucket_arn}/{escaped}*"),
                    },
                ],
            },
            "cors_rules": {
                "CORSRules": [{
                    "AllowedOrigins": [self.origin],
                    "AllowedMethods": ["GET", "HEAD"],
                    "AllowedHeaders": ["Range", "If-None-Match"],
                    "ExposeHeaders": ["ETag", "Content-Length", "Content-Range", "Accept-Ranges"],
                    "MaxAgeSeconds": 3600,
                }],
            },
        })
    }
}

/// Tether's own principal, as STS `GetCallerIdentity` reports it.
pub(super) async fn caller_arn(sts: &aws_sdk_sts::Client) -> Result<String, String> {
    let identity = sts
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| format!("STS GetCallerIdentity failed: {}", DisplayErrorContext(e)))?;
    identity.arn.ok_or_else(|| "STS GetCallerIdentity named no ARN".to_owned())
}

/// A prefix as IAM reads it literally in an ARN or a `StringLike` value:
/// its wildcards and `$` as the policy variables `${*}`, `${?}`, `${$}`.
pub fn iam_escaped(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        match c {
            '*' | '?' | '$' => {
                escaped.push_str("${");
                escaped.push(c);
                escaped.push('}');
            }
            c => escaped.push(c),
        }
    }
    escaped
}

/// The principal a trust policy names for the caller: an IAM user or role
/// ARN as it is; a role session (`arn:aws:sts::A:assumed-role/R/session`, as
/// Tether running on a role reports itself) as the role `arn:aws:iam::A:role/R`.
pub fn trust_principal(caller_arn: &str) -> String {
    let parts: Vec<&str> = caller_arn.splitn(6, ':').collect();
    if let [_, partition, "sts", _, account, resource] = parts.as_slice() {
        if let Some(role) = resource.strip_prefix("assumed-role/").and_then(|r| r.split('/').next()) {
            return format!("arn:{partition}:iam::{account}:role/{role}");
        }
    }
    caller_arn.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(prefix: Option<&str>) -> AwsSetup {
        AwsSetup::new("acme-images", prefix, "ext-123", Some("https://app.example.com"), None).expect("valid")
    }

    #[test]
    fn wildcards_and_dollars_of_a_prefix_are_escaped_for_iam() {
        assert_eq!(iam_escaped("a*b?c$d/"), "a${*}b${?}c${$}d/");
        assert_eq!(iam_escaped("plain/"), "plain/");
        let policies = setup(Some("2024/*raw?/")).policies("arn:aws:iam::111122223333:user/tether");
        let statements = &policies["permission_policy"]["Statement"];
        assert_eq!(statements[1]["Condition"]["StringLike"]["s3:prefix"][0], "2024/${*}raw${?}/*");
        assert_eq!(statements[2]["Resource"], "arn:aws:s3:::acme-images/2024/${*}raw${?}/*");
    }

    #[test]
    fn the_trust_policy_names_tethers_principal_and_requires_the_external_id() {
        let policies = setup(None).policies("arn:aws:sts::111122223333:assumed-role/tether-prod/i-0abc");
        let statement = &policies["trust_policy"]["Statement"][0];
        assert_eq!(statement["Principal"]["AWS"], "arn:aws:iam::111122223333:role/tether-prod");
        assert_eq!(statement["Condition"]["StringEquals"]["sts:ExternalId"], "ext-123");
        // Without a prefix, the whole bucket and no condition.
        let statements = &policies["permission_policy"]["Statement"];
        assert!(statements[1].get("Condition").is_none());
        assert_eq!(statements[2]["Resource"], "arn:aws:s3:::acme-images/*");
        assert_eq!(policies["cors_rules"]["CORSRules"][0]["AllowedOrigins"][0], "https://app.example.com");
        assert_eq!(
            trust_principal("arn:aws:iam::111122223333:user/tether"),
            "arn:aws:iam::111122223333:user/tether"
        );
        assert_eq!(
            trust_principal("arn:aws-cn:sts::111122223333:assumed-role/r/s"),
            "arn:aws-cn:iam::111122223333:role/r"
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        let refused = |bucket, prefix, id, origin| {
            AwsSetup::new(bucket, prefix, id, origin, None).expect_err("refused").to_string()
        };
        assert!(refused("Bad_Bucket", None, "ext-1", Some("https://a.example")).starts_with("`bucket`"));
        assert!(refused("acme-images", Some("a\u{0}"), "ext-1", Some("https://a.example"))
            .starts_with("`prefix`"));
        assert!(refused("acme-images", None, "x", Some("https://a.example")).starts_with("`external_id`"));
        assert!(refused("acme-images", None, "ext-1", None).starts_with("`origin` is missing"));
        assert!(refused("acme-images", None, "ext-1", Some("*")).starts_with("`origin`"));
        let defaulted =
            AwsSetup::new("acme-images", None, "ext-1", None, Some("https://b.example")).expect("valid");
        assert_eq!(defaulted.origin, "https://b.example");
    }
}
