//! Azure's SAS token: refusals become sentences that say what to fix, and
//! the token (a secret) reaches no log line, no error, no status table, and
//! is stored only sealed with `TETHER_SECRETS_KEY`. Its own test binary, so
//! that the captured logs are this test's alone.

use serde_json::json;
use tether_tests::stores::Provider;
use tether_tests::{captured_logs, TestEnv};

/// The signature of a SAS token, as sent and as decoded.
fn signatures(sas: &str) -> Vec<String> {
    let sig = sas.split('&').find_map(|p| p.strip_prefix("sig=")).expect("a sig").to_owned();
    let decoded = percent_encoding::percent_decode_str(&sig).decode_utf8_lossy().into_owned();
    vec![sig, decoded]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_sas_tokens_say_what_to_fix_and_no_token_leaks() {
    let env = TestEnv::new().await;
    let bucket = env.bucket(Provider::Azure).await;
    bucket.put_all(&(0..6).map(|i| (format!("p/{i}.jpg"), vec![i; 100])).collect::<Vec<_>>()).await;
    let mut worker = env.worker_config();
    worker.page_size = 2;
    worker.destination = Some(format!("file://{}", env.destination_dir().display()));
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;
    let mut tokens = Vec::new();
    let mut submit = |request: &mut serde_json::Value, sas: String| {
        request["import_id"] = json!(uuid::Uuid::new_v4());
        request["source"]["sas_token"] = json!(sas);
        tokens.push(sas);
        request.clone()
    };

    // A good token: the import succeeds.
    let mut request = bucket.request(&env, "sas", &["p/"]);
    let good = submit(&mut request, bucket.sas("rl", chrono::Duration::hours(1)));
    let ok = env.wait_final(env.submit(&good).await).await;
    assert_eq!(ok["state"], "succeeded", "{ok}");

    // Expired: the whole import fails, saying to send a current token.
    let expired = submit(&mut request, bucket.sas("rl", chrono::Duration::hours(-1)));
    let status = env.wait_final(env.submit(&expired).await).await;
    assert_eq!(status["state"], "failed", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains("SAS token") && error.contains("expired") && error.contains("l and r"), "{error}");

    // A forged signature: the same.
    let mut forged = bucket.sas("rl", chrono::Duration::hours(1));
    forged = forged.replace("sig=", "sig=AAAA");
    let forged = submit(&mut request, forged);
    let status = env.wait_final(env.submit(&forged).await).await;
    assert_eq!(status["state"], "failed", "{status}");
    assert!(status["error"].as_str().unwrap_or_default().contains("SAS token"), "{status}");

    // Without `l`: the prefix fails `access_denied`, saying which permission.
    let read_only = submit(&mut request, bucket.sas("r", chrono::Duration::hours(1)));
    let id = env.submit(&read_only).await;
    let status = env.wait_final(id).await;
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(env.failures(id).await, vec![(bucket.url("p/"), "access_denied".to_owned())]);
    assert!(status["error"].as_str().unwrap_or_default().contains("l (list)"), "{status}");

    // Without `r`, in copy mode: every object fails `access_denied`.
    request["mode"] = json!("copy");
    let list_only = submit(&mut request, bucket.sas("l", chrono::Duration::hours(1)));
    let id = env.submit(&list_only).await;
    let status = env.wait_final(id).await;
    assert_eq!(status["state"], "failed", "{status}");
    let failures = env.failures(id).await;
    assert_eq!(failures.len(), 6, "{failures:?}");
    assert!(failures.iter().all(|(_, code)| code == "access_denied"), "{failures:?}");
    fleet.stop().await;

    // The tokens are nowhere: not in the logs, not in Postgres in clear.
    let logs = captured_logs();
    assert!(logs.contains("Page committed."), "the logs were not captured");
    let tables = env.dump_text("SELECT t::text FROM tether.imports t UNION ALL SELECT f::text FROM tether.import_failures f UNION ALL SELECT s::text FROM tether.import_status s").await;
    for sas in &tokens {
        for sig in signatures(sas) {
            assert!(!logs.contains(&sig), "a SAS signature appears in the logs");
            assert!(!tables.contains(&sig), "a SAS signature is stored in clear");
        }
    }
    assert!(!logs.contains("sig="), "a SAS token appears in the logs");
    assert!(!tables.contains("sig="), "a SAS token is stored in clear");
    // Not as bytes either (bytea shows as hex): what is stored is sealed.
    assert!(!tables.contains(&hex(b"sv=2022-11-02&ss=b")), "a SAS token is stored as plain bytes");
    assert!(tables.contains("\\x"), "the sealed tokens were not found in the dump");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_secrets_key_azure_imports_fail_with_a_sentence() {
    let env = TestEnv::new().await;
    let bucket = env.bucket(Provider::Azure).await;
    bucket.put("k/1.jpg", b"one").await;
    // A scheduler without the key keeps no token.
    let mut scheduler = env.scheduler_config();
    scheduler.common.secrets_key = None;
    let fleet = env.start(vec![scheduler], vec![env.worker_config()]).await;
    let status = env.wait_final(env.submit(&bucket.request(&env, "nokey", &["k/"])).await).await;
    assert_eq!(status["state"], "failed", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains("TETHER_SECRETS_KEY is unset on the scheduler"), "{error}");
    fleet.stop().await;

    // A worker with another key cannot open the token: it says so.
    let mut worker = env.worker_config();
    worker.common.secrets_key = Some("HwECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".parse().expect("a key"));
    let fleet = env.start(vec![env.scheduler_config()], vec![worker]).await;
    let status = env.wait_final(env.submit(&bucket.request(&env, "otherkey", &["k/"])).await).await;
    assert_eq!(status["state"], "failed", "{status}");
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot be decrypted") && error.contains("same key"), "{error}");
    fleet.stop().await;
}
