//! Hostile input cannot stall intake or a listing (issue #13): a NUL in any
//! request field, a value of 200 kB, a secret in a refused request, a key
//! holding a NUL, an Azure blob named with `.` or `..` segments. Each is
//! refused or failed alone, with a sentence, and the next import runs at once.

use std::time::Duration;

use serde_json::{json, Value};
use tether_shared::model::rejection::MAX_REASON_BYTES;
use tether_tests::stores::Provider;
use tether_tests::TestEnv;

fn gcs_request(env: &TestEnv, account: &str) -> Value {
    let mut request = env.request("hostile", &["x/"]);
    request["source"] = json!({
        "provider": "gcs", "bucket": "acme-images", "prefixes": ["x/"],
        "impersonate_service_account": account,
    });
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nul_in_the_service_account_is_rejected_and_the_next_import_runs_at_once() {
    let env = TestEnv::new().await;
    env.put("a/ok.jpg", b"ok").await;
    let fleet = env.start_default(1).await;
    let bad = gcs_request(&env, "a\u{0}b@x.iam.gserviceaccount.com");
    let bad_id = env.submit(&bad).await;
    let good = env.submit(&env.request("after", &["a/"])).await;

    let status = env.wait_final_within(good, Duration::from_secs(45)).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    let failed = env.wait_final_within(bad_id, Duration::from_secs(10)).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("`source.impersonate_service_account`") && error.contains("NUL"), "{error}");
    let rejected = env.rejected(1).await;
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0].reason.contains("NUL"), "{}", rejected[0].reason);
    fleet.assert_running();
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_accounts_must_be_a_service_accounts_email() {
    let env = TestEnv::new().await;
    let fleet = env.start_default(1).await;
    let bad = [
        "importer@evil.com",
        "x@acme.iam.gserviceaccount.com",
        "importer@acme.iam.gserviceaccount.com.evil.com",
    ];
    let mut ids = Vec::new();
    for account in bad {
        ids.push(env.submit(&gcs_request(&env, account)).await);
    }
    for id in ids {
        let status = env.wait_final_within(id, Duration::from_secs(30)).await;
        assert_eq!(status["state"], "failed", "{status}");
        assert!(status["error"]
            .as_str()
            .unwrap_or_default()
            .contains("`source.impersonate_service_account`"));
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_200_kb_value_gets_a_bounded_reason_a_failed_import_and_the_next_import_runs() {
    let env = TestEnv::new().await;
    env.put("a/ok.jpg", b"ok").await;
    let fleet = env.start_default(1).await;
    let long = "k".repeat(200_000);
    let mut request = env.request("hostile", &["a/"]);
    request[long.as_str()] = json!(1);
    request["filter"] = json!({ "extensions": ["e".repeat(200_000)] });
    let bad_id = env.submit(&request).await;
    let good = env.submit(&env.request("after", &["a/"])).await;

    let failed = env.wait_final_within(bad_id, Duration::from_secs(30)).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    let rejected = env.rejected(1).await;
    assert_eq!(rejected.len(), 1, "one rejection");
    let reason = &rejected[0].reason;
    assert!(reason.len() <= MAX_REASON_BYTES, "the reason is {} bytes", reason.len());
    assert!(reason.contains("is not part of the request"), "{reason}");
    assert!(failed["error"].as_str().unwrap_or_default().len() <= 2 * MAX_REASON_BYTES);
    let status = env.wait_final_within(good, Duration::from_secs(30)).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    fleet.assert_running();
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tether_rejected_keeps_no_sas_token_and_no_signature() {
    let env = TestEnv::new().await;
    let fleet = env.start_default(1).await;
    let secret = "SECRETSIGNATURE0123";
    let mut request = env.request("hostile", &["a/"]);
    request["source"] = json!({
        "provider": "azure", "account": "acmestorage", "container": "images",
        "sas_token": format!("sv=2022-11-02&sp=rl&sig={secret}"), "bogus": format!("sig={secret}"),
    });
    env.submit(&request).await;
    // Not JSON, but holding a token all the same.
    let broken = format!("{{\"source\": {{\"sas_token\": \"sv=1&sp=rl&xx={secret}\", oops");
    env.publish_raw("import.request", broken.as_bytes(), Some("application/json")).await;

    let rejected = env.rejected(2).await;
    assert_eq!(rejected.len(), 2);
    for r in &rejected {
        let body = String::from_utf8_lossy(&r.body);
        assert!(!body.contains(secret), "the body keeps the secret: {body}");
        assert!(!r.reason.contains(secret), "the reason keeps the secret: {}", r.reason);
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_with_a_nul_fails_alone_and_the_rest_of_its_page_is_imported() {
    let env = TestEnv::new().await;
    env.put_many(["n/a.jpg", "n/b\u{0}c.jpg", "n/d.jpg", "n/sub\u{0}x/e.jpg", "n/z/f.jpg"].map(String::from))
        .await;
    let mut worker = env.worker_config();
    worker.page_size = 3;
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;
    let id = env.submit(&env.request("nul", &["n/"])).await;
    let status = env.wait_final_within(id, Duration::from_secs(60)).await;
    assert_eq!(status["state"], "partially_succeeded", "{status}");
    assert_eq!(status["objects_listed"], 5, "{status}");
    assert_eq!(status["objects_imported"], 3, "{status}");
    assert_eq!(status["objects_failed"], 2, "{status}");
    let failures = env.failures(id).await;
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(
        failures.iter().all(|(url, code)| code == "unsupported_key" && url.contains("%00")),
        "{failures:?}"
    );
    let images = env.images("nul").await;
    for key in ["n/a.jpg", "n/d.jpg", "n/z/f.jpg"] {
        assert!(images.contains_key(&format!("s3://{}/{key}", env.bucket)), "{key}: {images:?}");
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_azure_blob_with_dot_segments_fails_alone_and_the_rest_of_its_page_is_imported() {
    let env = TestEnv::new().await;
    let container = env.bucket(Provider::Azure).await;
    container
        .put_all(&[("d/a.jpg".to_owned(), b"a".to_vec()), ("d/z/f.jpg".to_owned(), b"f".to_vec())])
        .await;
    let unaddressable = ["d/x/../c.jpg", "d/./e.jpg"];
    for key in unaddressable {
        container.put_with_dot_segments(key, key.as_bytes()).await;
    }
    let mut worker = env.worker_config();
    worker.page_size = 3;
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;
    let id = env.submit(&container.request(&env, "dots", &["d/"])).await;
    let status = env.wait_final_within(id, Duration::from_secs(60)).await;
    assert_eq!(status["state"], "partially_succeeded", "{status}");
    assert_eq!(status["objects_listed"], 4, "{status}");
    assert_eq!(status["objects_imported"], 2, "{status}");
    assert_eq!(status["objects_failed"], 2, "{status}");
    let mut failures = env.failures(id).await;
    failures.sort();
    let mut expected: Vec<(String, String)> =
        unaddressable.iter().map(|key| (container.url(key), "unsupported_key".to_owned())).collect();
    expected.sort();
    assert_eq!(failures, expected);
    let images = env.images("dots").await;
    assert_eq!(images.len(), 2, "{images:?}");
    for key in ["d/a.jpg", "d/z/f.jpg"] {
        assert!(images.contains_key(&container.url(key)), "{key}: {images:?}");
    }
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains("unsupported_key"), "{error}");
    fleet.stop().await;
}
