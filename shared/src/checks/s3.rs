//! The S3 checks, in the contract's order: `assume_role`,
//! `session_duration`, `external_id_required`, `bucket_region`, `list`,
//! `read`, `cors`.
//!
//! The role is assumed through a [`StsCredentials`] of this check alone, and
//! the bucket opened with the same [`S3Sources`] imports use, so the check
//! takes the very steps an import takes (6-hour sessions with the 1-hour
//! fallback, the region lookup and its corrections) and nothing outlives it
//! but the bucket's region.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_sts::error::{DisplayErrorContext, SdkError};
use uuid::Uuid;

use super::setup::{caller_arn, trust_principal};
use super::{
    cors, cors_origin, cors_verdict, list_and_read, unanswered, Check, CheckRequest, Checker, Clock, Report,
    CORS,
};
use crate::contract::{Mode, S3Source, Source};
use crate::credentials::sts::{RoleKey, StsCredentials};
use crate::credentials::CredentialError;
use crate::storage::s3::{S3Bucket, S3Sources};
use crate::storage::StorageError;

const ASSUME_ROLE: &str = "assume_role";
const SESSION_DURATION: &str = "session_duration";
const EXTERNAL_ID_REQUIRED: &str = "external_id_required";
const BUCKET_REGION: &str = "bucket_region";

/// Sessions shorter than this were not granted the 6 hours asked for.
const SIX_HOURS_GRANTED: Duration = Duration::from_secs(5 * 3600);
/// The shortest session STS grants: enough to learn whether it would.
const PROBE_SESSION_SECONDS: i32 = 900;
/// Where a customer changes CORS rules of a bucket.
const CORS_PLACE: &str =
    "the bucket's Permissions tab, under Cross-origin resource sharing (CORS), in the S3 console (tetherctl setup aws prints such a rule)";

pub(super) async fn check(
    checker: &Checker,
    source: &S3Source,
    request: &CheckRequest,
    origin: Option<&str>,
    clock: &Clock,
) -> Report {
    let role = RoleKey { role_arn: source.role_arn.clone(), external_id: source.external_id.clone() };
    // Sessions of this check alone: dropped with it.
    let sts = Arc::new(StsCredentials::new(checker.sts.clone(), Duration::ZERO));
    let (assumed, foreign, caller) = tokio::join!(
        clock.within(sts.credentials(&role)),
        clock.within(assume_with_another_external_id(&checker.sts, &source.role_arn)),
        clock.within(caller_arn(&checker.sts)),
    );
    let caller = caller.and_then(Result::ok);
    let principal = caller.as_deref().map_or_else(
        || "Tether's principal (STS GetCallerIdentity did not say which)".to_owned(),
        |arn| format!("Tether's principal {}", trust_principal(arn)),
    );
    let trust_policy = format!(
        "the role's trust policy (IAM console, Roles, {}, Trust relationships)",
        source.role_arn.rsplit('/').next().unwrap_or(&source.role_arn)
    );
    let mut checks = Vec::with_capacity(7);
    let session_expiry = match assumed {
        Some(Ok(credentials)) => {
            checks.push(Check::pass(
                ASSUME_ROLE,
                format!("Tether assumed {} with the workspace's ExternalId", source.role_arn),
            ));
            Some(credentials.expiry())
        }
        Some(Err(CredentialError::Refused { .. })) => {
            checks.push(Check::fail(
                ASSUME_ROLE,
                format!(
                    "AWS refused to let {principal} assume {} with the ExternalId {}: in {trust_policy}, let that principal call sts:AssumeRole on the condition that sts:ExternalId equals {} (tetherctl setup aws prints that policy)",
                    source.role_arn, source.external_id, source.external_id
                ),
            ));
            None
        }
        Some(Err(CredentialError::Unavailable(why))) => {
            checks.push(Check::fail(
                ASSUME_ROLE,
                format!("STS failed ({why}): check that Tether can reach STS, then run the check again"),
            ));
            None
        }
        None => {
            checks.push(Check::fail(ASSUME_ROLE, unanswered("STS", "AssumeRole")));
            None
        }
    };
    let Some(expiry) = session_expiry else {
        let why = "The role could not be assumed, so this was not tried: fix assume_role first";
        for name in [SESSION_DURATION, EXTERNAL_ID_REQUIRED, BUCKET_REGION, super::LIST, super::READ, CORS] {
            checks.push(Check::skipped(name, why));
        }
        return Report::new(checker.regions.get(&source.bucket), checks);
    };
    checks.push(session_duration(expiry, caller.as_deref()));
    checks.push(match foreign {
        Some(Ok(true)) => Check::fail(
            EXTERNAL_ID_REQUIRED,
            format!(
                "The role can also be assumed with an ExternalId other than the workspace's, so other customers of the platform could import this bucket: in {trust_policy}, add the condition that sts:ExternalId equals {} to the statement that trusts {principal}",
                source.external_id
            ),
        ),
        Some(Ok(false)) => {
            Check::pass(EXTERNAL_ID_REQUIRED, "The role refuses any ExternalId but the workspace's")
        }
        Some(Err(why)) => Check::fail(
            EXTERNAL_ID_REQUIRED,
            format!("STS failed AssumeRole with another ExternalId ({why}): run the check again"),
        ),
        None => Check::fail(EXTERNAL_ID_REQUIRED, unanswered("STS", "AssumeRole with another ExternalId")),
    });
    let sources = S3Sources::new(&checker.sdk, sts, checker.force_path_style)
        .sharing_regions(Arc::clone(&checker.regions));
    let bucket = match clock.within(sources.open(source)).await {
        Some(Ok(bucket)) => bucket,
        unopened => {
            // The bucket's region could not be settled: nothing else can run.
            let failure = match unopened {
                Some(Err(error)) => error.to_string(),
                _ => unanswered("S3", "GetBucketLocation"),
            };
            checks.push(Check::fail(BUCKET_REGION, failure.clone()));
            checks.push(Check::fail(super::LIST, failure));
            let why = "The bucket could not be reached, so this was not tried: fix bucket_region first";
            checks.push(Check::skipped(super::READ, why));
            checks.push(Check::skipped(CORS, why));
            return Report::new(checker.regions.get(&source.bucket), checks);
        }
    };
    checks.push(bucket_region(&bucket, source, clock).await);
    let whole = Source::S3(source.clone());
    let (list_read, cors) = tokio::join!(
        list_and_read(&bucket, "S3", &whole, &request.prefixes, None, clock),
        cors_check(&bucket, request.mode, origin, clock),
    );
    checks.extend(list_read);
    checks.push(cors);
    Report::new(checker.regions.get(&source.bucket), checks)
}

/// The `session_duration` check from the session STS granted.
fn session_duration(expiry: Option<SystemTime>, caller: Option<&str>) -> Check {
    let granted = expiry.and_then(|e| e.duration_since(SystemTime::now()).ok()).unwrap_or_default();
    if granted >= SIX_HOURS_GRANTED {
        Check::pass(SESSION_DURATION, "AWS grants the 6-hour sessions imports ask for")
    } else if caller.is_some_and(|arn| arn.contains(":assumed-role/")) {
        Check::pass(
            SESSION_DURATION,
            "Tether itself runs on role credentials, and AWS caps sessions of chained roles at 1 hour whatever the role allows: nothing to change, imports renew their sessions hourly",
        )
    } else {
        Check::warn(
            SESSION_DURATION,
            "The role refuses 6-hour sessions, so imports renew 1-hour ones: set Maximum session duration to 6 hours (21600 s) on the role's Summary page in the IAM console",
        )
    }
}

/// The `bucket_region` check: `GetBucketLocation`, against the region the
/// request names.
async fn bucket_region(bucket: &S3Bucket, source: &S3Source, clock: &Clock) -> Check {
    match clock.within(bucket.location()).await {
        Some(Ok(region)) => match &source.region {
            Some(named) if *named != region => Check::warn(
                BUCKET_REGION,
                format!(
                    "The request's source.region is {named}, but the bucket is in {region}: set source.region to {region}, or leave it out and Tether finds the region itself"
                ),
            ),
            _ => Check::pass(BUCKET_REGION, format!("The bucket is in {region}")),
        },
        Some(Err(StorageError::AccessDenied(_))) => Check::warn(
            BUCKET_REGION,
            format!(
                "The role may not call s3:GetBucketLocation, so Tether cannot look up the bucket's region: add s3:GetBucketLocation on arn:aws:s3:::{} to the role's permission policy (imports still follow S3's redirects)",
                source.bucket
            ),
        ),
        Some(Err(error)) => Check::fail(BUCKET_REGION, error.to_string()),
        None => Check::fail(BUCKET_REGION, unanswered("S3", "GetBucketLocation")),
    }
}

/// The `cors` check: `GetBucketCors`, evaluated for `GET` from the origin.
async fn cors_check(bucket: &S3Bucket, mode: Mode, origin: Option<&str>, clock: &Clock) -> Check {
    let origin = match cors_origin(mode, origin) {
        Ok(origin) => origin,
        Err(not_applicable) => return not_applicable,
    };
    let name = bucket.name();
    let read = clock.within(bucket.client().get_bucket_cors().bucket(name).send()).await;
    let error = match read {
        None => return Check::fail(CORS, unanswered("S3", "GetBucketCors")),
        Some(Ok(output)) => {
            let rules: Vec<cors::Rule> = output
                .cors_rules()
                .iter()
                .map(|r| cors::Rule {
                    origins: r.allowed_origins().to_vec(),
                    methods: r.allowed_methods().to_vec(),
                })
                .collect();
            return cors_verdict(Some(&rules), cors::Dialect::S3, origin, CORS_PLACE);
        }
        Some(Err(error)) => error,
    };
    let status = match &error {
        SdkError::ServiceError(e) => e.raw().status().as_u16(),
        _ => 0,
    };
    match (status, error.code()) {
        (_, Some("NoSuchCORSConfiguration")) => cors_verdict(None, cors::Dialect::S3, origin, CORS_PLACE),
        (403, _) | (_, Some("AccessDenied")) => Check::skipped(
            CORS,
            format!(
                "The role may not read the bucket's CORS rules, so they were not checked: add s3:GetBucketCORS on arn:aws:s3:::{name} to the role's permission policy to have them checked"
            ),
        ),
        (_, Some("NoSuchBucket")) => {
            Check::fail(CORS, format!("The bucket s3://{name} does not exist: check source.bucket"))
        }
        (_, code) => Check::fail(
            CORS,
            format!(
                "S3 failed GetBucketCors ({}): run the check again",
                code.map_or_else(|| DisplayErrorContext(&error).to_string(), str::to_owned)
            ),
        ),
    }
}

/// Whether the role lets itself be assumed with an ExternalId that is not
/// the workspace's (a random one: moto wrongly accepts a missing one, and
/// only a wrong one tells on real AWS which condition the trust policy has).
async fn assume_with_another_external_id(sts: &aws_sdk_sts::Client, role_arn: &str) -> Result<bool, String> {
    let another = format!("tether-check-{}", Uuid::new_v4().simple());
    let sent = sts
        .assume_role()
        .role_arn(role_arn)
        .external_id(another)
        .role_session_name("tether-check")
        .duration_seconds(PROBE_SESSION_SECONDS)
        .send()
        .await;
    match sent {
        Ok(_) => Ok(true),
        Err(SdkError::ServiceError(e))
            if e.raw().status().is_client_error()
                && !e.err().code().unwrap_or_default().contains("Throttl") =>
        {
            Ok(false)
        }
        Err(error) => Err(DisplayErrorContext(error).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::Status;

    #[test]
    fn a_short_session_warns_unless_tether_runs_on_a_role() {
        let in_hours = |h: u64| Some(SystemTime::now() + Duration::from_secs(h * 3600));
        let user = Some("arn:aws:iam::111122223333:user/tether");
        let role = Some("arn:aws:sts::111122223333:assumed-role/tether/i-1");
        assert_eq!(session_duration(in_hours(6), user).status, Status::Pass);
        assert_eq!(session_duration(in_hours(1), user).status, Status::Warn);
        assert!(session_duration(in_hours(1), user).message.contains("21600"));
        assert_eq!(session_duration(in_hours(1), role).status, Status::Pass);
    }
}
