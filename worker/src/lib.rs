//! The Tether worker: consumes listing tasks, lists one page of the
//! customer's bucket per task, writes the page's references, counters and
//! continuation token in one transaction, then enqueues the next page.
//!
//! A task's outcome is explicit ([`Outcome`]): done (ack), retry later
//! (requeue after a jittered delay), or give up (dead-letter). Nothing is
//! acknowledged before the Postgres commit that makes its effect durable.

mod page;

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions};
use lapin::types::FieldTable;
use tether_shared::config::CommonConfig;
use tether_shared::contract::Mode;
use tether_shared::credentials::sts::StsCredentials;
use tether_shared::credentials::CredentialError;
use tether_shared::db::tasks::{FailureRow, PageCommit, TaskContext};
use tether_shared::db::{DbError, Store};
use tether_shared::queue::{self, Publisher, QueueError};
use tether_shared::storage::s3::S3Sources;
use tether_shared::storage::{Sources, StorageError};
use tether_shared::task::{TaskMessage, TASK_QUEUE};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The worker's configuration (environment variables, or flags).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tether-worker", version, about)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub common: CommonConfig,
    /// Objects per listing page (ListObjectsV2 MaxKeys).
    #[arg(long, env = "TETHER_LIST_PAGE_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: u32,
    /// Tasks one worker handles at once (also its AMQP prefetch).
    #[arg(long, env = "TETHER_WORKER_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=300))]
    pub concurrency: u16,
    /// Renew customer credentials this many seconds before they expire.
    #[arg(long, env = "TETHER_STS_REFRESH_MARGIN_SECS", default_value_t = 900)]
    pub sts_refresh_margin_secs: u64,
    /// Path-style S3 addressing, for S3-compatible stores.
    #[arg(long, env = "TETHER_S3_FORCE_PATH_STYLE", default_value_t = false, action = clap::ArgAction::Set)]
    pub s3_force_path_style: bool,
    /// Failed attempts at one page (throttling, outages) before its prefix is
    /// recorded as failed.
    #[arg(long, env = "TETHER_TASK_MAX_ATTEMPTS", default_value_t = 10)]
    pub max_attempts: i32,
    /// Seconds to finish tasks in hand after SIGTERM before handing them back.
    #[arg(long, env = "TETHER_DRAIN_SECS", default_value_t = 30)]
    pub drain_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("the task consumer stopped: {0}")]
    ConsumerLost(String),
}

/// What became of one task message.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Done, or nothing to do: acknowledge.
    Done,
    /// Try again after this delay: requeue.
    Retry(Duration),
    /// Unreadable: dead-letter it for staff to inspect.
    GiveUp,
}

/// Runs a worker until `shutdown` is cancelled, then drains.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let store = Store::connect(&config.common.database_url, config.common.db_pool_size)?;
    let connection = queue::connect(&config.common.amqp_url, "tether-worker").await?;
    queue::declare_topology(&connection).await?;
    let publisher = Publisher::new(&connection).await?;
    let channel = queue::consumer_channel(&connection, config.concurrency).await?;
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let sts = Arc::new(StsCredentials::new(
        aws_sdk_sts::Client::new(&sdk),
        Duration::from_secs(config.sts_refresh_margin_secs),
    ));
    let worker = Arc::new(Worker {
        store,
        publisher,
        sources: Sources::new(S3Sources::new(&sdk, sts, config.s3_force_path_style)),
        page_size: config.page_size,
        max_attempts: config.max_attempts,
    });
    let mut consumer = channel
        .basic_consume(
            TASK_QUEUE.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(QueueError::from)?;
    tracing::info!(
        concurrency = config.concurrency,
        page_size = config.page_size,
        "Worker started."
    );

    let mut in_flight = JoinSet::new();
    let result = loop {
        tokio::select! {
            // Shutdown first: once asked to stop, take no new task.
            biased;
            () = shutdown.cancelled() => break Ok(()),
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    let worker = Arc::clone(&worker);
                    in_flight.spawn(async move { worker.handle(delivery).await });
                }
                Some(Err(error)) => break Err(WorkerError::ConsumerLost(error.to_string())),
                None => break Err(WorkerError::ConsumerLost("the broker cancelled the consumer".into())),
            },
        }
    };
    tracing::info!(
        in_flight = in_flight.len(),
        "Worker stopping; finishing tasks in hand."
    );
    let _ = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
    let drained = tokio::time::timeout(Duration::from_secs(config.drain_secs), async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        // Their messages are unacknowledged: closing hands them back.
        tracing::warn!(
            left = in_flight.len(),
            "Drain deadline passed; handing the remaining tasks back."
        );
        in_flight.abort_all();
    }
    let _ = connection.close(200, "worker stopping".into()).await;
    tracing::info!("Worker stopped.");
    result
}

struct Worker {
    store: Store,
    publisher: Publisher,
    sources: Sources,
    page_size: u32,
    max_attempts: i32,
}

impl Worker {
    async fn handle(&self, delivery: Delivery) {
        let outcome = match serde_json::from_slice::<TaskMessage>(&delivery.data) {
            Ok(message) => self.process(message).await,
            Err(error) => {
                tracing::error!(%error, "Unreadable task message; dead-lettering it.");
                Outcome::GiveUp
            }
        };
        let sent = match outcome {
            Outcome::Done => delivery.ack(BasicAckOptions::default()).await,
            Outcome::Retry(delay) => {
                tokio::time::sleep(delay).await;
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
            }
            Outcome::GiveUp => {
                delivery
                    .nack(BasicNackOptions {
                        requeue: false,
                        ..Default::default()
                    })
                    .await
            }
        };
        match sent {
            Ok(true) => {}
            // The channel is gone; the broker redelivers, and the seq check
            // makes that harmless.
            Ok(false) => tracing::warn!("Could not acknowledge a task: the channel is closed."),
            Err(error) => tracing::warn!(%error, "Could not acknowledge a task."),
        }
    }

    async fn process(&self, message: TaskMessage) -> Outcome {
        match self.advance(message).await {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::warn!(%error, task_id = %message.task_id, "Database error; retrying the task later.");
                Outcome::Retry(Duration::from_secs(2))
            }
        }
    }

    /// Lists and commits one page of a task.
    async fn advance(&self, message: TaskMessage) -> Result<Outcome, DbError> {
        let Some(task) = self.store.load_task(message).await? else {
            // A duplicate, or the import ended meanwhile.
            return Ok(Outcome::Done);
        };
        let span = tracing::info_span!("task", import_id = %task.import_id, page = message.seq);
        self.list_and_commit(&task).instrument(span).await
    }

    async fn list_and_commit(&self, task: &TaskContext) -> Result<Outcome, DbError> {
        if task.request.mode == Mode::Copy {
            self.store
                .fail_import(
                    task.import_id,
                    "Copy mode is not available on this Tether installation yet: import in link mode, or ask the operators to enable copy mode.",
                )
                .await?;
            return Ok(Outcome::Done);
        }
        let listed = match self.sources.open(&task.request.source).await {
            Ok(source) => {
                source
                    .list_page(&task.prefix, task.continuation.as_deref(), self.page_size)
                    .await
            }
            Err(error) => Err(error),
        };
        let page = match listed {
            Ok(page) => page,
            Err(error) => return self.storage_failed(task, error).await,
        };
        let result = page::build(&task.request, page);
        match self.store.commit_page(task, &result).await? {
            PageCommit::Stale => {}
            PageCommit::Committed {
                imported,
                unchanged,
                next,
            } => {
                tracing::debug!(
                    listed = result.listed,
                    imported,
                    unchanged,
                    "Page committed."
                );
                if let Some(next) = next {
                    self.publish_next(next).await;
                }
            }
        }
        Ok(Outcome::Done)
    }

    /// Publishes the next page's message, retrying briefly. If it still
    /// fails, the scheduler re-publishes the task once its lease passes.
    async fn publish_next(&self, next: TaskMessage) {
        let publish = || async { self.publisher.publish_tasks(&[next]).await };
        if let Err(error) = publish
            .retry(ExponentialBuilder::default().with_jitter())
            .await
        {
            tracing::warn!(%error, "Could not publish the next page; the scheduler will re-publish it.");
        }
    }

    /// Decides what a storage error means for the task and the import.
    async fn storage_failed(
        &self,
        task: &TaskContext,
        error: StorageError,
    ) -> Result<Outcome, DbError> {
        let prefix_url = task.request.source.url(&task.prefix);
        if error.is_transient() {
            let attempts = self.store.record_attempt(task.message).await?;
            if attempts < self.max_attempts {
                tracing::warn!(%error, attempts, "Listing failed; retrying later.");
                return Ok(Outcome::Retry(retry_delay(attempts)));
            }
            let failure = FailureRow {
                source_url: prefix_url,
                code: error.code(),
                message: format!("Listing kept failing after {attempts} attempts ({error}); requeue the import once the store recovers."),
            };
            self.store.fail_task(task, &failure).await?;
            return Ok(Outcome::Done);
        }
        match error {
            StorageError::AccessDenied(message) => {
                tracing::warn!(%message, "Listing denied; the prefix fails, the import goes on.");
                let failure = FailureRow {
                    source_url: prefix_url,
                    code: "access_denied",
                    message,
                };
                self.store.fail_task(task, &failure).await?;
            }
            StorageError::Credentials(CredentialError::Refused { sentence }) => {
                tracing::warn!(error = %sentence, "Credentials refused; the import fails.");
                self.store.fail_import(task.import_id, &sentence).await?;
            }
            other => {
                tracing::warn!(error = %other, "The import cannot run.");
                self.store
                    .fail_import(task.import_id, &other.to_string())
                    .await?;
            }
        }
        Ok(Outcome::Done)
    }
}

/// Jittered exponential delay before the `attempts`-th retry (1 s to 60 s).
fn retry_delay(attempts: i32) -> Duration {
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(60))
        .without_max_times()
        .with_jitter()
        .build();
    delays
        .nth(usize::try_from(attempts.max(1) - 1).unwrap_or(0))
        .unwrap_or(Duration::from_secs(60))
}
