//! The Tether scheduler: the only consumer of `tether.import-requests`.
//!
//! - [`requests`]: validates each request (contract §2), records it and its
//!   listing tasks (held, for the housekeeping to release) in one
//!   transaction, or moves the request to `tether.rejected`; handles
//!   `import.cancel`.
//! - [`housekeeping`]: a periodic pass (and one at once whenever a task is
//!   recorded or ends) that releases held tasks within the fair share,
//!   finishes imports whose tasks have all ended, publishes the
//!   FinishedEvent outbox, re-publishes tasks whose message was lost, and
//!   deletes the task rows of imports finished longer ago than the
//!   retention.

mod housekeeping;
mod requests;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use tether_shared::config::CommonConfig;
use tether_shared::contract::{ValidationOptions, REQUEST_QUEUE};
use tether_shared::db::dispatch::FairShare;
use tether_shared::db::{DbError, Store};
use tether_shared::queue::{self, Link, QueueError};
use tether_shared::telemetry::{self, Readiness};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The scheduler's configuration (environment variables, or flags).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tether-scheduler", version, about)]
pub struct SchedulerConfig {
    #[command(flatten)]
    pub common: CommonConfig,
    /// Let GCS requests without `impersonate_service_account` use Tether's
    /// own identity (single-tenant installations, emulators).
    #[arg(long, env = "TETHER_GCS_ALLOW_OWN_IDENTITY", default_value_t = false, action = clap::ArgAction::Set)]
    pub gcs_allow_own_identity: bool,
    /// The workers' `TETHER_DESTINATION`: requests whose source is its
    /// bucket are rejected (it holds every workspace's copies).
    #[arg(long, env = "TETHER_DESTINATION")]
    pub destination: Option<String>,
    /// Seconds between housekeeping passes (finishing imports, outbox).
    #[arg(long, env = "TETHER_SCHEDULER_TICK_SECS", default_value_t = 1.0)]
    pub tick_secs: f64,
    /// Re-publish a pending task whose message went out this many seconds
    /// ago without progress since (its message may have been lost).
    #[arg(long, env = "TETHER_TASK_REPUBLISH_AFTER_SECS", default_value_t = 300.0)]
    pub republish_after_secs: f64,
    /// Fair share: tasks of one kind (list, copy) of one import released to
    /// RabbitMQ at once (queued or in a worker's hands); the rest wait in
    /// Postgres. An upper bound: the queue depth below keeps fewer queued.
    #[arg(long, env = "TETHER_FAIR_IMPORT_TASKS", default_value_t = 32, value_parser = clap::value_parser!(i64).range(1..))]
    pub fair_import_tasks: i64,
    /// Fair share: tasks of one kind of one workspace released at once,
    /// all its imports together (at least TETHER_FAIR_IMPORT_TASKS).
    #[arg(long, env = "TETHER_FAIR_WORKSPACE_TASKS", default_value_t = 64, value_parser = clap::value_parser!(i64).range(1..))]
    pub fair_workspace_tasks: i64,
    /// Fair share: ready messages (not yet delivered to a worker) a task
    /// queue may hold per consumer; held tasks of a kind are released only
    /// while its queue holds fewer, so a newcomer's task is queued behind
    /// few others. 0: no limit (the caps alone).
    #[arg(long, env = "TETHER_FAIR_QUEUED_PER_CONSUMER", default_value_t = 2, value_parser = clap::value_parser!(i64).range(0..))]
    pub fair_queued_per_consumer: i64,
    /// Days after an import finished until its task rows (and copy items)
    /// are deleted; images and failures stay. A pruned import cannot be
    /// requeued.
    #[arg(long, env = "TETHER_RETENTION_DAYS", default_value_t = 7.0)]
    pub retention_days: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("the request consumer stopped: {0}")]
    ConsumerLost(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot serve metrics on TETHER_METRICS_ADDR: {0}")]
    Metrics(std::io::Error),
}

/// Runs a scheduler until `shutdown` is cancelled.
pub async fn run(config: SchedulerConfig, shutdown: CancellationToken) -> Result<(), SchedulerError> {
    let tick = Duration::try_from_secs_f64(config.tick_secs).map_err(|_| {
        SchedulerError::Config("TETHER_SCHEDULER_TICK_SECS must be a positive number of seconds".into())
    })?;
    let retention = Duration::try_from_secs_f64(config.retention_days * 86_400.0).map_err(|_| {
        SchedulerError::Config("TETHER_RETENTION_DAYS must be a number of days, 0 or more".into())
    })?;
    let store = Store::connect_with(
        &config.common.database_url,
        config.common.db_pool_size,
        config.common.db_session,
    )?;
    store.migrate().await?;
    let session = store.session_info().await?;
    tracing::info!(
        tls = session.tls,
        statement_timeout = session.statement_timeout,
        lock_timeout = session.lock_timeout,
        "Connected to Postgres."
    );
    let link = Link::default();
    // The first connection must work: a wrong URL is a configuration error.
    let mut connection = link.establish(&config.common.amqp_url, "tether-scheduler").await?;
    if let Some(addr) = config.common.metrics_addr {
        let ready = Readiness { store: store.clone(), amqp: Some(link.clone()) };
        telemetry::serve(addr, ready, shutdown.clone()).await.map_err(SchedulerError::Metrics)?;
    }
    tracing::info!("Scheduler started.");

    let share = FairShare {
        import_tasks: config.fair_import_tasks,
        workspace_tasks: config.fair_workspace_tasks.max(config.fair_import_tasks),
        queued_per_consumer: config.fair_queued_per_consumer,
    };
    let wake = Arc::new(Notify::new());
    let handler = requests::Handler::new(
        store.clone(),
        link.clone(),
        ValidationOptions::new(config.gcs_allow_own_identity, config.destination.as_deref()),
        config.common.secrets_key.clone(),
        Arc::clone(&wake),
    );
    let keeper =
        housekeeping::Keeper::new(store.clone(), link.clone(), config.republish_after_secs, share, retention);
    // The scheduler's own token, so that stopping it stops the housekeeping
    // without cancelling whatever else shares the caller's token.
    let stop = shutdown.child_token();
    let listener_task = tokio::spawn({
        let (store, wake, stop) = (store, Arc::clone(&wake), stop.clone());
        async move { store.listen_for_ended_tasks(wake, stop).await }
    });
    let keeper_task = tokio::spawn(keeper.run(tick, wake, stop.clone()));

    loop {
        match consume(&handler, &connection, &stop).await {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(%error, "Lost RabbitMQ; reconnecting.");
                match link.reconnect(&config.common.amqp_url, "tether-scheduler", &stop).await {
                    Some(fresh) => connection = fresh,
                    None => break,
                }
            }
        }
    }
    tracing::info!("Scheduler stopping.");
    stop.cancel();
    let _ = keeper_task.await;
    let _ = listener_task.await;
    link.close("scheduler stopping").await;
    tracing::info!("Scheduler stopped.");
    Ok(())
}

/// Consumes requests on one connection until `stop` (`Ok`) or until the
/// connection or the consumer is lost (`Err`).
async fn consume(
    handler: &requests::Handler,
    connection: &lapin::Connection,
    stop: &CancellationToken,
) -> Result<(), SchedulerError> {
    let channel = queue::consumer_channel(connection, 16).await?;
    let mut consumer = channel
        .basic_consume(REQUEST_QUEUE.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .map_err(QueueError::from)?;
    let result = loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break Ok(()),
            delivery = consumer.next() => match delivery {
                // One request at a time: a cancel is handled after the request it follows.
                Some(Ok(delivery)) => handler.handle(delivery, stop).await,
                Some(Err(error)) => break Err(SchedulerError::ConsumerLost(error.to_string())),
                None => break Err(SchedulerError::ConsumerLost("the broker cancelled the consumer".into())),
            },
        }
    };
    let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
    result
}
