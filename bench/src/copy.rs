//! Copy mode vs `rclone copy`, between two buckets of the same moto.
//!
//! rclone runs with `--disable Copy`: otherwise it asks the store to copy
//! server-side and no byte passes through it, while Tether must stream
//! (the source is a customer's bucket, the destination the platform's).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use serde_json::{json, Value};
use tether_tests::{service_var, TestEnv};
use tokio::process::Command;

use crate::procs::Measured;

const SMALL_OBJECTS: usize = 2_000;
const SMALL_BYTES: usize = 256 * 1024;
const LARGE_BYTES: usize = 1024 * 1024 * 1024;

pub(crate) async fn run(env: &TestEnv) -> Value {
    let small: usize = std::env::var("TETHER_BENCH_SMALL_OBJECTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(SMALL_OBJECTS);
    let started = Instant::now();
    let body = bytes::Bytes::from((0..SMALL_BYTES).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>());
    futures_util::StreamExt::for_each_concurrent(futures_util::stream::iter(0..small), 16, |i| {
        let body = body.clone();
        async move {
            env.s3
                .put_object()
                .bucket(&env.bucket)
                .key(format!("small/img_{i:05}.jpg"))
                .body(ByteStream::from(body))
                .send()
                .await
                .expect("seed");
        }
    })
    .await;
    let large = bytes::Bytes::from((0..LARGE_BYTES).map(|i| (i * 13 % 241) as u8).collect::<Vec<u8>>());
    env.s3
        .put_object()
        .bucket(&env.bucket)
        .key("large/huge.tif")
        .body(ByteStream::from(large))
        .send()
        .await
        .expect("seed");
    eprintln!("copy: seeded {small} x 256 KiB and 1 GiB in {:.1} s", started.elapsed().as_secs_f64());

    let mut rows = Vec::new();
    for (name, prefix, objects, bytes) in [
        ("256 KiB objects", "small/", small, (small * SMALL_BYTES) as u64),
        ("1 GiB object", "large/", 1, LARGE_BYTES as u64),
    ] {
        let tether = tether_copy(env, name, prefix, objects).await;
        let rclone = rclone_copy(env, prefix).await;
        rows.push((name, objects, bytes, tether, rclone));
    }

    println!(
        "\n{:<18} {:<8} {:>9} {:>10} {:>9} {:>26}",
        "copy (moto)", "tool", "seconds", "objects/s", "MB/s", "peak RSS MiB"
    );
    let mut results = Vec::new();
    for (name, objects, bytes, tether, rclone) in rows {
        for (tool, run) in [("tether", &tether), ("rclone", &rclone)] {
            let rss: Vec<String> = run.peak_rss_mib.iter().map(|(p, m)| format!("{p} {m:.0}")).collect();
            println!(
                "{name:<18} {tool:<8} {:>9.2} {:>10.1} {:>9.1}   {}",
                run.seconds,
                objects as f64 / run.seconds,
                bytes as f64 / 1e6 / run.seconds,
                rss.join(", ")
            );
        }
        let ratio = rclone.seconds / tether.seconds;
        println!("{name:<18} tether/rclone throughput ratio: {ratio:.2}");
        results.push(json!({
            "run": name, "objects": objects, "bytes": bytes,
            "tether": { "rates": crate::rates(objects, bytes, tether.seconds), "peak_rss_mib": tether.peak_rss_mib },
            "rclone": { "rates": crate::rates(objects, bytes, rclone.seconds), "peak_rss_mib": rclone.peak_rss_mib },
            "ratio_tether_to_rclone": ratio,
        }));
    }
    Value::Array(results)
}

struct Run {
    seconds: f64,
    peak_rss_mib: Vec<(String, f64)>,
}

fn release_bin(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release")).join(name)
}

async fn tether_copy(env: &TestEnv, name: &str, prefix: &str, objects: usize) -> Run {
    let destination = format!("tether-d-{}-{}", env.id, prefix.trim_end_matches('/'));
    env.s3.create_bucket().bucket(&destination).send().await.expect("destination bucket");
    let command = |bin: &str| {
        let mut c = Command::new(release_bin(bin));
        c.env("TETHER_DATABASE_URL", &env.database_url)
            .env("TETHER_AMQP_URL", &env.amqp_url)
            .env("TETHER_DESTINATION", format!("s3://{destination}/copies"))
            .env("RUST_LOG", "warn");
        c
    };
    let scheduler = Measured::spawn("tether-scheduler", command("tether-scheduler"));
    let workers: Vec<Measured> =
        (1..=2).map(|i| Measured::spawn(&format!("tether-worker-{i}"), command("tether-worker"))).collect();
    // Wait for the schema before submitting.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env.schema_ready().await {
        assert!(Instant::now() < deadline, "the scheduler did not create the schema");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut request = env.request(&format!("bench-{}", prefix.trim_end_matches('/')), &[prefix]);
    request["mode"] = json!("copy");
    request["filter"] = json!({"extensions": ["*"], "max_object_bytes": 2u64 << 30});
    let started = Instant::now();
    let status = env.wait_final_within(env.submit(&request).await, Duration::from_secs(1800)).await;
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(status["objects_imported"], objects, "{name}: {status}");
    let mut peak_rss_mib = vec![("scheduler".to_owned(), scheduler.stop().await)];
    for (i, worker) in workers.into_iter().enumerate() {
        peak_rss_mib.push((format!("worker-{}", i + 1), worker.stop().await));
    }
    Run { seconds, peak_rss_mib }
}

async fn rclone_copy(env: &TestEnv, prefix: &str) -> Run {
    let destination = format!("tether-r-{}-{}", env.id, prefix.trim_end_matches('/'));
    env.s3.create_bucket().bucket(&destination).send().await.expect("rclone's destination bucket");
    let endpoint = service_var("AWS_ENDPOINT_URL_S3");
    let mut command = Command::new("rclone");
    command
        .env_remove("AWS_CA_BUNDLE") // rclone's S3 backend breaks on it
        .env("RCLONE_CONFIG_MOTO_TYPE", "s3")
        .env("RCLONE_CONFIG_MOTO_PROVIDER", "Other")
        .env("RCLONE_CONFIG_MOTO_ENDPOINT", endpoint)
        .env("RCLONE_CONFIG_MOTO_ACCESS_KEY_ID", service_var("AWS_ACCESS_KEY_ID"))
        .env("RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY", service_var("AWS_SECRET_ACCESS_KEY"))
        .env("RCLONE_CONFIG_MOTO_FORCE_PATH_STYLE", "true")
        .args(["copy", "--disable", "Copy", "--transfers", "32", "--s3-upload-concurrency", "4"])
        .arg(format!("moto:{}/{prefix}", env.bucket))
        .arg(format!("moto:{destination}/copies/"));
    let started = Instant::now();
    let peak = Measured::spawn("rclone", command).wait().await;
    Run { seconds: started.elapsed().as_secs_f64(), peak_rss_mib: vec![("rclone".to_owned(), peak)] }
}
