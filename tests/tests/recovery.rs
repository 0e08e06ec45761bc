//! Lost and duplicated task messages: the effect stays exactly once.

use tether_shared::contract::{parse_request, ValidationOptions};
use tether_shared::db::dispatch::FairShare;
use tether_shared::db::imports::Recorded;
use tether_shared::task::{TaskKind, TaskMessage};
use tether_tests::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicated_task_messages_never_double_count() {
    let env = TestEnv::new().await;
    env.put_many((0..60).map(|i| format!("dup/{i:02}.jpg"))).await;
    let mut scheduler = env.scheduler_config();
    // Re-publish every pending task on every tick: each page's message
    // arrives many times, at several workers at once.
    scheduler.republish_after_secs = 0.0;
    let mut worker = env.worker_config();
    worker.page_size = 4;
    let fleet = env.start(vec![scheduler], vec![worker.clone(), worker.clone(), worker]).await;
    let id = env.submit(&env.request("dups", &["dup/"])).await;
    let status = env.wait_final(id).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["objects_listed"], 60);
    assert_eq!(status["objects_imported"], 60);
    assert_eq!(status["objects_skipped"], 0);
    assert_eq!(env.images("dups").await.len(), 60);
    let events = env.finished_events(1).await;
    assert_eq!(events.len(), 1, "one FinishedEvent: {events:?}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_whose_message_was_lost_are_republished() {
    let env = TestEnv::new().await;
    env.put_many((0..9).map(|i| format!("lost/{i}.jpg"))).await;
    // Recorded and released but never published: what a scheduler crash
    // between the release and the publish leaves behind.
    env.store.migrate().await.expect("migrate");
    let body = env.request("lost", &["lost/"]).to_string();
    let valid = parse_request(body.as_bytes(), Some("application/json"), ValidationOptions::default())
        .expect("valid");
    let recorded = env.store.record_import(&valid.request, &valid.digest, None).await.expect("record");
    assert_eq!(recorded, Recorded::Created);
    let share = FairShare { import_tasks: 8, workspace_tasks: 8, queued_per_consumer: 2 };
    let released = env.store.release_tasks(share, |_| i64::MAX).await.expect("release");
    assert_eq!(released.len(), 1, "{released:?}");
    let mut scheduler = env.scheduler_config();
    scheduler.republish_after_secs = 1.0;
    let fleet = env.start(vec![scheduler], vec![env.worker_config()]).await;
    let status = env.wait_final(valid.request.import_id).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["objects_imported"], 9);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_connections_are_re_established_and_nothing_is_lost_or_doubled() {
    let env = TestEnv::new().await;
    env.put_many((0..200).map(|i| format!("conn/{i:03}.jpg"))).await;
    let mut worker = env.worker_config();
    worker.page_size = 2;
    let fleet = env.start(vec![env.scheduler_config()], vec![worker.clone(), worker]).await;
    let id = env.submit(&env.request("reconnect", &["conn/"])).await;
    env.wait_imported(id, 20).await;
    let closed = env.close_connections(&["tether-worker", "tether-scheduler"], 3).await;
    assert!(closed >= 3, "closed {closed} connections: the scheduler's and both workers'");
    let status = env.wait_final(id).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(
        (status["objects_listed"].as_i64(), status["objects_imported"].as_i64()),
        (Some(200), Some(200))
    );
    assert_eq!(env.images("reconnect").await.len(), 200);
    // The scheduler consumes requests again.
    env.put("conn2/a.jpg", b"a").await;
    let again = env.wait_final(env.submit(&env.request("reconnect-2", &["conn2/"])).await).await;
    assert_eq!(again["state"], "succeeded", "{again}");
    // Every process whose connection was closed reconnects (a worker whose
    // tasks were done may take a backoff delay to get there).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(40);
    while tether_tests::captured_logs().matches("Reconnected to RabbitMQ.").count() < closed {
        assert!(tokio::time::Instant::now() < deadline, "not every process reconnected");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    fleet.assert_running();
    fleet.stop().await;
}

/// A step that was committed, delivered again (a redelivery after a lost
/// ack, or a duplicate publish): nothing changes, not a row, not a count.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_committed_step_delivered_again_changes_nothing() {
    let env = TestEnv::new().await;
    env.put_many((0..40).map(|i| format!("re/{i:02}.jpg"))).await;
    let scheduler = env.start(vec![env.scheduler_config()], vec![]).await;
    let mut worker = env.worker_config();
    worker.page_size = 2;
    worker.concurrency = 1;
    let id = env.submit(&env.request("redelivered", &["re/"])).await;
    let workers = env.start(vec![], vec![worker.clone()]).await;
    env.wait_imported(id, 10).await;
    // The worker stops (finishing its step); the next step's message is
    // removed: the task waits, pending, at its current seq.
    workers.stop().await;
    let queue = TaskKind::List.queue();
    env.purge(queue).await;
    let tasks = "SELECT * FROM tether.tasks ORDER BY task_id";
    let images = "SELECT * FROM tether.images ORDER BY image_id";
    let status =
        "SELECT state, objects_listed, objects_imported, objects_skipped, objects_failed, bytes_copied
                  FROM tether.import_status";
    let before = (env.snapshot(tasks).await, env.snapshot(images).await, env.snapshot(status).await);
    let pending =
        env.dump_text("SELECT task_id::text || ' ' || seq FROM tether.tasks WHERE state = 'pending'").await;
    let pending: Vec<(uuid::Uuid, i32)> = pending
        .lines()
        .map(|l| {
            let (task, seq) = l.split_once(' ').expect("id and seq");
            (task.parse().expect("uuid"), seq.parse().expect("seq"))
        })
        .collect();
    assert_eq!(pending.len(), 1, "one listing chain, mid-way: {pending:?}");
    let (task, seq) = pending[0];
    assert!(seq >= 5, "steps were committed before: seq {seq}");
    // Every committed step of the task, delivered again.
    for step in 0..seq {
        let body = serde_json::to_vec(&TaskMessage { task_id: task, seq: step }).expect("json");
        env.publish_to_queue(queue, &body).await;
    }
    let workers = env.start(vec![], vec![worker.clone()]).await;
    env.wait_no_ready(queue).await;
    workers.stop().await; // finishes what it holds
    let after = (env.snapshot(tasks).await, env.snapshot(images).await, env.snapshot(status).await);
    assert_eq!(before, after, "a committed step delivered again changed the database");

    // The current step's message: the import goes on and ends exact.
    let body = serde_json::to_vec(&TaskMessage { task_id: task, seq }).expect("json");
    env.publish_to_queue(queue, &body).await;
    let workers = env.start(vec![], vec![worker]).await;
    let status = env.wait_final(id).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(
        (status["objects_listed"].as_i64(), status["objects_imported"].as_i64()),
        (Some(40), Some(40)),
        "{status}"
    );
    assert_eq!(env.images("redelivered").await.len(), 40);
    assert_eq!(env.finished_events(1).await.len(), 1);
    workers.stop().await;
    scheduler.stop().await;
}
