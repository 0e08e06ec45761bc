//! The GCS checks, in the contract's order: `impersonate`, `list`, `read`,
//! `sign`, `cors`.
//!
//! Tokens and signatures come from a [`GcpTokens`] of this check alone. With
//! `STORAGE_EMULATOR_HOST` set there is no IAM at all (Tether calls the
//! emulator without credentials), so `impersonate` and `sign` are skipped
//! there, saying so, and the bucket is listed and read without auth.

use std::sync::Arc;
use std::time::Duration;

use super::{
    cors, cors_origin, cors_verdict, list_and_read, unanswered, Check, CheckRequest, Checker, Clock, Report,
    CORS,
};
use crate::contract::{GcsSource, Mode, Source};
use crate::credentials::gcp::{GcpTokens, GcsAccess};
use crate::credentials::CredentialError;
use crate::storage::gcs::{segment, GcsApi, GcsSources};
use crate::storage::StorageError;

const IMPERSONATE: &str = "impersonate";
const SIGN: &str = "sign";
/// What `sign` has signed: any bytes prove the permission.
const SIGNED_PAYLOAD: &[u8] = b"tether connection check";
const CORS_PLACE: &str =
    "the bucket's CORS configuration (gcloud storage buckets update gs://BUCKET --cors-file=FILE)";

#[derive(serde::Deserialize)]
struct BucketCors {
    /// Absent when the bucket has none.
    cors: Option<Vec<CorsEntry>>,
}

#[derive(serde::Deserialize)]
struct CorsEntry {
    #[serde(default)]
    origin: Vec<String>,
    #[serde(default)]
    method: Vec<String>,
}

pub(super) async fn check(
    checker: &Checker,
    source: &GcsSource,
    request: &CheckRequest,
    origin: Option<&str>,
    clock: &Clock,
) -> Report {
    // Tokens of this check alone: dropped with it.
    let tokens = Arc::new(GcpTokens::new(checker.http.clone(), Duration::ZERO));
    let api = GcsApi::new(checker.http.clone(), checker.gcs_emulator.as_deref(), Arc::clone(&tokens));
    let account = source.impersonate_service_account.as_deref();
    let emulated = checker.gcs_emulator.is_some();
    let impersonate = match (emulated, account) {
        (true, _) => Check::skipped(
            IMPERSONATE,
            "STORAGE_EMULATOR_HOST is set: the emulator has no IAM, so Tether calls it without credentials and impersonation was not tried",
        ),
        (false, None) => Check::skipped(
            IMPERSONATE,
            "The source names no impersonate_service_account, so Tether reads the bucket with its own identity (TETHER_GCS_ALLOW_OWN_IDENTITY)",
        ),
        (false, Some(account)) => match clock.within(tokens.token(GcsAccess::Source(Some(account)))).await {
            Some(Ok(_)) => Check::pass(IMPERSONATE, format!("Tether impersonated {account}")),
            Some(Err(CredentialError::Refused { sentence })) => Check::fail(IMPERSONATE, sentence),
            Some(Err(CredentialError::Unavailable(why))) => Check::fail(
                IMPERSONATE,
                format!("IAM Credentials failed ({why}): check Tether's own Google identity, then run the check again"),
            ),
            None => Check::fail(IMPERSONATE, unanswered("IAM Credentials", "generateAccessToken")),
        },
    };
    let impersonated = impersonate.status != super::Status::Fail;
    let whole = Source::Gcs(source.clone());
    let (list_read, cors) = if impersonated {
        let bucket = GcsSources::new(api.clone()).open(source);
        tokio::join!(
            list_and_read(&bucket, "GCS", &whole, &request.prefixes, None, clock),
            cors_check(&api, source, request.mode, origin, clock),
        )
    } else {
        let why =
            "Tether could not impersonate the service account, so this was not tried: fix impersonate first";
        ([Check::skipped(super::LIST, why), Check::skipped(super::READ, why)], Check::skipped(CORS, why))
    };
    let sign = match (request.mode, emulated, account) {
        (Mode::Copy, _, _) => Check::skipped(
            SIGN,
            "Copy mode serves the platform's copies, signed with Tether's own identity, so nothing is signed as this account",
        ),
        (Mode::Link, true, _) => Check::skipped(
            SIGN,
            "STORAGE_EMULATOR_HOST is set: the emulator has no IAM, so signBlob was not tried (direct URLs to an emulator need no signature)",
        ),
        (Mode::Link, false, None) => Check::skipped(
            SIGN,
            "The source names no impersonate_service_account, so direct URLs are signed with Tether's own identity",
        ),
        (Mode::Link, false, Some(_)) if !impersonated => Check::skipped(
            SIGN,
            "Tether could not impersonate the service account, so signing as it was not tried: fix impersonate first",
        ),
        (Mode::Link, false, Some(account)) => match clock.within(tokens.sign_blob(account, SIGNED_PAYLOAD)).await {
            Some(Ok(_)) => Check::pass(SIGN, format!("Tether signed as {account} with signBlob, as direct URLs need")),
            Some(Err(CredentialError::Refused { sentence })) => Check::fail(SIGN, sentence),
            Some(Err(CredentialError::Unavailable(why))) => {
                Check::fail(SIGN, format!("IAM Credentials failed signBlob ({why}): run the check again"))
            }
            None => Check::fail(SIGN, unanswered("IAM Credentials", "signBlob")),
        },
    };
    let mut checks = vec![impersonate];
    checks.extend(list_read);
    checks.push(sign);
    checks.push(cors);
    Report::new(None, checks)
}

/// The `cors` check: the bucket's `cors` metadata, where the account may
/// read it (`storage.buckets.get`, which object viewers lack).
async fn cors_check(
    api: &GcsApi,
    source: &GcsSource,
    mode: Mode,
    origin: Option<&str>,
    clock: &Clock,
) -> Check {
    let origin = match cors_origin(mode, origin) {
        Ok(origin) => origin,
        Err(not_applicable) => return not_applicable,
    };
    let bucket = &source.bucket;
    let url = api.url(&format!("/storage/v1/b/{}", segment(bucket)));
    let read = async {
        let response = api
            .send(
                || api.http().get(&url).query(&[("fields", "cors")]),
                GcsAccess::Source(source.impersonate_service_account.as_deref()),
            )
            .await?;
        let status = response.status().as_u16();
        if status != 200 {
            return Ok(Err(status));
        }
        response.json::<BucketCors>().await.map(Ok).map_err(|e| {
            StorageError::Unavailable(format!(
                "GCS answered the bucket's metadata unreadably: {}",
                e.without_url()
            ))
        })
    };
    match clock.within(read).await {
        None => Check::fail(CORS, unanswered("GCS", "the read of the bucket's metadata")),
        Some(Err(error)) => Check::fail(CORS, error.to_string()),
        Some(Ok(Ok(metadata))) => {
            let rules: Option<Vec<cors::Rule>> = metadata.cors.map(|entries| {
                entries.into_iter().map(|e| cors::Rule { origins: e.origin, methods: e.method }).collect()
            });
            cors_verdict(rules.as_deref(), cors::Dialect::Gcs, origin, CORS_PLACE)
        }
        Some(Ok(Err(401 | 403))) => Check::skipped(
            CORS,
            format!(
                "The service account may not read the metadata of gs://{bucket} (storage.buckets.get), so its CORS rules were not checked: grant it roles/storage.legacyBucketReader on the bucket to have them checked"
            ),
        ),
        Some(Ok(Err(404))) => {
            Check::fail(CORS, format!("The bucket gs://{bucket} does not exist: check source.bucket"))
        }
        Some(Ok(Err(status))) => {
            Check::fail(CORS, format!("GCS answered {status} to the read of gs://{bucket}'s metadata: run the check again"))
        }
    }
}
