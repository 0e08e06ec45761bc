//! Operator configuration (contract §5) shared by every process, read from
//! the environment by clap so that `--help` documents each variable.

use std::net::SocketAddr;

pub use crate::db::DbSession;
use crate::secrets::{Secret, SecretsKey};
pub use crate::telemetry::LogFormat;

/// What every Tether process needs: where Postgres and RabbitMQ are, and
/// where to serve metrics.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonConfig {
    /// Postgres URL; may hold a password, so it is never printed.
    #[arg(long, env = "TETHER_DATABASE_URL", hide_env_values = true)]
    pub database_url: Secret,
    /// RabbitMQ URL; the path is the virtual host.
    #[arg(long, env = "TETHER_AMQP_URL", hide_env_values = true)]
    pub amqp_url: Secret,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, env = "TETHER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Postgres connections per process.
    #[arg(long, env = "TETHER_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,
    #[command(flatten)]
    pub db_session: DbSession,
    /// 32 random bytes, base64: seals the SAS tokens Tether keeps in
    /// Postgres. Schedulers and workers need the same key.
    #[arg(long, env = "TETHER_SECRETS_KEY", hide_env_values = true)]
    pub secrets_key: Option<SecretsKey>,
    #[arg(long, env = "TETHER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Where customers' stores are and how they are addressed (contract §5),
/// for the programs that read customer buckets outside imports
/// (`tetherctl check`, `tether-api`).
#[derive(Debug, Clone, clap::Args)]
pub struct StoresConfig {
    /// Path-style S3 addressing, for S3-compatible stores.
    #[arg(long, env = "TETHER_S3_FORCE_PATH_STYLE", default_value_t = false, action = clap::ArgAction::Set)]
    pub s3_force_path_style: bool,
    /// A GCS emulator (`http://host:port`); unset, the real GCS with
    /// Tether's own Google identity.
    #[arg(long, env = "STORAGE_EMULATOR_HOST")]
    pub storage_emulator_host: Option<String>,
    /// Azure Blob endpoint template with `{account}` in it.
    #[arg(long, env = "TETHER_AZURE_BLOB_ENDPOINT", default_value = crate::storage::azure::DEFAULT_ENDPOINT)]
    pub azure_blob_endpoint: String,
    /// GCS sources without `impersonate_service_account` use Tether's own
    /// identity (single-tenant installations, emulators).
    #[arg(long, env = "TETHER_GCS_ALLOW_OWN_IDENTITY", default_value_t = false, action = clap::ArgAction::Set)]
    pub gcs_allow_own_identity: bool,
}
