//! The harness of Tether's integration tests. Every test gets its own
//! Postgres database and role, RabbitMQ virtual host and user (each with a
//! password of its own, which the secrets tests look for in every log) and
//! bucket, so tests run in parallel against the real services that
//! `make test` starts, and deletes them when it ends. A missing service makes
//! the test fail with a message saying so; nothing is skipped.

pub mod api;
pub mod history;
pub mod moto_auth;
pub mod process;
pub mod proxy;
pub mod service_proxy;
pub mod stores;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use serde_json::{json, Value};
use tether_scheduler::SchedulerConfig;
use tether_shared::config::{CommonConfig, LogFormat};
use tether_shared::contract::{EXCHANGE, REJECTED_QUEUE, REJECT_REASON_HEADER, ROUTING_FINISHED};
use tether_shared::db::Store;
use tether_shared::queue;
use tether_shared::secrets::Secret;
use tether_worker::WorkerConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The `TETHER_SECRETS_KEY` of the tests' schedulers and workers.
pub const TEST_SECRETS_KEY: &str = "dGV0aGVyLXRlc3Qtc2VjcmV0cy1rZXktMzItYnl0ZXM=";

/// The queue each test binds to `import.finished` to watch FinishedEvents.
const EVENTS_QUEUE: &str = "test.finished-events";
const FINAL_STATES: [&str; 4] = ["succeeded", "partially_succeeded", "failed", "cancelled"];

/// The value of query parameter `name` of `url` (a signature, a token).
pub fn url_param(url: &str, name: &str) -> String {
    reqwest::Url::parse(url)
        .expect("a URL")
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("{name} in {url}"))
}

/// A variable `make test` exports; a test without it fails and says why.
pub fn service_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `make test`, which starts PostgreSQL, RabbitMQ and the emulators and exports it")
    })
}

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(buf);
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures every log line of this test process (debug level and up), so a
/// test can check what reached the logs.
fn init_log_capture() {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(Arc::clone(&buffer));
        let filter = tracing_subscriber::EnvFilter::new(
            "debug,lapin=info,amq_protocol=info,hyper=info,hyper_util=info,h2=info,rustls=info,tokio_postgres=info",
        );
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        buffer
    });
}

/// Everything logged so far in this process.
pub fn captured_logs() -> String {
    let buffer = LOGS.get().map(|b| b.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone());
    String::from_utf8_lossy(&buffer.unwrap_or_default()).into_owned()
}

/// A rejected request as found in `tether.rejected`.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub body: Vec<u8>,
    pub reason: String,
}

/// One test's private database, virtual host and bucket.
#[derive(Debug)]
pub struct TestEnv {
    pub id: String,
    pub database_url: String,
    pub amqp_url: String,
    /// The passwords in `database_url` and `amqp_url`: secrets no log may show.
    pub database_password: String,
    pub amqp_password: String,
    pub store: Store,
    pub s3: aws_sdk_s3::Client,
    pub sdk: aws_config::SdkConfig,
    pub bucket: String,
    amqp: Connection,
}

impl TestEnv {
    pub async fn new() -> Self {
        init_log_capture();
        // The start time first (8 hex digits of Unix seconds), so that
        // `scripts/services.sh clean-tests` removes only old leftovers.
        let started =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let id = format!("{started:08x}{}", &Uuid::new_v4().simple().to_string()[..6]);
        let database_password = format!("pg-{}", Uuid::new_v4().simple());
        let amqp_password = format!("mq-{}", Uuid::new_v4().simple());
        let database_url = create_database(&id, &database_password).await;
        let amqp_url = create_vhost(&id, &amqp_password).await;
        let amqp = queue::connect(&Secret::new(amqp_url.clone()), "tether-test")
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ is not reachable at {amqp_url}: {e}"));
        queue::declare_topology(&amqp).await.expect("declare the topology");
        let channel = amqp.create_channel().await.expect("open a channel");
        channel
            .queue_declare(EVENTS_QUEUE.into(), QueueDeclareOptions::default(), FieldTable::default())
            .await
            .expect("declare the events queue");
        channel
            .queue_bind(
                EVENTS_QUEUE.into(),
                EXCHANGE.into(),
                ROUTING_FINISHED.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the events queue");
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk).force_path_style(true).build(),
        );
        let bucket = format!("tether-t-{id}");
        s3.create_bucket().bucket(&bucket).send().await.unwrap_or_else(|e| {
            panic!(
                "the S3 emulator refused to create a bucket (is moto running?): {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        });
        let store = Store::connect(&Secret::new(database_url.clone()), 4).expect("database URL");
        Self { id, database_url, amqp_url, database_password, amqp_password, store, s3, sdk, bucket, amqp }
    }

    fn common(&self) -> CommonConfig {
        CommonConfig {
            database_url: Secret::new(self.database_url.clone()),
            amqp_url: Secret::new(self.amqp_url.clone()),
            metrics_addr: None,
            db_pool_size: 8,
            db_session: Default::default(),
            secrets_key: Some(TEST_SECRETS_KEY.parse().expect("the test key is 32 bytes")),
            log_format: LogFormat::Text,
        }
    }

    /// A scheduler configured for tests: short ticks.
    pub fn scheduler_config(&self) -> SchedulerConfig {
        SchedulerConfig {
            common: self.common(),
            gcs_allow_own_identity: false,
            destination: None,
            tick_secs: 0.1,
            republish_after_secs: 300.0,
            fair_import_tasks: 32,
            fair_workspace_tasks: 64,
            fair_queued_per_consumer: 2,
            retention_days: 7.0,
        }
    }

    pub fn worker_config(&self) -> WorkerConfig {
        WorkerConfig {
            common: self.common(),
            page_size: 1000,
            max_list_tasks: 10_000,
            concurrency: 4,
            sts_refresh_margin_secs: 900,
            s3_force_path_style: true,
            storage_emulator_host: Some(service_var("STORAGE_EMULATOR_HOST")),
            azure_blob_endpoint: service_var("TETHER_AZURE_BLOB_ENDPOINT"),
            max_attempts: 3,
            drain_secs: 5,
            kinds: vec!["list".into(), "copy".into()],
            destination: None,
            copy_concurrency: 8,
            copy_part_bytes: 5 * 1024 * 1024,
            copy_parts_in_flight: 4,
            copy_buffer_bytes: 64 * 1024 * 1024,
            copy_ranged_from_bytes: 64 * 1024 * 1024,
            copy_ranges_in_flight: 4,
            copy_read_ahead_bytes: 32 * 1024 * 1024,
            copy_batch_objects: 10,
            copy_batch_bytes: 1 << 30,
            copy_max_attempts: 3,
            task_timeout_secs: 240,
            store_timeout_secs: 60,
            budget_list_per_sec: 2500.0,
            budget_read_per_sec: 3000.0,
            budget_recovery_secs: 30.0,
        }
    }

    /// Starts a real `tether-worker` process (built by `make test`) on this
    /// test's database and virtual host, with extra settings (`TETHER_*`,
    /// `AWS_ENDPOINT_URL_S3`, `RUST_LOG`, ...) that override the defaults.
    /// Its output is captured.
    pub fn spawn_worker_process(&self, settings: &[(&str, String)]) -> process::Process {
        self.spawn_process("tether-worker", settings)
    }

    /// Starts a real `tether-scheduler` process, as [`Self::spawn_worker_process`].
    pub fn spawn_scheduler_process(&self, settings: &[(&str, String)]) -> process::Process {
        self.spawn_process("tether-scheduler", settings)
    }

    fn spawn_process(&self, name: &str, settings: &[(&str, String)]) -> process::Process {
        let mut command = process::command(name);
        command
            .env("TETHER_DATABASE_URL", &self.database_url)
            .env("TETHER_AMQP_URL", &self.amqp_url)
            .env("TETHER_S3_FORCE_PATH_STYLE", "true")
            .env("TETHER_SECRETS_KEY", TEST_SECRETS_KEY)
            .env("RUST_LOG", "info")
            .envs(settings.iter().map(|(k, v)| (*k, v.as_str())));
        process::Process::spawn(name, command)
    }

    /// A fresh bucket for copies (`s3://` destination); returns its name.
    pub async fn destination_bucket(&self) -> String {
        let bucket = format!("tether-d-{}", self.id);
        self.s3.create_bucket().bucket(&bucket).send().await.expect("create the destination bucket");
        bucket
    }

    /// A fresh directory for copies (`file://` destination).
    pub fn destination_dir(&self) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tether-copies-{}", self.id));
        std::fs::create_dir_all(&dir).expect("create the destination directory");
        dir
    }

    /// The bytes of an object of `bucket`.
    pub async fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let object = self.s3.get_object().bucket(bucket).key(key).send().await.unwrap_or_else(|e| {
            panic!("get s3://{bucket}/{key}: {}", aws_sdk_s3::error::DisplayErrorContext(e))
        });
        object.body.collect().await.expect("read the body").into_bytes().to_vec()
    }

    /// Deletes an object of the test's bucket.
    pub async fn delete(&self, key: &str) {
        self.s3.delete_object().bucket(&self.bucket).key(key).send().await.expect("delete");
    }

    /// Starts schedulers and workers in this process, and waits until the
    /// schedulers have applied the migrations.
    pub async fn start(&self, schedulers: Vec<SchedulerConfig>, workers: Vec<WorkerConfig>) -> Fleet {
        let token = CancellationToken::new();
        let mut handles: Vec<JoinHandle<Result<(), String>>> = Vec::new();
        for config in schedulers {
            let token = token.clone();
            handles.push(tokio::spawn(async move {
                tether_scheduler::run(config, token).await.map_err(|e| format!("scheduler: {e}"))
            }));
        }
        for config in workers {
            let token = token.clone();
            handles.push(tokio::spawn(async move {
                tether_worker::run(config, token).await.map_err(|e| format!("worker: {e}"))
            }));
        }
        let fleet = Fleet { token, handles };
        self.wait_schema(|| fleet.assert_running()).await;
        fleet
    }

    /// Waits (up to 30 s) until a scheduler has applied the migrations,
    /// calling `check` (which panics if a process stopped) meanwhile.
    pub async fn wait_schema(&self, mut check: impl FnMut()) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.schema_ready().await {
            check();
            assert!(tokio::time::Instant::now() < deadline, "no schema 30 s after the schedulers started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether a scheduler has applied the migrations.
    pub async fn schema_ready(&self) -> bool {
        let row = self.query("SELECT to_regclass('tether.import_status')::text", &[]).await;
        row[0].get::<_, Option<String>>(0).is_some()
    }

    /// One scheduler and `workers` workers with the test defaults.
    pub async fn start_default(&self, workers: usize) -> Fleet {
        self.start(vec![self.scheduler_config()], (0..workers).map(|_| self.worker_config()).collect()).await
    }

    pub async fn put(&self, key: &str, body: &[u8]) {
        stores::put_s3(&self.s3, &self.bucket, key, body).await;
    }

    /// Puts many small objects, 16 at a time; each body names its key.
    pub async fn put_many(&self, keys: impl IntoIterator<Item = String>) {
        futures_util::stream::iter(keys)
            .for_each_concurrent(16, |key| async move { self.put(&key, key.as_bytes()).await })
            .await;
    }

    /// A valid S3 link request for this test's bucket.
    pub fn request(&self, dataset: &str, prefixes: &[&str]) -> Value {
        json!({
            "version": 1,
            "import_id": Uuid::new_v4(),
            "workspace_id": "ws-test",
            "dataset_id": dataset,
            "mode": "link",
            "source": {
                "provider": "s3",
                "bucket": self.bucket,
                "prefixes": prefixes,
                "role_arn": "arn:aws:iam::123456789012:role/tether-test",
                "external_id": "ext-7ed6d782"
            }
        })
    }

    /// Publishes an ImportRequest as the platform does.
    pub async fn submit(&self, request: &Value) -> Uuid {
        self.publish_raw("import.request", request.to_string().as_bytes(), Some("application/json")).await;
        request["import_id"].as_str().and_then(|s| s.parse().ok()).unwrap_or_default()
    }

    /// Publishes any bytes with any content type on the `tether` exchange.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8], content_type: Option<&str>) {
        let channel = self.amqp.create_channel().await.expect("channel");
        channel.confirm_select(Default::default()).await.expect("confirms");
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if let Some(ct) = content_type {
            properties = properties.with_content_type(ct.into());
        }
        channel
            .basic_publish(EXCHANGE.into(), routing_key.into(), Default::default(), body, properties)
            .await
            .expect("publish")
            .await
            .expect("confirm");
        let _ = channel.close(200, "done".into()).await;
    }

    /// The import's status row, once it exists.
    pub async fn status(&self, import_id: Uuid) -> Option<Value> {
        self.store.import_status(import_id).await.expect("read status")
    }

    /// Waits (up to `timeout`) for the import to reach a final state.
    pub async fn wait_final_within(&self, import_id: Uuid, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.status(import_id).await;
            if let Some(s) = &status {
                if FINAL_STATES.contains(&s["state"].as_str().unwrap_or_default()) {
                    return s.clone();
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!("import {import_id} not final after {timeout:?}; last status: {status:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the import has listed `objects` objects (and so recorded
    /// all its copy tasks, in copy mode).
    pub async fn wait_listed(&self, import_id: Uuid, objects: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.status(import_id).await.is_none_or(|s| s["objects_listed"] != objects) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "import {import_id} did not list {objects} objects in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the import has imported at least `objects` objects, or
    /// ended. Tolerates a database that is briefly unreachable.
    pub async fn wait_imported(&self, import_id: Uuid, objects: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(s)) = self.store.import_status(import_id).await {
                let ended = FINAL_STATES.contains(&s["state"].as_str().unwrap_or_default());
                if ended || s["objects_imported"].as_i64().unwrap_or(0) >= objects {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "import {import_id} made no progress to {objects} objects"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_final(&self, import_id: Uuid) -> Value {
        self.wait_final_within(import_id, Duration::from_secs(60)).await
    }

    /// Takes up to `n` messages from `queue`, waiting up to `wait` for them.
    async fn take(&self, queue: &str, n: usize, wait: Duration) -> Vec<lapin::message::BasicGetMessage> {
        let channel = self.amqp.create_channel().await.expect("channel");
        let mut messages = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while messages.len() < n && tokio::time::Instant::now() < deadline {
            match channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.expect("basic.get")
            {
                Some(message) => messages.push(message),
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let _ = channel.close(200, "done".into()).await;
        messages
    }

    /// Takes `n` messages from `tether.rejected`, waiting up to 10 s for them,
    /// and whatever else is there half a second later.
    pub async fn rejected(&self, n: usize) -> Vec<Rejected> {
        let mut messages = self.take(REJECTED_QUEUE, n, Duration::from_secs(10)).await;
        messages.extend(self.take(REJECTED_QUEUE, usize::MAX, Duration::from_millis(500)).await);
        messages
            .into_iter()
            .map(|m| {
                let reason = m
                    .delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get(REJECT_REASON_HEADER).cloned())
                    .map(|v| match v {
                        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default();
                Rejected { body: m.delivery.data, reason }
            })
            .collect()
    }

    /// Takes the FinishedEvents published so far: waits up to 10 s for `n`,
    /// then takes whatever else comes within half a second.
    pub async fn finished_events(&self, n: usize) -> Vec<Value> {
        let mut messages = self.take(EVENTS_QUEUE, n, Duration::from_secs(10)).await;
        messages.extend(self.take(EVENTS_QUEUE, usize::MAX, Duration::from_millis(500)).await);
        messages
            .into_iter()
            .map(|m| serde_json::from_slice(&m.delivery.data).expect("event is JSON"))
            .collect()
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Vec<tokio_postgres::Row> {
        let (client, connection) = tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(connection);
        client.query(sql, params).await.expect("query")
    }

    /// Every row of a one-column text query, joined: to search what is stored.
    pub async fn dump_text(&self, sql: &str) -> String {
        let rows = self.query(sql, &[]).await;
        rows.iter().map(|r| r.get::<_, Option<String>>(0).unwrap_or_default()).collect::<Vec<_>>().join("\n")
    }

    /// source_url → (storage, stored_url) of every image of a dataset.
    pub async fn stored(&self, dataset: &str) -> BTreeMap<String, (String, Option<String>)> {
        self.query(
            "SELECT source_url, storage, stored_url FROM tether.images WHERE dataset_id = $1",
            &[&dataset],
        )
        .await
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
    }

    /// source_url → etag of every image of a dataset.
    pub async fn images(&self, dataset: &str) -> BTreeMap<String, Option<String>> {
        self.query("SELECT source_url, etag FROM tether.images WHERE dataset_id = $1", &[&dataset])
            .await
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// (source_url, code) of every failure of an import.
    pub async fn failures(&self, import_id: Uuid) -> Vec<(String, String)> {
        self.query(
            "SELECT source_url, code FROM tether.import_failures WHERE import_id = $1 ORDER BY source_url",
            &[&import_id],
        )
        .await
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    }

    /// Runs one statement with one uuid parameter (to stage a situation).
    pub async fn execute(&self, sql: &str, id: &Uuid) {
        self.query(sql, &[id]).await;
    }

    /// Closes, from the broker's side, the connections of this test's
    /// virtual host named after one of `names` (a lost connection), once at
    /// least `expected` of them are listed. Returns how many were closed.
    pub async fn close_connections(&self, names: &[&str], expected: usize) -> usize {
        let (base, user, password) = rabbitmq_api();
        let http = reqwest::Client::new();
        let url = format!("{base}/api/vhosts/tether-t-{}/connections", self.id);
        // The management API lists new connections with a delay of seconds.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let connections = loop {
            let listed: Vec<Value> = http
                .get(&url)
                .basic_auth(&user, Some(&password))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .expect("list connections")
                .json()
                .await
                .expect("connections as JSON");
            let ours: Vec<String> = listed
                .iter()
                .filter(|c| {
                    names.contains(&c["client_properties"]["connection_name"].as_str().unwrap_or_default())
                })
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect();
            if ours.len() >= expected || tokio::time::Instant::now() > deadline {
                break ours;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let mut closed = 0;
        for name in &connections {
            let mut url = reqwest::Url::parse(&format!("{base}/api/connections/")).expect("url");
            url.path_segments_mut().expect("base").pop_if_empty().push(name);
            let response = http.delete(url).basic_auth(&user, Some(&password)).send().await.expect("close");
            assert!(response.status().is_success(), "closing {name}: {}", response.status());
            closed += 1;
        }
        closed
    }

    /// How many imports the database holds.
    pub async fn import_count(&self) -> i64 {
        self.query("SELECT count(*) FROM tether.imports", &[]).await[0].get(0)
    }

    /// The management API's view of one of this test's queues (`messages`,
    /// `messages_unacknowledged`, `message_stats.redeliver`, ...).
    pub async fn queue_info(&self, queue: &str) -> Value {
        let path = format!("queues/tether-t-{}/{queue}", self.id);
        let response =
            management(reqwest::Method::GET, &path, None).await.expect("the management API answers");
        assert!(response.status().is_success(), "GET /api/{path}: {}", response.status());
        response.json().await.expect("queue info as JSON")
    }

    /// How many deliveries of `queue` were redeliveries, as the broker's
    /// statistics (refreshed every few seconds) say.
    pub async fn redeliveries(&self, queue: &str) -> u64 {
        self.queue_info(queue).await["message_stats"]["redeliver"].as_u64().unwrap_or(0)
    }

    /// Waits (up to 30 s) until `queue` holds no ready message (unacknowledged
    /// ones are with consumers); asked of the broker itself, not of its
    /// statistics, which lag.
    pub async fn wait_no_ready(&self, queue: &str) {
        let channel = self.amqp.create_channel().await.expect("channel");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let declared = channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions { passive: true, ..Default::default() },
                    FieldTable::default(),
                )
                .await
                .expect("the queue exists");
            if declared.message_count() == 0 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{queue} still holds messages");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = channel.close(200, "done".into()).await;
    }

    /// Deletes every ready message of `queue`.
    pub async fn purge(&self, queue: &str) {
        let path = format!("queues/tether-t-{}/{queue}/contents", self.id);
        let response = management(reqwest::Method::DELETE, &path, None).await.expect("purge");
        assert!(response.status().is_success(), "DELETE /api/{path}: {}", response.status());
    }

    /// Publishes `body` straight to `queue` (the default exchange), as the
    /// workers publish task messages.
    pub async fn publish_to_queue(&self, queue: &str, body: &[u8]) {
        let channel = self.amqp.create_channel().await.expect("channel");
        channel.confirm_select(Default::default()).await.expect("confirms");
        let properties =
            BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into());
        channel
            .basic_publish("".into(), queue.into(), Default::default(), body, properties)
            .await
            .expect("publish")
            .await
            .expect("confirm");
        let _ = channel.close(200, "done".into()).await;
    }

    /// Every row of a query rendered as text, one line per row: to compare
    /// what the database holds before and after.
    pub async fn snapshot(&self, sql: &str) -> Vec<String> {
        self.dump_text(&format!("SELECT t::text FROM ({sql}) t")).await.lines().map(str::to_owned).collect()
    }
}

/// Deletes what the test made, even when it failed: its virtual host and
/// user (RabbitMQ slows down under hundreds of idle quorum queues), its
/// database and role, its S3 buckets and its copy directory.
impl Drop for TestEnv {
    fn drop(&mut self) {
        let id = self.id.clone();
        let buckets = [self.bucket.clone(), format!("tether-d-{id}")];
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("tether-copies-{id}")));
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    let name = format!("tether-t-{id}");
                    let _ = management(reqwest::Method::DELETE, &format!("vhosts/{name}"), None).await;
                    let _ = management(reqwest::Method::DELETE, &format!("users/{name}"), None).await;
                    if let Ok((client, connection)) = tokio_postgres::connect(
                        &service_var("TETHER_TEST_DATABASE_URL"),
                        tokio_postgres::NoTls,
                    )
                    .await
                    {
                        tokio::spawn(connection);
                        for statement in [
                            format!("DROP DATABASE IF EXISTS tether_t_{id} WITH (FORCE)"),
                            format!("DROP ROLE IF EXISTS tether_t_{id}"),
                        ] {
                            let _ = client.batch_execute(&statement).await;
                        }
                    }
                    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
                    let s3 = aws_sdk_s3::Client::from_conf(
                        aws_sdk_s3::config::Builder::from(&sdk).force_path_style(true).build(),
                    );
                    stores::delete_gcs_and_azure(&s3, &buckets[0]).await;
                    for bucket in buckets {
                        stores::delete_s3_bucket(&s3, &bucket).await;
                    }
                });
            }
        });
        let _ = cleanup.join();
    }
}

/// Schedulers and workers running in this process.
#[derive(Debug)]
pub struct Fleet {
    token: CancellationToken,
    handles: Vec<JoinHandle<Result<(), String>>>,
}

impl Fleet {
    /// Panics if any process of the fleet has stopped.
    pub fn assert_running(&self) {
        assert!(self.handles.iter().all(|h| !h.is_finished()), "a scheduler or worker stopped");
    }

    /// SIGTERM for the whole fleet; every process must stop cleanly.
    pub async fn stop(self) {
        self.token.cancel();
        for handle in self.handles {
            let result = tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .expect("stopped within 30 s")
                .expect("did not panic");
            if let Err(error) = result {
                panic!("{error}");
            }
        }
    }
}

fn with_path(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    let root = match base.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((authority, _)) => format!("{scheme}://{authority}"),
            None => base.to_owned(),
        },
        None => base.to_owned(),
    };
    format!("{root}/{path}")
}

/// Makes the role `tether_t_{id}` with `password` and its database of the
/// same name; returns the database's URL as that role.
async fn create_database(id: &str, password: &str) -> String {
    let admin_url = service_var("TETHER_TEST_DATABASE_URL");
    let (client, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable with TETHER_TEST_DATABASE_URL: {e}"));
    tokio::spawn(connection);
    let name = format!("tether_t_{id}");
    // One statement each: CREATE DATABASE may not run in a transaction.
    for statement in [
        format!("CREATE ROLE {name} LOGIN PASSWORD '{password}'"),
        format!("GRANT {name} TO CURRENT_USER"),
        format!("CREATE DATABASE {name} OWNER {name}"),
    ] {
        client.batch_execute(&statement).await.unwrap_or_else(|e| {
            panic!("cannot create the test role and database {name} (the role of TETHER_TEST_DATABASE_URL needs CREATEDB and CREATEROLE; scripts/services.sh start grants them): {e:?}")
        });
    }
    let mut url = reqwest::Url::parse(&with_path(&admin_url, &name)).expect("the database URL parses");
    url.set_username(&name).expect("a user");
    url.set_password(Some(password)).expect("a password");
    url.to_string()
}

/// The management API's base URL and credentials.
fn rabbitmq_api() -> (String, String, String) {
    let api = reqwest::Url::parse(&service_var("TETHER_TEST_RABBITMQ_API"))
        .expect("TETHER_TEST_RABBITMQ_API is a URL");
    let base = format!(
        "{}://{}:{}",
        api.scheme(),
        api.host_str().unwrap_or("127.0.0.1"),
        api.port().unwrap_or(15672)
    );
    (base, api.username().to_owned(), api.password().unwrap_or_default().to_owned())
}

/// A request to the management API at `path` (under `/api/`).
async fn management(
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<reqwest::Response, reqwest::Error> {
    let (base, user, password) = rabbitmq_api();
    let mut request = reqwest::Client::new()
        .request(method, format!("{base}/api/{path}"))
        .basic_auth(user, Some(password))
        .timeout(Duration::from_secs(60));
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await
}

/// Makes the virtual host `tether-t-{id}` and the user of the same name with
/// `password`, allowed everything there (and the management user too, for
/// the tests' own inspection); returns the vhost's URL as that user.
async fn create_vhost(id: &str, password: &str) -> String {
    let (_, admin, _) = rabbitmq_api();
    let vhost = format!("tether-t-{id}");
    let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
    for (path, body) in [
        (format!("vhosts/{vhost}"), None),
        (format!("users/{vhost}"), Some(json!({"password": password, "tags": ""}))),
        (format!("permissions/{vhost}/{vhost}"), Some(all.clone())),
        (format!("permissions/{vhost}/{admin}"), Some(all)),
    ] {
        let response = management(reqwest::Method::PUT, &path, body).await.unwrap_or_else(|e| {
            panic!("the RabbitMQ management API is not reachable (is rabbitmq_management enabled?): {e}")
        });
        assert!(response.status().is_success(), "RabbitMQ refused PUT /api/{path}: {}", response.status());
    }
    let mut url = reqwest::Url::parse(&with_path(&service_var("TETHER_TEST_AMQP_URL"), &vhost))
        .expect("the AMQP URL parses");
    url.set_username(&vhost).expect("a user");
    url.set_password(Some(password)).expect("a password");
    url.to_string()
}
