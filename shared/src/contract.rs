//! The fixed external interface (`contract.md`): AMQP names, the
//! ImportRequest with every validation rule of §2, and the FinishedEvent of §4.
//!
//! Validation walks the JSON by hand rather than through `serde` derives so
//! that every rejection names the offending field (`source.role_arn`) and says
//! what a valid value looks like: the sentence ends up in the import's `error`
//! and in the `x-tether-reject-reason` header.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::secrets::{self, Secret};

pub const EXCHANGE: &str = "tether";
pub const REQUEST_QUEUE: &str = "tether.import-requests";
pub const REJECTED_QUEUE: &str = "tether.rejected";
pub const ROUTING_REQUEST: &str = "import.request";
pub const ROUTING_CANCEL: &str = "import.cancel";
pub const ROUTING_FINISHED: &str = "import.finished";
pub const REJECT_REASON_HEADER: &str = "x-tether-reject-reason";
/// Largest request body the contract accepts.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
pub const MAX_PREFIXES: usize = 1000;
pub const MAX_PREFIX_BYTES: usize = 1024;
pub const DEFAULT_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp"];
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 100 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Link,
    Copy,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Link => "link",
            Mode::Copy => "copy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Source {
    pub bucket: String,
    pub region: Option<String>,
    pub role_arn: String,
    pub external_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcsSource {
    pub bucket: String,
    pub impersonate_service_account: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureSource {
    pub account: String,
    pub container: String,
    /// The request's SAS token, without a leading `?`. `None` in a request
    /// read back from Postgres, which keeps the token apart, sealed
    /// ([`crate::secrets`]): the worker opens it when it opens the source.
    pub sas_token: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    S3(S3Source),
    Gcs(GcsSource),
    Azure(AzureSource),
}

impl Source {
    pub fn provider(&self) -> &'static str {
        match self {
            Source::S3(_) => "s3",
            Source::Gcs(_) => "gcs",
            Source::Azure(_) => "azure",
        }
    }

    /// The URL of an object (or of a prefix) as `tether.images.source_url`
    /// and `tether.import_failures.source_url` show it.
    pub fn url(&self, key: &str) -> String {
        match self {
            Source::S3(s) => format!("s3://{}/{key}", s.bucket),
            Source::Gcs(s) => format!("gs://{}/{key}", s.bucket),
            Source::Azure(s) => format!("azure://{}/{}/{key}", s.account, s.container),
        }
    }
}

/// Which keys the extension filter lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extensions {
    All,
    /// Lower-case, without the dot.
    Only(BTreeSet<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub extensions: Extensions,
    pub max_object_bytes: u64,
}

impl Filter {
    /// Whether the extension filter takes this key. Folder markers are not
    /// asked: callers drop them before.
    pub fn matches(&self, key: &str) -> bool {
        match &self.extensions {
            Extensions::All => true,
            Extensions::Only(set) => {
                let name = key.rsplit('/').next().unwrap_or(key);
                match name.rsplit_once('.') {
                    Some((_, ext)) => set.contains(&ext.to_ascii_lowercase()),
                    None => false,
                }
            }
        }
    }
}

/// A validated ImportRequest (contract §2), prefixes already merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRequest {
    pub import_id: Uuid,
    pub workspace_id: String,
    pub dataset_id: String,
    pub mode: Mode,
    pub source: Source,
    /// Sorted, none a prefix of another: no object is listed twice.
    pub prefixes: Vec<String>,
    pub filter: Filter,
}

/// Options of validation that come from the operator, not the request.
#[derive(Debug, Clone, Default)]
pub struct ValidationOptions {
    /// `TETHER_GCS_ALLOW_OWN_IDENTITY`.
    pub gcs_allow_own_identity: bool,
    /// The bucket of `TETHER_DESTINATION` as a source URL starts
    /// (`s3://bucket/`, `gs://bucket/`): it holds every workspace's copies,
    /// so no source may be it (contract §2). `None` without a bucket
    /// destination.
    pub destination_root: Option<String>,
}

impl ValidationOptions {
    /// The options of an installation whose copies go to `destination`
    /// (`TETHER_DESTINATION`, if set).
    pub fn new(gcs_allow_own_identity: bool, destination: Option<&str>) -> Self {
        Self { gcs_allow_own_identity, destination_root: destination.and_then(destination_root) }
    }
}

/// `s3://bucket/` or `gs://bucket/` of an `s3://bucket/prefix` or
/// `gs://bucket/prefix` destination, as the source URLs of its objects
/// start; `None` for a `file://` one.
pub fn destination_root(url: &str) -> Option<String> {
    ["s3", "gs"].into_iter().find_map(|scheme| {
        let rest = url.strip_prefix(scheme)?.strip_prefix("://")?;
        let bucket = rest.split('/').next().filter(|b| !b.is_empty())?;
        Some(format!("{scheme}://{bucket}/"))
    })
}

/// A request that passed validation, with its idempotency digest.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub request: ImportRequest,
    /// sha256 of the canonical JSON (sorted keys, no spaces).
    pub digest: [u8; 32],
}

/// Which import a refused request claimed to be, when that is readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub import_id: Uuid,
    pub digest: [u8; 32],
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub claim: Option<Claim>,
    /// One sentence that names the offending field and what would be valid.
    pub reason: String,
}

/// Parses and validates one ImportRequest body.
pub fn parse_request(
    body: &[u8],
    content_type: Option<&str>,
    options: ValidationOptions,
) -> Result<ValidRequest, Rejection> {
    let reject = |claim, reason: String| Rejection { claim, reason };
    if body.len() > MAX_REQUEST_BYTES {
        return Err(reject(
            None,
            format!(
                "the body is {} bytes, more than the 1 MiB limit: send fewer or shorter prefixes",
                body.len()
            ),
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| reject(None, format!("the body is not valid JSON ({e}): send a JSON ImportRequest")))?;
    let digest = digest(&value);
    let claim = value
        .get("import_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .map(|import_id| Claim { import_id, digest });
    match content_type {
        Some(ct) if is_json_content_type(ct) => {}
        Some(ct) => {
            return Err(reject(
                claim,
                format!(
                    "content_type is {:?}: publish the request with content_type application/json",
                    printable(ct)
                ),
            ))
        }
        None => {
            return Err(reject(
                claim,
                "content_type is missing: publish the request with content_type application/json".into(),
            ))
        }
    }
    match validate(&value, &options, Form::Request) {
        Ok(request) => Ok(ValidRequest { request, digest }),
        Err(reason) => Err(reject(claim, reason)),
    }
}

fn is_json_content_type(ct: &str) -> bool {
    ct.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// sha256 of the canonical form: keys sorted, no insignificant whitespace.
pub fn digest(value: &Value) -> [u8; 32] {
    let mut canonical = String::new();
    write_canonical(value, &mut canonical);
    Sha256::digest(canonical.as_bytes()).into()
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

type Check<T> = Result<T, String>;

fn validate(value: &Value, options: &ValidationOptions, form: Form) -> Check<ImportRequest> {
    let top = value.as_object().ok_or("the body is not a JSON object: send an ImportRequest object")?;
    let mut path = String::new();
    if find_nul(value, &mut path) {
        return Err(format!(
            "field `{path}` contains a NUL character (\\u0000), which no field may hold: remove it"
        ));
    }
    only_fields(
        top,
        "",
        &["version", "import_id", "workspace_id", "dataset_id", "mode", "source", "filter"],
    )?;

    match top.get("version") {
        Some(v) if v.as_u64() == Some(1) => {}
        Some(v) => {
            return Err(format!(
                "field `version` is {}: only version 1 is supported",
                printable(&v.to_string())
            ))
        }
        None => return Err("field `version` is missing: set it to 1".into()),
    }
    let import_id = required_str(top, "", "import_id")?;
    let import_id = Uuid::parse_str(import_id).map_err(|_| {
        format!(
            "field `import_id` is {:?}, not a UUID: use a UUID such as 3f0c1f4e-8a55-4a36-9a34-3c0f4b1f2e10",
            printable(import_id)
        )
    })?;
    let workspace_id = identifier(top, "workspace_id")?;
    let dataset_id = identifier(top, "dataset_id")?;
    let mode = match required_str(top, "", "mode")? {
        "link" => Mode::Link,
        "copy" => Mode::Copy,
        other => return Err(format!("field `mode` is {other:?}: use \"link\" or \"copy\"")),
    };
    let (source, prefixes) = validate_source(source_map(top.get("source"))?, options, form)?;
    let filter = match top.get("filter") {
        None => Filter { extensions: default_extensions(), max_object_bytes: DEFAULT_MAX_OBJECT_BYTES },
        Some(f) => validate_filter(f)?,
    };
    Ok(ImportRequest {
        import_id,
        workspace_id: workspace_id.to_owned(),
        dataset_id: dataset_id.to_owned(),
        mode,
        source,
        prefixes,
        filter,
    })
}

fn default_extensions() -> Extensions {
    Extensions::Only(DEFAULT_EXTENSIONS.iter().map(|e| (*e).to_owned()).collect())
}

fn only_fields(map: &Map<String, Value>, path: &str, allowed: &[&str]) -> Check<()> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(format!(
            "field `{path}{}` is not part of the request: allowed here are {}",
            printable(k),
            allowed.join(", ")
        )),
    }
}

/// A field name or value safe to put in a sentence: cut to its first
/// [`QUOTED_CHARS`] characters, control characters escaped.
fn printable(s: &str) -> String {
    let cut = truncate(s, QUOTED_CHARS);
    let mut out = cut.escape_debug().to_string();
    if cut.len() < s.len() {
        out.push_str("...");
    }
    out
}

/// How much of a value a rejection quotes.
const QUOTED_CHARS: usize = 160;

/// The first string of `value` (or object key) holding a NUL, by its path:
/// Postgres cannot store one, so no field may carry it.
fn find_nul(value: &Value, path: &mut String) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = find_nul(item, path);
            if !found {
                path.truncate(len);
            }
            found
        }),
        Value::Object(map) => map.iter().any(|(key, item)| {
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&printable(key));
            let found = key.contains('\0') || find_nul(item, path);
            if !found {
                path.truncate(len);
            }
            found
        }),
        _ => false,
    }
}

fn required_str<'a>(map: &'a Map<String, Value>, path: &str, name: &str) -> Check<&'a str> {
    match map.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("field `{path}{name}` must be a string, not {}", json_kind(other))),
        None => Err(format!("field `{path}{name}` is missing")),
    }
}

fn optional_str<'a>(map: &'a Map<String, Value>, path: &str, name: &str) -> Check<Option<&'a str>> {
    match map.get(name) {
        None => Ok(None),
        Some(_) => required_str(map, path, name).map(Some),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether `s` is a valid `workspace_id` or `dataset_id`: 1-128 characters
/// of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
pub fn is_identifier(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn identifier<'a>(map: &'a Map<String, Value>, name: &str) -> Check<&'a str> {
    let s = required_str(map, "", name)?;
    if is_identifier(s) {
        Ok(s)
    } else {
        Err(format!(
            "field `{name}` is {:?}: use 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit",
            printable(s)
        ))
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Validates a `source` object by the rules of §2, alone (the connection
/// checks of §9 take one without a request around it) or inside an
/// ImportRequest: one function for both. Prefixes come back merged.
pub fn validate_source_value(
    value: Option<&Value>,
    options: ValidationOptions,
) -> Result<(Source, Vec<String>), String> {
    validate_source(source_map(value)?, &options, Form::Request)
}

fn source_map(value: Option<&Value>) -> Check<&Map<String, Value>> {
    let value = value.ok_or("field `source` is missing: name the bucket to import from")?;
    Ok(value
        .as_object()
        .ok_or("field `source` is not an object: give provider, bucket and the provider's fields")?)
}

/// Which JSON is validated: a request as the platform sends it, or as
/// Tether stored it ([`ImportRequest::to_stored_json`]: secrets left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Request,
    Stored,
}

fn validate_source(
    map: &Map<String, Value>,
    options: &ValidationOptions,
    form: Form,
) -> Check<(Source, Vec<String>)> {
    let provider = required_str(map, "source.", "provider")?;
    let source = match provider {
        "s3" => {
            only_fields(
                map,
                "source.",
                &["provider", "bucket", "region", "prefixes", "role_arn", "external_id"],
            )?;
            let bucket = required_str(map, "source.", "bucket")?;
            check(
                s3_bucket_ok(bucket),
                "source.bucket",
                bucket,
                "an S3 bucket name: 3-63 lower-case letters, digits, dots and hyphens",
            )?;
            let region = optional_str(map, "source.", "region")?;
            if let Some(r) = region {
                let ok = (1..=32).contains(&r.len())
                    && r.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                check(ok, "source.region", r, "an AWS region such as eu-central-1")?;
            }
            let role_arn = required_str(map, "source.", "role_arn")?;
            check(
                role_arn_ok(role_arn),
                "source.role_arn",
                role_arn,
                "an IAM role ARN such as arn:aws:iam::111122223333:role/platform-import",
            )?;
            let external_id = required_str(map, "source.", "external_id")?;
            check(
                external_id_ok(external_id),
                "source.external_id",
                external_id,
                "the workspace's ExternalId (2-1224 characters of letters, digits and +=,.@:/-_)",
            )?;
            Source::S3(S3Source {
                bucket: bucket.to_owned(),
                region: region.map(str::to_owned),
                role_arn: role_arn.to_owned(),
                external_id: external_id.to_owned(),
            })
        }
        "gcs" => {
            only_fields(map, "source.", &["provider", "bucket", "prefixes", "impersonate_service_account"])?;
            let bucket = required_str(map, "source.", "bucket")?;
            check(
                gcs_bucket_ok(bucket),
                "source.bucket",
                bucket,
                "a GCS bucket name: 3-63 lower-case letters, digits, dots, hyphens and underscores",
            )?;
            let account = optional_str(map, "source.", "impersonate_service_account")?;
            match account {
                Some(a) => {
                    check(service_account_ok(a), "source.impersonate_service_account", a, "a service account's email: NAME@PROJECT.iam.gserviceaccount.com, PROJECT@appspot.gserviceaccount.com or NUMBER-compute@developer.gserviceaccount.com")?;
                }
                None if options.gcs_allow_own_identity => {}
                None => {
                    return Err("field `source.impersonate_service_account` is missing: a GCS source must name the workspace's service account that was granted read access".into())
                }
            }
            Source::Gcs(GcsSource {
                bucket: bucket.to_owned(),
                impersonate_service_account: account.map(str::to_owned),
            })
        }
        "azure" => {
            only_fields(map, "source.", &["provider", "account", "container", "prefixes", "sas_token"])?;
            let account = required_str(map, "source.", "account")?;
            let ok = (3..=24).contains(&account.len())
                && account.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
            check(
                ok,
                "source.account",
                account,
                "an Azure storage account name: 3-24 lower-case letters and digits",
            )?;
            let container = required_str(map, "source.", "container")?;
            check(
                azure_container_ok(container),
                "source.container",
                container,
                "an Azure container name: 3-63 lower-case letters, digits and single hyphens",
            )?;
            let sas_token = match form {
                Form::Request => {
                    let raw = required_str(map, "source.", "sas_token")?;
                    // The token itself is a secret: never quote it back.
                    Some(secrets::sas_token(raw).ok_or("field `source.sas_token` is not a SAS token (it has no sig= part): paste the container's SAS token with l and r permissions")?)
                }
                Form::Stored => None,
            };
            Source::Azure(AzureSource {
                account: account.to_owned(),
                container: container.to_owned(),
                sas_token,
            })
        }
        other => {
            return Err(format!(
                "field `source.provider` is {:?}: use \"s3\", \"gcs\" or \"azure\"",
                printable(other)
            ))
        }
    };
    if options.destination_root.as_deref() == Some(source.url("").as_str()) {
        // Destinations are S3 or GCS buckets only: an Azure source never matches.
        return Err("field `source.bucket` names the bucket where Tether keeps every workspace's copies (TETHER_DESTINATION): import from the customer's own bucket".into());
    }
    let prefixes = validate_prefixes(map.get("prefixes"))?;
    Ok((source, prefixes))
}

fn check(ok: bool, field: &str, value: &str, expected: &str) -> Check<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("field `{field}` is {:?}: expected {expected}", printable(value)))
    }
}

/// An S3 bucket name by AWS's rules (also for `tetherctl setup aws`).
pub fn s3_bucket_ok(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !b.contains("..")
        && b.parse::<std::net::Ipv4Addr>().is_err()
}

/// An ExternalId as STS accepts it: 2-1224 characters of letters, digits and `+=,.@:/-_`.
pub fn external_id_ok(id: &str) -> bool {
    (2..=1224).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || "+=,.@:/-_".contains(c))
}

fn gcs_bucket_ok(b: &str) -> bool {
    let max = if b.contains('.') { 222 } else { 63 };
    (3..=max).contains(&b.len())
        && b.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
        && b.split('.').all(|part| part.len() <= 63)
}

/// A service account's email as contract §2 allows it, and nothing else.
pub fn service_account_ok(email: &str) -> bool {
    let id_of = |s: &str, shortest: usize| {
        (shortest..=30).contains(&s.len())
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && s.starts_with(|c: char| c.is_ascii_lowercase())
    };
    let id = |s: &str| id_of(s, 6);
    let Some((name, domain)) = email.split_once('@') else { return false };
    if let Some(project) = domain.strip_suffix(".iam.gserviceaccount.com") {
        // The contract's own example (`importer@acme.iam…`) has a project
        // of 4 characters, under the 6 its rule names: both are accepted.
        return id(name) && id_of(project, 4);
    }
    match domain {
        "appspot.gserviceaccount.com" => id(name),
        "developer.gserviceaccount.com" => name
            .strip_suffix("-compute")
            .is_some_and(|n| (1..=20).contains(&n.len()) && n.chars().all(|c| c.is_ascii_digit())),
        _ => false,
    }
}

fn azure_container_ok(c: &str) -> bool {
    (3..=63).contains(&c.len())
        && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
        && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
        && !c.contains("--")
}

fn role_arn_ok(arn: &str) -> bool {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    partition.starts_with("aws")
        && account.len() == 12
        && account.chars().all(|c| c.is_ascii_digit())
        && resource.strip_prefix("role/").is_some_and(|name| {
            !name.is_empty()
                && name.len() <= 512
                && name.chars().all(|c| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c))
        })
}

fn validate_prefixes(value: Option<&Value>) -> Check<Vec<String>> {
    let Some(value) = value else {
        return Ok(vec![String::new()]);
    };
    let items = value.as_array().ok_or_else(|| {
        format!("field `source.prefixes` must be an array of strings, not {}", json_kind(value))
    })?;
    if items.is_empty() {
        return Err("field `source.prefixes` is empty: leave it out to import the whole bucket, or list 1-1000 prefixes".into());
    }
    if items.len() > MAX_PREFIXES {
        return Err(format!(
            "field `source.prefixes` has {} entries: at most {MAX_PREFIXES} are allowed",
            items.len()
        ));
    }
    let mut prefixes = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let p = item.as_str().ok_or_else(|| {
            format!("field `source.prefixes[{i}]` must be a string, not {}", json_kind(item))
        })?;
        if p.len() > MAX_PREFIX_BYTES {
            return Err(format!(
                "field `source.prefixes[{i}]` is {} bytes long: at most {MAX_PREFIX_BYTES} are allowed",
                p.len()
            ));
        }
        if p.chars().any(char::is_control) {
            return Err(format!(
                "field `source.prefixes[{i}]` contains a control character: {:?}",
                printable(p)
            ));
        }
        prefixes.push(p.to_owned());
    }
    Ok(merge_prefixes(prefixes))
}

/// Sorts the prefixes and drops every one that another one already covers,
/// so that no object is listed (and imported) twice.
pub fn merge_prefixes(mut prefixes: Vec<String>) -> Vec<String> {
    prefixes.sort();
    prefixes.dedup();
    let mut merged: Vec<String> = Vec::with_capacity(prefixes.len());
    for p in prefixes {
        // Sorted order puts a covering prefix right before what it covers.
        if merged.last().is_some_and(|last| p.starts_with(last.as_str())) {
            continue;
        }
        merged.push(p);
    }
    merged
}

fn validate_filter(value: &Value) -> Check<Filter> {
    let map = value
        .as_object()
        .ok_or_else(|| format!("field `filter` must be an object, not {}", json_kind(value)))?;
    only_fields(map, "filter.", &["extensions", "max_object_bytes"])?;
    let extensions = match map.get("extensions") {
        None => default_extensions(),
        Some(v) => {
            let items = v
                .as_array()
                .filter(|a| !a.is_empty() && a.len() <= 100)
                .ok_or("field `filter.extensions` must be a list of 1-100 extensions such as [\"jpg\", \"png\"], or [\"*\"]")?;
            let mut set = BTreeSet::new();
            for (i, item) in items.iter().enumerate() {
                let e = item.as_str().unwrap_or_default();
                let ok =
                    (1..=16).contains(&e.len()) && (e == "*" || e.chars().all(|c| c.is_ascii_alphanumeric()));
                if !ok {
                    return Err(format!(
                        "field `filter.extensions[{i}]` is {}: give an extension without the dot, such as \"jpg\", or \"*\" for every object",
                        printable(&item.to_string())
                    ));
                }
                set.insert(e.to_ascii_lowercase());
            }
            if set.contains("*") {
                Extensions::All
            } else {
                Extensions::Only(set)
            }
        }
    };
    let max_object_bytes = match map.get("max_object_bytes") {
        None => DEFAULT_MAX_OBJECT_BYTES,
        Some(v) => v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
            format!(
                "field `filter.max_object_bytes` is {}: give a positive whole number of bytes",
                printable(&v.to_string())
            )
        })?,
    };
    Ok(Filter { extensions, max_object_bytes })
}

impl ImportRequest {
    /// The request as Tether keeps it in Postgres: secrets left out.
    pub fn to_stored_json(&self) -> Value {
        let source = match &self.source {
            Source::S3(s) => serde_json::json!({
                "provider": "s3", "bucket": s.bucket, "region": s.region,
                "role_arn": s.role_arn, "external_id": s.external_id,
            }),
            Source::Gcs(s) => serde_json::json!({
                "provider": "gcs", "bucket": s.bucket,
                "impersonate_service_account": s.impersonate_service_account,
            }),
            Source::Azure(s) => serde_json::json!({
                "provider": "azure", "account": s.account, "container": s.container,
            }),
        };
        let extensions = match &self.filter.extensions {
            Extensions::All => vec!["*".to_owned()],
            Extensions::Only(set) => set.iter().cloned().collect(),
        };
        serde_json::json!({
            "import_id": self.import_id,
            "workspace_id": self.workspace_id,
            "dataset_id": self.dataset_id,
            "mode": self.mode.as_str(),
            "source": source,
            "prefixes": self.prefixes,
            "filter": { "extensions": extensions, "max_object_bytes": self.filter.max_object_bytes },
        })
    }

    /// Reads back what [`ImportRequest::to_stored_json`] wrote (secrets
    /// excluded, so an Azure source comes back without its token).
    pub fn from_stored_json(value: &Value) -> Result<Self, String> {
        let mut top = value.as_object().cloned().ok_or("stored request is not an object")?;
        let prefixes = top.remove("prefixes").unwrap_or(Value::Null);
        let mut source = top.remove("source").unwrap_or(Value::Null);
        if let Some(s) = source.as_object_mut() {
            s.retain(|_, v| !v.is_null());
            s.insert("prefixes".into(), prefixes);
        }
        top.insert("source".into(), source);
        top.insert("version".into(), Value::from(1));
        let options = ValidationOptions { gcs_allow_own_identity: true, destination_root: None };
        validate(&Value::Object(top), &options, Form::Stored)
    }
}

/// FinishedEvent (contract §4).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct FinishedEvent {
    pub version: u32,
    pub import_id: Uuid,
    pub revision: i32,
    pub workspace_id: Option<String>,
    pub dataset_id: Option<String>,
    pub state: String,
    pub objects_listed: i64,
    pub objects_imported: i64,
    pub objects_skipped: i64,
    pub objects_failed: i64,
    pub bytes_copied: i64,
    pub error: Option<String>,
    pub finished_at: DateTime<Utc>,
}

/// Body of an `import.cancel` message.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    pub import_id: Uuid,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_prefixes_are_merged() {
        let merged = merge_prefixes(vec![
            "2024/06/".into(),
            "2024/".into(),
            "2025/a".into(),
            "2025/ab".into(),
            "2024/".into(),
        ]);
        assert_eq!(merged, vec!["2024/".to_owned(), "2025/a".to_owned()]);
        assert_eq!(merge_prefixes(vec!["x/".into(), String::new()]), vec![String::new()]);
    }

    #[test]
    fn digest_ignores_key_order_and_spacing() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":{"c":[1,2],"d":"x"}}"#).expect("json");
        let b: Value = serde_json::from_str(r#"{ "b" : { "d":"x", "c":[1, 2] }, "a":1 }"#).expect("json");
        let c: Value = serde_json::from_str(r#"{"a":1,"b":{"c":[2,1],"d":"x"}}"#).expect("json");
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&c));
    }

    #[test]
    fn extension_filter_is_case_insensitive_and_looks_at_the_last_segment() {
        let f = Filter { extensions: default_extensions(), max_object_bytes: 1 };
        assert!(f.matches("a/b/IMG.JPG"));
        assert!(!f.matches("a.jpg/readme"));
        assert!(!f.matches("a/b/noext"));
        assert!(Filter { extensions: Extensions::All, max_object_bytes: 1 }.matches("x"));
    }

    #[test]
    fn role_arns() {
        assert!(role_arn_ok("arn:aws:iam::111122223333:role/platform-import"));
        assert!(role_arn_ok("arn:aws-cn:iam::111122223333:role/path/x"));
        assert!(!role_arn_ok("arn:aws:iam::1111:role/x"));
        assert!(!role_arn_ok("arn:aws:s3:::bucket"));
    }

    #[test]
    fn stored_form_round_trips() {
        let body = br#"{"version":1,"import_id":"3f0c1f4e-8a55-4a36-9a34-3c0f4b1f2e10","workspace_id":"acme","dataset_id":"d","mode":"link",
          "source":{"provider":"s3","bucket":"acme-images","prefixes":["a/","a/b"],"role_arn":"arn:aws:iam::111122223333:role/r","external_id":"ext-1"},
          "filter":{"extensions":["JPG"],"max_object_bytes":10}}"#;
        let request = parse_request(body, Some("application/json"), ValidationOptions::default())
            .expect("valid")
            .request;
        assert_eq!(request.prefixes, vec!["a/".to_owned()]);
        let back = ImportRequest::from_stored_json(&request.to_stored_json()).expect("stored form");
        assert_eq!(back, request);

        // An Azure request keeps its token typed; the stored form leaves it
        // out and reads back as no token, not as a placeholder.
        let body = br#"{"version":1,"import_id":"3f0c1f4e-8a55-4a36-9a34-3c0f4b1f2e10","workspace_id":"acme","dataset_id":"d","mode":"copy",
          "source":{"provider":"azure","account":"acmestorage","container":"images","sas_token":"?sv=1&sp=rl&sig=SECRET"}}"#;
        let request = parse_request(body, Some("application/json"), ValidationOptions::default())
            .expect("valid")
            .request;
        let Source::Azure(azure) = &request.source else { panic!("an Azure source") };
        assert_eq!(azure.sas_token.as_ref().map(Secret::expose), Some("sv=1&sp=rl&sig=SECRET"));
        let stored = request.to_stored_json();
        assert!(!stored.to_string().contains("SECRET"), "{stored}");
        let back = ImportRequest::from_stored_json(&stored).expect("stored form");
        let Source::Azure(azure) = &back.source else { panic!("an Azure source") };
        assert_eq!(azure.sas_token, None);
        assert_eq!(
            (back.import_id, back.mode, back.prefixes),
            (request.import_id, request.mode, request.prefixes)
        );
    }

    #[test]
    fn no_source_may_be_the_destination_bucket() {
        let s3 = |bucket: &str| {
            format!(
                r#"{{"provider":"s3","bucket":"{bucket}","role_arn":"arn:aws:iam::111122223333:role/r","external_id":"ext-1"}}"#
            )
        };
        let gcs = |bucket: &str| format!(r#"{{"provider":"gcs","bucket":"{bucket}"}}"#);
        let check = |destination: &str, source: String| {
            let options = ValidationOptions::new(true, Some(destination));
            let source: Value = serde_json::from_str(&source).expect("json");
            validate_source_value(Some(&source), options).map(|_| ())
        };
        let refused = check("s3://platform-copies/tether", s3("platform-copies")).expect_err("refused");
        assert!(refused.contains("`source.bucket`") && refused.contains("TETHER_DESTINATION"), "{refused}");
        assert!(check("gs://platform-copies", gcs("platform-copies")).is_err());
        // Another bucket, or the same name under another provider, is fine.
        assert!(check("s3://platform-copies/tether", s3("platform-copies2")).is_ok());
        assert!(check("gs://platform-copies/x", s3("platform-copies")).is_ok());
        assert!(check("file:///var/copies", s3("platform-copies")).is_ok());
    }
}
