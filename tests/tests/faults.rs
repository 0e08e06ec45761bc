//! Storage faults between the workers and the store: throttling and dropped
//! connections are retried and the imports end exact with no failure; a
//! store that keeps refusing is retried later (parked, not in a hot loop),
//! then given up with a code; bytes that are not what was listed are never
//! kept as a copy.
//!
//! The workers are real `tether-worker` processes whose S3 endpoint is the
//! fault proxy (`AWS_ENDPOINT_URL_S3` of that process only: nothing is set in
//! this process's environment, which parallel tests share); what they did is
//! read from the proxy's counts and their own output.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tether_tests::process::Process;
use tether_tests::proxy::{FaultProxy, Faults};
use tether_tests::{service_var, TestEnv};

async fn proxy(faults: Faults) -> FaultProxy {
    FaultProxy::start(&service_var("AWS_ENDPOINT_URL_S3"), faults).await
}

/// A worker process whose S3 is `proxy`, with extra settings.
fn worker(env: &TestEnv, proxy: &FaultProxy, settings: &[(&str, String)]) -> Process {
    let mut all = vec![("AWS_ENDPOINT_URL_S3", proxy.url())];
    all.extend(settings.iter().cloned());
    env.spawn_worker_process(&all)
}

fn copy_request(env: &TestEnv, dataset: &str, prefixes: &[&str]) -> serde_json::Value {
    let mut request = env.request(dataset, prefixes);
    request["mode"] = json!("copy");
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttling_and_resets_are_retried_to_a_clean_result() {
    let env = TestEnv::new().await; // seeds directly, not through the proxy
    env.put_many((0..400).map(|i| format!("f/{i:03}.jpg"))).await;
    let proxy = proxy(Faults { slow_down: 0.10, reset: 0.02, ..Faults::default() }).await;
    let dir = env.destination_dir();
    let settings = [
        ("TETHER_LIST_PAGE_SIZE", "20".to_owned()),
        ("TETHER_DESTINATION", format!("file://{}", dir.display())),
    ];
    let fleet = env.start(vec![env.scheduler_config()], vec![]).await;
    let mut workers = [worker(&env, &proxy, &settings), worker(&env, &proxy, &settings)];

    let link = env.wait_final(env.submit(&env.request("faults-link", &["f/"])).await).await;
    assert_eq!(link["state"], "succeeded", "{link}");
    assert_eq!((link["objects_imported"].as_i64(), link["objects_failed"].as_i64()), (Some(400), Some(0)));
    let copied = env.wait_final(env.submit(&copy_request(&env, "faults-copy", &["f/"])).await).await;
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
    for w in &mut workers {
        w.kill().await;
    }
    fleet.stop().await;
}

/// Every listing page and every object read is refused three times (the
/// SDK's own attempts) before the store answers: only Tether's own retries
/// (the parked list task, the copy's attempts) get the imports through, and
/// they must, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_tethers_own_retries_get_past_a_store_that_refuses_each_request_three_times() {
    let env = TestEnv::new().await;
    env.put_many((0..30).map(|i| format!("r/{i:02}.jpg"))).await;
    let proxy = proxy(Faults { fail_first: 3, ..Faults::default() }).await;
    let dir = env.destination_dir();
    let settings = [
        ("TETHER_LIST_PAGE_SIZE", "10".to_owned()),
        ("AWS_MAX_ATTEMPTS", "3".to_owned()),
        ("TETHER_TASK_MAX_ATTEMPTS", "5".to_owned()),
        ("TETHER_COPY_MAX_ATTEMPTS", "5".to_owned()),
        ("TETHER_DESTINATION", format!("file://{}", dir.display())),
    ];
    let fleet = env.start(vec![env.scheduler_config()], vec![]).await;
    let mut w = worker(&env, &proxy, &settings);
    let copied = env
        .wait_final_within(
            env.submit(&copy_request(&env, "refused", &["r/"])).await,
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(copied["state"], "succeeded", "{copied}");
    assert_eq!(
        (
            copied["objects_listed"].as_i64(),
            copied["objects_imported"].as_i64(),
            copied["objects_failed"].as_i64()
        ),
        (Some(30), Some(30), Some(0))
    );
    let slowed = proxy.counts.slowed_down.load(Ordering::Relaxed);
    // 3 pages (and the empty end) and 30 reads, each refused 3 times.
    assert!(slowed >= 3 * 33, "{slowed} refusals");
    w.kill().await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_keeps_refusing_is_retried_later_then_given_up_with_a_code() {
    let env = TestEnv::new().await;
    env.put("down/a.jpg", b"a").await;
    let proxy = proxy(Faults { slow_down: 1.0, ..Faults::default() }).await;
    // The SDK's own retries off: every attempt the store sees is Tether's.
    let settings = [("AWS_MAX_ATTEMPTS", "1".to_owned()), ("TETHER_TASK_MAX_ATTEMPTS", "3".to_owned())];
    let fleet = env.start(vec![env.scheduler_config()], vec![]).await;
    let mut w = worker(&env, &proxy, &settings);
    let id = env.submit(&env.request("down", &["down/"])).await;
    let status = env.wait_final(id).await;
    assert_eq!(status["state"], "failed", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains("after 3 attempts") && error.contains("throttled"), "{error}");
    assert_eq!(env.failures(id).await, vec![(format!("s3://{}/down/", env.bucket), "throttled".to_owned())]);
    // Three attempts at the page (each one request: the region, then the
    // page), each after the retry queue's delay (1 s tier, then 5 s):
    // parked in the retry queues, not a hot loop.
    let times = proxy.counts.times_of(|_| true);
    assert_eq!(times.len(), 3, "three attempts at the page, one request each");
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] >= Duration::from_millis(900), "the first retry came after {:?}", gaps[0]);
    assert!(gaps[1] >= Duration::from_millis(4500), "the second retry came after {:?}", gaps[1]);
    let retries = w.logs().matches("Listing failed; retrying later.").count();
    assert_eq!(retries, 2, "two retries before giving up");
    for tier in ["tether.tasks.retry-1s", "tether.tasks.retry-5s"] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while env.queue_info(tier).await["message_stats"]["publish"].as_u64().unwrap_or(0) < 1 {
            assert!(tokio::time::Instant::now() < deadline, "nothing was parked in {tier}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    w.kill().await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_refused_mid_import_are_renewed_once_and_retried() {
    let env = TestEnv::new().await;
    env.put_many((0..150).map(|i| format!("x/{i:03}.jpg"))).await;
    let proxy = proxy(Faults { expired_token: 0.08, ..Faults::default() }).await;
    let dir = env.destination_dir();
    let settings = [
        ("TETHER_LIST_PAGE_SIZE", "10".to_owned()),
        ("TETHER_DESTINATION", format!("file://{}", dir.display())),
    ];
    let fleet = env.start(vec![env.scheduler_config()], vec![]).await;
    let mut w = worker(&env, &proxy, &settings);
    let status = env.wait_final(env.submit(&copy_request(&env, "expired", &["x/"])).await).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(
        (status["objects_imported"].as_i64(), status["objects_failed"].as_i64()),
        (Some(150), Some(0))
    );
    let expired = proxy.counts.expired.load(Ordering::Relaxed);
    let logs = w.logs();
    let renewals = logs.matches("S3 refused the session; renewing it once.").count();
    eprintln!("fault proxy: {expired} requests answered ExpiredToken, {renewals} renewals");
    assert!(expired >= 3, "too few expired sessions to mean anything: {expired}");
    assert!(renewals >= 1, "no session was renewed");
    assert!(logs.matches("Assumed the customer's role.").count() > 1, "the role was assumed only once");
    w.kill().await;
    fleet.stop().await;
}

/// Bytes that are not what was listed (the proxy changes every byte of some
/// objects, keeping their length): those objects fail `checksum_mismatch`,
/// no copy of them is referenced or left behind; the others are copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_whose_bytes_do_not_match_fails_checksum_mismatch_and_is_not_kept() {
    let env = TestEnv::new().await;
    let mut objects = BTreeMap::new();
    for i in 0..6 {
        objects.insert(format!("v/good-{i}.jpg"), vec![i as u8; 1000 + i]);
    }
    for i in 0..3 {
        objects.insert(format!("v/corrupt-{i}.jpg"), vec![7; 500 + i]);
    }
    futures_util::future::join_all(objects.iter().map(|(k, v)| env.put(k, v))).await;
    let proxy = proxy(Faults { corrupt: Some("corrupt-"), ..Faults::default() }).await;
    let dir = env.destination_dir();
    let settings = [("TETHER_DESTINATION", format!("file://{}", dir.display()))];
    let fleet = env.start(vec![env.scheduler_config()], vec![]).await;
    let mut w = worker(&env, &proxy, &settings);
    let id = env.submit(&copy_request(&env, "verified", &["v/"])).await;
    let status = env.wait_final(id).await;
    assert_eq!(status["state"], "partially_succeeded", "{status}");
    assert_eq!(
        (status["objects_imported"].as_i64(), status["objects_failed"].as_i64()),
        (Some(6), Some(3)),
        "{status}"
    );
    assert!(proxy.counts.corrupted.load(Ordering::Relaxed) >= 3);
    let failures = env.failures(id).await;
    let expected: Vec<(String, String)> = (0..3)
        .map(|i| (format!("s3://{}/v/corrupt-{i}.jpg", env.bucket), "checksum_mismatch".to_owned()))
        .collect();
    assert_eq!(failures, expected);
    let stored = env.stored("verified").await;
    assert_eq!(stored.len(), 6, "only the good objects are referenced: {stored:?}");
    assert!(stored.keys().all(|u| u.contains("/v/good-")), "{stored:?}");
    // The copies on disk are the six good objects, byte for byte.
    for (key, bytes) in objects.iter().filter(|(k, _)| k.contains("good-")) {
        let (_, url) = &stored[&format!("s3://{}/{key}", env.bucket)];
        let path = url.as_deref().and_then(|u| u.strip_prefix("file://")).expect("a file:// copy");
        assert_eq!(&std::fs::read(path).expect("the copy"), bytes, "{key}");
    }
    let mut files = 0;
    let mut dirs = vec![dir];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            if entry.path().is_dir() {
                dirs.push(entry.path());
            } else {
                files += 1;
            }
        }
    }
    assert_eq!(files, 6, "no copy of a corrupted object is left behind");
    w.kill().await;
    fleet.stop().await;
}
