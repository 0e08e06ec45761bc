//! Workers killed with SIGKILL mid-import: the messages they held come back,
//! the seq check drops what they had already committed, and the result is
//! exactly that of a clean run: nothing lost, nothing counted twice.

use std::time::Duration;

use serde_json::json;
use tether_tests::TestEnv;
use tokio::process::Child;

const KILLS: usize = 5;

async fn kill(worker: &mut Child) {
    worker.start_kill().expect("SIGKILL"); // kill_on_drop's signal is SIGKILL
    let _ = worker.wait().await;
}

/// Runs an import while killing one of two worker processes `KILLS` times.
async fn run_with_kills(
    env: &TestEnv,
    request: serde_json::Value,
    settings: &[(&str, String)],
    step: i64,
) -> serde_json::Value {
    let mut workers = [env.spawn_worker_process(settings), env.spawn_worker_process(settings)];
    let id = env.submit(&request).await;
    for k in 0..KILLS {
        env.wait_imported(id, step * (k as i64 + 1)).await;
        let victim = &mut workers[k % 2];
        kill(victim).await;
        *victim = env.spawn_worker_process(settings);
    }
    let status = env.wait_final_within(id, Duration::from_secs(180)).await;
    for worker in &mut workers {
        kill(worker).await;
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_workers_lose_nothing_and_double_nothing() {
    let env = TestEnv::new().await;
    env.put_many((0..20_000).map(|i| format!("k/{i:05}.jpg"))).await;
    let mut scheduler = env.scheduler_config();
    scheduler.republish_after_secs = 3.0;
    let fleet = env.start(vec![scheduler], vec![]).await;
    let dir = env.destination_dir();
    let settings = [
        ("TETHER_LIST_PAGE_SIZE", "100".to_owned()),
        ("TETHER_COPY_BATCH_OBJECTS", "10".to_owned()),
        ("TETHER_DESTINATION", format!("file://{}", dir.display())),
    ];

    let link = run_with_kills(&env, env.request("killed-link", &["k/"]), &settings, 3000).await;
    assert_eq!(link["state"], "succeeded", "{link}");
    assert_eq!(
        (
            link["objects_listed"].as_i64(),
            link["objects_imported"].as_i64(),
            link["objects_skipped"].as_i64(),
            link["objects_failed"].as_i64()
        ),
        (Some(20_000), Some(20_000), Some(0), Some(0))
    );
    assert_eq!(env.images("killed-link").await.len(), 20_000);

    // The copy import takes 2,000 of them (k/00000 to k/01999).
    let mut copy = env.request("killed-copy", &["k/00", "k/01"]);
    copy["mode"] = json!("copy");
    let copied = run_with_kills(&env, copy, &settings, 150).await;
    assert_eq!(copied["state"], "succeeded", "{copied}");
    assert_eq!(
        (copied["objects_imported"].as_i64(), copied["objects_failed"].as_i64()),
        (Some(2000), Some(0))
    );
    let total: i64 = (0..2000).map(|i| format!("k/{i:05}.jpg").len() as i64).sum();
    assert_eq!(copied["bytes_copied"], total, "each object's bytes counted once");
    assert_eq!(
        env.stored("killed-copy").await.values().filter(|(s, u)| s == "copy" && u.is_some()).count(),
        2000
    );
    let events = env.finished_events(2).await;
    assert_eq!(events.len(), 2, "one FinishedEvent per import: {events:?}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_a_worker_cleanly_and_its_work_is_handed_on() {
    let env = TestEnv::new().await;
    env.put_many((0..300).map(|i| format!("t/{i:03}.jpg"))).await;
    let fleet = env.start(vec![env.scheduler_config()], vec![]).await;
    let settings = [("TETHER_LIST_PAGE_SIZE", "2".to_owned()), ("TETHER_DRAIN_SECS", "10".to_owned())];
    let mut worker = env.spawn_worker_process(&settings);
    let id = env.submit(&env.request("sigterm", &["t/"])).await;
    env.wait_imported(id, 20).await;
    let pid = worker.id().expect("running");
    let sent = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().expect("kill");
    assert!(sent.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("stopped within the drain deadline");
    assert_eq!(exit.expect("exit status").code(), Some(0), "SIGTERM must end in exit 0");
    let mut successor = env.spawn_worker_process(&settings);
    let status = env.wait_final_within(id, Duration::from_secs(120)).await;
    assert_eq!(
        (status["state"].as_str(), status["objects_imported"].as_i64()),
        (Some("succeeded"), Some(300)),
        "{status}"
    );
    assert_eq!(env.images("sigterm").await.len(), 300);
    kill(&mut successor).await;
    fleet.stop().await;
}
