//! Every metric Tether exposes, defined in one place. Names end in `_total`,
//! `_seconds` or `_bytes` where they count, time or measure; labels are
//! low-cardinality (provider, mode, kind, code, state, queue; workspace for
//! the fair-share gauges, which cover only workspaces with work pending),
//! never import or object ids. Dashboards and alerts in `deploy/` use these names.

use std::sync::LazyLock;

use prometheus::{
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The process's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// provider, mode
    pub objects_listed: IntCounterVec,
    /// provider, mode
    pub objects_imported: IntCounterVec,
    /// provider, mode, reason (filtered | unchanged)
    pub objects_skipped: IntCounterVec,
    /// provider, mode, code
    pub objects_failed: IntCounterVec,
    /// provider
    pub bytes_copied: IntCounterVec,
    /// kind, outcome (done | retry | give_up)
    pub task_outcomes: IntCounterVec,
    /// kind
    pub task_duration: HistogramVec,
    /// kind
    pub tasks_in_flight: IntGaugeVec,
    /// kind: tasks stopped at their deadline (a store or the database hangs)
    pub tasks_timed_out: IntCounterVec,
    /// provider
    pub credential_refreshes: IntCounterVec,
    /// provider
    pub credential_refresh_failures: IntCounterVec,
    /// provider: seconds until the session last handed out expires
    pub credential_expiry: IntGaugeVec,
    /// queue, action (consumed | acked | requeued | dead_lettered | rejected)
    pub amqp_messages: IntCounterVec,
    pub db_pool_in_use: IntGauge,
    pub db_pool_waiting: IntGauge,
    /// state (scheduler)
    pub imports: IntGaugeVec,
    pub imports_overdue: IntGauge,
    pub oldest_running_import_age: IntGauge,
    pub oldest_pending_task_age: IntGauge,
    /// queue (scheduler): ready messages
    pub queue_messages: IntGaugeVec,
    /// Seconds a request took from delivery to acknowledgement (scheduler).
    pub request_duration: Histogram,
    /// workspace, kind (scheduler): tasks held back by the fair share
    pub fair_tasks_held: IntGaugeVec,
    /// workspace, kind (scheduler): tasks released and not ended
    pub fair_tasks_in_flight: IntGaugeVec,
    /// workspace, kind (scheduler): the workspace's part of the kind's
    /// tasks in flight, 0 to 1
    pub fair_share: GaugeVec,
    /// kind (scheduler): tasks released to RabbitMQ
    pub fair_releases: IntCounterVec,
    /// kind (scheduler): ready messages the last release pass saw in the
    /// kind's task queue
    pub fair_queue_ready: IntGaugeVec,
    /// kind (scheduler): ready messages a release pass lets the kind's task
    /// queue hold (a few per consumer)
    pub fair_queue_depth: IntGaugeVec,
    /// provider, class (list | read): seconds spent waiting for the
    /// bucket's request budget
    pub budget_wait: CounterVec,
    /// provider: throttling answers that lowered a bucket's budget
    pub budget_slowdowns: IntCounterVec,
    /// route, status_class (tether-api: 2xx, 3xx, 4xx, 5xx)
    pub api_requests: IntCounterVec,
    /// route (tether-api)
    pub api_request_duration: HistogramVec,
    /// provider (s3 | gcs | azure | copy-s3 | copy-gs | copy-file), delivery
    pub api_urls_signed: IntCounterVec,
    /// delivery, code (not_found | access_denied | not_signable | unavailable)
    pub api_url_errors: IntCounterVec,
    /// result (hit | miss): signatures reused within their window
    pub api_signature_cache: IntCounterVec,
    /// Proxied streams open now (tether-api).
    pub api_streams_in_flight: IntGauge,
    /// provider: bytes proxied to browsers
    pub api_bytes_streamed: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c =
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry.register(Box::new(c.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry.register(Box::new(g.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

fn float_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry.register(Box::new(g.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

fn float_counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> CounterVec {
    let c = CounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry.register(Box::new(c.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry.register(Box::new(g.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

impl Metrics {
    // Metric definitions are constants: a failure here is a programming
    // error caught by every test, hence the panics.
    fn new() -> Self {
        let r = Registry::new();
        let durations = HistogramVec::new(
            HistogramOpts::new("tether_task_duration_seconds", "Seconds a task took, by kind.")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]),
            &["kind"],
        )
        .unwrap_or_else(|e| panic!("tether_task_duration_seconds: {e}"));
        r.register(Box::new(durations.clone()))
            .unwrap_or_else(|e| panic!("tether_task_duration_seconds: {e}"));
        let requests = Histogram::with_opts(
            HistogramOpts::new(
                "tether_request_duration_seconds",
                "Seconds from a request's delivery to its acknowledgement.",
            )
            .buckets(vec![0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
        )
        .unwrap_or_else(|e| panic!("tether_request_duration_seconds: {e}"));
        r.register(Box::new(requests.clone()))
            .unwrap_or_else(|e| panic!("tether_request_duration_seconds: {e}"));
        let api_durations = HistogramVec::new(
            HistogramOpts::new(
                "tether_api_request_duration_seconds",
                "Seconds tether-api took to answer, by route (until the headers of a stream).",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0]),
            &["route"],
        )
        .unwrap_or_else(|e| panic!("tether_api_request_duration_seconds: {e}"));
        r.register(Box::new(api_durations.clone()))
            .unwrap_or_else(|e| panic!("tether_api_request_duration_seconds: {e}"));
        Self {
            objects_listed: counter(
                &r,
                "tether_objects_listed_total",
                "Objects seen in listings (folder markers excluded).",
                &["provider", "mode"],
            ),
            objects_imported: counter(
                &r,
                "tether_objects_imported_total",
                "Objects imported (linked or copied).",
                &["provider", "mode"],
            ),
            objects_skipped: counter(
                &r,
                "tether_objects_skipped_total",
                "Objects skipped: left out by the filter or unchanged.",
                &["provider", "mode", "reason"],
            ),
            objects_failed: counter(
                &r,
                "tether_objects_failed_total",
                "Objects that failed, by failure code.",
                &["provider", "mode", "code"],
            ),
            bytes_copied: counter(
                &r,
                "tether_bytes_copied_total",
                "Bytes copied into the platform's storage.",
                &["provider"],
            ),
            task_outcomes: counter(
                &r,
                "tether_task_outcomes_total",
                "Task messages settled, by kind and outcome.",
                &["kind", "outcome"],
            ),
            task_duration: durations,
            tasks_in_flight: gauge_vec(&r, "tether_tasks_in_flight", "Tasks being worked on now.", &["kind"]),
            tasks_timed_out: counter(
                &r,
                "tether_tasks_timed_out_total",
                "Tasks stopped at their deadline (TETHER_TASK_TIMEOUT_SECS): a store or the database hangs.",
                &["kind"],
            ),
            credential_refreshes: counter(
                &r,
                "tether_credential_refreshes_total",
                "Customer credentials obtained or renewed.",
                &["provider"],
            ),
            credential_refresh_failures: counter(
                &r,
                "tether_credential_refresh_failures_total",
                "Failed attempts to obtain customer credentials.",
                &["provider"],
            ),
            credential_expiry: gauge_vec(
                &r,
                "tether_credential_expiry_seconds",
                "Seconds until the customer session last handed out expires.",
                &["provider"],
            ),
            amqp_messages: counter(
                &r,
                "tether_amqp_messages_total",
                "AMQP messages by queue and what became of them.",
                &["queue", "action"],
            ),
            db_pool_in_use: gauge(&r, "tether_db_pool_in_use", "Postgres connections in use."),
            db_pool_waiting: gauge(
                &r,
                "tether_db_pool_waiting",
                "Callers waiting for a Postgres connection.",
            ),
            imports: gauge_vec(&r, "tether_imports", "Imports by state.", &["state"]),
            imports_overdue: gauge(
                &r,
                "tether_imports_overdue",
                "Imports not final and past their 24-hour deadline.",
            ),
            oldest_running_import_age: gauge(
                &r,
                "tether_oldest_running_import_age_seconds",
                "Age of the oldest import not yet final.",
            ),
            oldest_pending_task_age: gauge(
                &r,
                "tether_oldest_pending_task_age_seconds",
                "Seconds the oldest pending task has waited without progress.",
            ),
            queue_messages: gauge_vec(
                &r,
                "tether_queue_messages",
                "Messages ready in Tether's queues.",
                &["queue"],
            ),
            request_duration: requests,
            fair_tasks_held: gauge_vec(
                &r,
                "tether_fair_tasks_held",
                "Tasks held back in Postgres by the fair share, by workspace and kind.",
                &["workspace", "kind"],
            ),
            fair_tasks_in_flight: gauge_vec(
                &r,
                "tether_fair_tasks_in_flight",
                "Tasks released to RabbitMQ and not ended, by workspace and kind.",
                &["workspace", "kind"],
            ),
            fair_share: float_gauge_vec(
                &r,
                "tether_fair_share_ratio",
                "A workspace's part of the tasks of a kind in flight (0 to 1).",
                &["workspace", "kind"],
            ),
            fair_releases: counter(
                &r,
                "tether_fair_releases_total",
                "Held tasks released to RabbitMQ by the fair share, by kind.",
                &["kind"],
            ),
            fair_queue_ready: gauge_vec(
                &r,
                "tether_fair_queue_ready",
                "Ready messages the last release pass saw in the task queue of a kind.",
                &["kind"],
            ),
            fair_queue_depth: gauge_vec(
                &r,
                "tether_fair_queue_depth",
                "Ready messages a release pass lets the task queue of a kind hold.",
                &["kind"],
            ),
            budget_wait: float_counter_vec(
                &r,
                "tether_budget_wait_seconds_total",
                "Seconds requests waited for their bucket's request budget, by provider and class.",
                &["provider", "class"],
            ),
            budget_slowdowns: counter(
                &r,
                "tether_budget_slowdowns_total",
                "Throttling answers (SlowDown, 429, 503) that lowered a bucket's request budget.",
                &["provider"],
            ),
            api_requests: counter(
                &r,
                "tether_api_requests_total",
                "Requests tether-api answered, by route and status class.",
                &["route", "status_class"],
            ),
            api_request_duration: api_durations,
            api_urls_signed: counter(
                &r,
                "tether_api_urls_signed_total",
                "URLs handed out, by provider (copy-* for copies) and delivery.",
                &["provider", "delivery"],
            ),
            api_url_errors: counter(
                &r,
                "tether_api_url_errors_total",
                "Image ids answered with an error instead of a URL, by delivery and code.",
                &["delivery", "code"],
            ),
            api_signature_cache: counter(
                &r,
                "tether_api_signature_cache_total",
                "GCS signatures looked up in the window cache, by result (hit, miss).",
                &["result"],
            ),
            api_streams_in_flight: gauge(
                &r,
                "tether_api_streams_in_flight",
                "Proxied content streams open now.",
            ),
            api_bytes_streamed: counter(
                &r,
                "tether_api_bytes_streamed_total",
                "Bytes of proxied content sent to clients, by provider.",
                &["provider"],
            ),
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!(%error, "Cannot encode the metrics.");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}
