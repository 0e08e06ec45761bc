//! `tetherctl`: staff's tool. `status ID` shows an import (`--json` prints its
//! `tether.import_status` row), `submit FILE` publishes an ImportRequest as
//! the platform would. Exit codes: 0 done, 1 failed (the message says why),
//! 2 bad usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;
use tether_shared::contract::{Secret, ROUTING_REQUEST};
use tether_shared::db::{DbError, Store};
use tether_shared::queue::{self, Publisher, QueueError};
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(name = "tetherctl", version, about = "Staff's tool for Tether imports")]
struct Cli {
    /// Postgres URL (for status).
    #[arg(long, env = "TETHER_DATABASE_URL", hide_env_values = true, global = true)]
    database_url: Option<Secret>,
    /// RabbitMQ URL (for submit).
    #[arg(long, env = "TETHER_AMQP_URL", hide_env_values = true, global = true)]
    amqp_url: Option<Secret>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show an import's state, counts, error and top failure codes.
    Status {
        import_id: Uuid,
        /// Print the `tether.import_status` row as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Publish an ImportRequest (a JSON file) as the platform would.
    Submit { file: PathBuf },
}

#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error("import {0} not found")]
    NotFound(Uuid),
    #[error("{0} is not set: export it or pass --{1}")]
    Missing(&'static str, &'static str),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("cannot read {0}: {1}")]
    File(PathBuf, std::io::Error),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), CtlError> {
    match cli.command {
        Command::Status { import_id, json } => {
            let url = cli.database_url.ok_or(CtlError::Missing("TETHER_DATABASE_URL", "database-url"))?;
            let store = Store::connect(&url, 1)?;
            let status = store.import_status(import_id).await?.ok_or(CtlError::NotFound(import_id))?;
            if json {
                println!("{status}");
            } else {
                print_status(&status, &store.top_failure_codes(import_id).await?);
            }
            Ok(())
        }
        Command::Submit { file } => {
            let url = cli.amqp_url.ok_or(CtlError::Missing("TETHER_AMQP_URL", "amqp-url"))?;
            let body = std::fs::read(&file).map_err(|e| CtlError::File(file.clone(), e))?;
            let connection = queue::connect(&url, "tetherctl").await?;
            queue::declare_topology(&connection).await?;
            Publisher::new(&connection).await?.publish_request(ROUTING_REQUEST, &body).await?;
            println!("submitted {}", file.display());
            Ok(())
        }
    }
}

fn print_status(s: &Value, codes: &[(String, i64)]) {
    let field = |name: &str| match &s[name] {
        Value::Null => "-".to_owned(),
        Value::String(v) => v.clone(),
        other => other.to_string(),
    };
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
