//! No AWS secret reaches a log line, even at debug level across every crate.
//! Its own test binary: it sets Tether's own AWS session token to a marker
//! before anything reads the environment.

use tether_tests::{captured_logs, service_var, TestEnv};

/// The prefix of every session token moto's STS issues.
const MOTO_SESSION_TOKEN_PREFIX: &str = "FQoGZXIvYXdzEBYaD";
const OWN_SESSION_TOKEN: &str = "tether-own-session-token-do-not-log";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aws_secrets_appear_in_no_log_line() {
    // Edition 2021: set_var is safe; nothing has read the environment yet.
    std::env::set_var("AWS_SESSION_TOKEN", OWN_SESSION_TOKEN);
    let env = TestEnv::new().await;
    env.put_many((0..12).map(|i| format!("s/{i}.jpg"))).await;
    let mut worker = env.worker_config();
    worker.page_size = 4;
    worker.sts_refresh_margin_secs = 21_600; // renew on every page: more chances to leak
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;
    let ok = env.wait_final(env.submit(&env.request("secrets", &["s/"])).await).await;
    assert_eq!(ok["state"], "succeeded", "{ok}");
    // A failing import logs errors too.
    let mut missing = env.request("secrets", &["s/"]);
    missing["source"]["bucket"] = serde_json::json!("missing-bucket-secrets");
    let failed = env.wait_final(env.submit(&missing).await).await;
    assert_eq!(failed["state"], "failed");
    fleet.stop().await;

    let logs = captured_logs();
    assert!(logs.contains("Assumed the customer's role."), "the logs were not captured");
    let own_secret = service_var("AWS_SECRET_ACCESS_KEY");
    for (name, secret) in [
        ("Tether's own secret access key", own_secret.as_str()),
        ("Tether's own session token", OWN_SESSION_TOKEN),
        ("an assumed role's session token", MOTO_SESSION_TOKEN_PREFIX),
    ] {
        assert!(!logs.contains(secret), "{name} appears in the logs");
    }
    for line in logs.lines() {
        let lower = line.to_ascii_lowercase();
        assert!(!lower.contains("x-amz-security-token"), "a security token header was logged: {line}");
    }
}
