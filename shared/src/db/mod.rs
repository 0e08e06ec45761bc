//! Postgres: the pool, the migrations, and every query Tether runs, grouped by
//! what they touch ([`imports`], [`tasks`], [`events`]), for staff
//! [`admin`], and for the access API [`access`]. Postgres is the source
//! of truth; RabbitMQ messages only say "look at this row now".

pub mod access;
pub mod admin;
pub mod events;
pub mod imports;
pub mod tasks;
pub mod wakeups;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::NoTls;

use crate::contract::Secret;
use crate::model::scope::sqlstate_is_transient;

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

/// Tether's handle on Postgres: a pool plus the named queries in the
/// submodules.
#[derive(Clone, Debug)]
pub struct Store {
    pool: Pool,
    /// For connections of its own (the scheduler's wake-ups).
    config: tokio_postgres::Config,
}

impl Store {
    /// Builds a pool; connections are made lazily, so this does not fail when
    /// Postgres is down.
    pub fn connect(url: &Secret, max_size: usize) -> Result<Self, DbError> {
        let config: tokio_postgres::Config = url
            .expose()
            .parse()
            // The parser's message never contains the password.
            .map_err(|e: tokio_postgres::Error| DbError::BadUrl(e.to_string()))?;
        // Verified: after a database restart, Fast would hand out dead connections.
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Verified },
        );
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
        Ok(Self { pool, config })
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        Ok(self.pool.get().await?)
    }

    /// Applies the migrations not yet applied, under an advisory lock so that
    /// two schedulers starting at once do not race.
    pub async fn migrate(&self) -> Result<(), DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
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
