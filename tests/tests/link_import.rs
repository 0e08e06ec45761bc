//! S3 link-mode imports end to end: AMQP request in, references and counts
//! in Postgres, one FinishedEvent out.

use std::time::Duration;

use serde_json::json;
use tether_tests::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_page_listing_over_overlapping_prefixes() {
    let env = TestEnv::new().await;
    // 3 prefixes; "photos/" covers "photos/2024/", so it must be listed once.
    let mut keys = Vec::new();
    for i in 0..40 {
        keys.push(format!("photos/2024/img_{i:03}.jpg"));
        keys.push(format!("photos/other/pic_{i:03}.PNG"));
    }
    for i in 0..25 {
        keys.push(format!("scans/s_{i:03}.tiff"));
    }
    keys.extend(["photos/readme.txt".into(), "photos/notes".into(), "scans/data.json".into()]);
    keys.push("unrelated/img.jpg".into());
    env.put_many(keys).await;
    for marker in ["photos/", "photos/2024/", "scans/"] {
        env.put(marker, b"").await; // folder markers: ignored
    }

    let mut worker = env.worker_config();
    worker.page_size = 7;
    let fleet = env.start(vec![env.scheduler_config()], vec![worker.clone(), worker]).await;
    let request = env.request("overlap", &["photos/2024/", "scans/", "photos/"]);
    let id = env.submit(&request).await;
    let status = env.wait_final(id).await;

    // photos/: 80 images + 2 non-matching; scans/: 25 images + 1 non-matching.
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["objects_listed"], 108);
    assert_eq!(status["objects_imported"], 105);
    assert_eq!(status["objects_skipped"], 3);
    assert_eq!(status["objects_failed"], 0);
    assert_eq!(status["error"], json!(null));
    assert_eq!(status["overdue"], false);
    let images = env.images("overlap").await;
    assert_eq!(images.len(), 105);
    assert!(images.keys().all(|url| url.starts_with(&format!("s3://{}/", env.bucket))));
    assert!(images.contains_key(&format!("s3://{}/photos/other/pic_007.PNG", env.bucket)));
    assert!(!images.keys().any(|u| u.ends_with('/') || u.contains("unrelated") || u.ends_with(".txt")));

    let events = env.finished_events(1).await;
    assert_eq!(events.len(), 1, "exactly one FinishedEvent: {events:?}");
    let event = &events[0];
    assert_eq!(event["import_id"], id.to_string());
    assert_eq!(event["revision"], 1);
    assert_eq!(event["state"], "succeeded");
    assert_eq!(event["objects_imported"], 105);
    assert_eq!(event["objects_skipped"], 3);
    assert_eq!(event["dataset_id"], "overlap");
    assert!(event["finished_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    fleet.assert_running();
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filter_and_size_limit() {
    let env = TestEnv::new().await;
    env.put("f/small.jpg", &[1; 10]).await;
    env.put("f/big.jpg", &[1; 2000]).await;
    env.put("f/any.bin", &[1; 10]).await;
    let fleet = env.start_default(1).await;

    let mut request = env.request("filters", &["f/"]);
    request["filter"] = json!({"extensions": ["*"], "max_object_bytes": 1000});
    let id = env.submit(&request).await;
    let status = env.wait_final(id).await;
    assert_eq!(status["state"], "partially_succeeded", "{status}");
    assert_eq!(
        (
            status["objects_listed"].as_i64(),
            status["objects_imported"].as_i64(),
            status["objects_failed"].as_i64()
        ),
        (Some(3), Some(2), Some(1))
    );
    assert!(status["error"].as_str().is_some_and(|e| e.contains("too_large")), "{status}");
    assert_eq!(
        env.failures(id).await,
        vec![(format!("s3://{}/f/big.jpg", env.bucket), "too_large".to_owned())]
    );

    // Every matching object too large: the import fails.
    let mut request = env.request("filters-2", &["f/big"]);
    request["filter"] = json!({"max_object_bytes": 1000});
    let status = env.wait_final(env.submit(&request).await).await;
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["objects_failed"], 1);

    // Nothing matches the filter: failed, with a sentence saying so.
    let mut request = env.request("filters-3", &["f/"]);
    request["filter"] = json!({"extensions": ["webp"]});
    let status = env.wait_final(env.submit(&request).await).await;
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["objects_skipped"], 3);
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains("matched the filter") && error.contains("filter.extensions"), "{error}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reimport_skips_unchanged_and_takes_changed_and_new() {
    let env = TestEnv::new().await;
    env.put_many((0..30).map(|i| format!("r/{i:02}.jpg"))).await;
    let mut worker = env.worker_config();
    worker.page_size = 8;
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;
    let first = env.wait_final(env.submit(&env.request("re", &["r/"])).await).await;
    assert_eq!((first["objects_imported"].as_i64(), first["objects_skipped"].as_i64()), (Some(30), Some(0)));
    let before = env.images("re").await;

    env.put("r/05.jpg", b"changed bytes").await; // other ETag
    env.put("r/new.jpg", b"new").await;
    let second_id = env.submit(&env.request("re", &["r/"])).await;
    let second = env.wait_final(second_id).await;
    assert_eq!(second["state"], "succeeded", "{second}");
    assert_eq!(second["objects_listed"], 31);
    assert_eq!(second["objects_imported"], 2);
    assert_eq!(second["objects_skipped"], 29);
    let after = env.images("re").await;
    assert_eq!(after.len(), 31);
    let changed = format!("s3://{}/r/05.jpg", env.bucket);
    assert_ne!(before[&changed], after[&changed]);

    // Nothing new at all: still a success, everything skipped.
    let third = env.wait_final(env.submit(&env.request("re", &["r/"])).await).await;
    assert_eq!(third["state"], "succeeded", "{third}");
    assert_eq!((third["objects_imported"].as_i64(), third["objects_skipped"].as_i64()), (Some(0), Some(31)));
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_bucket_and_empty_prefix_fail_with_a_sentence() {
    let env = TestEnv::new().await;
    env.put("there/a.jpg", b"a").await;
    let fleet = env.start_default(1).await;

    let mut request = env.request("missing", &["x/"]);
    request["source"]["bucket"] = json!("no-such-bucket-tether");
    let status = env.wait_final(env.submit(&request).await).await;
    assert_eq!(status["state"], "failed");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains("s3://no-such-bucket-tether") && error.contains("does not exist"), "{error}");

    let status =
        env.wait_final(env.submit(&env.request("empty", &["nothing/here/", "nor/here/"])).await).await;
    assert_eq!(status["state"], "failed");
    assert_eq!(status["objects_listed"], 0);
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("s3://{}/nothing/here/", env.bucket)) && error.contains("Nothing was found"),
        "{error}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_request_is_one_import_and_a_conflicting_one_is_rejected() {
    let env = TestEnv::new().await;
    env.put_many((0..12).map(|i| format!("d/{i}.jpg"))).await;
    let fleet = env.start_default(2).await;
    let request = env.request("dup", &["d/"]);
    let id = env.submit(&request).await;
    // The same JSON value again, keys in another order and spaced differently.
    let mut reordered = String::from("{ \"source\" : ");
    reordered.push_str(&request["source"].to_string());
    for key in ["version", "mode", "dataset_id", "workspace_id", "import_id"] {
        reordered.push_str(&format!(",\n  \"{key}\": {}", request[key]));
    }
    reordered.push('}');
    env.publish_raw("import.request", reordered.as_bytes(), Some("application/json")).await;
    let status = env.wait_final(id).await;
    env.publish_raw("import.request", request.to_string().as_bytes(), Some("application/json")).await;

    // Same id, another body: rejected; the first import stays as it was.
    let mut other = request.clone();
    other["dataset_id"] = json!("elsewhere");
    env.submit(&other).await;
    let rejected = env.rejected(1).await;
    assert_eq!(rejected.len(), 1);
    assert!(
        rejected[0].reason.contains(&id.to_string()) && rejected[0].reason.contains("different request"),
        "{}",
        rejected[0].reason
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.import_count().await, 1);
    assert_eq!(env.status(id).await, Some(status.clone()));
    assert_eq!(status["objects_imported"], 12);
    assert_eq!(env.images("dup").await.len(), 12);
    assert!(env.images("elsewhere").await.is_empty());
    let events = env.finished_events(1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(env.rejected(0).await.is_empty(), "duplicates are not rejections");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_schedulers_start_on_one_fresh_database() {
    let env = TestEnv::new().await;
    env.put_many((0..5).map(|i| format!("t/{i}.jpg"))).await;
    let fleet =
        env.start(vec![env.scheduler_config(), env.scheduler_config()], vec![env.worker_config()]).await;
    let status = env.wait_final(env.submit(&env.request("two", &["t/"])).await).await;
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["objects_imported"], 5);
    fleet.assert_running();
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_import_is_final_as_soon_as_its_last_task_ends_not_at_the_next_tick() {
    let env = TestEnv::new().await;
    env.put_many((0..30).map(|i| format!("w/{i}/img.jpg"))).await;
    // A tick far longer than the wait below: only the wake-up can finish it.
    let mut scheduler = env.scheduler_config();
    scheduler.tick_secs = 600.0;
    let fleet = env.start(vec![scheduler], vec![env.worker_config()]).await;
    let id = env.submit(&env.request("wake", &["w/"])).await;
    let status = env.wait_final_within(id, Duration::from_secs(30)).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["objects_imported"], 30);
    // The FinishedEvent goes out in the same pass.
    assert_eq!(env.finished_events(1).await.len(), 1);
    fleet.stop().await;
}
