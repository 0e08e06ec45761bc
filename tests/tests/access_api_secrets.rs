//! No secret of the access API reaches a log line of `tether-api`, even at
//! debug level across every crate, nor a metric: not the platform's bearer
//! tokens, not a signed URL's signature or session token, not a proxy URL's
//! HMAC, not an Azure SAS token. Logs name image ids, never URLs.

use serde_json::json;
use tether_tests::api::{free_port, Api, API_TOKEN, API_TOKEN_2};
use tether_tests::stores::Provider;
use tether_tests::{service_var, url_param, TestEnv};

/// The prefix of every session token moto's STS issues.
const MOTO_SESSION_TOKEN_PREFIX: &str = "FQoGZXIvYXdzEBYaD";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_token_signature_or_sas_reaches_the_logs_or_metrics() {
    let env = TestEnv::new().await;
    env.put("k/s3.jpg", b"s3 secret bytes").await;
    let container = env.bucket(Provider::Azure).await;
    container.put("k/azure.jpg", b"azure secret bytes").await;
    let fleet = env.start_default(1).await;
    let azure = container.request(&env, "azure", &["k/"]);
    let sas = azure["source"]["sas_token"].as_str().expect("sas").to_owned();
    for request in [env.request("s3", &["k/"]), azure] {
        let status = env.wait_final(env.submit(&request).await).await;
        assert_eq!(status["state"], "succeeded", "{status}");
    }
    fleet.stop().await;
    let metrics_port = free_port();
    let api = env
        .spawn_api(&[
            ("RUST_LOG", "debug".into()),
            ("TETHER_METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
        ])
        .await;
    let s3 = env.image_ids("s3").await[&format!("s3://{}/k/s3.jpg", env.bucket)];
    let blob = env.image_ids("azure").await[&container.url("k/azure.jpg")];

    let mut secrets = vec![
        ("a bearer token", API_TOKEN.to_owned()),
        ("the second bearer token", API_TOKEN_2.to_owned()),
        ("Tether's AWS secret key", service_var("AWS_SECRET_ACCESS_KEY")),
        ("an assumed role's session token", MOTO_SESSION_TOKEN_PREFIX.to_owned()),
    ];
    let direct = Api::only_url(&api.sign("ws-test", &[s3], "direct", 60).await);
    secrets.push(("a presigned URL's signature", url_param(&direct, "X-Amz-Signature")));
    secrets.push(("a presigned URL's session token", url_param(&direct, "X-Amz-Security-Token")));
    assert_eq!(api.http.get(&direct).send().await.expect("moto").status(), 200);
    let proxied = api.sign("ws-test", &[s3, blob], "proxy", 60).await;
    for entry in proxied["urls"].as_array().expect("urls") {
        let url = entry["url"].as_str().expect("url");
        secrets.push(("a proxy URL's signature", url_param(url, "sig")));
        let got = api.http.get(url).header("range", "bytes=0-3").send().await.expect("content");
        assert_eq!(got.status(), 206);
        let forged = url.replace("sig=", "sig=x");
        assert_eq!(api.http.get(&forged).send().await.expect("answer").status(), 403);
    }
    let sig = sas.split('&').find_map(|p| p.strip_prefix("sig=")).expect("sig").to_owned();
    secrets.push(("the SAS signature, encoded", sig.clone()));
    secrets.push((
        "the SAS signature",
        percent_encoding::percent_decode_str(&sig).decode_utf8_lossy().into_owned(),
    ));
    // Refusals log too.
    let wrong = api
        .post("ws-test", Some("wrong-token-but-long-enough"), &json!({ "image_ids": [s3] }).to_string())
        .await;
    assert_eq!(wrong.status(), 401);
    secrets.push(("a refused token", "wrong-token-but-long-enough".to_owned()));

    let metrics = tether_tests::api::text(&format!("http://127.0.0.1:{metrics_port}/metrics")).await;
    assert!(metrics.contains("tether_api_urls_signed_total"), "{metrics}");
    let logs = api.logs();
    assert!(
        logs.contains("URLs handed out.") && logs.contains("DEBUG"),
        "the debug logs were not captured:\n{logs}"
    );
    for (what, secret) in &secrets {
        assert!(secret.len() >= 8, "{what} is too short to search for");
        assert!(!logs.contains(secret.as_str()), "{what} appears in tether-api's log");
        assert!(!metrics.contains(secret.as_str()), "{what} appears in the metrics");
    }
    for marker in ["sig=", "X-Amz-Signature", "X-Amz-Security-Token", "X-Goog-Signature"] {
        assert!(!logs.contains(marker), "a URL ({marker}) appears in tether-api's log");
    }
    // The route's template is logged, never a content URL's path.
    let content = "/v1/content/";
    assert!(
        logs.match_indices(content).all(|(i, _)| logs[i + content.len()..].starts_with('{')),
        "a content URL appears in tether-api's log"
    );
    assert!(logs.contains(&s3.to_string()), "logs name image ids");
}
