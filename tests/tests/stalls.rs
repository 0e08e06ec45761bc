//! No store can stall the fleet (issue #13): a listing past the cap on
//! listing tasks finishes; a store that accepts connections and never
//! answers, or answers one byte at a time, costs a task's attempts, never a
//! worker's slots, and another tenant's import finishes meanwhile.

use std::time::Duration;

use serde_json::json;
use tether_tests::stores::Provider;
use tether_tests::TestEnv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listing_past_the_task_cap_finishes() {
    let env = TestEnv::new().await;
    env.put_many(["0.jpg", "1.jpg", "a/x.jpg", "b/y.jpg", "c/z.jpg"].map(String::from)).await;
    let mut worker = env.worker_config();
    worker.max_list_tasks = 1;
    worker.page_size = 3;
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;
    let id = env.submit(&env.request("cap", &[""])).await;
    let status = env.wait_final_within(id, Duration::from_secs(60)).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["objects_listed"], 5, "{status}");
    assert_eq!(status["objects_imported"], 5, "{status}");
    fleet.stop().await;
}

/// A TCP server that accepts every connection and then says nothing.
async fn silent_store() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, task)
}

/// A server that answers every request with a 200 whose body comes one
/// byte a second, never ending.
async fn dripping_store() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = socket.read(&mut buffer).await;
                let head =
                    "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: 100000000\r\n\r\n<";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if socket.write_all(b" ").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_store_takes_no_slot_for_good_and_another_tenants_import_finishes() {
    let env = TestEnv::new().await;
    let (silent, server) = silent_store().await;
    let gcs = env.bucket(Provider::Gcs).await;
    gcs.put("g/one.jpg", b"one").await;
    let fleet = env.start(vec![env.scheduler_config()], vec![]).await;
    // A worker process whose STS and S3 never answer.
    let mut worker = env.spawn_worker_process(&[
        ("AWS_ENDPOINT_URL_STS", silent.clone()),
        ("AWS_ENDPOINT_URL_S3", silent.clone()),
        ("TETHER_WORKER_CONCURRENCY", "2".into()),
        ("TETHER_STORE_TIMEOUT_SECS", "2".into()),
        ("TETHER_TASK_TIMEOUT_SECS", "10".into()),
        ("TETHER_TASK_MAX_ATTEMPTS", "2".into()),
    ]);
    let mut hung = Vec::new();
    for i in 0..4 {
        let mut request = env.request(&format!("hung-{i}"), &["a/"]);
        request["workspace_id"] = json!("ws-hung");
        hung.push(env.submit(&request).await);
    }
    let other = env.submit(&gcs.request(&env, "other", &["g/"])).await;
    let status = env.wait_final_within(other, Duration::from_secs(180)).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["objects_imported"], 1, "{status}");
    // The hung imports end too: their only prefix failed as unavailable.
    for id in hung {
        let status = env.wait_final_within(id, Duration::from_secs(120)).await;
        assert_eq!(status["state"], "failed", "{status}");
        let failures = env.failures(id).await;
        assert!(failures.iter().all(|(_, code)| code == "unavailable"), "{failures:?}");
    }
    let _ = worker.kill().await;
    server.abort();
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_drips_one_byte_at_a_time_costs_attempts_not_the_import() {
    let env = TestEnv::new().await;
    let (drip, server) = dripping_store().await;
    let container = env.bucket(Provider::Azure).await;
    let mut worker = env.worker_config();
    worker.azure_blob_endpoint = format!("{drip}/{{account}}");
    worker.store_timeout_secs = 2;
    worker.task_timeout_secs = 10;
    worker.max_attempts = 2;
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;
    let id = env.submit(&container.request(&env, "drip", &["a/"])).await;
    let status = env.wait_final_within(id, Duration::from_secs(90)).await;
    assert_eq!(status["state"], "failed", "{status}");
    let failures = env.failures(id).await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].1, "unavailable");
    server.abort();
    fleet.stop().await;
}
