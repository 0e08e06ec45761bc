//! `tether-worker`: parses the configuration and runs the worker until
//! SIGTERM.

// The worker's consume loop nests deep async state machines; release
// builds compute their layout past the default limit of 128.
#![recursion_limit = "256"]

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = tether_worker::WorkerConfig::parse();
    tether_shared::telemetry::init_logging(config.common.log_format);
    match tether_worker::run(config, tether_shared::shutdown::on_signals()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "The worker stopped.");
            std::process::ExitCode::FAILURE
        }
    }
}
