//! `tether-scheduler`: parses the configuration and runs the scheduler until
//! SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = tether_scheduler::SchedulerConfig::parse();
    tether_shared::telemetry::init_logging(config.common.log_format);
    match tether_scheduler::run(config, tether_shared::shutdown::on_signals()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "The scheduler stopped.");
            std::process::ExitCode::FAILURE
        }
    }
}
