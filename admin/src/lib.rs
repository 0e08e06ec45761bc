//! `tetherctl`: staff's tool for imports.
//!
//! `status ID`, `list`, `failures ID`, `requeue ID`, `cancel ID`, `submit FILE`,
//! `audit [ID]`, and for customers' buckets `check FILE` (the connection
//! checks of §9) and `setup aws` (the policies to paste).
//! `requeue`, `cancel` and `submit` are recorded in the audit trail: who
//! (`--actor`, else the login name), why (`--reason`), when, and what came
//! of it.
//! Tables for people by default, `--json` (and `--csv` for failures and the
//! audit trail) for scripts. What customers chose (keys, messages quoting
//! them) is shown with control characters escaped, so that an object key
//! cannot drive the terminal, and CSV cells cannot start a spreadsheet
//! formula. Exit codes: 0 done, 1 refused or not found (the message says
//! why; for `check`, a check failed), 2 bad usage or an invalid file, 3
//! Postgres, RabbitMQ or AWS unreachable.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;
use tether_shared::checks::setup::{AwsSetup, SetupError};
use tether_shared::checks::{default_origin, valid_origin, CheckRequest, Checker, Report, Status};
use tether_shared::config::StoresConfig;
use tether_shared::contract::ROUTING_REQUEST;
use tether_shared::db::admin::{ListFilter, Requeued};
use tether_shared::db::audit::{AuditAction, AuditEntry};
use tether_shared::db::imports::Cancelled;
use tether_shared::db::{DbError, Store};
use tether_shared::queue::{self, Publisher, QueueError};
use tether_shared::secrets::Secret;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(name = "tetherctl", version, about = "Staff's tool for Tether imports")]
struct Cli {
    /// Postgres URL.
    #[arg(long, env = "TETHER_DATABASE_URL", hide_env_values = true, global = true)]
    database_url: Option<Secret>,
    /// RabbitMQ URL (submit).
    #[arg(long, env = "TETHER_AMQP_URL", hide_env_values = true, global = true)]
    amqp_url: Option<Secret>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// An import's state, counts, error and top failure codes.
    Status { import_id: Uuid },
    /// Imports, newest first.
    List {
        /// Only imports in this state.
        #[arg(long, value_parser = ["queued", "running", "succeeded", "partially_succeeded", "failed", "cancelled"])]
        state: Option<String>,
        /// Only this workspace's imports.
        #[arg(long)]
        workspace: Option<String>,
        /// Only imports past their 24-hour deadline and not final.
        #[arg(long)]
        overdue: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// An import's failed objects and prefixes.
    Failures {
        import_id: Uuid,
        /// CSV (source_url, code, attempts, last_attempt_at, message).
        #[arg(long, conflicts_with = "json")]
        csv: bool,
    },
    /// Run again what failed (prefixes and objects), once the cause is fixed.
    Requeue {
        import_id: Uuid,
        #[command(flatten)]
        who: Accountable,
    },
    /// Stop an import; what was imported stays.
    Cancel {
        import_id: Uuid,
        #[command(flatten)]
        who: Accountable,
    },
    /// Publish an ImportRequest (a JSON file) as the platform would.
    Submit {
        file: PathBuf,
        #[command(flatten)]
        who: Accountable,
    },
    /// Who requeued, cancelled or submitted what, when and why: of one
    /// import, or the latest actions of all.
    Audit {
        import_id: Option<Uuid>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// CSV (at, actor, action, import_id, reason, outcome).
        #[arg(long, conflicts_with = "json")]
        csv: bool,
    },
    /// Check the source of an ImportRequest (a JSON file) the way its import
    /// and the access API will use it; exit 1 when a check failed.
    Check {
        file: PathBuf,
        /// The web origin whose pages show the images (CORS); default: the
        /// first of TETHER_API_ALLOWED_ORIGINS.
        #[arg(long)]
        origin: Option<String>,
        #[command(flatten)]
        stores: StoresConfig,
        #[command(flatten)]
        origins: AllowedOrigins,
        /// Where copies go (the workers' TETHER_DESTINATION): its bucket is
        /// never checked as a source.
        #[arg(long, env = "TETHER_DESTINATION")]
        destination: Option<String>,
    },
    /// Print the policies a customer pastes to connect a bucket.
    Setup {
        #[command(subcommand)]
        provider: SetupProvider,
    },
}

#[derive(Debug, Subcommand)]
enum SetupProvider {
    /// The IAM trust policy, permission policy and CORS rules for an S3 bucket.
    Aws {
        #[arg(long)]
        bucket: String,
        /// Limit the role to keys under this prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// The workspace's ExternalId.
        #[arg(long)]
        external_id: String,
        /// The web origin CORS rules allow; default: the first of
        /// TETHER_API_ALLOWED_ORIGINS.
        #[arg(long)]
        origin: Option<String>,
        #[command(flatten)]
        origins: AllowedOrigins,
    },
}

/// Who takes a staff action, and why: recorded in the audit trail.
#[derive(Debug, clap::Args)]
struct Accountable {
    /// Who is acting (default: the login name: LOGNAME, USER, or the
    /// account tetherctl runs as).
    #[arg(long)]
    actor: Option<String>,
    /// Why: the ticket, the cause that was fixed.
    #[arg(long)]
    reason: Option<String>,
}

impl Accountable {
    /// The actor and the reason, checked: names and reasons are shown to
    /// other staff later, so they may not hold control characters.
    fn checked(&self) -> Result<(String, Option<&str>), CtlError> {
        let login = || {
            ["LOGNAME", "USER"]
                .into_iter()
                .find_map(|v| std::env::var(v).ok().filter(|name| !name.trim().is_empty()))
                .or_else(|| whoami::username().ok())
        };
        let actor = self.actor.clone().or_else(login).unwrap_or_default();
        let actor = actor.trim();
        if actor.is_empty() || actor.chars().count() > 128 || actor.chars().any(char::is_control) {
            return Err(CtlError::Invalid(
                "--actor is missing or not a name (1-128 characters, no control characters): say who is acting, e.g. --actor jane@example.com".into(),
            ));
        }
        let reason = self.reason.as_deref().map(str::trim).filter(|r| !r.is_empty());
        if reason.is_some_and(|r| r.chars().count() > 1000 || r.chars().any(char::is_control)) {
            return Err(CtlError::Invalid(
                "--reason is over 1000 characters or holds control characters: write one line".into(),
            ));
        }
        Ok((actor.to_owned(), reason))
    }
}

#[derive(Debug, clap::Args)]
struct AllowedOrigins {
    /// The platform's web origins; the first is the default origin.
    #[arg(long = "allowed-origins", env = "TETHER_API_ALLOWED_ORIGINS", value_delimiter = ',')]
    list: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error("import {0} not found")]
    NotFound(Uuid),
    #[error("{0}")]
    Refused(String),
    #[error("{0} is not set: export it or pass --{1}")]
    Missing(&'static str, &'static str),
    #[error("{0}")]
    Db(#[from] DbError),
    #[error("{0}")]
    Queue(#[from] QueueError),
    #[error("cannot read {0}: {1}")]
    File(PathBuf, std::io::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("{0} of {1} checks failed")]
    ChecksFailed(usize, usize),
    #[error("{0}")]
    Aws(String),
}

impl CtlError {
    fn exit_code(&self) -> u8 {
        match self {
            CtlError::Db(DbError::Pool(_) | DbError::Query(_)) | CtlError::Queue(_) | CtlError::Aws(_) => 3,
            CtlError::Missing(..) | CtlError::Invalid(_) => 2,
            _ => 1,
        }
    }
}

/// Runs one command line (`args[0]` is the program name); returns the exit
/// code. Bad usage prints clap's message and is code 2.
pub async fn execute<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
        }
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn store(cli: &Cli) -> Result<Store, CtlError> {
    let url = cli.database_url.as_ref().ok_or(CtlError::Missing("TETHER_DATABASE_URL", "database-url"))?;
    Ok(Store::connect(url, 1)?)
}

async fn publisher(cli: &Cli) -> Result<Publisher, CtlError> {
    let url = cli.amqp_url.as_ref().ok_or(CtlError::Missing("TETHER_AMQP_URL", "amqp-url"))?;
    let connection = queue::connect(url, "tetherctl").await?;
    queue::declare_topology(&connection).await?;
    Ok(Publisher::new(&connection).await?)
}

async fn run(cli: Cli) -> Result<(), CtlError> {
    match &cli.command {
        Command::Status { import_id } => {
            let store = store(&cli)?;
            let status = store.import_status(*import_id).await?.ok_or(CtlError::NotFound(*import_id))?;
            if cli.json {
                println!("{status}");
            } else {
                print_status(&status, &store.top_failure_codes(*import_id).await?);
            }
        }
        Command::List { state, workspace, overdue, limit } => {
            let filter = ListFilter {
                state: state.clone(),
                workspace: workspace.clone(),
                overdue: *overdue,
                limit: *limit,
            };
            let imports = store(&cli)?.list_imports(&filter).await?;
            if cli.json {
                println!("{}", Value::Array(imports));
            } else {
                print_list(&imports);
            }
        }
        Command::Failures { import_id, csv } => {
            let store = store(&cli)?;
            store.import_status(*import_id).await?.ok_or(CtlError::NotFound(*import_id))?;
            let failures = store.failures(*import_id).await?;
            if cli.json {
                println!("{}", Value::Array(failures));
            } else if *csv {
                println!("source_url,code,attempts,last_attempt_at,message");
                for f in &failures {
                    let cells = ["source_url", "code", "attempts", "last_attempt_at", "message"]
                        .map(|k| csv_cell(&f[k]));
                    println!("{}", cells.join(","));
                }
            } else {
                for f in &failures {
                    println!(
                        "{:<20} {:>3}  {}  {}",
                        text(&f["code"]),
                        text(&f["attempts"]),
                        text(&f["source_url"]),
                        text(&f["message"])
                    );
                }
                println!("{} failure(s)", failures.len());
            }
        }
        Command::Requeue { import_id, who } => {
            let store = store(&cli)?;
            let entry = (AuditAction::Requeue, Some(*import_id));
            println!("{}", audited(&store, who, entry, requeue(&store, *import_id)).await?);
        }
        Command::Cancel { import_id, who } => {
            let store = store(&cli)?;
            let entry = (AuditAction::Cancel, Some(*import_id));
            println!("{}", audited(&store, who, entry, cancel(&store, *import_id)).await?);
        }
        Command::Submit { file, who } => {
            let body = std::fs::read(file).map_err(|e| CtlError::File(file.clone(), e))?;
            // The import it claims to be, if readable; the scheduler judges the rest.
            let import_id = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["import_id"].as_str().and_then(|s| Uuid::parse_str(s).ok()));
            let store = store(&cli)?;
            let submit = async {
                publisher(&cli).await?.publish_request(ROUTING_REQUEST, &body).await?;
                Ok(format!("submitted {}", file.display()))
            };
            println!("{}", audited(&store, who, (AuditAction::Submit, import_id), submit).await?);
        }
        Command::Audit { import_id, limit, csv } => {
            let trail = store(&cli)?.audit_trail(*import_id, *limit).await?;
            let columns = ["at", "actor", "action", "import_id", "reason", "outcome"];
            if cli.json {
                println!("{}", Value::Array(trail));
            } else if *csv {
                println!("{}", columns.join(","));
                for entry in &trail {
                    println!("{}", columns.map(|k| csv_cell(&entry[k])).join(","));
                }
            } else {
                for e in &trail {
                    println!(
                        "{}  {:<16} {:<8} {:<36}  {}  -> {}",
                        text(&e["at"]),
                        text(&e["actor"]),
                        text(&e["action"]),
                        text(&e["import_id"]),
                        text(&e["reason"]),
                        text(&e["outcome"])
                    );
                }
                println!("{} action(s)", trail.len());
            }
        }
        Command::Check { file, origin, stores, origins, destination } => {
            let checker = checker(stores, origins).await?.refusing_destination(destination.as_deref());
            let invalid = |why: String| CtlError::Invalid(format!("{}: {why}", file.display()));
            let body = std::fs::read(file).map_err(|e| invalid(format!("cannot read it ({e})")))?;
            let body: Value = serde_json::from_slice(&body)
                .map_err(|e| invalid(format!("not JSON ({e}): give an ImportRequest")))?;
            let mut request =
                CheckRequest::from_import_request(&body, checker.validation_options()).map_err(invalid)?;
            if let Some(origin) = origin {
                let origin =
                    valid_origin(origin).map_err(|why| CtlError::Invalid(format!("--origin {why}")))?;
                request.origin = Some(origin);
            }
            let report = checker.run(&request).await;
            if cli.json {
                println!("{}", serde_json::to_value(&report).unwrap_or(Value::Null));
            } else {
                print_report(&report);
            }
            let failed = report.checks.iter().filter(|c| c.status == Status::Fail).count();
            if failed > 0 {
                return Err(CtlError::ChecksFailed(failed, report.checks.len()));
            }
        }
        Command::Setup { provider: SetupProvider::Aws { bucket, prefix, external_id, origin, origins } } => {
            let default = default_origin(&origins.list).map_err(|e| CtlError::Invalid(e.to_string()))?;
            let setup =
                AwsSetup::new(bucket, prefix.as_deref(), external_id, origin.as_deref(), default.as_deref())
                    .map_err(|e| CtlError::Invalid(e.to_string()))?;
            let policies = setup.policies_for_tether(&aws_sdk().await).await.map_err(|e| match e {
                SetupError::Invalid(why) => CtlError::Invalid(why),
                identity @ SetupError::Identity(_) => CtlError::Aws(identity.to_string()),
            })?;
            if cli.json {
                println!("{policies}");
            } else {
                print_setup(&setup, &policies);
            }
        }
    }
    Ok(())
}

/// Runs a staff action with its audit row: recorded before it runs (no
/// row, no action), its outcome after. Returns what to print.
async fn audited(
    store: &Store,
    who: &Accountable,
    (action, import_id): (AuditAction, Option<Uuid>),
    act: impl std::future::Future<Output = Result<String, CtlError>>,
) -> Result<String, CtlError> {
    let (actor, reason) = who.checked()?;
    let id = store.audit_begin(&AuditEntry { actor: &actor, action, import_id, reason }).await?;
    let result = act.await;
    let outcome = match &result {
        Ok(done) => done.clone(),
        Err(error) => format!("not done: {error}"),
    };
    store.audit_end(id, &outcome).await?;
    result
}

async fn requeue(store: &Store, import_id: Uuid) -> Result<String, CtlError> {
    match store.requeue_import(import_id).await? {
        // Its tasks are held: the scheduler releases them within the fair share.
        Requeued::Requeued { prefixes, objects } => {
            Ok(format!("requeued {import_id}: {prefixes} prefix(es) and {objects} object(s) run again"))
        }
        Requeued::NotFound => Err(CtlError::NotFound(import_id)),
        Requeued::NotRequeueable(why) => Err(CtlError::Refused(format!("cannot requeue {import_id}: {why}"))),
        Requeued::NothingToRetry => Err(CtlError::Refused(format!(
            "nothing of {import_id} can be retried (objects too large stay failed; raise filter.max_object_bytes in a new request)"
        ))),
    }
}

async fn cancel(store: &Store, import_id: Uuid) -> Result<String, CtlError> {
    match store.cancel_import(import_id).await? {
        Cancelled::Cancelled => Ok(format!("cancelled {import_id}")),
        Cancelled::AlreadyFinal(state) => {
            Err(CtlError::Refused(format!("import {import_id} is already {state}")))
        }
        Cancelled::NotFound => Err(CtlError::NotFound(import_id)),
    }
}

/// A checker with Tether's own AWS identity (the SDK's standard
/// variables), as every process reads it.
async fn checker(stores: &StoresConfig, origins: &AllowedOrigins) -> Result<Checker, CtlError> {
    Checker::new(&aws_sdk().await, stores, &origins.list, std::sync::Arc::default())
        .map_err(|e| CtlError::Invalid(e.to_string()))
}

async fn aws_sdk() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await
}

fn print_report(report: &Report) {
    for check in &report.checks {
        println!("{:<8} {:<21} {}", check.status.as_str(), check.name, check.message);
    }
    if let Some(region) = &report.region {
        println!("region   {region}");
    }
    println!(
        "{}",
        if report.ok { "ok: no check failed" } else { "NOT OK: fix what failed, then check again" }
    );
}

fn print_setup(setup: &AwsSetup, policies: &Value) {
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    println!("# Trust policy: the role's Trust relationships in the IAM console (Edit trust policy)");
    println!("{}\n", pretty(&policies["trust_policy"]));
    println!("# Permission policy: the role's Permissions in the IAM console (Add permissions, Create inline policy, JSON)");
    println!("{}\n", pretty(&policies["permission_policy"]));
    println!(
        "# CORS rules: aws s3api put-bucket-cors --bucket {} --cors-configuration file://cors.json",
        setup.bucket
    );
    println!("{}", pretty(&policies["cors_rules"]));
}

/// A value for a person's terminal: control characters (an object key may
/// hold ESC sequences or newlines) and the invisible characters that
/// reorder text are shown escaped, as `\u{1b}`; `--json` keeps them exact.
fn text(v: &Value) -> String {
    let raw = match v {
        Value::Null => return "-".to_owned(),
        Value::String(s) => s.as_str(),
        other => return other.to_string(),
    };
    let mut shown = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c.is_control() || is_bidi_control(c) {
            shown.extend(c.escape_unicode());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// Unicode's explicit direction marks, embeddings, overrides and isolates:
/// invisible, they make a key read differently from what it is.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A CSV cell: escaped as for the terminal, inert for spreadsheets (a cell
/// that starts with `=`, `+`, `-` or `@` is a formula there, so it gets a
/// leading `'`), quoted when it holds a comma or a quote.
fn csv_cell(v: &Value) -> String {
    let mut s = text(v);
    if s.starts_with(['=', '+', '-', '@']) {
        s.insert(0, '\'');
    }
    if s.contains([',', '"']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn print_status(s: &Value, codes: &[(String, i64)]) {
    let field = |name: &str| text(&s[name]);
    println!("import      {}", field("import_id"));
    println!(
        "state       {}{}",
        field("state"),
        if s["overdue"] == Value::Bool(true) { " (OVERDUE)" } else { "" }
    );
    println!(
        "workspace   {}   dataset {}   mode {}   provider {}",
        field("workspace_id"),
        field("dataset_id"),
        field("mode"),
        field("provider")
    );
    println!(
        "objects     listed {}   imported {}   skipped {}   failed {}   bytes copied {}",
        field("objects_listed"),
        field("objects_imported"),
        field("objects_skipped"),
        field("objects_failed"),
        field("bytes_copied")
    );
    println!("created     {}   deadline {}", field("created_at"), field("deadline_at"));
    println!("started     {}   finished {}", field("started_at"), field("finished_at"));
    println!("error       {}", field("error"));
    if !codes.is_empty() {
        let top: Vec<String> = codes.iter().take(5).map(|(code, n)| format!("{code} {n}")).collect();
        println!("failures    {}", top.join(", "));
    }
}

fn print_list(imports: &[Value]) {
    println!(
        "{:<36}  {:<19}  {:<16} {:<16} {:>9} {:>9} {:>7}  created",
        "import", "state", "workspace", "dataset", "listed", "imported", "failed"
    );
    for s in imports {
        let state =
            format!("{}{}", text(&s["state"]), if s["overdue"] == Value::Bool(true) { "!" } else { "" });
        println!(
            "{:<36}  {:<19}  {:<16} {:<16} {:>9} {:>9} {:>7}  {}",
            text(&s["import_id"]),
            state,
            text(&s["workspace_id"]),
            text(&s["dataset_id"]),
            text(&s["objects_listed"]),
            text(&s["objects_imported"]),
            text(&s["objects_failed"]),
            text(&s["created_at"])
        );
    }
    println!("{} import(s); ! = overdue", imports.len());
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{csv_cell, text};

    #[test]
    fn control_characters_and_direction_marks_are_shown_escaped() {
        let key = json!("s3://b/a\u{1b}[2J\nb\u{7}\u{9b}c\u{202e}gpj.exe");
        assert_eq!(text(&key), "s3://b/a\\u{1b}[2J\\u{a}b\\u{7}\\u{9b}c\\u{202e}gpj.exe");
        assert_eq!(text(&json!("spaces and ünïcödé.jpg")), "spaces and ünïcödé.jpg");
        assert_eq!(text(&json!(null)), "-");
        assert_eq!(text(&json!(3)), "3");
    }

    #[test]
    fn csv_cells_cannot_start_a_formula() {
        for (cell, shown) in [
            ("=HYPERLINK(\"http://x\")", "\"'=HYPERLINK(\"\"http://x\"\")\""),
            ("+1", "'+1"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("a,b", "\"a,b\""),
            ("\n=1", "\\u{a}=1"),
            ("s3://b/k.jpg", "s3://b/k.jpg"),
        ] {
            assert_eq!(csv_cell(&json!(cell)), shown, "{cell}");
        }
    }
}
