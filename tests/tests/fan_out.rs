//! Parallel listing: a delimited listing fans out into one listing task per
//! sub-prefix (at every depth), within the per-import cap; past the cap the
//! rest is listed recursively. Either way each object is counted once.

use std::collections::BTreeSet;

use tether_tests::TestEnv;
use uuid::Uuid;

/// Top-level sub-prefixes of the tree under `w/`.
const SUBS: usize = 12;

/// A tree under `w/` with objects at every level: returns (listed, imported).
///
/// - `w/top_N.jpg`: 3 objects beside the sub-prefixes;
/// - `w/pNN/img_N.jpg` (5 each) and `w/pNN/notes.txt` (filtered out);
/// - `w/pNN/deep/x_N.jpg` (2 each): a second level of sub-prefixes;
/// - `w/p00/deep/deeper/z.jpg`: a third;
/// - folder markers `w/`, `w/p03/` and `w/p04/deep/`; `other/` outside.
async fn seed(env: &TestEnv) -> (i64, i64) {
    let mut keys: Vec<String> = (0..3).map(|i| format!("w/top_{i}.jpg")).collect();
    for p in 0..SUBS {
        keys.extend((0..5).map(|i| format!("w/p{p:02}/img_{i}.jpg")));
        keys.push(format!("w/p{p:02}/notes.txt"));
        keys.extend((0..2).map(|i| format!("w/p{p:02}/deep/x_{i}.jpg")));
    }
    keys.push("w/p00/deep/deeper/z.jpg".into());
    keys.push("other/outside.jpg".into());
    env.put_many(keys).await;
    for marker in ["w/", "w/p03/", "w/p04/deep/"] {
        env.put(marker, b"").await;
    }
    let imported = 3 + SUBS as i64 * 7 + 1;
    (imported + SUBS as i64, imported)
}

/// (prefix, delimited, start_at, state) of the import's listing tasks.
async fn list_tasks(env: &TestEnv, import_id: Uuid) -> Vec<(String, bool, Option<String>, String)> {
    let (client, connection) =
        tokio_postgres::connect(&env.database_url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
        .query(
            "SELECT prefix, delimited, start_at, state FROM tether.tasks
             WHERE import_id = $1 AND kind = 'list' ORDER BY prefix",
            &[&import_id],
        )
        .await
        .expect("query tasks")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wide_tree_fans_out_into_one_task_per_sub_prefix_even_with_every_message_duplicated() {
    let env = TestEnv::new().await;
    let (listed, imported) = seed(&env).await;
    let mut scheduler = env.scheduler_config();
    // Every pending task is published again on every tick: pages that fan
    // out are delivered many times, to several workers at once.
    scheduler.republish_after_secs = 0.0;
    let mut worker = env.worker_config();
    worker.page_size = 4; // sub-prefixes spread over several pages
    let fleet = env.start(vec![scheduler], vec![worker.clone(), worker.clone(), worker]).await;
    let id = env.submit(&env.request("wide", &["w/"])).await;
    let status = env.wait_final(id).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["objects_listed"], listed);
    assert_eq!(status["objects_imported"], imported);
    assert_eq!(status["objects_skipped"], SUBS);
    assert_eq!(status["objects_failed"], 0);
    let images = env.images("wide").await;
    assert_eq!(images.len() as i64, imported);
    assert!(images.contains_key(&format!("s3://{}/w/p00/deep/deeper/z.jpg", env.bucket)));
    assert!(!images.keys().any(|u| u.ends_with('/') || u.contains("other/")));

    let tasks = list_tasks(&env, id).await;
    let prefixes: BTreeSet<&str> = tasks.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(prefixes.len(), tasks.len(), "one task per prefix: {tasks:?}");
    let mut expected: BTreeSet<String> = ["w/".to_owned(), "w/p00/deep/deeper/".to_owned()].into();
    for p in 0..SUBS {
        expected.insert(format!("w/p{p:02}/"));
        expected.insert(format!("w/p{p:02}/deep/"));
    }
    assert_eq!(prefixes, expected.iter().map(String::as_str).collect());
    assert!(tasks.iter().all(|t| t.1 && t.2.is_none() && t.3 == "done"), "{tasks:?}");
    assert_eq!(env.finished_events(1).await.len(), 1);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_task_cap_the_rest_is_listed_recursively_and_exactly() {
    let env = TestEnv::new().await;
    let (listed, imported) = seed(&env).await;
    const CAP: i64 = 6;
    let mut worker = env.worker_config();
    worker.page_size = 3;
    worker.max_list_tasks = CAP;
    let fleet = env.start(vec![env.scheduler_config()], vec![worker.clone(), worker]).await;
    let id = env.submit(&env.request("capped", &["w/"])).await;
    let status = env.wait_final(id).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["objects_listed"], listed);
    assert_eq!(status["objects_imported"], imported);
    assert_eq!(status["objects_skipped"], SUBS);
    assert_eq!(env.images("capped").await.len() as i64, imported);

    let tasks = list_tasks(&env, id).await;
    assert_eq!(tasks.len() as i64, CAP, "the cap is reached, not passed: {tasks:?}");
    let prefixes: BTreeSet<&str> = tasks.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(prefixes.len(), tasks.len(), "{tasks:?}");
    assert!(tasks.iter().all(|t| t.3 == "done"), "{tasks:?}");
    // At least one task met the cap and went on without the delimiter.
    assert!(tasks.iter().any(|t| !t.1 && t.2.is_some()), "{tasks:?}");
    fleet.stop().await;
}
