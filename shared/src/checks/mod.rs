//! Connection checks (contract §9): before any import runs, try every step an
//! import and the access API will take, with the identity they will use, and
//! say for each one what to change and where. Customers otherwise learn of a
//! missing ExternalId condition, a wrong region or a CORS rule only when an
//! import fails or images do not load.
//!
//! One module per provider ([`s3`], [`gcs`], [`azure`]) lists its checks in
//! the contract's order; [`cors`] evaluates CORS rules as the stores do, and
//! [`setup`] writes the AWS policies a customer pastes. The `list` and `read`
//! checks are the same for every provider ([`list_and_read`]).
//!
//! A check keeps nothing: it assumes roles and impersonates accounts through
//! credential caches of its own, dropped when it ends, and logs no token.
//! Only the bucket's region goes into the process's [`BucketRegions`], which
//! imports and signing use too. Every step has a timeout, and the whole run
//! ends within [`DEADLINE`] even when a store never answers.

mod azure;
pub mod cors;
mod gcs;
mod s3;
pub mod setup;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::config::StoresConfig;
use crate::contract::{validate_source_value, Mode, Source, ValidationOptions};
use crate::storage::azure::{AzureContainer, AzureSources};
use crate::storage::gcs::GcsBucket;
use crate::storage::s3::{BucketRegions, S3Bucket};
use crate::storage::{ListQuery, ObjectSource, StorageError};

/// The whole check ends within this, whatever the stores do: §9 promises an
/// answer within 15 s, and the caller needs a moment of its own.
pub const DEADLINE: Duration = Duration::from_secs(14);
/// The longest one step waits for a store.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Prefixes listed at once.
const PREFIXES_AT_ONCE: usize = 8;
/// Keys per page while looking for a prefix's first object (past folder
/// markers).
const PAGE_KEYS: u32 = 100;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    /// It does not apply, or a check it needs failed.
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skipped => "skipped",
        }
    }
}

/// One check of the report: for anything but a pass, its message names what
/// to change and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub message: String,
}

impl Check {
    fn new(name: &'static str, status: Status, message: impl Into<String>) -> Self {
        Self { name, status, message: sentence(message.into()) }
    }
    fn pass(name: &'static str, message: impl Into<String>) -> Self {
        Self::new(name, Status::Pass, message)
    }
    fn warn(name: &'static str, message: impl Into<String>) -> Self {
        Self::new(name, Status::Warn, message)
    }
    fn fail(name: &'static str, message: impl Into<String>) -> Self {
        Self::new(name, Status::Fail, message)
    }
    fn skipped(name: &'static str, message: impl Into<String>) -> Self {
        Self::new(name, Status::Skipped, message)
    }
}

/// A message as one sentence: capitalised, ending in a full stop (the
/// storage errors it often quotes have neither).
fn sentence(mut message: String) -> String {
    if let Some(first) = message.chars().next().filter(char::is_ascii_lowercase) {
        message.replace_range(..1, &first.to_ascii_uppercase().to_string());
    }
    if !message.ends_with('.') {
        message.push('.');
    }
    message
}

/// The answer of §9: every check of the provider, once, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Report {
    /// No check failed.
    pub ok: bool,
    /// The S3 bucket's region, when S3 said it; `null` for GCS and Azure.
    pub region: Option<String>,
    pub checks: Vec<Check>,
}

impl Report {
    fn new(region: Option<String>, checks: Vec<Check>) -> Self {
        Self { ok: checks.iter().all(|c| c.status != Status::Fail), region, checks }
    }
}

/// What to check: a source validated as import requests are, the mode its
/// imports will use, and the web origin its images will be shown on.
#[derive(Debug, Clone)]
pub struct CheckRequest {
    pub source: Source,
    /// Merged, as an import would list them.
    pub prefixes: Vec<String>,
    pub mode: Mode,
    /// `None`: the first of `TETHER_API_ALLOWED_ORIGINS`, if any.
    pub origin: Option<String>,
}

impl CheckRequest {
    /// The body of `POST /v1/workspaces/{workspace_id}/connection-checks`:
    /// `source` (the rules of §2, by the very function import requests go
    /// through), `mode` and `origin`, nothing else. A refusal names the field.
    pub fn from_body(body: &Value, options: ValidationOptions) -> Result<Self, String> {
        let map = body.as_object().ok_or(
            "the body is not a JSON object: send {\"source\": {...}} with optional \"mode\" and \"origin\"",
        )?;
        if let Some(field) = map.keys().find(|k| !["source", "mode", "origin"].contains(&k.as_str())) {
            return Err(format!(
                "field `{}` is not part of a connection check: allowed are source, mode and origin",
                field.escape_debug()
            ));
        }
        let origin = match map.get("origin") {
            None => None,
            Some(Value::String(origin)) => {
                Some(valid_origin(origin).map_err(|why| format!("field `origin` {why}"))?)
            }
            Some(_) => {
                return Err("field `origin` must be a string such as \"https://app.example.com\"".into())
            }
        };
        let mut request = Self::from_request(map, options)?;
        request.origin = origin;
        Ok(request)
    }

    /// The `source` and `mode` of an ImportRequest (`tetherctl check FILE`);
    /// its other fields do not matter to a check.
    pub fn from_import_request(body: &Value, options: ValidationOptions) -> Result<Self, String> {
        let map = body.as_object().ok_or("the file is not a JSON object: give an ImportRequest")?;
        Self::from_request(map, options)
    }

    fn from_request(map: &Map<String, Value>, options: ValidationOptions) -> Result<Self, String> {
        let (source, prefixes) = validate_source_value(map.get("source"), options)?;
        let mode = match map.get("mode").map(Value::as_str) {
            None | Some(Some("link")) => Mode::Link,
            Some(Some("copy")) => Mode::Copy,
            Some(_) => return Err("field `mode` must be \"link\" or \"copy\"".into()),
        };
        Ok(Self { source, prefixes, mode, origin: None })
    }
}

/// A web origin as browsers send it (`scheme://host[:port]`, nothing after);
/// the error says what it is instead, for the caller to name the field.
pub fn valid_origin(origin: &str) -> Result<String, String> {
    let origin = origin.trim();
    let host = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
    let ok = host.is_some_and(|h| {
        !h.is_empty()
            && !h.starts_with(':')
            && h.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
    });
    if ok {
        Ok(origin.to_owned())
    } else {
        let shown: String = origin.chars().take(100).collect();
        Err(format!(
            "is {:?}: give a web origin such as https://app.example.com (scheme and host, no path, no *)",
            shown.escape_debug().to_string()
        ))
    }
}

/// Why a [`Checker`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CheckerError {
    #[error("TETHER_API_ALLOWED_ORIGINS entry {0}")]
    Origin(String),
    #[error("cannot build the HTTP client for GCS and Azure: {0}")]
    Http(String),
}

/// The origin checks and set-ups use when none is given: the first of
/// `TETHER_API_ALLOWED_ORIGINS` (`allowed_origins`), each of which must be
/// an origin.
pub fn default_origin(allowed_origins: &[String]) -> Result<Option<String>, CheckerError> {
    let origins = allowed_origins
        .iter()
        .filter(|o| !o.trim().is_empty())
        .map(|o| valid_origin(o))
        .collect::<Result<Vec<_>, _>>()
        .map_err(CheckerError::Origin)?;
    Ok(origins.into_iter().next())
}

/// Runs connection checks with Tether's own identities and the operator's
/// endpoints.
#[derive(Debug)]
pub struct Checker {
    sdk: aws_config::SdkConfig,
    sts: aws_sdk_sts::Client,
    force_path_style: bool,
    /// No redirects: an Azure URL carries the SAS token.
    http: reqwest::Client,
    gcs_emulator: Option<String>,
    azure: AzureSources,
    regions: Arc<BucketRegions>,
    default_origin: Option<String>,
    options: ValidationOptions,
}

impl Checker {
    /// `sdk` is Tether's own AWS configuration; `allowed_origins` is
    /// `TETHER_API_ALLOWED_ORIGINS` (the first is the default origin);
    /// `regions` is the process's cache of bucket regions.
    pub fn new(
        sdk: &aws_config::SdkConfig,
        stores: &StoresConfig,
        allowed_origins: &[String],
        regions: Arc<BucketRegions>,
    ) -> Result<Self, CheckerError> {
        let default_origin = default_origin(allowed_origins)?;
        let http = reqwest::Client::builder()
            .connect_timeout(STEP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| CheckerError::Http(e.without_url().to_string()))?;
        Ok(Self {
            sdk: sdk.clone(),
            sts: aws_sdk_sts::Client::new(sdk),
            force_path_style: stores.s3_force_path_style,
            azure: AzureSources::new(http.clone(), Some(&stores.azure_blob_endpoint)),
            http,
            gcs_emulator: stores.storage_emulator_host.clone().filter(|h| !h.is_empty()),
            regions,
            default_origin,
            options: ValidationOptions::new(stores.gcs_allow_own_identity, None),
        })
    }

    /// Refuses to check the bucket of `destination` (`TETHER_DESTINATION`),
    /// as imports refuse to read it: it holds every workspace's copies.
    #[must_use]
    pub fn refusing_destination(mut self, destination: Option<&str>) -> Self {
        self.options = ValidationOptions::new(self.options.gcs_allow_own_identity, destination);
        self
    }

    /// How requests are validated here (`TETHER_GCS_ALLOW_OWN_IDENTITY`,
    /// the destination bucket).
    pub fn validation_options(&self) -> ValidationOptions {
        self.options.clone()
    }

    /// The origin a check tests CORS against when the request names none.
    pub fn default_origin(&self) -> Option<&str> {
        self.default_origin.as_deref()
    }

    /// Runs every check of the request's provider, within [`DEADLINE`].
    pub async fn run(&self, request: &CheckRequest) -> Report {
        let clock = Clock { deadline: Instant::now() + DEADLINE };
        let origin = request.origin.as_deref().or(self.default_origin.as_deref());
        let report = match &request.source {
            Source::S3(source) => s3::check(self, source, request, origin, &clock).await,
            Source::Gcs(source) => gcs::check(self, source, request, origin, &clock).await,
            Source::Azure(source) => azure::check(self, source, request, &clock).await,
        };
        let failed: Vec<&str> =
            report.checks.iter().filter(|c| c.status == Status::Fail).map(|c| c.name).collect();
        tracing::info!(
            provider = request.source.provider(),
            ok = report.ok,
            ?failed,
            "Connection check done."
        );
        report
    }
}

/// The run's deadline: each step waits at most [`STEP_TIMEOUT`], and never
/// past the deadline.
#[derive(Debug, Clone, Copy)]
struct Clock {
    deadline: Instant,
}

impl Clock {
    /// `step`'s result, or `None` when it did not end in time.
    async fn within<T>(&self, step: impl Future<Output = T>) -> Option<T> {
        let left = self.deadline.saturating_duration_since(Instant::now()).min(STEP_TIMEOUT);
        tokio::time::timeout(left, step).await.ok()
    }
}

/// The message of a step whose store did not answer in time.
fn unanswered(store: &str, what: &str) -> String {
    format!(
        "{store} did not answer {what} within {} s: check that Tether can reach it (endpoint, network, firewall), then run the check again",
        STEP_TIMEOUT.as_secs()
    )
}

const LIST: &str = "list";
const READ: &str = "read";
const CORS: &str = "cors";

/// A bucket as the `list` and `read` checks use it: listed as imports list
/// it, and read one byte at a time.
#[async_trait::async_trait]
trait Probe: ObjectSource {
    async fn first_byte(&self, key: &str) -> Result<(), StorageError>;
}

/// Each provider's bucket reads its first byte its own way.
macro_rules! probes {
    ($($bucket:ty),*) => {$(
        #[async_trait::async_trait]
        impl Probe for $bucket {
            async fn first_byte(&self, key: &str) -> Result<(), StorageError> {
                <$bucket>::first_byte(self, key).await
            }
        }
    )*};
}

probes!(S3Bucket, GcsBucket, AzureContainer);

/// The `list` check (the first object under every prefix; a warning names
/// the prefixes that hold none) and the `read` check (one byte of the first
/// object listed, unless `no_read` says why not). `store` names the provider
/// in messages.
async fn list_and_read(
    probe: &dyn Probe,
    store: &str,
    source: &Source,
    prefixes: &[String],
    no_read: Option<&str>,
    clock: &Clock,
) -> [Check; 2] {
    // Owned prefixes: a stream of borrowed ones makes this future not `Send` for axum's handlers.
    let listed: Vec<_> = futures_util::stream::iter(prefixes.iter().cloned())
        .map(|prefix| async move {
            let result = clock.within(first_object(probe, &prefix)).await;
            (prefix, result)
        })
        .buffered(PREFIXES_AT_ONCE)
        .collect()
        .await;
    let (mut first, mut empty, mut failed, mut silent) = (None, Vec::new(), Vec::new(), Vec::new());
    for (prefix, result) in listed {
        match result {
            Some(Ok(Some(key))) => first = first.or(Some(key)),
            Some(Ok(None)) => empty.push(source.url(&prefix)),
            Some(Err(error)) => failed.push(error),
            None => silent.push(source.url(&prefix)),
        }
    }
    let of_all = |n: usize| {
        if prefixes.len() > 1 {
            format!(" (the listing of {n} of {} prefixes failed)", prefixes.len())
        } else {
            String::new()
        }
    };
    let list = if let Some(error) = failed.first() {
        let error = error.to_string();
        Check::fail(LIST, format!("{}{}", error.trim_end_matches('.'), of_all(failed.len() + silent.len())))
    } else if let Some(url) = silent.first() {
        Check::fail(LIST, unanswered(store, &format!("the listing of {url}")))
    } else if !empty.is_empty() {
        Check::warn(
            LIST,
            format!(
                "No object under {}: check source.prefixes against the keys in the bucket (prefixes are case-sensitive and match from the start of the key)",
                some_of(&empty)
            ),
        )
    } else if prefixes.len() == 1 {
        Check::pass(LIST, format!("Tether listed {}", source.url(&prefixes[0])))
    } else {
        Check::pass(LIST, format!("Tether listed all {} prefixes, each holding objects", prefixes.len()))
    };
    let read = match (no_read, first) {
        (Some(why), _) => Check::skipped(READ, why),
        (None, Some(key)) => {
            let url = source.url(&key);
            match clock.within(probe.first_byte(&key)).await {
                Some(Ok(())) => Check::pass(READ, format!("Tether read the first byte of {url}")),
                Some(Err(error)) => Check::fail(READ, error.to_string()),
                None => Check::fail(READ, unanswered(store, &format!("the read of {url}"))),
            }
        }
        (None, None) if list.status == Status::Fail => {
            Check::skipped(READ, "Nothing was read, since the listing failed: fix the list check first")
        }
        (None, None) => {
            Check::skipped(READ, "Nothing was read, since no object was listed: fix the list check first")
        }
    };
    [list, read]
}

/// The first object under `prefix` (folder markers are not objects).
async fn first_object(probe: &dyn Probe, prefix: &str) -> Result<Option<String>, StorageError> {
    let mut token = None;
    loop {
        let query = ListQuery {
            prefix,
            token: token.as_deref(),
            max_keys: PAGE_KEYS,
            delimiter: None,
            start_at: None,
            end_before: None,
        };
        let page = probe.list_page(query).await?;
        if let Some(object) = page.objects.into_iter().find(|o| !o.key.ends_with('/')) {
            return Ok(Some(object.key));
        }
        match page.next {
            Some(next) => token = Some(next),
            None => return Ok(None),
        }
    }
}

/// Up to five items, then how many more.
fn some_of(items: &[String]) -> String {
    let shown = items.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    match items.len() {
        n if n > 5 => format!("{shown} and {} more", n - 5),
        _ => shown,
    }
}

/// The origin the `cors` check tests, or why the check does not apply.
fn cors_origin(mode: Mode, origin: Option<&str>) -> Result<&str, Check> {
    match (mode, origin) {
        (Mode::Copy, _) => Err(Check::skipped(
            CORS,
            "Copy mode serves the platform's copies, so the bucket's CORS rules do not matter",
        )),
        (Mode::Link, None) => Err(Check::skipped(
            CORS,
            "No origin to test the bucket's CORS rules against: give one in the request, or set TETHER_API_ALLOWED_ORIGINS",
        )),
        (Mode::Link, Some(origin)) => Ok(origin),
    }
}

/// The `cors` check once the bucket's rules are read (`None`: it has none);
/// `place` says where they are changed.
fn cors_verdict(rules: Option<&[cors::Rule]>, dialect: cors::Dialect, origin: &str, place: &str) -> Check {
    match rules.and_then(|rules| cors::first_allowing(rules, dialect, origin, "GET")) {
        Some(index) => Check::pass(
            CORS,
            format!(
                "CORS rule {} of the bucket lets {origin} GET its objects, so direct URLs load in its pages",
                index + 1
            ),
        ),
        None => {
            let which = if rules.is_some_and(|r| !r.is_empty()) {
                "No CORS rule of the bucket"
            } else {
                "The bucket has no CORS rules, so nothing"
            };
            Check::warn(
                CORS,
                format!(
                    "{which} allows GET from {origin}: direct URLs will not load in that origin's pages (proxy URLs will); add a rule allowing GET and HEAD from {origin} in {place}"
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_sentences() {
        assert_eq!(sentence("access denied: fix it".into()), "Access denied: fix it.");
        assert_eq!(sentence("Done.".into()), "Done.");
    }

    #[test]
    fn origins_are_scheme_and_host() {
        assert_eq!(valid_origin(" https://app.example.com ").as_deref(), Ok("https://app.example.com"));
        assert!(valid_origin("http://127.0.0.1:8080").is_ok());
        for bad in ["*", "app.example.com", "https://app.example.com/", "https://", "ftp://x", "https://a b"]
        {
            assert!(valid_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn check_bodies_take_source_mode_and_origin_only() {
        let options = ValidationOptions::default();
        let source = serde_json::json!({"provider": "azure", "account": "acct1", "container": "images", "sas_token": "sp=rl&sig=x"});
        let body = serde_json::json!({"source": source, "mode": "copy", "origin": "https://app.example.com"});
        let request = CheckRequest::from_body(&body, options.clone()).expect("valid");
        assert_eq!((request.mode, request.origin.as_deref()), (Mode::Copy, Some("https://app.example.com")));
        assert_eq!(request.prefixes, vec![String::new()]);
        let refused = |body: Value| CheckRequest::from_body(&body, options.clone()).expect_err("refused");
        assert!(refused(serde_json::json!({"source": source, "prefix": "a/"})).contains("`prefix`"));
        assert!(refused(serde_json::json!({"source": source, "mode": "move"})).contains("`mode`"));
        assert!(refused(serde_json::json!({"source": source, "origin": "*"})).contains("`origin`"));
        assert!(refused(serde_json::json!({"mode": "link"})).contains("`source`"));
        let bad_container = serde_json::json!({"source": {"provider": "azure", "account": "acct1", "container": "No", "sas_token": "sig=x"}});
        assert!(refused(bad_container).contains("`source.container`"));
        // An ImportRequest's other fields do not matter to a check.
        let import = serde_json::json!({"version": 1, "import_id": "x", "source": source});
        assert_eq!(
            CheckRequest::from_import_request(&import, options.clone()).expect("valid").mode,
            Mode::Link
        );
    }
}
