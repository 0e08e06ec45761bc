//! `tether-api`: parses the configuration and serves until SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = tether_api::ApiConfig::parse();
    tether_shared::telemetry::init_logging(config.log_format);
    match tether_api::run(config, tether_shared::shutdown::on_signals()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "tether-api stopped.");
            std::process::ExitCode::FAILURE
        }
    }
}
