//! The Tether worker: consumes tasks and advances each by one bounded step.
//!
//! - A *list* task ([`listing`]) lists one page of the customer's bucket and
//!   commits, in one transaction, the page's references (link mode) or copy
//!   tasks (copy mode), its counts, the listing tasks of the sub-prefixes it
//!   met ([`fanout`]) and the continuation token; then it enqueues the next
//!   page. The new tasks are held: the scheduler releases them within the
//!   fair share, so copying of a page runs while the next page is listed,
//!   and a wide bucket is listed by every worker at once.
//! - Every request to a customer's bucket waits for the bucket's request
//!   budget, shared by the fleet ([`tether_shared::storage::budget`]).
//! - A *copy* task ([`copying`]) streams a bounded batch of objects into the
//!   platform's storage, verified, then commits their references and counts.
//!
//! A task's outcome is explicit ([`Outcome`]): done (ack), retry later
//! (parked in a TTL retry queue that dead-letters it back to its queue), or
//! give up (dead-letter). Nothing is
//! acknowledged before the Postgres commit that makes its effect durable.

mod copying;
mod fanout;
mod listing;
#[cfg(test)]
mod outcomes;
mod page;
mod split;

use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use backon::Retryable;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tether_shared::config::CommonConfig;
use tether_shared::contract::destination_root;
use tether_shared::credentials::gcp::GcpTokens;
use tether_shared::credentials::sts::StsCredentials;
use tether_shared::db::{DbError, Store};
use tether_shared::destination::{self, DestinationError, Parts};
use tether_shared::model::failure::storable;
use tether_shared::model::{retry, FailureCode};
use tether_shared::queue::{self, Link, QueueError};
use tether_shared::storage::azure::{self, AzureSources};
use tether_shared::storage::budget::{BudgetConfig, RequestBudgets};
use tether_shared::storage::gcs::{GcsApi, GcsSources};
use tether_shared::storage::ranged::RangedReads;
use tether_shared::storage::s3::S3Sources;
use tether_shared::storage::{ObjectSource, Sources, StorageError};
use tether_shared::task::{Batching, FailureRow, TaskContext, TaskKind, TaskMessage, Work};
use tether_shared::telemetry::{self, metrics, Readiness};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Copy tasks a worker holds at once; each copies several objects in parallel.
const COPY_PREFETCH: u16 = 2;

/// The worker's configuration (environment variables, or flags).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tether-worker", version, about)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub common: CommonConfig,
    /// Which task kinds this worker takes: `list`, `copy` or both.
    #[arg(long, env = "TETHER_WORKER_KINDS", value_delimiter = ',', default_value = "list,copy", value_parser = ["list", "copy"])]
    pub kinds: Vec<String>,
    /// Objects per listing page (ListObjectsV2 MaxKeys).
    #[arg(long, env = "TETHER_LIST_PAGE_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: u32,
    /// Listing tasks an import may have: past this, sub-prefixes are listed
    /// recursively by the task that meets them instead of fanning out.
    #[arg(long, env = "TETHER_LIST_MAX_TASKS", default_value_t = 10_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_list_tasks: i64,
    /// Listing tasks one worker handles at once (also their AMQP prefetch).
    #[arg(long, env = "TETHER_WORKER_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=300))]
    pub concurrency: u16,
    /// Renew customer credentials (STS sessions, impersonated GCP tokens)
    /// this many seconds before they expire.
    #[arg(long, env = "TETHER_STS_REFRESH_MARGIN_SECS", default_value_t = 900)]
    pub sts_refresh_margin_secs: u64,
    /// A GCS emulator (`http://host:port`); unset, the real GCS with
    /// Tether's own Google identity.
    #[arg(long, env = "STORAGE_EMULATOR_HOST")]
    pub storage_emulator_host: Option<String>,
    /// Azure Blob endpoint template with `{account}` in it.
    #[arg(long, env = "TETHER_AZURE_BLOB_ENDPOINT", default_value = azure::DEFAULT_ENDPOINT)]
    pub azure_blob_endpoint: String,
    /// Path-style S3 addressing, for S3-compatible stores.
    #[arg(long, env = "TETHER_S3_FORCE_PATH_STYLE", default_value_t = false, action = clap::ArgAction::Set)]
    pub s3_force_path_style: bool,
    /// Failed attempts at one page (throttling, outages) before its prefix is
    /// recorded as failed.
    #[arg(long, env = "TETHER_TASK_MAX_ATTEMPTS", default_value_t = 10)]
    pub max_attempts: i32,
    /// Seconds one step of a task (a listing page, a copy batch) may take
    /// before it is stopped and counted as a failed attempt: a store that
    /// never answers costs one attempt, never a slot for good. Keep it below
    /// the scheduler's TETHER_TASK_REPUBLISH_AFTER_SECS.
    #[arg(long, env = "TETHER_TASK_TIMEOUT_SECS", default_value_t = 240, value_parser = clap::value_parser!(u64).range(1..))]
    pub task_timeout_secs: u64,
    /// Seconds one call to a store or a credential provider may take (each
    /// attempt and the whole operation, headers and body of a listing or
    /// a credential; an object's body is bounded by the task's deadline).
    #[arg(long, env = "TETHER_STORE_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub store_timeout_secs: u64,
    /// Seconds to finish tasks in hand after SIGTERM before handing them back.
    #[arg(long, env = "TETHER_DRAIN_SECS", default_value_t = 30)]
    pub drain_secs: u64,
    /// Where copy mode writes: `s3://bucket/prefix`, `gs://bucket/prefix` or
    /// `file:///dir`. Unset:
    /// copy imports fail with an error saying so.
    #[arg(long, env = "TETHER_DESTINATION")]
    pub destination: Option<String>,
    /// Objects one worker copies at once.
    #[arg(long, env = "TETHER_COPY_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub copy_concurrency: u16,
    /// Multipart part size for `s3://` destinations (at least 5 MiB).
    #[arg(long, env = "TETHER_COPY_PART_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub copy_part_bytes: usize,
    /// Parts of one object uploading at once (`s3://`).
    #[arg(long, env = "TETHER_COPY_PARTS_IN_FLIGHT", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub copy_parts_in_flight: u16,
    /// Memory for part buffers, all copies together: a copy waits for room
    /// rather than exceed it (at least one part).
    #[arg(long, env = "TETHER_COPY_BUFFER_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub copy_buffer_bytes: usize,
    /// Objects of at least this many bytes are read as several ranged GETs
    /// at once (`TETHER_COPY_PART_BYTES` each).
    #[arg(long, env = "TETHER_COPY_RANGED_FROM_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub copy_ranged_from_bytes: u64,
    /// Ranges of one large object read at once (1: one GET per object).
    #[arg(long, env = "TETHER_COPY_RANGES_IN_FLIGHT", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub copy_ranges_in_flight: u16,
    /// Memory for ranges read ahead of the copy, all copies together; where
    /// it is spent, the next range is read when its turn comes.
    #[arg(long, env = "TETHER_COPY_READ_AHEAD_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub copy_read_ahead_bytes: usize,
    /// At most this many objects per copy task.
    #[arg(long, env = "TETHER_COPY_BATCH_OBJECTS", default_value_t = tether_shared::task::DEFAULT_COPY_BATCH_OBJECTS)]
    pub copy_batch_objects: usize,
    /// At most this many bytes per copy task (one larger object goes alone).
    #[arg(long, env = "TETHER_COPY_BATCH_BYTES", default_value_t = 1 << 30)]
    pub copy_batch_bytes: i64,
    /// Attempts at one object (throttling, outages) before it is recorded as
    /// failed.
    #[arg(long, env = "TETHER_COPY_MAX_ATTEMPTS", default_value_t = 4)]
    pub copy_max_attempts: usize,
    /// Listing requests per second to one customer bucket, the whole fleet
    /// together (0: no limit). Below S3's 5,500 GET/s per prefix, leaving
    /// room for the customer's own traffic.
    #[arg(long, env = "TETHER_BUDGET_LIST_PER_SEC", default_value_t = 2500.0)]
    pub budget_list_per_sec: f64,
    /// Object reads per second from one customer bucket, the whole fleet
    /// together (0: no limit).
    #[arg(long, env = "TETHER_BUDGET_READ_PER_SEC", default_value_t = 3000.0)]
    pub budget_read_per_sec: f64,
    /// Seconds for a bucket's budget to grow back to its full rate after
    /// the store throttled (the rate halves at each throttling answer).
    #[arg(long, env = "TETHER_BUDGET_RECOVERY_SECS", default_value_t = 30.0)]
    pub budget_recovery_secs: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Destination(#[from] DestinationError),
    #[error("cannot build the HTTP client for GCS and Azure: {0}")]
    Http(String),
    #[error("the task consumer stopped: {0}")]
    ConsumerLost(String),
    #[error("cannot serve metrics on TETHER_METRICS_ADDR: {0}")]
    Metrics(std::io::Error),
}

/// What became of one task message.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Done, or nothing to do: acknowledge.
    Done,
    /// Try again after about this delay (a retry queue's TTL).
    Retry(Duration),
    /// Unreadable: dead-letter it for staff to inspect.
    GiveUp,
}

/// How large objects are read: ranges of one part, read ahead within their
/// own budget.
fn ranged_reads(config: &WorkerConfig) -> RangedReads {
    let range_bytes = config.copy_part_bytes.max(1);
    RangedReads {
        from_bytes: config.copy_ranged_from_bytes,
        range_bytes: range_bytes as u64,
        parallel: config.copy_ranges_in_flight.into(),
        budget: Arc::new(tokio::sync::Semaphore::new(config.copy_read_ahead_bytes / range_bytes)),
    }
}

/// Runs a worker until `shutdown` is cancelled, then drains.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let store = Store::connect_with(
        &config.common.database_url,
        config.common.db_pool_size,
        config.common.db_session,
    )?;
    let store_timeout = Duration::from_secs(config.store_timeout_secs);
    // Without these, a store that accepts a connection and never answers
    // holds the call forever (the SDK sets a connect timeout only).
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(10))
        .operation_attempt_timeout(store_timeout)
        .operation_timeout(store_timeout * 2)
        .build();
    let sdk =
        aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(timeouts).load().await;
    let refresh_margin = Duration::from_secs(config.sts_refresh_margin_secs);
    let http = tether_shared::storage::http_client(Duration::from_secs(120), store_timeout)
        .map_err(WorkerError::Http)?;
    let gcp_tokens = Arc::new(GcpTokens::new(http.clone(), refresh_margin));
    let gcs = GcsApi::new(http.clone(), config.storage_emulator_host.as_deref(), gcp_tokens);
    let destination = match &config.destination {
        Some(url) => Some(
            destination::open(
                url,
                &sdk,
                config.s3_force_path_style,
                &gcs,
                Parts::new(
                    config.copy_part_bytes,
                    config.copy_parts_in_flight.into(),
                    config.copy_buffer_bytes,
                ),
            )
            .await?,
        ),
        None => None,
    };
    let link = Link::default();
    // The first connection must work: a wrong URL is a configuration error.
    let mut connection = link.establish(&config.common.amqp_url, "tether-worker").await?;
    if let Some(addr) = config.common.metrics_addr {
        let ready = Readiness { store: store.clone(), amqp: Some(link.clone()) };
        telemetry::serve(addr, ready, shutdown.clone()).await.map_err(WorkerError::Metrics)?;
    }
    let sts = Arc::new(
        StsCredentials::new(aws_sdk_sts::Client::new(&sdk), refresh_margin).with_call_timeout(store_timeout),
    );
    // Sources retry within the request budget themselves: the SDK's own
    // retries would send requests the budget never counted.
    let source_sdk = sdk.to_builder().retry_config(RetryConfig::disabled()).build();
    let budgets = RequestBudgets::new(
        store.clone(),
        BudgetConfig {
            list_per_sec: config.budget_list_per_sec.max(0.0),
            read_per_sec: config.budget_read_per_sec.max(0.0),
            recovery_secs: config.budget_recovery_secs.max(1.0),
        },
    );
    let worker = Arc::new(Worker {
        store,
        link: link.clone(),
        budgets,
        sources: Sources::new(
            S3Sources::new(&source_sdk, sts, config.s3_force_path_style),
            GcsSources::new(gcs),
            AzureSources::new(http, Some(&config.azure_blob_endpoint)),
            config.common.secrets_key.clone(),
        ),
        page_size: config.page_size,
        max_list_tasks: config.max_list_tasks,
        max_attempts: config.max_attempts,
        task_timeout: Duration::from_secs(config.task_timeout_secs),
        batching: Batching {
            max_objects: config.copy_batch_objects.max(1),
            max_bytes: config.copy_batch_bytes,
        },
        copier: destination.map(|d| {
            copying::Copier::new(
                d,
                config.copy_concurrency.into(),
                config.copy_max_attempts,
                ranged_reads(&config),
            )
        }),
        destination_root: config.destination.as_deref().and_then(destination_root),
    });
    tracing::info!(kinds = ?config.kinds, concurrency = config.concurrency, copy_concurrency = config.copy_concurrency, "Worker started.");

    let mut in_flight = JoinSet::new();
    loop {
        match consume(&worker, &config, &connection, &shutdown, &mut in_flight).await {
            Ok(()) => break,
            Err(error) => {
                // Tasks in hand finish on their own; their acks fail with the
                // old channel and the broker redelivers them: harmless.
                tracing::warn!(%error, "Lost RabbitMQ; reconnecting.");
                match link.reconnect(&config.common.amqp_url, "tether-worker", &shutdown).await {
                    Some(fresh) => connection = fresh,
                    None => break,
                }
            }
        }
    }
    tracing::info!(in_flight = in_flight.len(), "Worker stopping; finishing tasks in hand.");
    let drained = tokio::time::timeout(Duration::from_secs(config.drain_secs), async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        // Their messages are unacknowledged: closing hands them back.
        tracing::warn!(left = in_flight.len(), "Drain deadline passed; handing the remaining tasks back.");
        in_flight.abort_all();
    }
    link.close("worker stopping").await;
    tracing::info!("Worker stopped.");
    Ok(())
}

/// Consumes the task queues on one connection until shutdown (`Ok`) or
/// until the connection or a consumer is lost (`Err`).
async fn consume(
    worker: &Arc<Worker>,
    config: &WorkerConfig,
    connection: &lapin::Connection,
    shutdown: &CancellationToken,
    in_flight: &mut JoinSet<()>,
) -> Result<(), WorkerError> {
    let mut consumers = Vec::new();
    let mut deliveries = Vec::new();
    for kind in TaskKind::ALL.into_iter().filter(|k| config.kinds.iter().any(|name| name == k.as_str())) {
        let prefetch = if kind == TaskKind::Copy { COPY_PREFETCH } else { config.concurrency };
        // Prefetch is set on every new channel: recovery would not re-apply it.
        let channel = queue::consumer_channel(connection, prefetch).await?;
        let consumer = channel
            .basic_consume(
                kind.queue().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(QueueError::from)?;
        consumers.push((channel, consumer.tag()));
        deliveries.push(consumer.map(move |delivery| (kind, delivery)).boxed());
    }
    let mut deliveries = futures_util::stream::select_all(deliveries);
    let result = loop {
        tokio::select! {
            // Shutdown first: once asked to stop, take no new task.
            biased;
            () = shutdown.cancelled() => break Ok(()),
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            delivery = deliveries.next() => match delivery {
                Some((kind, Ok(delivery))) => {
                    let worker = Arc::clone(worker);
                    in_flight.spawn(async move { worker.handle(kind, delivery).await });
                }
                Some((_, Err(error))) => break Err(WorkerError::ConsumerLost(error.to_string())),
                None => break Err(WorkerError::ConsumerLost("the broker cancelled the consumers".into())),
            },
        }
    };
    for (channel, tag) in &consumers {
        let _ = Channel::basic_cancel(channel, tag.clone(), BasicCancelOptions::default()).await;
    }
    result
}

struct Worker {
    store: Store,
    /// Publishes through whichever connection is current.
    link: Link,
    sources: Sources,
    /// Every source is read within its bucket's request budget.
    budgets: Arc<RequestBudgets>,
    page_size: u32,
    max_list_tasks: i64,
    max_attempts: i32,
    /// Deadline of one step of a task.
    task_timeout: Duration,
    batching: Batching,
    /// `None` when `TETHER_DESTINATION` is unset.
    copier: Option<copying::Copier>,
    /// The destination's bucket (`s3://bucket/`, `gs://bucket/`): never
    /// read as a source, even when the scheduler, which rejects such
    /// requests, was not told the destination.
    destination_root: Option<String>,
}

/// The error of an import asked to copy on an installation without a destination.
const COPY_NOT_CONFIGURED: &str = "Copy mode is not configured on this Tether installation (TETHER_DESTINATION is unset): import in link mode, or ask the operators to configure a destination.";

/// The error of an import whose source is the destination's bucket.
const SOURCE_IS_DESTINATION: &str = "The source is the bucket where Tether keeps every workspace's copies (TETHER_DESTINATION), which no import may read: import from the customer's own bucket.";

impl Worker {
    async fn handle(&self, kind: TaskKind, delivery: Delivery) {
        let m = metrics();
        let queue = kind.queue();
        m.amqp_messages.with_label_values(&[queue, "consumed"]).inc();
        let in_flight = m.tasks_in_flight.with_label_values(&[kind.as_str()]);
        in_flight.inc();
        let timer = m.task_duration.with_label_values(&[kind.as_str()]).start_timer();
        let outcome = match serde_json::from_slice::<TaskMessage>(&delivery.data) {
            Ok(message) => self.process(kind, message).await,
            Err(error) => {
                tracing::error!(%error, queue, "Unreadable task message; dead-lettering it.");
                Outcome::GiveUp
            }
        };
        timer.observe_duration();
        in_flight.dec();
        let (name, action) = match outcome {
            Outcome::Done => ("done", "acked"),
            Outcome::Retry(_) => ("retry", "requeued"),
            Outcome::GiveUp => ("give_up", "dead_lettered"),
        };
        m.task_outcomes.with_label_values(&[kind.as_str(), name]).inc();
        m.amqp_messages.with_label_values(&[queue, action]).inc();
        let sent = match outcome {
            Outcome::Done => delivery.ack(BasicAckOptions::default()).await,
            Outcome::Retry(delay) => {
                // Parked in a retry queue, then acknowledged: the worker's
                // slot is free during the delay. If parking fails, requeue.
                let parked =
                    async { self.link.publisher()?.publish_retry(kind, &delivery.data, delay).await };
                match parked.await {
                    Ok(()) => delivery.ack(BasicAckOptions::default()).await,
                    Err(error) => {
                        tracing::warn!(%error, "Cannot park a task for retry; requeueing it now.");
                        delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await
                    }
                }
            }
            Outcome::GiveUp => delivery.nack(BasicNackOptions { requeue: false, ..Default::default() }).await,
        };
        match sent {
            Ok(true) => {}
            // The channel is gone; the broker redelivers, and the seq check
            // makes that harmless.
            Ok(false) => tracing::warn!("Could not acknowledge a task: the channel is closed."),
            Err(error) => tracing::warn!(%error, "Could not acknowledge a task."),
        }
    }

    /// The task's source, within its bucket's request budget.
    async fn open_source(&self, task: &TaskContext) -> Result<Arc<dyn ObjectSource>, StorageError> {
        let source = &task.request.source;
        let opened = self.sources.open(source, task.import_id, task.sealed_secret.as_deref()).await?;
        Ok(self.budgets.wrap(opened, source))
    }

    async fn process(&self, kind: TaskKind, message: TaskMessage) -> Outcome {
        let load = || self.store.load_task(kind, message);
        let task = match load.retry(retry::task_in_place()).when(DbError::is_transient).await {
            Ok(Some(task)) => task,
            // A duplicate, or the import ended meanwhile.
            Ok(None) => return Outcome::Done,
            Err(error) if error.is_transient() => return db_unreachable(&error),
            Err(error) => {
                tracing::error!(%error, task_id = %message.task_id, "A task cannot be read; dead-lettering it.");
                return Outcome::GiveUp;
            }
        };
        let span = tracing::info_span!("task", kind = kind.as_str(), import_id = %task.import_id, step = message.seq);
        self.run_task(kind, &task).instrument(span).await
    }

    /// One step of a task within its deadline. A database outage is not
    /// the task's fault: the step is tried again in place, rather than
    /// requeued, so the queue's delivery limit is not spent (a failed
    /// attempt committed nothing). A step that Postgres refuses fails the
    /// task's item; a step past its deadline costs the task one attempt.
    async fn run_task(&self, kind: TaskKind, task: &TaskContext) -> Outcome {
        let attempt = || async {
            match tokio::time::timeout(self.task_timeout, self.step(task)).await {
                Ok(result) => result.map(Some),
                Err(_) => Ok(None),
            }
        };
        let result = attempt
            .retry(retry::task_in_place())
            .when(DbError::is_transient)
            .notify(|error, delay| tracing::warn!(%error, ?delay, "Database error; trying the task again."))
            .await;
        let settled = match result {
            Ok(Some(outcome)) => return outcome,
            Ok(None) => self.timed_out(kind, task).await,
            Err(error) if error.is_transient() => return db_unreachable(&error),
            Err(error) => self.refused(task, &error).await,
        };
        settled.unwrap_or_else(|error| db_unreachable(&error))
    }

    async fn step(&self, task: &TaskContext) -> Result<Outcome, DbError> {
        if self.destination_root.as_deref() == Some(task.request.source.url("").as_str()) {
            self.store.fail_import(task.import_id, SOURCE_IS_DESTINATION, FailureCode::AccessDenied).await?;
            return Ok(Outcome::Done);
        }
        match &task.work {
            Work::List(at) => self.list(task, at).await,
            Work::Copy { items } => self.copy(task, items).await,
        }
    }

    /// The step passed `TETHER_TASK_TIMEOUT_SECS`: a store (or Postgres)
    /// hangs. It counts as one failed attempt, like an outage.
    async fn timed_out(&self, kind: TaskKind, task: &TaskContext) -> Result<Outcome, DbError> {
        metrics().tasks_timed_out.with_label_values(&[kind.as_str()]).inc();
        let seconds = self.task_timeout.as_secs();
        tracing::warn!(
            task_id = %task.message.task_id,
            seconds,
            "A task passed its deadline (TETHER_TASK_TIMEOUT_SECS): its store does not answer; it counts as a failed attempt."
        );
        let error = StorageError::Unavailable(format!("the store did not answer within {seconds} s"));
        match &task.work {
            Work::List(at) => self.listing_failed(task, &at.prefix, error).await,
            Work::Copy { items } => self.copy_failed(task, items, error).await,
        }
    }

    /// Postgres refused the step (a value it cannot store, a broken row):
    /// retrying cannot help, so the task's item fails with the reason.
    async fn refused(&self, task: &TaskContext, error: &DbError) -> Result<Outcome, DbError> {
        tracing::error!(%error, task_id = %task.message.task_id, "Postgres refused a task's step; failing the task's item.");
        let message = format!("Tether could not record this ({error}); report it to the operators");
        match &task.work {
            Work::List(at) => {
                let failure = FailureRow {
                    source_url: storable(&task.request.source.url(&at.prefix)).into_owned(),
                    code: FailureCode::Unavailable,
                    message,
                    attempts: 1,
                    object: None,
                };
                self.store.fail_task(task, &failure).await?;
            }
            Work::Copy { items } => self.fail_copies(task, items, FailureCode::Unavailable, &message).await?,
        }
        Ok(Outcome::Done)
    }
}

/// The database stays unreachable: hand the task back for later.
fn db_unreachable(error: &DbError) -> Outcome {
    tracing::warn!(%error, "The database stays unreachable; requeueing the task.");
    Outcome::Retry(Duration::from_secs(2))
}

/// A non-negative count for a Prometheus counter.
fn counter(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
