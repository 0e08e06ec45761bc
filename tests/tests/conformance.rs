//! The storage conformance suite: the same cases, end to end through AMQP,
//! against S3 (moto), GCS (fake-gcs-server) and Azure Blob (Azurite). A
//! customer sees the same states, counts, failure codes, events, re-import
//! rules and sentences whichever cloud their bucket is in.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use tether_tests::stores::{Provider, TestBucket};
use tether_tests::TestEnv;

/// Runs one case against each provider, as `case::s3`, `case::gcs`, `case::azure`.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            use tether_tests::stores::Provider;
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn s3() { super::$case(Provider::S3).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn gcs() { super::$case(Provider::Gcs).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn azure() { super::$case(Provider::Azure).await }
        }
    )*};
}

conformance!(
    listing_and_reimport,
    copy_byte_for_byte,
    changed_or_deleted_before_copy,
    missing_bucket,
    past_the_task_cap,
    flat_prefix_in_parallel_ranges
);

/// Deterministic but varied bytes.
fn body(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7 + j / 251) as u8).collect()
}

/// Keys that need encoding in URLs and queries, on every provider.
const ODD_KEYS: [&str; 4] = [
    "photos/odd/sp ace ünï 日本.jpg",
    "photos/odd/hash#1+plus%25.jpg",
    "photos/odd/q?x=1&y.png",
    "photos/odd/a//b.jpg",
];

async fn listing_and_reimport(provider: Provider) {
    let env = TestEnv::new().await;
    let bucket = env.bucket(provider).await;
    let mut objects: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..15 {
        objects.push((format!("photos/2024/img_{i:03}.jpg"), body(i, 100 + i)));
    }
    for i in 0..10 {
        objects.push((format!("photos/other/pic_{i:03}.PNG"), body(i, 50)));
    }
    for i in 0..8 {
        objects.push((format!("scans/s_{i:03}.tiff"), body(i, 70)));
    }
    objects.extend(ODD_KEYS.iter().map(|k| (k.to_string(), k.as_bytes().to_vec())));
    objects.push(("photos/big.jpg".into(), vec![7; 2000]));
    for other in ["photos/readme.txt", "scans/data.json", "unrelated/img.jpg", "photosynthesis.jpg"] {
        objects.push((other.into(), b"x".to_vec()));
    }
    bucket.put_all(&objects).await;
    // Folder markers: not objects of the dataset, not counted.
    bucket.put_folder_marker("photos/").await;
    bucket.put_folder_marker("photos/2024/").await;

    let mut worker = env.worker_config();
    worker.page_size = 4;
    let fleet = env.start(vec![env.scheduler_config()], vec![worker.clone(), worker]).await;
    // "photos/" covers "photos/2024/": every object is listed once.
    let mut request = bucket.request(&env, "conf", &["photos/2024/", "scans/", "photos/"]);
    request["filter"] = json!({ "max_object_bytes": 1000 });
    let id = env.submit(&request).await;
    let status = env.wait_final(id).await;

    // photos/: 15 + 10 + 4 odd + big (too large) + readme.txt; scans/: 8 + data.json.
    assert_eq!(status["state"], "partially_succeeded", "{status}");
    assert_eq!(counts(&status), (40, 37, 2, 1), "{status}");
    assert!(status["error"].as_str().is_some_and(|e| e.contains("too_large")), "{status}");
    assert_eq!(env.failures(id).await, vec![(bucket.url("photos/big.jpg"), "too_large".to_owned())]);
    let images = env.images("conf").await;
    let expected: BTreeSet<String> = objects
        .iter()
        .map(|(k, _)| k)
        .filter(|k| (k.starts_with("photos/") || k.starts_with("scans/")) && !k.ends_with('/'))
        .filter(|k| !k.ends_with(".txt") && !k.ends_with(".json") && !k.ends_with("big.jpg"))
        .map(|k| bucket.url(k))
        .collect();
    assert_eq!(images.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(images.values().all(Option::is_some), "every image has its etag (generation on GCS)");
    let events = env.finished_events(1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0]["state"].as_str(), events[0]["objects_imported"].as_i64()),
        (Some("partially_succeeded"), Some(37))
    );

    // Re-import: unchanged objects are skipped; a rewritten one and a new one
    // are imported.
    bucket.put("photos/2024/img_003.jpg", b"rewritten").await;
    bucket.put("scans/s_new.tiff", b"new").await;
    request["import_id"] = json!(uuid::Uuid::new_v4());
    let again = env.wait_final(env.submit(&request).await).await;
    assert_eq!(counts(&again), (41, 2, 38, 1), "{again}");
    let after = env.images("conf").await;
    let url = bucket.url("photos/2024/img_003.jpg");
    assert_ne!(after[&url], images[&url], "the rewritten object's etag was updated");
    fleet.stop().await;
}

/// A tree wider than the cap of 3 listing tasks, with objects at every
/// level: past the cap, the tasks that meet sub-prefixes list them
/// recursively from where they stand (S3 `StartAfter`, GCS `startOffset`,
/// Azure pages read and dropped up to there). Every object exactly once.
async fn past_the_task_cap(provider: Provider) {
    const CAP: i64 = 3;
    let env = TestEnv::new().await;
    let bucket = env.bucket(provider).await;
    let mut objects: Vec<(String, Vec<u8>)> =
        (0..4).map(|i| (format!("w/top_{i}.jpg"), body(i, 10))).collect();
    for p in 0..9 {
        objects.extend((0..4).map(|i| (format!("w/p{p}/img_{i}.jpg"), body(i, 20))));
        objects.extend((0..2).map(|i| (format!("w/p{p}/deep/x_{i}.jpg"), body(i, 30))));
        objects.push((format!("w/p{p}/z_last.jpg"), body(p, 5)));
    }
    bucket.put_all(&objects).await;
    let mut worker = env.worker_config();
    worker.page_size = 3;
    worker.max_list_tasks = CAP;
    let fleet = env.start(vec![env.scheduler_config()], vec![worker.clone(), worker]).await;
    let id = env.submit(&bucket.request(&env, "capped", &["w/"])).await;
    let status = env.wait_final(id).await;
    let n = objects.len() as i64;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(counts(&status), (n, n, 0, 0), "each object listed exactly once: {status}");
    let images = env.images("capped").await;
    let expected: BTreeSet<String> = objects.iter().map(|(k, _)| bucket.url(k)).collect();
    assert_eq!(images.keys().cloned().collect::<BTreeSet<_>>(), expected);
    let tasks = env
        .dump_text(&format!(
            "SELECT count(*)::text FROM tether.tasks WHERE import_id = '{id}' AND kind = 'list'"
        ))
        .await;
    assert_eq!(tasks, CAP.to_string(), "the cap is reached, not passed");
    let recursive = env
        .dump_text(&format!(
            "SELECT count(*)::text FROM tether.tasks WHERE import_id = '{id}' AND NOT delimited AND start_at IS NOT NULL"
        ))
        .await;
    assert_ne!(recursive, "0", "no task met the cap");
    fleet.stop().await;
}

/// (listed, imported, skipped, failed)
fn counts(status: &Value) -> (i64, i64, i64, i64) {
    let n = |f: &str| status[f].as_i64().unwrap_or(-1);
    (n("objects_listed"), n("objects_imported"), n("objects_skipped"), n("objects_failed"))
}

async fn copy_byte_for_byte(provider: Provider) {
    let env = TestEnv::new().await;
    let bucket = env.bucket(provider).await;
    let mut objects: BTreeMap<String, Vec<u8>> =
        (0..11).map(|i| (format!("c/img_{i:03}.jpg"), body(i, 1000 + i * 997 % 70_000))).collect();
    objects.insert("c/large.png".into(), body(99, 6 * 1024 * 1024 + 123));
    for key in ODD_KEYS {
        objects.insert(key.replace("photos/", "c/"), key.as_bytes().to_vec());
    }
    bucket.put_all(&objects.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>()).await;
    let dir = env.destination_dir();
    let mut worker = env.worker_config();
    worker.page_size = 5;
    worker.destination = Some(format!("file://{}", dir.display()));
    // large.png is read as seven 1 MiB ranges, three at once, pinned to its version.
    worker.copy_part_bytes = 1024 * 1024;
    worker.copy_ranged_from_bytes = 0;
    worker.copy_ranges_in_flight = 3;
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;
    let mut request = bucket.request(&env, "conf-copy", &["c/"]);
    request["mode"] = json!("copy");
    let id = env.submit(&request).await;
    let status = env.wait_final(id).await;

    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(counts(&status), (16, 16, 0, 0), "{status}");
    assert_eq!(status["bytes_copied"], objects.values().map(Vec::len).sum::<usize>() as i64);
    let stored = env.stored("conf-copy").await;
    for (key, bytes) in &objects {
        let (storage, stored_url) = &stored[&bucket.url(key)];
        assert_eq!(storage, "copy");
        let path = stored_url.as_deref().and_then(|u| u.strip_prefix("file://")).expect("a file:// copy");
        assert_eq!(&std::fs::read(path).expect("read the copy"), bytes, "{key} differs from its copy");
    }
    fleet.stop().await;
}

async fn changed_or_deleted_before_copy(provider: Provider) {
    let env = TestEnv::new().await;
    let bucket = env.bucket(provider).await;
    let objects: Vec<(String, Vec<u8>)> =
        (0..6).map(|i| (format!("race/img_{i}.jpg"), body(i, 500))).collect();
    bucket.put_all(&objects).await;
    let mut lister = env.worker_config();
    lister.kinds = vec!["list".into()];
    lister.destination = Some(format!("file://{}", env.destination_dir().display()));
    let fleet = env.start(vec![env.scheduler_config()], vec![lister.clone()]).await;
    let mut request = bucket.request(&env, "race", &["race/"]);
    request["mode"] = json!("copy");
    let id = env.submit(&request).await;
    // Listed, not yet copied: no worker takes copy tasks.
    env.wait_listed(id, 6).await;
    bucket.put("race/img_1.jpg", b"rewritten after listing").await;
    bucket.delete("race/img_4.jpg").await;
    let mut copier = lister;
    copier.kinds = vec!["copy".into()];
    let copiers = env.start(vec![], vec![copier]).await;

    let status = env.wait_final(id).await;
    assert_eq!(status["state"], "partially_succeeded", "{status}");
    assert_eq!(counts(&status), (6, 4, 0, 2), "{status}");
    assert_eq!(status["bytes_copied"], 2000);
    assert_eq!(
        env.failures(id).await,
        vec![
            (bucket.url("race/img_1.jpg"), "changed_during_copy".into()),
            (bucket.url("race/img_4.jpg"), "not_found".into()),
        ]
    );
    copiers.stop().await;
    fleet.stop().await;
}

async fn missing_bucket(provider: Provider) {
    let env = TestEnv::new().await;
    let bucket = env.bucket(provider).await;
    let fleet = env.start_default(1).await;
    let missing = format!("{}-missing", bucket.name);
    let mut request = bucket.request(&env, "missing", &[""]);
    request["source"] = bucket.source_named(&missing, &[""]);
    let status = env.wait_final(env.submit(&request).await).await;
    assert_eq!(status["state"], "failed", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains(&missing) && error.contains("does not exist"), "{error}");
    let (field, noun) = match provider {
        Provider::Azure => ("source.container", "container"),
        _ => ("source.bucket", "bucket"),
    };
    assert!(error.contains(field) && error.contains(noun), "{error}");
    assert_eq!(env.finished_events(1).await.len(), 1);
    fleet.stop().await;
}

/// A copy into `gs://`: small objects as one upload, a large one through a
/// resumable upload of several parts, every byte intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_into_a_gcs_destination() {
    let env = TestEnv::new().await;
    let destination = env.bucket(Provider::Gcs).await;
    let source = env.bucket(Provider::S3).await;
    let mut objects: BTreeMap<String, Vec<u8>> =
        (0..5).map(|i| (format!("g/img_{i}.jpg"), body(i, 3000))).collect();
    objects.insert("g/large.jpg".into(), body(7, 11 * 1024 * 1024 + 5));
    source.put_all(&objects.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>()).await;
    let mut worker = env.worker_config();
    worker.destination = Some(format!("gs://{}/platform", destination.name));
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;
    let mut request = source.request(&env, "to-gcs", &["g/"]);
    request["mode"] = json!("copy");
    request["filter"] = json!({ "max_object_bytes": 50_000_000 });
    let status = env.wait_final(env.submit(&request).await).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    let stored = env.stored("to-gcs").await;
    for (key, bytes) in &objects {
        let stored_url = stored[&source.url(key)].1.clone().expect("a stored_url");
        let object = stored_url
            .strip_prefix(&format!("gs://{}/", destination.name))
            .unwrap_or_else(|| panic!("{stored_url} is not in the gs:// destination"));
        assert!(object.starts_with("platform/ws-test/to-gcs/"), "{object}");
        assert_eq!(
            &TestBucket::gcs_get(&destination.name, object).await,
            bytes,
            "{key} differs from its copy"
        );
    }
    fleet.stop().await;
}

/// One flat folder: numbered names, hex names, capitals, punctuation and
/// non-ASCII, with every message delivered many times. On S3 and GCS the
/// chain is split into key ranges listed at once (and split again); on
/// Azure, which cannot start a listing at a key, it is one chain. Either
/// way each object is listed exactly once.
async fn flat_prefix_in_parallel_ranges(provider: Provider) {
    let env = TestEnv::new().await;
    let bucket = env.bucket(provider).await;
    let mut keys: Vec<String> = (0..600).map(|i| format!("flat/{i:06}.jpg")).collect();
    keys.extend((0..40_u32).map(|i| format!("flat/{:08x}.jpg", i.wrapping_mul(0x0743_9e1b))));
    for odd in [
        "flat/Zebra.jpg",
        "flat/_under.jpg",
        "flat/-dash.jpg",
        "flat/a b.jpg",
        "flat/ünïcode.jpg",
        "flat/~t.jpg",
    ] {
        keys.push(odd.to_owned());
    }
    keys.push("outside/000001.jpg".to_owned());
    bucket.put_all(&keys.iter().map(|k| (k.clone(), k.as_bytes().to_vec())).collect::<Vec<_>>()).await;
    let expected: BTreeSet<String> =
        keys.iter().filter(|k| k.starts_with("flat/")).map(|k| bucket.url(k)).collect();
    let mut scheduler = env.scheduler_config();
    scheduler.republish_after_secs = 0.0;
    let mut worker = env.worker_config();
    worker.page_size = 20;
    let fleet = env.start(vec![scheduler], vec![worker.clone(), worker]).await;
    let id = env.submit(&bucket.request(&env, "flat", &["flat/"])).await;
    let status = env.wait_final(id).await;
    let n = expected.len() as i64;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(counts(&status), (n, n, 0, 0), "{status}");
    let images: BTreeSet<String> = env.images("flat").await.into_keys().collect();
    assert_eq!(images, expected);

    let (client, connection) =
        tokio_postgres::connect(&env.database_url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT state, start_at, end_before FROM tether.tasks WHERE import_id = $1 AND kind = 'list'",
            &[&id],
        )
        .await
        .expect("query tasks");
    assert!(rows.iter().all(|r| r.get::<_, String>(0) == "done"));
    let ranges: Vec<(Option<String>, Option<String>)> = rows.iter().map(|r| (r.get(1), r.get(2))).collect();
    if provider == Provider::Azure {
        assert_eq!(ranges, vec![(None, None)], "Azure lists one chain");
    } else {
        assert!(ranges.len() > 5, "the flat chain was split into ranges: {ranges:?}");
        // The ranges tile the key space: each start is another's end.
        let ends: BTreeSet<&str> = ranges.iter().filter_map(|r| r.1.as_deref()).collect();
        let starts: BTreeSet<&str> = ranges.iter().filter_map(|r| r.0.as_deref()).collect();
        assert_eq!(starts, ends, "{ranges:?}");
        assert_eq!(
            ranges.iter().filter(|r| r.1.is_none()).count(),
            1,
            "one range runs to the end: {ranges:?}"
        );
    }
    fleet.stop().await;
}
