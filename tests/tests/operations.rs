//! What operators and staff rely on: clean Prometheus metrics and probes,
//! `tetherctl` requeue and cancel, and the 24-hour deadline flag.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use tether_tests::TestEnv;

fn free_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("address")
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.expect("the endpoint answers");
    (response.status().as_u16(), response.text().await.expect("body"))
}

/// Runs `tetherctl ARGS` against the test's database and virtual host.
async fn tetherctl(env: &TestEnv, args: &[&str]) -> ExitCode {
    let mut argv = vec!["tetherctl", "--database-url", &env.database_url, "--amqp-url", &env.amqp_url];
    argv.extend_from_slice(args);
    tetherctl::execute(argv).await
}

fn promtool_check(name: &str, text: &str) {
    let path = std::env::temp_dir().join(format!("tether-metrics-{name}-{}.txt", std::process::id()));
    std::fs::write(&path, text).expect("write the metrics");
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", path.display()))
        .output()
        .expect("promtool runs (scripts/services.sh test-tools installs it)");
    assert!(
        output.status.success(),
        "promtool check metrics failed for {name}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_and_probes_are_clean_after_an_import() {
    let env = TestEnv::new().await;
    env.put_many((0..10).map(|i| format!("m/{i}.jpg"))).await;
    env.put("m/skip.txt", b"x").await;
    let (scheduler_addr, worker_addr) = (free_addr(), free_addr());
    let mut scheduler = env.scheduler_config();
    scheduler.common.metrics_addr = Some(scheduler_addr);
    let mut worker = env.worker_config();
    worker.common.metrics_addr = Some(worker_addr);
    let fleet = env.start(vec![scheduler], vec![worker]).await;
    let status = env.wait_final(env.submit(&env.request("metrics", &["m/"])).await).await;
    assert_eq!(status["state"], "succeeded");

    for addr in [scheduler_addr, worker_addr] {
        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        assert_eq!(get(addr, "/nowhere").await.0, 404);
    }
    // The scheduler reads its gauges every 10 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (_, text) = get(scheduler_addr, "/metrics").await;
        if text.contains("tether_imports{state=\"succeeded\"} 1") {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "no imports gauge:\n{text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for name in [
        "tether_objects_listed_total{mode=\"link\",provider=\"s3\"} 11",
        "tether_objects_imported_total{mode=\"link\",provider=\"s3\"} 10",
        "tether_objects_skipped_total{mode=\"link\",provider=\"s3\",reason=\"filtered\"} 1",
        "tether_imports_overdue 0",
        "tether_credential_refreshes_total{provider=\"s3\"} 1",
        "tether_task_duration_seconds_bucket",
        "tether_queue_messages{queue=\"tether.tasks.dead-letter\"} 0",
        "tether_amqp_messages_total{action=\"acked\",queue=\"tether.tasks\"}",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    promtool_check("scheduler", &text);
    promtool_check("worker", &get(worker_addr, "/metrics").await.1);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requeue_after_the_cause_is_fixed_turns_a_partial_import_into_a_success() {
    let env = TestEnv::new().await;
    let bodies: Vec<(String, Vec<u8>)> =
        (0..8).map(|i| (format!("rq/{i}.jpg"), vec![i as u8; 500 + i])).collect();
    for (key, body) in &bodies {
        env.put(key, body).await;
    }
    let dir = env.destination_dir();
    let mut lister = env.worker_config();
    lister.kinds = vec!["list".into()];
    lister.destination = Some(format!("file://{}", dir.display()));
    let fleet = env.start(vec![env.scheduler_config()], vec![lister.clone()]).await;
    let mut request = env.request("requeue", &["rq/"]);
    request["mode"] = json!("copy");
    let id = env.submit(&request).await;
    env.wait_listed(id, 8).await;
    env.delete("rq/3.jpg").await; // the cause
    let mut copier = lister;
    copier.kinds = vec!["copy".into()];
    let copiers = env.start(vec![], vec![copier]).await;
    let first = env.wait_final(id).await;
    assert_eq!(first["state"], "partially_succeeded", "{first}");
    assert_eq!(first["objects_failed"], 1);
    assert_eq!(tetherctl(&env, &["failures", &id.to_string(), "--csv"]).await, ExitCode::SUCCESS);

    env.put("rq/3.jpg", &bodies[3].1).await; // fixed: the same bytes are back
    assert_eq!(tetherctl(&env, &["requeue", &id.to_string()]).await, ExitCode::SUCCESS);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let second = loop {
        let s = env.status(id).await.expect("status");
        if s["state"] == "succeeded" {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "not succeeded after requeue: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((second["objects_imported"].as_i64(), second["objects_failed"].as_i64()), (Some(8), Some(0)));
    assert_eq!(second["objects_listed"], 8);
    let total: usize = bodies.iter().map(|(_, b)| b.len()).sum();
    assert_eq!(second["bytes_copied"], total as i64);
    assert!(env.failures(id).await.is_empty());
    let events = env.finished_events(2).await;
    let revisions: Vec<_> =
        events.iter().map(|e| (e["revision"].as_i64(), e["state"].as_str().map(str::to_owned))).collect();
    assert_eq!(
        revisions,
        vec![(Some(1), Some("partially_succeeded".into())), (Some(2), Some("succeeded".into()))]
    );
    // A succeeded import has nothing to requeue.
    assert_eq!(tetherctl(&env, &["requeue", &id.to_string()]).await, ExitCode::from(1));
    copiers.stop().await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requeue_reruns_an_import_that_failed_as_a_whole() {
    let env = TestEnv::new().await;
    let fleet = env.start_default(1).await;
    let mut request = env.request("late-bucket", &["x/"]);
    let bucket = format!("{}-late", env.bucket);
    request["source"]["bucket"] = json!(bucket);
    let id = env.submit(&request).await;
    let failed = env.wait_final(id).await;
    assert_eq!(failed["state"], "failed");
    env.s3.create_bucket().bucket(&bucket).send().await.expect("create the bucket");
    env.s3
        .put_object()
        .bucket(&bucket)
        .key("x/now.jpg")
        .body(b"here".to_vec().into())
        .send()
        .await
        .expect("put");
    assert_eq!(tetherctl(&env, &["requeue", &id.to_string()]).await, ExitCode::SUCCESS);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = env.status(id).await.expect("status");
        if s["state"] == "succeeded" {
            assert_eq!(s["objects_imported"], 1);
            assert_eq!(s["error"], json!(null));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not succeeded after requeue: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_stops_an_import_mid_listing_and_keeps_what_was_imported() {
    let env = TestEnv::new().await;
    env.put_many((0..300).map(|i| format!("cx/{i:03}.jpg"))).await;
    let mut worker = env.worker_config();
    worker.page_size = 1;
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;
    let id = env.submit(&env.request("cancel", &["cx/"])).await;
    env.wait_imported(id, 5).await;
    env.publish_raw(
        "import.cancel",
        json!({"import_id": id}).to_string().as_bytes(),
        Some("application/json"),
    )
    .await;
    let status = env.wait_final(id).await;
    assert_eq!(status["state"], "cancelled", "{status}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = env.status(id).await.expect("status");
    let imported = after["objects_imported"].as_i64().unwrap_or(0);
    assert!((5..300).contains(&imported), "stopped mid-listing: {after}");
    assert_eq!(after, status, "nothing changed after the cancel");
    assert_eq!(env.images("cancel").await.len() as i64, imported, "what was imported stays");
    let events = env.finished_events(1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["state"], "cancelled");
    // Cancelling again is refused: it is final.
    assert_eq!(tetherctl(&env, &["cancel", &id.to_string()]).await, ExitCode::from(1));
    assert_eq!(tetherctl(&env, &["status", &uuid::Uuid::new_v4().to_string()]).await, ExitCode::from(1));
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_import_past_its_deadline_is_flagged_overdue() {
    let env = TestEnv::new().await;
    let metrics = free_addr();
    let mut scheduler = env.scheduler_config();
    scheduler.common.metrics_addr = Some(metrics);
    // No worker: the import stays queued.
    let fleet = env.start(vec![scheduler], vec![]).await;
    let id = env.submit(&env.request("late", &["l/"])).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while env.status(id).await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "not recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.status(id).await.expect("status")["overdue"], false);
    env.execute(
        "UPDATE tether.imports SET created_at = now() - interval '25 hours', deadline_at = now() - interval '1 hour'
         WHERE import_id = $1",
        &id,
    )
    .await;
    let status = env.status(id).await.expect("status");
    assert_eq!(status["overdue"], true, "{status}");
    assert_eq!(status["state"], "queued", "overdue imports keep running");
    assert_eq!(tetherctl(&env, &["list", "--overdue", "--json"]).await, ExitCode::SUCCESS);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, text) = get(metrics, "/metrics").await;
        if text.contains("tether_imports_overdue 1") {
            assert!(text.lines().any(|l| l.starts_with("tether_oldest_running_import_age_seconds ")
                && l.split(' ')
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v >= 24.0 * 3600.0)));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "tether_imports_overdue never became 1");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    fleet.stop().await;
}
