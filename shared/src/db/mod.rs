//! Postgres: the pool, the migrations, and every query Tether runs, grouped by
//! what they touch ([`imports`], [`tasks`], [`events`], [`dispatch`], [`budgets`]), for staff
//! [`admin`] and their [`audit`] trail, for the access API [`access`], and [`retention`]. How a
//! process connects (TLS, session limits) is [`connect`]'s. Postgres is the source
//! of truth; RabbitMQ messages only say "look at this row now".

pub mod access;
pub mod admin;
pub mod audit;
pub mod budgets;
mod connect;
pub use connect::DbSession;
pub mod dispatch;
pub mod events;
pub mod imports;
mod request_cache;
pub mod retention;
pub mod tasks;
pub mod wakeups;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::NoTls;

use crate::model::scope::sqlstate_is_transient;
use crate::secrets::Secret;

/// Migrations in the order they apply; each runs once, recorded in
/// `tether.schema_migrations`.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../../../migrations/0001_init.sql")),
    ("0002_copy_tasks", include_str!("../../../migrations/0002_copy_tasks.sql")),
    ("0003_failure_objects", include_str!("../../../migrations/0003_failure_objects.sql")),
    ("0004_source_secret", include_str!("../../../migrations/0004_source_secret.sql")),
    ("0005_list_fan_out", include_str!("../../../migrations/0005_list_fan_out.sql")),
    ("0006_task_ended_notify", include_str!("../../../migrations/0006_task_ended_notify.sql")),
    ("0010_access_credentials", include_str!("../../../migrations/0010_access_credentials.sql")),
    ("0013_workspace_identity", include_str!("../../../migrations/0013_workspace_identity.sql")),
    ("0014_audit", include_str!("../../../migrations/0014_audit.sql")),
    ("0015_fair_dispatch", include_str!("../../../migrations/0015_fair_dispatch.sql")),
    ("0016_request_budgets", include_str!("../../../migrations/0016_request_budgets.sql")),
    ("0017_local_inserts", include_str!("../../../migrations/0017_local_inserts.sql")),
    ("0018_import_counts", include_str!("../../../migrations/0018_import_counts.sql")),
    ("0020_list_ranges", include_str!("../../../migrations/0020_list_ranges.sql")),
];

/// An arbitrary constant: the advisory lock that serialises schedulers
/// applying migrations at the same time.
const MIGRATION_LOCK: i64 = 0x7e7e_0001;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("TETHER_DATABASE_URL is not a valid Postgres URL ({0}): use postgres://user:password@host:5432/database")]
    BadUrl(String),
    #[error("cannot get a Postgres connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{}", describe(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("a stored row is not what Tether wrote: {0}")]
    Corrupt(String),
}

impl DbError {
    /// Whether the error may go away by itself
    /// ([`Scope::Transient`](crate::model::Scope::Transient)): no
    /// connection, a lost one, a serialization failure. A refused value
    /// (class 22, 23) or a corrupt row is permanent for whatever request,
    /// task or object caused it, and the caller fails that item instead of
    /// retrying.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Pool(_) => true,
            DbError::Query(error) => {
                error.as_db_error().is_none_or(|db| sqlstate_is_transient(db.code().code()))
            }
            DbError::BadUrl(_) | DbError::Corrupt(_) => false,
        }
    }
}

/// A Postgres error with its SQLSTATE and message: never the statement's
/// parameters (Postgres's `detail` can quote them).
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("Postgres refused a statement (SQLSTATE {}): {}", db.code().code(), db.message()),
        None => format!("Postgres connection failed: {error}"),
    }
}

/// A session's TLS and limits (see [`Store::session_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub tls: bool,
    pub statement_timeout: String,
    pub lock_timeout: String,
}

/// Tether's handle on Postgres: a pool plus the named queries in the
/// submodules.
#[derive(Clone, Debug)]
pub struct Store {
    pool: Pool,
    /// For connections of its own (the scheduler's wake-ups).
    target: connect::Target,
    /// Validated requests by import, shared by the clones of this store.
    requests: std::sync::Arc<request_cache::RequestCache>,
}

impl Store {
    /// Builds a pool with the default session limits; connections are made
    /// lazily, so this does not fail when Postgres is down.
    pub fn connect(url: &Secret, max_size: usize) -> Result<Self, DbError> {
        Self::connect_with(url, max_size, DbSession::default())
    }

    /// Builds a pool whose every connection runs under `session`'s limits,
    /// over TLS if the URL asks for it.
    pub fn connect_with(url: &Secret, max_size: usize, session: DbSession) -> Result<Self, DbError> {
        // The parser's messages never contain the password.
        let target = connect::Target::parse(url.expose(), session)?;
        // Verified: after a database restart, Fast would hand out dead connections.
        let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Verified };
        let manager = match &target.tls {
            Some(tls) => Manager::from_config(target.config.clone(), tls.clone(), manager_config),
            None => Manager::from_config(target.config.clone(), NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(max_size)
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(Duration::from_secs(30)),
                create: Some(Duration::from_secs(10)),
                recycle: Some(Duration::from_secs(5)),
            })
            .build()
            .map_err(|e| DbError::BadUrl(e.to_string()))?;
        Ok(Self { pool, target, requests: Default::default() })
    }

    /// What a session of this store runs under, as Postgres reports it: for
    /// the start-up log line, so operators see the limits and TLS in force.
    pub async fn session_info(&self) -> Result<SessionInfo, DbError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false),
                        current_setting('statement_timeout'), current_setting('lock_timeout')",
                &[],
            )
            .await?;
        Ok(SessionInfo { tls: row.get(0), statement_timeout: row.get(1), lock_timeout: row.get(2) })
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        Ok(self.pool.get().await?)
    }

    /// Applies the migrations not yet applied, under an advisory lock so that
    /// two schedulers starting at once do not race.
    pub async fn migrate(&self) -> Result<(), DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // A migration may rebuild a large table: the session's statement
        // limit is for the steady state, not for this.
        tx.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0").await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
        tx.batch_execute(
            "CREATE SCHEMA IF NOT EXISTS tether;
             CREATE TABLE IF NOT EXISTS tether.schema_migrations (
                 version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());",
        )
        .await?;
        for (version, sql) in MIGRATIONS {
            let done = tx
                .query_opt("SELECT 1 FROM tether.schema_migrations WHERE version = $1", &[version])
                .await?
                .is_some();
            if !done {
                tracing::info!(version, "Applying migration.");
                tx.batch_execute(sql).await?;
                tx.execute("INSERT INTO tether.schema_migrations (version) VALUES ($1)", &[version]).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Connections in use and callers waiting (for the pool gauges).
    pub fn pool_usage(&self) -> (i64, i64) {
        let status = self.pool.status();
        let in_use = status.size.saturating_sub(status.available);
        (i64::try_from(in_use).unwrap_or(i64::MAX), i64::try_from(status.waiting).unwrap_or(i64::MAX))
    }

    /// Whether Postgres answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), DbError> {
        self.client().await?.simple_query("SELECT 1").await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which database errors are retried; a refused statement goes by its
    /// SQLSTATE ([`sqlstate_is_transient`], tested with the model).
    #[test]
    fn database_errors_by_transience() {
        let cases = [
            (
                DbError::Pool(deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait)),
                true,
            ),
            (DbError::Pool(deadpool_postgres::PoolError::Closed), true),
            (DbError::BadUrl("no host".into()), false),
            (DbError::Corrupt("copy task items".into()), false),
        ];
        for (error, transient) in cases {
            assert_eq!(error.is_transient(), transient, "{error:?}");
        }
    }
}
