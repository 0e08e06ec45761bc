//! What operators see of a process: logs (human-readable or JSON lines,
//! filtered by `RUST_LOG`, default `info`; secrets never reach them because
//! they are [`crate::secrets::Secret`]s, whose `Debug` is `******`), the
//! Prometheus metrics defined in one place ([`metrics`]), and the HTTP
//! endpoints `/metrics`, `/healthz`, `/readyz` ([`serve`]).

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber. Call once, from `main`.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(error) = result {
        eprintln!("logging was already set up: {error}");
    }
}

mod metrics;
mod server;

pub use self::metrics::{metrics, Metrics};
pub use self::server::{serve, Readiness};
