//! The access API (`tether-api`, release build) against the bare tools in
//! the same run:
//!
//! - signing: 1000-id `direct` requests over 10,000 S3 link images (a real
//!   import of the `flat-10k` tree), URLs/s and CPU µs per URL of
//!   tether-api + PostgreSQL, and each request's latency; against the AWS
//!   SDK's presigner in a tight loop with the same kind of session;
//! - proxy: MB/s of a 100 MiB object streamed through tether-api against a
//!   direct GET of the same object from the store, and tether-api's peak
//!   RSS while 20 such streams run at once.

use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tether_tests::{TestEnv, TEST_SECRETS_KEY};
use tokio::process::Command;
use uuid::Uuid;

use crate::procs::{own_cpu_seconds, postgres_cpu_seconds, release_bin, Fleet, Measured};
use crate::stores::{BUCKET, S3_TREES};
use crate::Measurement;

const TOKEN: &str = "bench-api-token-0123456789";
const IDS_PER_REQUEST: usize = 1000;
const WARM_UP_REQUESTS: usize = 3;
const REQUESTS: usize = 40;
const BIG_KEY: &str = "api/big.jpg";
const BIG_BYTES: usize = 100 * 1024 * 1024;
const STREAMS: usize = 20;

pub(crate) async fn run(env: &TestEnv) -> Vec<Measurement> {
    let tree = S3_TREES.iter().find(|t| t.name == "flat-10k").copied().expect("the flat-10k tree");
    let big: Vec<u8> = (0..BIG_BYTES).map(|i| (i % 251) as u8).collect();
    env.s3
        .put_object()
        .bucket(BUCKET)
        .key(BIG_KEY)
        .body(big.into())
        .send()
        .await
        .expect("put the 100 MiB object");
    let fleet = Fleet::start(env, &[]).await;
    let mut request = env.request("bench-api", &[tree.prefix, "api/"]);
    request["source"]["bucket"] = json!(BUCKET);
    request["filter"] = json!({"extensions": ["*"], "max_object_bytes": 1u64 << 30});
    fleet
        .run(env, &request, tree.objects + 1, |status| {
            assert_eq!(status["state"], "succeeded", "{status}");
        })
        .await;
    let ids = env.image_ids("bench-api").await;
    let big_id = ids[&format!("s3://{BUCKET}/{BIG_KEY}")];
    let links: Vec<Uuid> = ids.values().copied().filter(|id| *id != big_id).collect();

    let port = tether_tests::api::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut command = Command::new(release_bin("tether-api"));
    command
        .env("TETHER_DATABASE_URL", &env.database_url)
        .env("TETHER_API_ADDR", format!("127.0.0.1:{port}"))
        .env("TETHER_API_PUBLIC_URL", &base)
        .env("TETHER_API_TOKENS", TOKEN)
        .env("TETHER_SECRETS_KEY", TEST_SECRETS_KEY)
        .env("TETHER_S3_FORCE_PATH_STYLE", "true")
        .env("TETHER_API_MAX_STREAMS", STREAMS.to_string())
        .env("RUST_LOG", "warn");
    let api = Measured::spawn("api", command);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("{base}/v1/openapi.json")).send().await.is_err() {
        assert!(Instant::now() < deadline, "tether-api did not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sign = |ids: &[Uuid], delivery: &str| {
        http.post(format!("{base}/v1/workspaces/ws-test/signed-urls"))
            .bearer_auth(TOKEN)
            .json(&json!({ "image_ids": ids, "delivery": delivery }))
            .send()
    };

    // Signing: warm up (the role's session, prepared statements), then time.
    let batch = |i: usize| {
        let start = (i * IDS_PER_REQUEST) % links.len();
        links[start..(start + IDS_PER_REQUEST).min(links.len())].to_vec()
    };
    for i in 0..WARM_UP_REQUESTS {
        let answer: Value = sign(&batch(i), "direct").await.expect("answer").json().await.expect("json");
        assert_eq!(answer["urls"].as_array().map(Vec::len), Some(IDS_PER_REQUEST), "{}", answer["errors"][0]);
    }
    let cpu_before = api.cpu_seconds() + postgres_cpu_seconds();
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let asked = Instant::now();
        let answer: Value = sign(&batch(i), "direct").await.expect("answer").json().await.expect("json");
        latencies.push(asked.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(answer["urls"].as_array().map(Vec::len), Some(IDS_PER_REQUEST));
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = api.cpu_seconds() + postgres_cpu_seconds() - cpu_before;
    latencies.sort_by(f64::total_cmp);
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    let p50 = latencies[latencies.len() / 2];
    println!("tether-api: {REQUESTS} requests of {IDS_PER_REQUEST} ids, p50 {p50:.1} ms, p99 {p99:.1} ms");
    let mut measurements = vec![Measurement {
        provider: "s3",
        run: "api sign 1000 ids".into(),
        tool: "tether-api",
        objects: REQUESTS * IDS_PER_REQUEST,
        bytes: 0,
        seconds,
        seconds_persisted: seconds,
        cpu_seconds,
        peak_rss_mib: Vec::new(),
        p99_ms: Some(p99),
    }];
    measurements.push(bare_presigner(env, &links, REQUESTS * IDS_PER_REQUEST).await);

    // Proxy: one stream, against a direct GET of the same object.
    let proxy: Value = sign(&[big_id], "proxy").await.expect("answer").json().await.expect("json");
    let proxy_url = proxy["urls"][0]["url"].as_str().expect("a proxy URL").to_owned();
    let direct: Value = sign(&[big_id], "direct").await.expect("answer").json().await.expect("json");
    let direct_url = direct["urls"][0]["url"].as_str().expect("a direct URL").to_owned();
    for (tool, url) in [("direct GET", &direct_url), ("tether-api", &proxy_url)] {
        let started = Instant::now();
        let cpu_before = api.cpu_seconds();
        assert_eq!(drain(&http, url).await, BIG_BYTES, "{tool} streamed the whole object");
        let seconds = started.elapsed().as_secs_f64();
        let cpu_seconds = if tool == "tether-api" { api.cpu_seconds() - cpu_before } else { 0.0 };
        measurements.push(stream_measurement("api proxy 100 MiB", tool, 1, seconds, cpu_seconds));
    }
    // 20 streams at once: tether-api's memory.
    let started = Instant::now();
    let cpu_before = api.cpu_seconds();
    let streamed: Vec<usize> =
        futures_util::future::join_all((0..STREAMS).map(|_| drain(&http, &proxy_url))).await;
    assert!(streamed.iter().all(|n| *n == BIG_BYTES), "every stream whole: {streamed:?}");
    let seconds = started.elapsed().as_secs_f64();
    let mut concurrent = stream_measurement(
        "api proxy 20 x 100 MiB",
        "tether-api",
        STREAMS,
        seconds,
        api.cpu_seconds() - cpu_before,
    );
    concurrent.peak_rss_mib = vec![("api".into(), api.stop().await)];
    measurements.push(concurrent);
    measurements
}

fn stream_measurement(
    run: &str,
    tool: &'static str,
    streams: usize,
    seconds: f64,
    cpu_seconds: f64,
) -> Measurement {
    Measurement {
        provider: "s3",
        run: run.into(),
        tool,
        objects: streams,
        bytes: (streams * BIG_BYTES) as u64,
        seconds,
        seconds_persisted: seconds,
        cpu_seconds,
        peak_rss_mib: Vec::new(),
        p99_ms: None,
    }
}

/// Reads a URL's whole body, counting bytes and keeping none.
async fn drain(http: &reqwest::Client, url: &str) -> usize {
    let response = http.get(url).send().await.expect("the stream starts");
    assert!(response.status().is_success(), "{}", response.status());
    let mut body = response.bytes_stream();
    let mut bytes = 0;
    while let Some(chunk) = body.next().await {
        bytes += chunk.expect("the stream goes on").len();
    }
    bytes
}

/// The AWS SDK's presigner in a tight loop, with an assumed-role session as
/// tether-api uses, signed as of a window start as tether-api does.
async fn bare_presigner(env: &TestEnv, links: &[Uuid], urls: usize) -> Measurement {
    let sts = aws_sdk_sts::Client::new(&env.sdk);
    let session = sts
        .assume_role()
        .role_arn("arn:aws:iam::123456789012:role/tether-test")
        .external_id("ext-7ed6d782")
        .role_session_name("bench")
        .send()
        .await
        .expect("assume the role");
    let c = session.credentials().expect("credentials");
    let credentials = aws_credential_types::Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_owned()),
        None,
        "bench",
    );
    let config = aws_sdk_s3::config::Builder::from(&env.sdk)
        .force_path_style(true)
        .credentials_provider(credentials)
        .build();
    let client = aws_sdk_s3::Client::from_conf(config);
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(now - now % 300);
    let keys: Vec<String> = (0..links.len()).map(|i| format!("flat10k/img_{i:06}.jpg")).collect();
    let presigning = aws_sdk_s3::presigning::PresigningConfig::builder()
        .start_time(start)
        .expires_in(Duration::from_secs(1200))
        .build()
        .expect("a presigning config");
    let cpu_before = own_cpu_seconds();
    let started = Instant::now();
    for i in 0..urls {
        let request = client
            .get_object()
            .bucket(BUCKET)
            .key(&keys[i % keys.len()])
            .presigned(presigning.clone())
            .await
            .expect("presigned");
        std::hint::black_box(request.uri());
    }
    let seconds = started.elapsed().as_secs_f64();
    Measurement {
        provider: "s3",
        run: "api sign 1000 ids".into(),
        tool: "aws-sdk presign",
        objects: urls,
        bytes: 0,
        seconds,
        seconds_persisted: seconds,
        cpu_seconds: own_cpu_seconds() - cpu_before,
        peak_rss_mib: Vec::new(),
        p99_ms: None,
    }
}
