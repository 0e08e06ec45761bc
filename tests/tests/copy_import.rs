//! Copy-mode imports: bytes land in the platform's storage byte for byte,
//! verified, with exact counts, and nothing lands outside the destination.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tether_tests::proxy::{FaultProxy, Faults};
use tether_tests::{service_var, TestEnv};

/// Deterministic but varied bytes for an object.
fn body(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7 + j / 251) as u8).collect()
}

fn copy_request(env: &TestEnv, dataset: &str, prefixes: &[&str]) -> Value {
    let mut request = env.request(dataset, prefixes);
    request["mode"] = json!("copy");
    request
}

/// Seeds `n` objects of varied sizes under `prefix`; returns key → bytes.
async fn seed(env: &TestEnv, prefix: &str, n: usize) -> BTreeMap<String, Vec<u8>> {
    let objects: BTreeMap<String, Vec<u8>> =
        (0..n).map(|i| (format!("{prefix}img_{i:03}.jpg"), body(i, 1000 + i * 997 % 70_000))).collect();
    futures_util::future::join_all(objects.iter().map(|(k, v)| env.put(k, v))).await;
    objects
}

async fn read_stored(env: &TestEnv, stored_url: &str) -> Vec<u8> {
    if let Some(path) = stored_url.strip_prefix("file://") {
        return std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    }
    let rest = stored_url.strip_prefix("s3://").expect("an s3:// or file:// URL");
    let (bucket, key) = rest.split_once('/').expect("bucket/key");
    env.get(bucket, key).await
}

/// Every source object of the dataset is stored, byte for byte.
async fn assert_copied(
    env: &TestEnv,
    dataset: &str,
    objects: &BTreeMap<String, Vec<u8>>,
    stored_prefix: &str,
) {
    let stored = env.stored(dataset).await;
    assert_eq!(stored.len(), objects.len());
    for (key, bytes) in objects {
        let url = format!("s3://{}/{key}", env.bucket);
        let (storage, stored_url) = &stored[&url];
        assert_eq!(storage, "copy");
        let stored_url = stored_url.as_deref().expect("copies have a stored_url");
        assert!(stored_url.starts_with(stored_prefix), "{stored_url} outside {stored_prefix}");
        assert_eq!(&read_stored(env, stored_url).await, bytes, "{key} differs from its copy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_a_multi_page_prefix_into_s3_byte_for_byte() {
    let env = TestEnv::new().await;
    let objects = seed(&env, "cp/", 37).await;
    env.put("cp/too-big.jpg", &body(99, 300_000)).await;
    env.put("cp/notes.txt", b"not an image").await;
    let destination = env.destination_bucket().await;
    let mut worker = env.worker_config();
    worker.page_size = 6;
    worker.destination = Some(format!("s3://{destination}/platform/copies"));
    let fleet = env.start(vec![env.scheduler_config()], vec![worker.clone(), worker]).await;

    let request = || {
        let mut r = copy_request(&env, "copy-s3", &["cp/"]);
        r["filter"] = json!({"max_object_bytes": 200_000});
        r
    };
    let id = env.submit(&request()).await;
    let status = env.wait_final(id).await;
    assert_eq!(status["state"], "partially_succeeded", "{status}");
    assert_eq!(status["objects_listed"], 39);
    assert_eq!(status["objects_imported"], 37);
    assert_eq!(status["objects_skipped"], 1);
    assert_eq!(status["objects_failed"], 1);
    let total: usize = objects.values().map(Vec::len).sum();
    assert_eq!(status["bytes_copied"], total as i64);
    assert_eq!(
        env.failures(id).await,
        vec![(format!("s3://{}/cp/too-big.jpg", env.bucket), "too_large".into())]
    );
    assert_copied(&env, "copy-s3", &objects, &format!("s3://{destination}/platform/copies/ws-test/copy-s3/"))
        .await;

    // Re-import: nothing copied again; then one object changes.
    let again = env.wait_final(env.submit(&request()).await).await;
    assert_eq!(again["objects_imported"], 0, "{again}");
    assert_eq!(again["objects_skipped"], 38, "{again}");
    assert_eq!(again["bytes_copied"], 0);
    let changed = body(1234, 4321);
    env.put("cp/img_005.jpg", &changed).await;
    let third = env.wait_final(env.submit(&request()).await).await;
    assert_eq!(third["state"], "partially_succeeded", "{third}");
    assert_eq!((third["objects_imported"].as_i64(), third["objects_skipped"].as_i64()), (Some(1), Some(37)));
    assert_eq!(third["bytes_copied"], 4321);
    let mut expected = objects.clone();
    expected.insert("cp/img_005.jpg".into(), changed);
    assert_copied(&env, "copy-s3", &expected, &format!("s3://{destination}/platform/copies/")).await;

    // A link import over copies leaves them in place and counts them skipped.
    let mut link = request();
    link["mode"] = json!("link");
    let link = env.wait_final(env.submit(&link).await).await;
    assert_eq!(
        (link["objects_imported"].as_i64(), link["objects_skipped"].as_i64()),
        (Some(0), Some(38)),
        "{link}"
    );
    assert_copied(&env, "copy-s3", &expected, &format!("s3://{destination}/")).await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_into_a_directory_and_over_links() {
    let env = TestEnv::new().await;
    let objects = seed(&env, "dir/", 23).await;
    let dir = env.destination_dir();
    let mut worker = env.worker_config();
    worker.page_size = 5;
    worker.destination = Some(format!("file://{}", dir.display()));
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;

    // First linked, then copied: the copy import copies them all.
    let link = env.wait_final(env.submit(&env.request("copy-file", &["dir/"])).await).await;
    assert_eq!(link["objects_imported"], 23);
    let copy = env.wait_final(env.submit(&copy_request(&env, "copy-file", &["dir/"])).await).await;
    assert_eq!(copy["state"], "succeeded", "{copy}");
    assert_eq!(copy["objects_imported"], 23);
    assert_eq!(copy["bytes_copied"], objects.values().map(Vec::len).sum::<usize>() as i64);
    assert_copied(&env, "copy-file", &objects, &format!("file://{}/", dir.display())).await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_object_is_copied_intact_through_multipart() {
    let env = TestEnv::new().await;
    let big = body(7, 105 * 1024 * 1024); // 105 MiB: 21 parts of 5 MiB
    env.put("big/huge.tif", &big).await;
    let destination = env.destination_bucket().await;
    let mut worker = env.worker_config();
    worker.destination = Some(format!("s3://{destination}"));
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;
    let mut request = copy_request(&env, "copy-big", &["big/"]);
    request["filter"] = json!({"max_object_bytes": 200 * 1024 * 1024});
    let status = env.wait_final_within(env.submit(&request).await, Duration::from_secs(300)).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["bytes_copied"], big.len() as i64);
    let stored = env.stored("copy-big").await;
    let (_, url) = stored.values().next().expect("one image");
    let rest = url.as_deref().and_then(|u| u.strip_prefix("s3://")).expect("an s3 URL");
    let (bucket, key) = rest.split_once('/').expect("bucket/key");
    let head = env.s3.head_object().bucket(bucket).key(key).send().await.expect("head");
    assert!(
        head.e_tag().is_some_and(|e| e.trim_matches('"').ends_with("-21")),
        "not multipart: {:?}",
        head.e_tag()
    );
    assert!(env.get(bucket, key).await == big, "the copy differs from the source");
    fleet.stop().await;
}

/// A large object is read as several ranged GETs at once (counted by a
/// proxy in front of the store), joined in order and verified whole; a
/// small one is read with one GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_object_is_read_in_ranges_at_once_and_lands_intact() {
    let env = TestEnv::new().await;
    let mut objects = BTreeMap::new();
    objects.insert("ranged/big.tif".to_owned(), body(3, 23 * 1024 * 1024 + 17));
    objects.insert("ranged/small.jpg".to_owned(), body(4, 4000));
    futures_util::future::join_all(objects.iter().map(|(k, v)| env.put(k, v))).await;
    let proxy = FaultProxy::start(&service_var("AWS_ENDPOINT_URL_S3"), Faults::default()).await;
    let dir = env.destination_dir();
    let fleet = env.start(vec![env.scheduler_config()], vec![]).await;
    let _worker = env.spawn_worker_process(&[
        ("AWS_ENDPOINT_URL_S3", proxy.url()),
        ("TETHER_DESTINATION", format!("file://{}", dir.display())),
        ("TETHER_COPY_PART_BYTES", (5 * 1024 * 1024).to_string()),
        ("TETHER_COPY_RANGED_FROM_BYTES", "0".into()),
        ("TETHER_COPY_RANGES_IN_FLIGHT", "3".into()),
    ]);
    let mut request = copy_request(&env, "ranged", &["ranged/"]);
    request["filter"] = json!({"max_object_bytes": 100 * 1024 * 1024});
    let status = env.wait_final_within(env.submit(&request).await, Duration::from_secs(120)).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["bytes_copied"], objects.values().map(Vec::len).sum::<usize>() as i64);
    assert_copied(&env, "ranged", &objects, &format!("file://{}/", dir.display())).await;
    // 23 MiB in ranges of 5 MiB: five ranged GETs, none for the small one.
    let ranged = proxy.counts.ranged.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(ranged, 5, "ranged GETs through the proxy");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_keys_cannot_place_bytes_outside_the_destination() {
    let env = TestEnv::new().await;
    let keys = [
        "esc/../../../../tmp/escaped.jpg",
        "esc/..\\..\\windows.jpg",
        "esc//double//slash.jpg",
        "esc/./dot.jpg",
        "esc/ctrl\u{1}\u{1b}[31m.jpg",
        "esc/spaces and ünïcödé.jpg",
        "esc/../esc/loop.jpg",
        // Extensions that are no extension: none is kept in the copy's name.
        "esc/x.jpg/../a.exe",
        "esc/a.JPG%00.sh",
        "esc/no-extension",
        "esc/ctrl.j\u{1}p\u{7f}g",
        "esc/rtl.\u{202e}gpj.exe",
        "esc/space.jp g",
        "esc/trailing-dot.",
    ];
    let long = format!("esc/{}.jpg", "x/".repeat(500));
    let mut objects: BTreeMap<String, Vec<u8>> =
        keys.iter().enumerate().map(|(i, k)| ((*k).to_owned(), body(i, 100 + i))).collect();
    objects.insert(long, body(50, 77));
    objects.insert(format!("esc/long-extension.{}", "e".repeat(300)), body(51, 78));
    futures_util::future::join_all(objects.iter().map(|(k, v)| env.put(k, v))).await;
    let dir = env.destination_dir().join("root");
    let mut worker = env.worker_config();
    worker.destination = Some(format!("file://{}", dir.display()));
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;
    // Every key is copied, whatever its extension.
    let mut request = copy_request(&env, "hostile", &["esc/"]);
    request["filter"] = serde_json::json!({ "extensions": ["*"] });
    let status = env.wait_final_within(env.submit(&request).await, std::time::Duration::from_secs(120)).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["objects_imported"], objects.len() as i64);
    assert_copied(&env, "hostile", &objects, &format!("file://{}/", dir.display())).await;
    // Every file is under the destination root, and nothing else appeared.
    let mut files = Vec::new();
    collect_files(dir.parent().expect("parent"), &mut files);
    assert_eq!(files.len(), objects.len(), "{files:?}");
    for file in files {
        let canonical = file.canonicalize().expect("canonical");
        assert!(canonical.starts_with(dir.canonicalize().expect("root")), "{} escaped", canonical.display());
        // sha256 hex, then at most a short plain lower-case extension.
        let name = file.file_name().and_then(|n| n.to_str()).expect("a UTF-8 file name");
        let (digest, extension) = name.split_once('.').unwrap_or((name, "jpg"));
        assert!(digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()), "{name:?}");
        assert!(
            (1..=10).contains(&extension.len())
                && extension.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "{name:?}: the copy's extension is not a plain one"
        );
    }
    let names: Vec<String> = {
        let mut files = Vec::new();
        collect_files(&dir, &mut files);
        files.iter().filter_map(|f| f.file_name().and_then(|n| n.to_str()).map(str::to_owned)).collect()
    };
    for (suffix, count) in [(".exe", 2), (".sh", 1), (".jpg", 8)] {
        assert_eq!(names.iter().filter(|n| n.ends_with(suffix)).count(), count, "{suffix} in {names:?}");
    }
    assert_eq!(names.iter().filter(|n| !n.contains('.')).count(), 5, "no extension: {names:?}");
    fleet.stop().await;
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copy_without_a_destination_fails_with_a_sentence() {
    let env = TestEnv::new().await;
    env.put("nd/a.jpg", b"a").await;
    let fleet = env.start_default(1).await;
    let status = env.wait_final(env.submit(&copy_request(&env, "nodest", &["nd/"])).await).await;
    assert_eq!(status["state"], "failed");
    assert!(status["error"].as_str().is_some_and(|e| e.contains("TETHER_DESTINATION")), "{status}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bucket_gone_before_copying_fails_the_import_once_and_counts_add_up() {
    let env = TestEnv::new().await;
    let objects = seed(&env, "gone/", 30).await;
    let dir = env.destination_dir();
    let mut lister = env.worker_config();
    lister.kinds = vec!["list".into()];
    lister.destination = Some(format!("file://{}", dir.display()));
    let fleet = env.start(vec![env.scheduler_config()], vec![lister.clone()]).await;
    let id = env.submit(&copy_request(&env, "gone", &["gone/"])).await;
    env.wait_listed(id, 30).await;
    for key in objects.keys() {
        env.delete(key).await;
    }
    env.s3.delete_bucket().bucket(&env.bucket).send().await.expect("delete the bucket");
    let mut copier = lister;
    copier.kinds = vec!["copy".into()];
    let copiers = env.start(vec![], vec![copier]).await;
    let status = env.wait_final(id).await;
    assert_eq!(status["state"], "failed", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("s3://{}", env.bucket)) && error.contains("does not exist"), "{error}");
    // One clear error for the import; every object still accounted for.
    assert_eq!((status["objects_imported"].as_i64(), status["objects_failed"].as_i64()), (Some(0), Some(30)));
    let failures = env.failures(id).await;
    assert_eq!(failures.len(), 30);
    assert!(failures.iter().all(|(_, code)| code == "not_found"), "{failures:?}");
    // Once per copy task in hand (a worker holds two), not once per object.
    let failed = tether_tests::captured_logs().matches("The import cannot run.").count();
    assert!((1..=2).contains(&failed), "the import failed {failed} times");
    copiers.stop().await;
    env.s3.create_bucket().bucket(&env.bucket).send().await.expect("recreate for the clean-up");
    fleet.stop().await;
}
