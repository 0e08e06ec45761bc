//! No secret reaches any output of any Tether process, at debug level for
//! every crate: the real `tether-scheduler`, `tether-worker` and `tether-api`
//! binaries run link and copy imports from S3 and Azure (and failing ones,
//! which log errors), sign and serve URLs, and their whole stdout and stderr
//! is searched for every secret the test knows: Tether's own AWS keys, the
//! secret key and session token of every session STS issued (read from the
//! STS answers through a recording proxy), the Postgres and RabbitMQ
//! passwords of the test's own role and user, SAS signatures in each
//! encoding, the access API's bearer tokens and every signature it made.

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::json;
use tether_tests::api::{Api, API_TOKEN, API_TOKEN_2};
use tether_tests::proxy::{FaultProxy, Faults};
use tether_tests::stores::Provider;
use tether_tests::{captured_logs, service_var, url_param, TestEnv};

const OWN_SESSION_TOKEN: &str = "tether-own-session-token-do-not-log";

/// A SAS token's signature as sent, decoded, and encoded again (upper- and
/// lower-case escapes).
fn sas_signatures(sas: &str) -> Vec<String> {
    let sent = sas.split('&').find_map(|p| p.strip_prefix("sig=")).expect("a sig").to_owned();
    let decoded = percent_encoding::percent_decode_str(&sent).decode_utf8_lossy().into_owned();
    let encoded = utf8_percent_encode(&decoded, NON_ALPHANUMERIC).to_string();
    let lower = encoded.replace("%2B", "%2b").replace("%2F", "%2f").replace("%3D", "%3d");
    vec![sent, decoded, encoded, lower]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_reaches_the_output_of_any_process() {
    let env = TestEnv::new().await;
    env.put_many((0..12).map(|i| format!("s/{i}.jpg"))).await;
    let container = env.bucket(Provider::Azure).await;
    container.put_all(&(0..4).map(|i| (format!("a/{i}.jpg"), vec![i; 10])).collect::<Vec<_>>()).await;
    let sts =
        FaultProxy::start(&service_var("AWS_ENDPOINT_URL_STS"), Faults { record: true, ..Faults::default() })
            .await;
    let dir = env.destination_dir();
    let settings = [
        ("RUST_LOG", "debug".to_owned()),
        ("AWS_SESSION_TOKEN", OWN_SESSION_TOKEN.to_owned()),
        ("AWS_ENDPOINT_URL_STS", sts.url()),
        ("TETHER_SCHEDULER_TICK_SECS", "0.1".to_owned()),
        ("TETHER_LIST_PAGE_SIZE", "4".to_owned()),
        // Renew the session on every page: more sessions, more chances to leak.
        ("TETHER_STS_REFRESH_MARGIN_SECS", "21600".to_owned()),
        ("TETHER_DESTINATION", format!("file://{}", dir.display())),
    ];
    let mut scheduler = env.spawn_scheduler_process(&settings);
    let mut worker = env.spawn_worker_process(&settings);
    env.wait_schema(|| assert!(scheduler.running(), "tether-scheduler stopped:\n{}", scheduler.logs())).await;

    let mut sas_tokens = Vec::new();
    let mut copy = env.request("secrets-copy", &["s/"]);
    copy["mode"] = json!("copy");
    let mut missing = env.request("secrets", &["s/"]);
    missing["source"]["bucket"] = json!("missing-bucket-secrets");
    let azure = container.request(&env, "secrets-azure", &["a/"]);
    sas_tokens.push(azure["source"]["sas_token"].as_str().expect("a SAS token").to_owned());
    let mut forged = container.request(&env, "secrets-azure", &["a/"]);
    let forged_sas = container.sas("rl", chrono::Duration::hours(1)).replace("sig=", "sig=AAAA");
    forged["source"]["sas_token"] = json!(forged_sas);
    sas_tokens.push(forged_sas);
    for (request, state) in [
        (env.request("secrets", &["s/"]), "succeeded"),
        (copy, "succeeded"),
        (missing, "failed"),
        (azure, "succeeded"),
        (forged, "failed"),
    ] {
        let status = env.wait_final(env.submit(&request).await).await;
        assert_eq!(status["state"], state, "{request}: {status}");
    }

    let api = env
        .spawn_api(&[
            ("RUST_LOG", "debug".into()),
            ("AWS_SESSION_TOKEN", OWN_SESSION_TOKEN.into()),
            ("AWS_ENDPOINT_URL_STS", sts.url()),
        ])
        .await;
    let s3 = env.image_ids("secrets").await[&format!("s3://{}/s/0.jpg", env.bucket)];
    let blob = env.image_ids("secrets-azure").await[&container.url("a/0.jpg")];
    let mut secrets = vec![
        ("Tether's own secret access key".to_owned(), service_var("AWS_SECRET_ACCESS_KEY")),
        ("Tether's own session token".to_owned(), OWN_SESSION_TOKEN.to_owned()),
        ("the Postgres password".to_owned(), env.database_password.clone()),
        ("the RabbitMQ password".to_owned(), env.amqp_password.clone()),
        ("a bearer token".to_owned(), API_TOKEN.to_owned()),
        ("the second bearer token".to_owned(), API_TOKEN_2.to_owned()),
    ];
    let direct = Api::only_url(&api.sign("ws-test", &[s3], "direct", 60).await);
    secrets.push(("a presigned URL's signature".into(), url_param(&direct, "X-Amz-Signature")));
    let proxied = api.sign("ws-test", &[s3, blob], "proxy", 60).await;
    for url in Api::urls(&proxied) {
        secrets.push(("a proxy URL's signature".into(), url_param(&url, "sig")));
        let got = api.http.get(&url).send().await.expect("content");
        assert_eq!(got.status(), 200, "{url}");
    }
    for sas in &sas_tokens {
        secrets.extend(sas_signatures(sas).into_iter().map(|s| ("a SAS signature".to_owned(), s)));
    }

    let keys = sts.counts.recorded_values("SecretAccessKey");
    let tokens = sts.counts.recorded_values("SessionToken");
    assert!(keys.len() >= 3 && keys.len() == tokens.len(), "STS issued {} sessions", keys.len());
    secrets.extend(keys.into_iter().map(|k| ("an assumed role's secret access key".to_owned(), k)));
    secrets.extend(tokens.into_iter().map(|t| ("an assumed role's session token".to_owned(), t)));

    scheduler.kill().await;
    worker.kill().await;
    let outputs = [
        ("tether-scheduler", scheduler.logs()),
        ("tether-worker", worker.logs()),
        ("tether-api", api.logs()),
        ("the test process", captured_logs()),
    ];
    for (name, output) in &outputs[..3] {
        assert!(output.contains("DEBUG"), "{name}'s debug output was not captured");
    }
    assert!(outputs[1].1.contains("Assumed the customer's role."), "the worker's output was not captured");
    for (what, secret) in &secrets {
        assert!(secret.len() >= 8, "{what} is too short to search for: {secret:?}");
        for (name, output) in &outputs {
            assert!(!output.contains(secret.as_str()), "{what} appears in the output of {name}");
        }
    }
    for (name, output) in &outputs {
        for line in output.lines() {
            let lower = line.to_ascii_lowercase();
            for marker in ["x-amz-security-token", "x-amz-signature", "sig="] {
                assert!(!lower.contains(marker), "{name} logged {marker}: {line}");
            }
        }
    }
}
