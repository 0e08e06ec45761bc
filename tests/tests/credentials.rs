//! STS AssumeRole sessions against moto's STS: cached per role, refreshed a
//! margin before they expire, and an import keeps going across refreshes.

use std::sync::Arc;
use std::time::Duration;

use tether_shared::credentials::sts::{RoleKey, StsCredentials, SESSION_SECONDS};
use tether_tests::{captured_logs, TestEnv};

fn role() -> RoleKey {
    RoleKey {
        role_arn: "arn:aws:iam::123456789012:role/tether-test".into(),
        external_id: "ext-7ed6d782".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_cached_and_refreshed_within_the_margin() {
    let env = TestEnv::new().await;
    let client = aws_sdk_sts::Client::new(&env.sdk);

    // A 15-minute margin on a 6-hour session: the second call is a cache hit.
    let cached = StsCredentials::new(client.clone(), Duration::from_secs(900));
    let a = cached.credentials(&role()).await.expect("assume role");
    let b = cached.credentials(&role()).await.expect("cached");
    assert_eq!(a.access_key_id(), b.access_key_id());
    assert_eq!(cached.refresh_count(), 1);
    let expiry = a.expiry().expect("sessions expire");
    let hours =
        expiry.duration_since(std::time::SystemTime::now()).expect("in the future").as_secs_f64() / 3600.0;
    assert!((5.9..=6.01).contains(&hours), "asked for 6-hour sessions, got {hours:.2} h");

    // A margin that leaves 2 s of a session's life: renewed once those pass.
    let short = Arc::new(StsCredentials::new(client, Duration::from_secs(SESSION_SECONDS as u64 - 2)));
    let first = short.credentials(&role()).await.expect("assume role");
    assert_eq!(short.credentials(&role()).await.expect("cached").access_key_id(), first.access_key_id());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let renewed = short.credentials(&role()).await.expect("renewed");
    assert_ne!(renewed.access_key_id(), first.access_key_id(), "not renewed within the margin");
    assert_eq!(short.refresh_count(), 2);

    // Concurrent callers for one role share one AssumeRole call.
    let fresh = Arc::new(StsCredentials::new(aws_sdk_sts::Client::new(&env.sdk), Duration::from_secs(900)));
    let calls = (0..16).map(|_| {
        let sts = Arc::clone(&fresh);
        tokio::spawn(async move { sts.credentials(&role()).await.map(|c| c.access_key_id().to_owned()) })
    });
    let keys: Vec<String> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("join").expect("creds"))
        .collect();
    assert!(keys.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(fresh.refresh_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_import_runs_on_across_credential_refreshes() {
    let env = TestEnv::new().await;
    env.put_many((0..40).map(|i| format!("c/{i:02}.jpg"))).await;
    let mut worker = env.worker_config();
    worker.page_size = 5;
    // A margin as long as the session: every page needs fresh credentials.
    worker.sts_refresh_margin_secs = SESSION_SECONDS as u64;
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;
    let status = env.wait_final(env.submit(&env.request("creds", &["c/"])).await).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["objects_imported"], 40);
    assert_eq!(status["objects_failed"], 0);
    let assumed = captured_logs().matches("Assumed the customer's role.").count();
    assert!(assumed >= 8, "8 pages should have renewed the session at least 8 times, saw {assumed}");
    fleet.stop().await;
}
