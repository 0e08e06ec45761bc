//! Storage faults between the workers and the store: throttling and dropped
//! connections are retried, and the imports end exact with no failure.
//! Its own binary: it points the workers' S3 endpoint at the proxy.

use serde_json::json;
use std::sync::atomic::Ordering;
use tether_tests::proxy::{FaultProxy, Faults};
use tether_tests::{service_var, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttling_and_resets_are_retried_to_a_clean_result() {
    let env = TestEnv::new().await; // seeds directly, not through the proxy
    env.put_many((0..400).map(|i| format!("f/{i:03}.jpg"))).await;
    let proxy = FaultProxy::start(
        &service_var("AWS_ENDPOINT_URL_S3"),
        Faults { slow_down: 0.10, reset: 0.02, ..Faults::default() },
    )
    .await;
    // Edition 2021: set_var is safe; the workers read it when they start.
    std::env::set_var("AWS_ENDPOINT_URL_S3", proxy.url());
    let dir = env.destination_dir();
    let mut worker = env.worker_config();
    worker.page_size = 20;
    worker.destination = Some(format!("file://{}", dir.display()));
    let fleet = env.start(vec![env.scheduler_config()], vec![worker.clone(), worker]).await;

    let link = env.wait_final(env.submit(&env.request("faults-link", &["f/"])).await).await;
    assert_eq!(link["state"], "succeeded", "{link}");
    assert_eq!((link["objects_imported"].as_i64(), link["objects_failed"].as_i64()), (Some(400), Some(0)));
    let mut copy = env.request("faults-copy", &["f/"]);
    copy["mode"] = json!("copy");
    let copied = env.wait_final(env.submit(&copy).await).await;
    assert_eq!(copied["state"], "succeeded", "{copied}");
    assert_eq!(
        (copied["objects_imported"].as_i64(), copied["objects_failed"].as_i64()),
        (Some(400), Some(0))
    );
    let total: i64 = (0..400).map(|i| format!("f/{i:03}.jpg").len() as i64).sum();
    assert_eq!(copied["bytes_copied"], total);
    assert_eq!(env.images("faults-copy").await.len(), 400);

    let (slowed, reset) =
        (proxy.counts.slowed_down.load(Ordering::Relaxed), proxy.counts.reset.load(Ordering::Relaxed));
    let forwarded = proxy.counts.forwarded.load(Ordering::Relaxed);
    eprintln!(
        "fault proxy: {forwarded} forwarded, {slowed} answered 503 SlowDown, {reset} connections dropped"
    );
    assert!(
        slowed >= 20 && reset >= 3,
        "too few faults to mean anything: {slowed} slow-downs, {reset} resets"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_keeps_refusing_is_retried_later_then_given_up_with_a_code() {
    let env = TestEnv::new().await;
    env.put("down/a.jpg", b"a").await;
    let proxy = FaultProxy::start(
        &service_var("AWS_ENDPOINT_URL_S3"),
        Faults { slow_down: 1.0, ..Faults::default() },
    )
    .await;
    std::env::set_var("AWS_ENDPOINT_URL_S3", proxy.url());
    let mut worker = env.worker_config();
    worker.max_attempts = 3;
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;
    let started = std::time::Instant::now();
    let id = env.submit(&env.request("down", &["down/"])).await;
    let status = env.wait_final(id).await;
    assert_eq!(status["state"], "failed", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains("after 3 attempts") && error.contains("throttled"), "{error}");
    assert_eq!(env.failures(id).await, vec![(format!("s3://{}/down/", env.bucket), "throttled".to_owned())]);
    // Two retries parked in retry queues of at least 1 s each: not a hot loop.
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(2),
        "retried too fast: {:?}",
        started.elapsed()
    );
    let outcomes =
        tether_shared::telemetry::metrics().task_outcomes.with_label_values(&["list", "retry"]).get();
    assert_eq!(outcomes, 2, "two retries before giving up");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_refused_mid_import_are_renewed_once_and_retried() {
    let env = TestEnv::new().await;
    env.put_many((0..150).map(|i| format!("x/{i:03}.jpg"))).await;
    let proxy = FaultProxy::start(
        &service_var("AWS_ENDPOINT_URL_S3"),
        Faults { expired_token: 0.08, ..Faults::default() },
    )
    .await;
    std::env::set_var("AWS_ENDPOINT_URL_S3", proxy.url());
    let dir = env.destination_dir();
    let mut worker = env.worker_config();
    worker.page_size = 10;
    worker.destination = Some(format!("file://{}", dir.display()));
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;
    let mut copy = env.request("expired", &["x/"]);
    copy["mode"] = json!("copy");
    let status = env.wait_final(env.submit(&copy).await).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(
        (status["objects_imported"].as_i64(), status["objects_failed"].as_i64()),
        (Some(150), Some(0))
    );
    let expired = proxy.counts.expired.load(Ordering::Relaxed);
    let renewals =
        tether_tests::captured_logs().matches("S3 refused the session; renewing it once.").count() as u64;
    eprintln!("fault proxy: {expired} requests answered ExpiredToken, {renewals} renewals");
    assert!(expired >= 3, "too few expired sessions to mean anything: {expired}");
    assert!(renewals >= 1, "no session was renewed");
    let refreshes = tether_shared::telemetry::metrics().credential_refreshes.with_label_values(&["s3"]).get();
    assert!(refreshes > 1, "the role was assumed only once");
    fleet.stop().await;
}
