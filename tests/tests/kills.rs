//! Workers killed with SIGKILL mid-import: the messages they held come back,
//! the seq check drops what they had already committed, and the result is
//! exactly that of a clean run: nothing lost, nothing counted twice.
//!
//! The scheduler re-publishes lost messages only after the production delay
//! (300 s), longer than the test waits: a message lost by a kill (one
//! acknowledged before its work was committed) fails the test. Each kill
//! first pauses the victim's database connections (a proxy holds what it
//! sends) for a second, so the commits it already sent finish and publish
//! their next steps: the one loss Tether accepts, a crash between a commit
//! and its publish (re-published after 300 s), is kept out of the test, and
//! every task the victim holds is mid-work. Every other kill lands between a
//! commit and its ack on purpose: the worker's acks are withheld by the AMQP
//! proxy until one was, so the broker redelivers steps already committed.

use std::time::Duration;

use serde_json::{json, Value};
use tether_shared::task::TaskKind;
use tether_tests::process::Process;
use tether_tests::service_proxy::ServiceProxy;
use tether_tests::TestEnv;

const KILLS: usize = 6;

/// A worker process and the proxies its AMQP and Postgres connections go
/// through.
struct Worker {
    process: Process,
    proxy: ServiceProxy,
    database: ServiceProxy,
}

async fn spawn(env: &TestEnv, settings: &[(&str, String)]) -> Worker {
    let proxy = ServiceProxy::start(&env.amqp_url).await;
    let database = ServiceProxy::database(&env.database_url).await;
    let mut settings = settings.to_vec();
    settings.push(("TETHER_AMQP_URL", proxy.url.clone()));
    settings.push(("TETHER_DATABASE_URL", database.url.clone()));
    Worker { process: env.spawn_worker_process(&settings), proxy, database }
}

/// Runs an import while killing one of two worker processes `KILLS` times,
/// each time `step` more objects were imported; returns its final status and
/// how many acks the kills withheld (steps committed but not acknowledged).
async fn run_with_kills(
    env: &TestEnv,
    request: Value,
    settings: &[(&str, String)],
    step: i64,
) -> (Value, u64) {
    let mut workers = [spawn(env, settings).await, spawn(env, settings).await];
    let id = env.submit(&request).await;
    let mut withheld = 0;
    for k in 0..KILLS {
        env.wait_imported(id, step * (k as i64 + 1)).await;
        let victim = &mut workers[k % 2];
        if k % 2 == 1 {
            // Between a commit and its ack: the next ack never arrives.
            victim.proxy.hold_acks();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while victim.proxy.withheld() == 0 {
                assert!(tokio::time::Instant::now() < deadline, "kill {k}: the worker acknowledged nothing");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        victim.database.pause();
        // No condition to wait on from outside: the commits in flight end
        // within milliseconds; a second is ample on a loaded machine.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let status = env.status(id).await.expect("a status");
        assert_eq!(status["state"], "running", "kill {k} came after the import ended: {status}");
        victim.process.kill().await;
        withheld += victim.proxy.withheld();
        *victim = spawn(env, settings).await;
    }
    let status = env.wait_final_within(id, Duration::from_secs(180)).await;
    for worker in &mut workers {
        worker.process.kill().await;
    }
    (status, withheld)
}

/// Waits until the broker's statistics show at least `at_least` redeliveries
/// on the task queues (they are refreshed every few seconds); returns them.
async fn redeliveries(env: &TestEnv, at_least: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = 0;
        for kind in TaskKind::ALL {
            seen += env.redeliveries(kind.queue()).await;
        }
        if seen >= at_least || tokio::time::Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The key of object `i`: twenty sub-prefixes of 1,000, listed in parallel,
/// so that both workers always hold tasks.
fn key(i: usize) -> String {
    format!("k/{:02}/{i:05}.jpg", i / 1000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_workers_lose_nothing_and_double_nothing() {
    let env = TestEnv::new().await;
    env.put_many((0..20_000).map(key)).await;
    let scheduler = env.scheduler_config();
    assert_eq!(scheduler.republish_after_secs, 300.0, "the production re-publish delay");
    let fleet = env.start(vec![scheduler], vec![]).await;
    let dir = env.destination_dir();
    let settings = [
        ("TETHER_LIST_PAGE_SIZE", "100".to_owned()),
        ("TETHER_COPY_BATCH_OBJECTS", "10".to_owned()),
        ("TETHER_DESTINATION", format!("file://{}", dir.display())),
    ];

    let (link, withheld) = run_with_kills(&env, env.request("killed-link", &["k/"]), &settings, 2500).await;
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

    // The copy import takes 2,000 of them (k/00/00000 to k/01/01999).
    let mut copy = env.request("killed-copy", &["k/00/", "k/01/"]);
    copy["mode"] = json!("copy");
    let (copied, copy_withheld) = run_with_kills(&env, copy, &settings, 150).await;
    assert_eq!(copied["state"], "succeeded", "{copied}");
    assert_eq!(
        (copied["objects_imported"].as_i64(), copied["objects_failed"].as_i64()),
        (Some(2000), Some(0))
    );
    let total: i64 = (0..2000).map(|i| key(i).len() as i64).sum();
    assert_eq!(copied["bytes_copied"], total, "each object's bytes counted once");
    assert_eq!(
        env.stored("killed-copy").await.values().filter(|(s, u)| s == "copy" && u.is_some()).count(),
        2000
    );
    let events = env.finished_events(2).await;
    assert_eq!(events.len(), 2, "one FinishedEvent per import: {events:?}");

    // Every withheld ack was a step the broker delivered again.
    let withheld = withheld + copy_withheld;
    let redelivered = redeliveries(&env, withheld).await;
    eprintln!("kills: {withheld} committed steps left unacknowledged, {redelivered} redeliveries");
    assert!(withheld >= KILLS as u64, "each of the kills between a commit and its ack withheld one");
    assert!(redelivered >= withheld, "{redelivered} redeliveries for {withheld} withheld acks");
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
    successor.kill().await;
    fleet.stop().await;
}
