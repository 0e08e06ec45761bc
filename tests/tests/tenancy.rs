//! Many workspaces on one fleet: a dataset belongs to its workspace (contract
//! §3). Two workspaces that name a dataset alike, over the same bucket, in
//! link and copy mode, through requeue and cancel, each keep rows of their
//! own, and nothing of one changes when the other acts. The migration that
//! made the workspace part of the key kept every existing id. No source may
//! be the destination bucket (contract §2).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};
use tether_tests::TestEnv;
use uuid::Uuid;

/// One image row, as the platform reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    image_id: Uuid,
    import_id: Uuid,
    storage: String,
    stored_url: Option<String>,
    etag: Option<String>,
}

async fn db(env: &TestEnv) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&env.database_url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}

/// source_url → row, of one workspace's dataset.
async fn rows(env: &TestEnv, workspace: &str, dataset: &str) -> BTreeMap<String, Row> {
    db(env)
        .await
        .query(
            "SELECT source_url, image_id, import_id, storage, stored_url, etag FROM tether.images
             WHERE workspace_id = $1 AND dataset_id = $2",
            &[&workspace, &dataset],
        )
        .await
        .expect("read images")
        .iter()
        .map(|r| {
            let row = Row {
                image_id: r.get(1),
                import_id: r.get(2),
                storage: r.get(3),
                stored_url: r.get(4),
                etag: r.get(5),
            };
            (r.get(0), row)
        })
        .collect()
}

/// Image rows whose import belongs to another workspace than the row.
async fn crossed_rows(env: &TestEnv) -> i64 {
    db(env)
        .await
        .query_one(
            "SELECT count(*) FROM tether.images im JOIN tether.imports i USING (import_id)
             WHERE i.workspace_id <> im.workspace_id OR i.dataset_id <> im.dataset_id",
            &[],
        )
        .await
        .expect("count")
        .get(0)
}

fn request(env: &TestEnv, workspace: &str, mode: &str, prefix: &str) -> Value {
    let mut request = env.request("shared", &[prefix]);
    request["workspace_id"] = json!(workspace);
    request["mode"] = json!(mode);
    request
}

async fn tetherctl(env: &TestEnv, args: &[&str]) -> ExitCode {
    let mut argv = vec!["tetherctl", "--database-url", &env.database_url, "--amqp-url", &env.amqp_url];
    argv.extend_from_slice(args);
    tetherctl::execute(argv).await
}

fn counts(status: &Value) -> (i64, i64, i64) {
    let n = |k: &str| status[k].as_i64().unwrap_or(-1);
    (n("objects_imported"), n("objects_skipped"), n("objects_failed"))
}

async fn wait_state(env: &TestEnv, id: Uuid, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = env.status(id).await.expect("status");
        if status["state"] == state {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "import {id} never became {state}: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workspaces_with_the_same_dataset_never_touch_each_others_rows() {
    let env = TestEnv::new().await;
    let bodies: Vec<(String, Vec<u8>)> =
        (0..5).map(|i| (format!("t/{i}.jpg"), vec![b'a' + i as u8; 700 + i])).collect();
    for (key, body) in &bodies {
        env.put(key, body).await;
    }
    env.put_many((0..300).map(|i| format!("c/{i:03}.jpg"))).await;
    let destination = env.destination_bucket().await;
    let mut lister = env.worker_config();
    lister.kinds = vec!["list".into()];
    lister.page_size = 1;
    lister.destination = Some(format!("s3://{destination}/copies"));
    let mut copier = lister.clone();
    copier.kinds = vec!["copy".into()];
    // Copiers start once globex's copy import has listed (see below).
    let fleet = env.start(vec![env.scheduler_config()], vec![lister]).await;

    // acme links five objects into its `shared`.
    let acme_link = env.wait_final(env.submit(&request(&env, "acme", "link", "t/")).await).await;
    assert_eq!(counts(&acme_link), (5, 0, 0), "{acme_link}");
    let acme = rows(&env, "acme", "shared").await;
    assert_eq!(acme.len(), 5);

    // globex links the same bucket into its own `shared`: its own five rows.
    let globex_link = env.wait_final(env.submit(&request(&env, "globex", "link", "t/")).await).await;
    assert_eq!(counts(&globex_link), (5, 0, 0), "not skipped for acme's rows: {globex_link}");
    assert_eq!(rows(&env, "acme", "shared").await, acme, "globex's link import changed acme's rows");
    for (url, row) in rows(&env, "globex", "shared").await {
        assert_ne!(row.image_id, acme[&url].image_id, "globex's {url} has an id of its own");
    }

    // globex copies them; one object vanishes between listing and copying.
    let globex_copy = env.submit(&request(&env, "globex", "copy", "t/")).await;
    env.wait_listed(globex_copy, 5).await;
    env.delete("t/4.jpg").await;
    let copiers = env.start(vec![], vec![copier]).await;
    let partial = env.wait_final(globex_copy).await;
    assert_eq!((partial["state"].as_str(), counts(&partial)), (Some("partially_succeeded"), (4, 0, 1)));
    assert_eq!(rows(&env, "acme", "shared").await, acme, "globex's copy import changed acme's rows");

    // The object is back: globex requeues; acme's rows stay as they were.
    env.put(&bodies[4].0, &bodies[4].1).await;
    assert_eq!(tetherctl(&env, &["requeue", &globex_copy.to_string()]).await, ExitCode::SUCCESS);
    let requeued = wait_state(&env, globex_copy, "succeeded").await;
    assert_eq!(counts(&requeued), (5, 0, 0), "{requeued}");
    assert_eq!(rows(&env, "acme", "shared").await, acme, "globex's requeue changed acme's rows");
    let globex = rows(&env, "globex", "shared").await;
    assert_eq!(globex.len(), 5);
    for (url, row) in &globex {
        assert_eq!(row.import_id, globex_copy);
        assert_eq!(row.storage, "copy");
        let stored = row.stored_url.as_deref().expect("a copy has a stored_url");
        assert!(stored.starts_with(&format!("s3://{destination}/copies/globex/shared/")), "{stored}");
        assert_ne!(row.image_id, acme[url].image_id, "one id for two workspaces' images");
    }

    // acme copies too: globex's copies are no reason to skip, and globex's
    // rows stay as they were.
    let acme_copy = env.wait_final(env.submit(&request(&env, "acme", "copy", "t/")).await).await;
    assert_eq!(counts(&acme_copy), (5, 0, 0), "skipped for globex's copies: {acme_copy}");
    let total: usize = bodies.iter().map(|(_, b)| b.len()).sum();
    assert_eq!(acme_copy["bytes_copied"], total as i64);
    assert_eq!(rows(&env, "globex", "shared").await, globex, "acme's copy import changed globex's rows");
    let acme_copied = rows(&env, "acme", "shared").await;
    for (url, row) in &acme_copied {
        assert_eq!(row.image_id, acme[url].image_id, "an id changed");
        let stored = row.stored_url.as_deref().unwrap_or_default();
        assert!(stored.starts_with(&format!("s3://{destination}/copies/acme/shared/")), "{stored}");
    }

    // Both import a larger prefix at once; acme cancels its import.
    let acme_big = env.submit(&request(&env, "acme", "link", "c/")).await;
    let globex_big = env.submit(&request(&env, "globex", "link", "c/")).await;
    env.wait_imported(acme_big, 5).await;
    assert_eq!(tetherctl(&env, &["cancel", &acme_big.to_string()]).await, ExitCode::SUCCESS);
    let cancelled = env.wait_final(acme_big).await;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    // 300 pages of one object: generous on a loaded machine.
    let done = env.wait_final_within(globex_big, Duration::from_secs(240)).await;
    assert_eq!((done["state"].as_str(), counts(&done)), (Some("succeeded"), (300, 0, 0)), "{done}");
    let acme_now = rows(&env, "acme", "shared").await;
    let acme_c = acme_now.keys().filter(|u| u.contains("/c/")).count() as i64;
    assert_eq!(acme_c, cancelled["objects_imported"].as_i64().unwrap_or(-1), "acme counts its own rows only");
    assert!(acme_c < 300, "acme's import was cancelled mid-way: {cancelled}");
    assert_eq!(rows(&env, "globex", "shared").await.len(), 305);
    assert_eq!(crossed_rows(&env).await, 0, "a row was written by another workspace's import");
    copiers.stop().await;
    fleet.stop().await;
}

/// The namespace of image ids, as every Tether before migration 0013 used it.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x5d1f_6c3e_8a2b_4c71_9e0d_7b3a_1f42_e8c6);

/// Applies the migrations before 0013 the way the scheduler does, as an
/// installation of an earlier Tether has them.
async fn migrate_to_0012(env: &TestEnv) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the migrations directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    let mut client = db(env).await;
    let tx = client.transaction().await.expect("begin");
    tx.batch_execute(
        "CREATE SCHEMA tether;
         CREATE TABLE tether.schema_migrations (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());",
    )
    .await
    .expect("schema");
    for path in files {
        let version = path.file_stem().and_then(|s| s.to_str()).expect("a file name").to_owned();
        if version.as_str() >= "0013" {
            continue;
        }
        let sql = std::fs::read_to_string(&path).expect("read a migration");
        tx.batch_execute(&sql).await.unwrap_or_else(|e| panic!("migration {version}: {e}"));
        tx.execute("INSERT INTO tether.schema_migrations (version) VALUES ($1)", &[&version])
            .await
            .expect("record it");
    }
    tx.commit().await.expect("commit");
}

/// The etag of an object of the test's bucket, as listings report it.
async fn etag(env: &TestEnv, key: &str) -> Option<String> {
    let head = env.s3.head_object().bucket(&env.bucket).key(key).send().await.expect("head");
    head.e_tag().map(|e| e.trim_matches('"').to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_migration_keeps_every_id_and_each_workspace_finds_its_old_rows() {
    let env = TestEnv::new().await;
    for i in 0..3 {
        env.put(&format!("m/{i}.jpg"), format!("object {i}").as_bytes()).await;
    }
    migrate_to_0012(&env).await;
    // Rows of an earlier Tether: acme's `shared` under ids of (dataset, url),
    // m/0 changed since (another etag); and a row an operator bulk-loaded
    // under an id of its own, which that Tether then imported again.
    let old_import = Uuid::new_v4();
    let client = db(&env).await;
    client
        .execute(
            "INSERT INTO tether.imports (import_id, request_digest, workspace_id, dataset_id, mode, provider, state)
             VALUES ($1, '\\x00', 'acme', 'shared', 'link', 's3', 'succeeded')",
            &[&old_import],
        )
        .await
        .expect("an old import");
    let url = |i: usize| format!("s3://{}/m/{i}.jpg", env.bucket);
    let old_id = |i: usize| Uuid::new_v5(&ID_NAMESPACE, format!("shared\n{}", url(i)).as_bytes());
    let bulk_id = Uuid::new_v4();
    let mut expected_ids = vec![bulk_id];
    for i in 0..3 {
        let tag = if i == 0 { Some("stale".to_owned()) } else { etag(&env, &format!("m/{i}.jpg")).await };
        client
            .execute(
                "INSERT INTO tether.images (image_id, import_id, workspace_id, dataset_id, source_url, size_bytes,
                                            etag, storage)
                 VALUES ($1, $2, 'acme', 'shared', $3, 8, $4, 'link')",
                &[&old_id(i), &old_import, &url(i), &tag],
            )
            .await
            .expect("an old row");
        expected_ids.push(old_id(i));
    }
    client
        .execute(
            "INSERT INTO tether.images (image_id, import_id, workspace_id, dataset_id, source_url, size_bytes, storage)
             VALUES ($1, $2, 'acme', 'shared', $3, 8, 'link')",
            &[&bulk_id, &Uuid::new_v4(), &url(1)],
        )
        .await
        .expect("a bulk-loaded row");

    let destination = env.destination_dir();
    let mut worker = env.worker_config();
    worker.destination = Some(format!("file://{}", destination.display()));
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;
    let mut ids: Vec<Uuid> = client
        .query("SELECT image_id FROM tether.images", &[])
        .await
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    ids.sort();
    expected_ids.sort();
    assert_eq!(ids, expected_ids, "the migration kept every row and every id");

    // acme imports again: its old rows are found under their old ids (one
    // changed object re-imported, two unchanged), not doubled.
    let again = env.wait_final(env.submit(&request(&env, "acme", "link", "m/")).await).await;
    assert_eq!(counts(&again), (1, 2, 0), "{again}");
    // globex's `shared` is another dataset: three rows of its own.
    let globex = env.wait_final(env.submit(&request(&env, "globex", "link", "m/")).await).await;
    assert_eq!(counts(&globex), (3, 0, 0), "{globex}");
    // acme copies: the copies land in the old-id rows.
    let copy = env.wait_final(env.submit(&request(&env, "acme", "copy", "m/")).await).await;
    assert_eq!(counts(&copy), (3, 0, 0), "{copy}");
    let copy_id: Uuid = copy["import_id"].as_str().and_then(|s| s.parse().ok()).expect("an id");
    let acme_rows = client
        .query(
            "SELECT source_url, image_id, import_id, storage FROM tether.images
             WHERE workspace_id = 'acme' ORDER BY source_url, image_id",
            &[],
        )
        .await
        .expect("acme rows");
    assert_eq!(acme_rows.len(), 4, "three objects and the bulk-loaded double, nothing added");
    for row in &acme_rows {
        let (source_url, image_id, import_id, storage): (String, Uuid, Uuid, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if image_id == bulk_id {
            assert_eq!(storage, "link", "the superseded double is left alone");
        } else {
            let i = (0..3).find(|i| url(*i) == source_url).expect("one of ours");
            assert_eq!(image_id, old_id(i), "an old id changed");
            assert_eq!((import_id, storage.as_str()), (copy_id, "copy"));
        }
    }
    let globex_rows = rows(&env, "globex", "shared").await;
    assert_eq!(globex_rows.len(), 3);
    assert!(globex_rows.values().all(|r| r.storage == "link"), "acme's copy touched globex's rows");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_import_may_read_the_destination_bucket() {
    let env = TestEnv::new().await;
    let destination = env.destination_bucket().await;
    env.s3
        .put_object()
        .bucket(&destination)
        .key("copies/acme/shared/ab/secret.jpg")
        .body(b"another workspace's copy".to_vec().into())
        .send()
        .await
        .expect("put a copy");
    let mut scheduler = env.scheduler_config();
    scheduler.destination = Some(format!("s3://{destination}/copies"));
    let mut worker = env.worker_config();
    worker.destination = Some(format!("s3://{destination}/copies"));
    let fleet = env.start(vec![scheduler], vec![worker.clone()]).await;

    // The scheduler rejects it, naming the field.
    let mut request = request(&env, "globex", "link", "");
    request["source"]["bucket"] = json!(destination);
    let id = env.submit(&request).await;
    let rejected = env.rejected(1).await;
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0].reason.contains("`source.bucket`"), "{}", rejected[0].reason);
    let status = env.wait_final(id).await;
    assert_eq!(status["state"], "failed");
    fleet.stop().await;

    // A scheduler that was not told the destination lets it through; the
    // workers refuse to read it.
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;
    let mut request = request.clone();
    request["import_id"] = json!(Uuid::new_v4());
    let id = env.submit(&request).await;
    let status = env.wait_final(id).await;
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["objects_listed"], 0, "{status}");
    assert!(status["error"].as_str().unwrap_or_default().contains("TETHER_DESTINATION"), "{status}");
    let images: i64 =
        db(&env).await.query_one("SELECT count(*) FROM tether.images", &[]).await.expect("count").get(0);
    assert_eq!(images, 0);
    fleet.stop().await;
}
