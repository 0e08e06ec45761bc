//! `tetherctl`: staff's tool for imports.
//!
//! `status ID`, `list`, `failures ID`, `requeue ID`, `cancel ID`, `submit FILE`,
//! and for customers' buckets `check FILE` (the connection checks of §9) and
//! `setup aws` (the policies to paste).
//! Tables for people by default, `--json` (and `--csv` for failures) for
//! scripts. Exit codes: 0 done, 1 refused or not found (the message says
//! why; for `check`, a check failed), 2 bad usage or an invalid file, 3
//! Postgres, RabbitMQ or AWS unreachable.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;
use tether_shared::checks::setup::{AwsSetup, SetupError};
use tether_shared::checks::{default_origin, valid_origin, CheckRequest, Checker, Report, Status};
use tether_shared::config::StoresConfig;
use tether_shared::contract::{Secret, ROUTING_REQUEST};
use tether_shared::db::admin::{ListFilter, Requeued};
use tether_shared::db::imports::Cancelled;
use tether_shared::db::{DbError, Store};
use tether_shared::queue::{self, Publisher, QueueError};
use tether_shared::task::TaskKind;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(name = "tetherctl", version, about = "Staff's tool for Tether imports")]
struct Cli {
    /// Postgres URL.
    #[arg(long, env = "TETHER_DATABASE_URL", hide_env_values = true, global = true)]
    database_url: Option<Secret>,
    /// RabbitMQ URL (submit, requeue).
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
    Requeue { import_id: Uuid },
    /// Stop an import; what was imported stays.
    Cancel { import_id: Uuid },
    /// Publish an ImportRequest (a JSON file) as the platform would.
    Submit { file: PathBuf },
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
            let filter =
                ListFilter { state: state.clone(), workspace: workspace.clone(), overdue: *overdue, limit: *limit };
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
                    let cells = ["source_url", "code", "attempts", "last_attempt_at", "message"].map(|k| csv_cell(&f[k]));
                    println!("{}", cells.join(","));
                }
            } else {
                for f in &failures {
                    println!("{:<20} {:>3}  {}  {}", text(&f["code"]), text(&f["attempts"]), text(&f["source_url"]), text(&f["message"]));
                }
                println!("{} failure(s)", failures.len());
            }
        }
        Command::Requeue { import_id } => match store(&cli)?.requeue_import(*import_id).await? {
            Requeued::Requeued { prefixes, objects, tasks } => {
                let publisher = publisher(&cli).await?;
                for kind in TaskKind::ALL {
                    let messages: Vec<_> = tasks.iter().filter(|(k, _)| *k == kind).map(|(_, m)| *m).collect();
                    if !messages.is_empty() {
                        publisher.publish_tasks(kind, &messages).await?;
                    }
                }
                println!("requeued {import_id}: {prefixes} prefix(es) and {objects} object(s) run again");
            }
            Requeued::NotFound => return Err(CtlError::NotFound(*import_id)),
            Requeued::NotRequeueable(why) => return Err(CtlError::Refused(format!("cannot requeue {import_id}: {why}"))),
            Requeued::NothingToRetry => {
                return Err(CtlError::Refused(format!(
                    "nothing of {import_id} can be retried (objects too large stay failed; raise filter.max_object_bytes in a new request)"
                )))
            }
        },
        Command::Cancel { import_id } => match store(&cli)?.cancel_import(*import_id).await? {
            Cancelled::Cancelled => println!("cancelled {import_id}"),
            Cancelled::AlreadyFinal(state) => {
                return Err(CtlError::Refused(format!("import {import_id} is already {state}")))
            }
            Cancelled::NotFound => return Err(CtlError::NotFound(*import_id)),
        },
        Command::Submit { file } => {
            let body = std::fs::read(file).map_err(|e| CtlError::File(file.clone(), e))?;
            publisher(&cli).await?.publish_request(ROUTING_REQUEST, &body).await?;
            println!("submitted {}", file.display());
        }
        Command::Check { file, origin, stores, origins } => {
            let checker = checker(stores, origins).await?;
            let invalid = |why: String| CtlError::Invalid(format!("{}: {why}", file.display()));
            let body = std::fs::read(file).map_err(|e| invalid(format!("cannot read it ({e})")))?;
            let body: Value =
                serde_json::from_slice(&body).map_err(|e| invalid(format!("not JSON ({e}): give an ImportRequest")))?;
            let mut request = CheckRequest::from_import_request(&body, checker.validation_options()).map_err(invalid)?;
            if let Some(origin) = origin {
                let origin = valid_origin(origin).map_err(|why| CtlError::Invalid(format!("--origin {why}")))?;
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
            let setup = AwsSetup::new(bucket, prefix.as_deref(), external_id, origin.as_deref(), default.as_deref())
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

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn csv_cell(v: &Value) -> String {
    let s = text(v);
    if s.contains([',', '"', '\n', '\r']) {
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
