//! Operator configuration (contract §5) shared by every process, read from
//! the environment by clap so that `--help` documents each variable.

use std::net::SocketAddr;

use crate::secrets::{Secret, SecretsKey};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

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

/// What every Postgres connection of a process is limited to. TLS is asked
/// for in `TETHER_DATABASE_URL` itself (`sslmode=require`, `verify-ca`,
/// `verify-full`, with `sslrootcert`), as libpq does.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct DbSession {
    /// A statement running longer than this is cancelled (0: no limit).
    #[arg(long, env = "TETHER_DB_STATEMENT_TIMEOUT_SECS", default_value_t = DbSession::DEFAULT.statement_timeout_secs)]
    pub statement_timeout_secs: u64,
    /// A statement waiting longer than this for a lock fails (0: no limit).
    #[arg(long, env = "TETHER_DB_LOCK_TIMEOUT_SECS", default_value_t = DbSession::DEFAULT.lock_timeout_secs)]
    pub lock_timeout_secs: u64,
}

impl DbSession {
    pub const DEFAULT: Self = Self { statement_timeout_secs: 60, lock_timeout_secs: 10 };
}

impl Default for DbSession {
    fn default() -> Self {
        Self::DEFAULT
    }
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
