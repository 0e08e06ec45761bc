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
    let proxy =
        FaultProxy::start(&service_var("AWS_ENDPOINT_URL_S3"), Faults { slow_down: 0.10, reset: 0.02 }).await;
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
