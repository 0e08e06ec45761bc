//! Fair share of the fleet: a small import of one workspace submitted while
//! a big import of another runs finishes within 3x its time alone, in copy
//! and in link mode, because the big import never has more than its share of
//! tasks queued ahead of it (the rest wait in Postgres, held).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tether_tests::TestEnv;
use uuid::Uuid;

const FINAL_STATES: [&str; 4] = ["succeeded", "partially_succeeded", "failed", "cancelled"];

fn request(env: &TestEnv, workspace: &str, dataset: &str, mode: &str, prefixes: &[String]) -> Value {
    let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    let mut request = env.request(dataset, &prefixes);
    request["workspace_id"] = json!(workspace);
    request["mode"] = json!(mode);
    request
}

/// The import's status once final, polled often: the small imports take a
/// fraction of a second.
async fn final_status(env: &TestEnv, id: Uuid, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = env.status(id).await {
            if FINAL_STATES.contains(&status["state"].as_str().unwrap_or_default()) {
                return status;
            }
        }
        assert!(Instant::now() < deadline, "import {id} not final after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Submits a request and returns its time to a final state, which must be
/// `succeeded` with `objects` imported.
async fn timed(env: &TestEnv, request: &Value, objects: i64) -> Duration {
    let started = Instant::now();
    let id = env.submit(request).await;
    let status = final_status(env, id, Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["objects_imported"], objects, "{status}");
    elapsed
}

async fn is_final(env: &TestEnv, id: Uuid) -> bool {
    env.status(id).await.is_some_and(|s| FINAL_STATES.contains(&s["state"].as_str().unwrap_or_default()))
}

/// Two workers with four listing and two copy slots each; each import may
/// have about the fleet's listing slots released at once.
fn fleet_configs(env: &TestEnv) -> (tether_scheduler::SchedulerConfig, tether_worker::WorkerConfig) {
    let mut scheduler = env.scheduler_config();
    scheduler.fair_import_tasks = 8;
    scheduler.fair_workspace_tasks = 16;
    let mut worker = env.worker_config();
    worker.destination = Some(format!("file://{}", env.destination_dir().display()));
    (scheduler, worker)
}

/// The shortest time alone a ratio is taken against.
const NOISE_FLOOR_SECS: f64 = 0.5;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_copy_import_is_not_stuck_behind_a_big_one() {
    let env = TestEnv::new().await;
    env.put_many((0..5000).map(|i| format!("big/{i:05}.jpg"))).await;
    env.put_many((0..10).map(|i| format!("small/{i:02}.jpg"))).await;
    let (mut scheduler, worker) = fleet_configs(&env);
    // The fleet's copy slots: two workers holding two copy tasks each.
    scheduler.fair_import_tasks = 4;
    let fleet = env.start(vec![scheduler], vec![worker.clone(), worker]).await;
    let small = ["small/".to_owned()];

    let alone = timed(&env, &request(&env, "ws-b", "small-alone", "copy", &small), 10).await;
    let big = env.submit(&request(&env, "ws-a", "big", "copy", &["big/".to_owned()])).await;
    // The worst case: every copy task of the big import is recorded.
    env.wait_listed(big, 5000).await;
    let behind = timed(&env, &request(&env, "ws-b", "small-behind", "copy", &small), 10).await;
    assert!(!is_final(&env, big).await, "the big import ended first: the test measured nothing");
    // Below half a second, a shared machine's scheduling noise is the
    // measure: the time alone counts as at least that (unfair dispatch is
    // x20 or more even so).
    let ratio = behind.as_secs_f64() / alone.as_secs_f64().max(NOISE_FLOOR_SECS);
    eprintln!("copy: 10 objects alone {alone:?}, behind 5,000 objects {behind:?}: x{ratio:.2}");
    assert!(ratio <= 3.0, "the small import took x{ratio:.2} its time alone ({behind:?} vs {alone:?})");

    // Its end is not what this test is about (copy_import.rs checks copies).
    env.publish_raw(
        "import.cancel",
        json!({ "import_id": big }).to_string().as_bytes(),
        Some("application/json"),
    )
    .await;
    assert_eq!(final_status(&env, big, Duration::from_secs(60)).await["state"], "cancelled");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_one_prefix_link_import_is_not_stuck_behind_a_thousand_prefixes() {
    let env = TestEnv::new().await;
    let prefixes: Vec<String> = (0..1000).map(|i| format!("p{i:04}/")).collect();
    env.put_many(prefixes.iter().map(|p| format!("{p}a.jpg"))).await;
    env.put("one/a.jpg", b"a").await;
    let (scheduler, worker) = fleet_configs(&env);
    let fleet = env.start(vec![scheduler], vec![worker.clone(), worker]).await;
    let one = ["one/".to_owned()];

    let alone = timed(&env, &request(&env, "ws-b", "one-alone", "link", &one), 1).await;
    let big = env.submit(&request(&env, "ws-a", "wide", "link", &prefixes)).await;
    env.wait_imported(big, 10).await;
    let behind = timed(&env, &request(&env, "ws-b", "one-behind", "link", &one), 1).await;
    assert!(!is_final(&env, big).await, "the big import ended first: the test measured nothing");
    // Below half a second, a shared machine's scheduling noise is the
    // measure: the time alone counts as at least that (unfair dispatch is
    // x20 or more even so).
    let ratio = behind.as_secs_f64() / alone.as_secs_f64().max(NOISE_FLOOR_SECS);
    eprintln!("link: 1 prefix alone {alone:?}, behind 1,000 prefixes {behind:?}: x{ratio:.2}");
    assert!(ratio <= 3.0, "the small import took x{ratio:.2} its time alone ({behind:?} vs {alone:?})");

    let big = final_status(&env, big, Duration::from_secs(300)).await;
    assert_eq!((big["state"].as_str(), big["objects_imported"].as_i64()), (Some("succeeded"), Some(1000)));
    fleet.stop().await;
}
