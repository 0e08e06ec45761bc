//! The request budget of a customer's bucket: three workers together stay
//! within `TETHER_BUDGET_*_PER_SEC` as the store (behind the fault proxy)
//! sees it, and SlowDown answers lower the rate for the whole fleet.
//! Its own binary: it points the workers' S3 endpoint at the proxy.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use tether_tests::proxy::{FaultProxy, Faults};
use tether_tests::{service_var, TestEnv};

/// The most arrivals within any `window`.
fn peak(arrivals: &[Instant], window: Duration) -> usize {
    let mut sorted = arrivals.to_vec();
    sorted.sort();
    (0..sorted.len())
        .map(|i| sorted[i..].iter().take_while(|t| **t - sorted[i] < window).count())
        .max()
        .unwrap_or(0)
}

/// Arrivals per second from the first to the last.
fn mean_rate(arrivals: &[Instant]) -> f64 {
    let (Some(first), Some(last)) = (arrivals.iter().min(), arrivals.iter().max()) else { return 0.0 };
    arrivals.len() as f64 / (*last - *first).as_secs_f64().max(0.001)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_stay_within_the_budget_and_slow_down_when_throttled() {
    const READS_PER_SEC: f64 = 20.0;
    const LISTS_PER_SEC: f64 = 5.0;
    let env = TestEnv::new().await; // seeds directly, not through the proxy
    env.put_many((0..160).map(|i| format!("b/{i:03}.jpg"))).await;
    env.put_many((0..40).map(|i| format!("t/{i:03}.jpg"))).await;
    let dir = env.destination_dir();
    let worker = |env: &TestEnv| {
        let mut worker = env.worker_config();
        worker.page_size = 10;
        worker.copy_concurrency = 16;
        worker.budget_read_per_sec = READS_PER_SEC;
        worker.budget_list_per_sec = LISTS_PER_SEC;
        worker.destination = Some(format!("file://{}", dir.display()));
        worker
    };

    // A store that never throttles: the fleet is held to the budget.
    let proxy = FaultProxy::start(&service_var("AWS_ENDPOINT_URL_S3"), Faults::default()).await;
    // Edition 2021: set_var is safe; the workers read it when they start.
    std::env::set_var("AWS_ENDPOINT_URL_S3", proxy.url());
    let fleet = env.start(vec![env.scheduler_config()], (0..3).map(|_| worker(&env)).collect()).await;
    let mut request = env.request("budget", &["b/"]);
    request["mode"] = json!("copy");
    let status = env.wait_final_within(env.submit(&request).await, Duration::from_secs(120)).await;
    assert_eq!(
        (status["state"].as_str(), status["objects_imported"].as_i64()),
        (Some("succeeded"), Some(160))
    );
    let (reads, lists) = (proxy.counts.arrivals(false), proxy.counts.arrivals(true));
    let (read_peak, list_peak) = (peak(&reads, Duration::from_secs(2)), peak(&lists, Duration::from_secs(2)));
    let unthrottled_rate = mean_rate(&reads);
    eprintln!(
        "budget {READS_PER_SEC} reads/s, {LISTS_PER_SEC} lists/s: {} reads at {unthrottled_rate:.1}/s (peak {read_peak} in 2 s), {} lists (peak {list_peak} in 2 s)",
        reads.len(),
        lists.len()
    );
    // Two seconds of the rate, plus a quarter second of burst and a token
    // or two in each worker's hand.
    assert!(read_peak as f64 <= 2.25 * READS_PER_SEC + 6.0, "{read_peak} reads within 2 s");
    assert!(list_peak as f64 <= 2.25 * LISTS_PER_SEC + 6.0, "{list_peak} lists within 2 s");
    assert!(unthrottled_rate <= READS_PER_SEC * 1.2, "{unthrottled_rate:.1} reads/s on average");
    fleet.stop().await;

    // A store that answers SlowDown to a share of requests: the rate halves.
    let throttling = FaultProxy::start(
        &service_var("AWS_ENDPOINT_URL_S3"),
        Faults { slow_down: 0.15, ..Faults::default() },
    )
    .await;
    std::env::set_var("AWS_ENDPOINT_URL_S3", throttling.url());
    let fleet = env.start(vec![env.scheduler_config()], (0..3).map(|_| worker(&env)).collect()).await;
    let started = Instant::now();
    let mut request = env.request("budget-throttled", &["t/"]);
    request["mode"] = json!("copy");
    let status = env.wait_final_within(env.submit(&request).await, Duration::from_secs(180)).await;
    assert_eq!(
        (status["state"].as_str(), status["objects_imported"].as_i64()),
        (Some("succeeded"), Some(40))
    );
    let reads = throttling.counts.arrivals(false);
    let throttled_rate = mean_rate(&reads);
    let slowed = throttling.counts.slowed_down.load(Ordering::Relaxed);
    let slowdowns = tether_shared::telemetry::metrics().budget_slowdowns.with_label_values(&["s3"]).get();
    eprintln!(
        "with {slowed} SlowDown answers: {} reads at {throttled_rate:.1}/s in {:?}, {slowdowns} slow-downs",
        reads.len(),
        started.elapsed()
    );
    assert!(slowed >= 3 && slowdowns >= 1, "{slowed} SlowDown answers, {slowdowns} slow-downs");
    assert!(
        throttled_rate < 0.75 * unthrottled_rate,
        "throttled {throttled_rate:.1} reads/s, not below {unthrottled_rate:.1} reads/s"
    );
    fleet.stop().await;
}
