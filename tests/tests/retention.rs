//! Retention: the scheduler deletes the task rows (and copy items) of
//! imports finished longer ago than `TETHER_RETENTION_DAYS`, and nothing
//! else; `tetherctl requeue` of such an import refuses with a sentence.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use tether_shared::db::admin::Requeued;
use tether_tests::TestEnv;
use uuid::Uuid;

async fn count(env: &TestEnv, sql: &str, id: Uuid) -> i64 {
    let (client, connection) =
        tokio_postgres::connect(&env.database_url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client.query_one(sql, &[&id]).await.expect("count").get(0)
}

async fn tasks(env: &TestEnv, import_id: Uuid) -> i64 {
    count(env, "SELECT count(*) FROM tether.tasks WHERE import_id = $1", import_id).await
}

async fn pruned(env: &TestEnv, import_id: Uuid) -> bool {
    count(
        env,
        "SELECT count(*) FROM tether.imports WHERE import_id = $1 AND tasks_pruned_at IS NOT NULL",
        import_id,
    )
    .await
        == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_deletes_finished_imports_tasks_and_nothing_else() {
    let env = TestEnv::new().await;
    env.put_many((0..3).map(|i| format!("keep/{i}.jpg"))).await;
    env.put("keep/big.jpg", &[7; 100]).await;
    env.put_many((0..2).map(|i| format!("later/{i}.jpg"))).await;

    // A scheduler that keeps task rows for the default 7 days.
    let fleet = env.start(vec![env.scheduler_config()], vec![env.worker_config()]).await;
    let mut request = env.request("kept", &["keep/"]);
    request["filter"] = json!({"extensions": ["jpg"], "max_object_bytes": 50});
    let partial = env.submit(&request).await;
    assert_eq!(env.wait_final(partial).await["state"], "partially_succeeded");
    let failed = env.submit(&env.request("kept", &["nothing-here/"])).await;
    assert_eq!(env.wait_final(failed).await["state"], "failed");
    assert!(tasks(&env, partial).await > 0);
    // Finished a moment ago: an hour's retention keeps them.
    assert_eq!(env.store.prune_finished_tasks(Duration::from_secs(3600), 100).await.expect("prune"), 0);
    assert!(tasks(&env, partial).await > 0 && !pruned(&env, partial).await);
    fleet.stop().await;

    // An import that is not final (no worker runs) keeps its tasks whatever the retention.
    let scheduler_only = env.start(vec![env.scheduler_config()], vec![]).await;
    let waiting = env.submit(&env.request("kept", &["later/"])).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tasks(&env, waiting).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the scheduler did not record the import");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    scheduler_only.stop().await;

    // A scheduler with a retention of 0 days prunes both finished imports in
    // its housekeeping.
    let mut scheduler = env.scheduler_config();
    scheduler.retention_days = 0.0;
    let fleet = env.start(vec![scheduler], vec![]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(pruned(&env, partial).await && pruned(&env, failed).await) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the housekeeping did not prune the finished imports"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fleet.stop().await;
    assert_eq!(tasks(&env, partial).await, 0);
    assert_eq!(tasks(&env, failed).await, 0);
    // Nothing else: the running import's tasks, the images, the failures and
    // the imports themselves stay.
    assert!(tasks(&env, waiting).await > 0);
    assert!(!pruned(&env, waiting).await);
    assert_eq!(env.images("kept").await.len(), 3);
    assert_eq!(env.failures(partial).await.len(), 1, "the too_large failure stays");
    assert_eq!(env.status(partial).await.expect("the import stays")["objects_imported"], 3);

    // Requeue refuses, saying why.
    let argv = ["tetherctl", "--database-url", &env.database_url, "--amqp-url", &env.amqp_url, "requeue"];
    let partial_id = partial.to_string();
    let exit = tetherctl::execute(argv.iter().copied().chain([partial_id.as_str()])).await;
    assert_eq!(exit, ExitCode::from(1));
    match env.store.requeue_import(failed).await.expect("requeue") {
        Requeued::NotRequeueable(why) => {
            assert!(why.contains("tasks were deleted") && why.contains("TETHER_RETENTION_DAYS"), "{why}");
            assert!(why.contains("new import_id"), "{why}");
        }
        other => panic!("a pruned import was not refused: {other:?}"),
    }
    assert_eq!(env.status(failed).await.expect("status")["state"], "failed", "the refusal changed nothing");
}
