//! Postgres that does not decay with history: the queries of the platform
//! and of staff stay index lookups on a filled database, rows imported
//! before the re-keying keep their ids and are found by name, new ids of a
//! dataset share their high bits, and a request is parsed once per import
//! and process.

use std::collections::BTreeMap;
use std::sync::Arc;

use tether_shared::contract::{parse_request, ValidationOptions};
use tether_shared::db::imports::Recorded;
use tether_shared::task::{TaskKind, TaskMessage};
use tether_tests::history::{self, History};
use tether_tests::TestEnv;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_platform_and_staff_queries_scan_no_images_or_tasks_on_a_long_history() {
    let env = TestEnv::new().await;
    env.store.migrate().await.expect("migrate");
    let client = history::connect(&env.database_url).await;
    History { imports: 20_000, tasks: 200_000, images: 300_000 }.fill(&client).await;
    let scans: Vec<String> = history::plans(&client)
        .await
        .into_iter()
        .filter(|(_, _, scans)| *scans)
        .map(|(what, plan, _)| format!("{what}:\n{plan}"))
        .collect();
    assert!(scans.is_empty(), "whole-table scans:\n{}", scans.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_is_read_and_validated_once_per_import() {
    let env = TestEnv::new().await;
    env.store.migrate().await.expect("migrate");
    let body = env.request("cached", &["a/", "b/", "c/"]).to_string();
    let valid = parse_request(body.as_bytes(), Some("application/json"), ValidationOptions::default())
        .expect("a valid request");
    let recorded = env.store.record_import(&valid.request, &valid.digest, None).await.expect("record");
    assert_eq!(recorded, Recorded::Created);
    // The listing tasks are recorded held (fair share): read their steps.
    let client = history::connect(&env.database_url).await;
    let messages: Vec<TaskMessage> = client
        .query("SELECT task_id, seq FROM tether.tasks WHERE import_id = $1", &[&valid.request.import_id])
        .await
        .expect("the import's tasks")
        .iter()
        .map(|row| TaskMessage { task_id: row.get(0), seq: row.get(1) })
        .collect();
    assert_eq!(messages.len(), 3);
    let mut loaded = Vec::new();
    for message in messages {
        loaded
            .push(env.store.load_task(TaskKind::List, message).await.expect("load").expect("a current task"));
    }
    // One parsed request shared by every task of the import.
    assert!(loaded.windows(2).all(|pair| Arc::ptr_eq(&pair[0].request, &pair[1].request)));
    assert_eq!(loaded[0].request.prefixes.len(), 3);
}

/// Applies the migrations before 0017, as an installation of today has them.
async fn migrate_before_0017(client: &tokio_postgres::Client) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("migrations").filter_map(Result::ok).collect();
    files.sort_by_key(std::fs::DirEntry::file_name);
    client
        .batch_execute(
            "CREATE SCHEMA tether;
             CREATE TABLE tether.schema_migrations (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());",
        )
        .await
        .expect("schema");
    for file in files {
        let name = file.file_name().to_string_lossy().trim_end_matches(".sql").to_owned();
        if name.as_str() >= "0017" {
            break;
        }
        client.batch_execute(&std::fs::read_to_string(file.path()).expect("read")).await.expect("migration");
        client
            .execute("INSERT INTO tether.schema_migrations (version) VALUES ($1)", &[&name])
            .await
            .expect("record");
    }
}

async fn ids(client: &tokio_postgres::Client, workspace: &str, dataset: &str) -> BTreeMap<String, Uuid> {
    client
        .query(
            "SELECT source_url, image_id FROM tether.images WHERE workspace_id = $1 AND dataset_id = $2",
            &[&workspace, &dataset],
        )
        .await
        .expect("images")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_re_keying_keeps_every_row_and_id_and_re_imports_find_them_by_name() {
    let env = TestEnv::new().await;
    env.put_many((0..4).map(|i| format!("old/{i}.jpg"))).await;
    let client = history::connect(&env.database_url).await;
    migrate_before_0017(&client).await;
    // Rows of an earlier importer (random ids), one of them for an object
    // changed since (another ETag).
    let mut before = BTreeMap::new();
    for i in 0..3 {
        let key = format!("old/{i}.jpg");
        let head = env.s3.head_object().bucket(&env.bucket).key(&key).send().await.expect("head");
        let etag = head.e_tag().unwrap_or_default().trim_matches('"').to_owned();
        let etag = if i == 2 { "stale".to_owned() } else { etag };
        let (url, id) = (format!("s3://{}/{key}", env.bucket), Uuid::new_v4());
        client
            .execute(
                "INSERT INTO tether.images (image_id, import_id, workspace_id, dataset_id, source_url, size_bytes, etag,
                                            last_modified, storage, stored_url)
                 VALUES ($1, $2, 'ws-test', 'legacy', $3, 11, $4, now(), 'link', NULL)",
                &[&id, &Uuid::new_v4(), &url, &etag],
            )
            .await
            .expect("an earlier importer's row");
        before.insert(url, id);
    }

    let fleet = env.start_default(1).await; // the scheduler applies 0017 on
    assert_eq!(ids(&client, "ws-test", "legacy").await, before, "the migration changed rows or ids");

    let status = env.wait_final(env.submit(&env.request("legacy", &["old/"])).await).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["objects_imported"], 2, "the changed and the new object: {status}");
    assert_eq!(status["objects_skipped"], 2, "the unchanged ones: {status}");
    let after = ids(&client, "ws-test", "legacy").await;
    assert_eq!(after.len(), 4, "one row per object: {after:?}");
    for (url, id) in &before {
        assert_eq!(after.get(url), Some(id), "{url} got another id");
    }
    let new_id = after.values().find(|id| !before.values().any(|b| b == *id)).expect("the new object's row");
    assert_eq!(new_id.get_version_num(), 8, "new ids are UUIDv8s");

    // The same dataset name in another workspace is another dataset: rows of
    // its own, whose ids share their first bytes with each other only.
    let mut other = env.request("legacy", &["old/"]);
    other["workspace_id"] = "ws-other".into();
    let status = env.wait_final(env.submit(&other).await).await;
    assert_eq!(status["objects_imported"], 4, "{status}");
    let others = ids(&client, "ws-other", "legacy").await;
    assert_eq!(others.len(), 4);
    let prefix = |id: &Uuid| id.as_bytes()[..4].to_vec();
    assert!(others.values().all(|id| prefix(id) == prefix(others.values().next().expect("an id"))));
    assert_ne!(prefix(new_id), prefix(others.values().next().expect("an id")));
    assert_eq!(ids(&client, "ws-test", "legacy").await, after, "the other workspace touched these rows");
    fleet.stop().await;
}
