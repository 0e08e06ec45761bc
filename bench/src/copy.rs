//! Copy mode against `rclone copy`, between two buckets of the benchmark's
//! moto (objects seeded by `scripts/bench-moto.py`).
//!
//! rclone runs with `--disable Copy`: otherwise it asks the store to copy
//! server-side and no byte passes through it, while Tether must stream
//! (the source is a customer's bucket, the destination the platform's).

use std::time::Instant;

use serde_json::json;
use tether_tests::TestEnv;

use crate::link::Provider;
use crate::procs::{children_cpu_seconds, Fleet, Measured};
use crate::stores::{Stores, BUCKET, LARGE, SMALL};
use crate::Measurement;

pub(crate) async fn run(env: &TestEnv, stores: &Stores) -> Vec<Measurement> {
    let mut measurements = Vec::new();
    for (name, (prefix, objects, size)) in [("copy 256 KiB", SMALL), ("copy 1 GiB", LARGE)] {
        let bytes = (objects * size) as u64;
        measurements.push(tether(env, name, prefix, objects, bytes).await);
        measurements.push(rclone(env, stores, name, prefix, objects, bytes).await);
    }
    measurements
}

async fn bucket(env: &TestEnv, tool: &str, prefix: &str) -> String {
    let bucket = format!("tether-{tool}-{}-{}", env.id, prefix.trim_end_matches('/'));
    env.s3.create_bucket().bucket(&bucket).send().await.expect("a destination bucket");
    bucket
}

async fn tether(env: &TestEnv, name: &str, prefix: &str, objects: usize, bytes: u64) -> Measurement {
    let destination = bucket(env, "d", prefix).await;
    let fleet = Fleet::start(env, &[("TETHER_DESTINATION", format!("s3://{destination}/copies"))]).await;
    let mut request = env.request(&format!("bench-copy-{}", prefix.trim_end_matches('/')), &[prefix]);
    request["source"]["bucket"] = json!(BUCKET);
    request["mode"] = json!("copy");
    request["filter"] = json!({"extensions": ["*"], "max_object_bytes": 2u64 << 30});
    let cost = fleet
        .run(env, &request, objects, |status| {
            assert_eq!(status["state"], "succeeded", "{status}");
            assert_eq!(status["objects_imported"], objects, "{status}");
            assert_eq!(status["bytes_copied"], bytes, "{status}");
        })
        .await;
    Measurement::tether("s3", name, objects, bytes, cost)
}

async fn rclone(
    env: &TestEnv,
    stores: &Stores,
    name: &str,
    prefix: &str,
    objects: usize,
    bytes: u64,
) -> Measurement {
    let destination = bucket(env, "r", prefix).await;
    let mut command = Provider::S3.rclone(stores);
    command
        .args(["copy", "--disable", "Copy", "--transfers", "32", "--s3-upload-concurrency", "4"])
        .arg(format!("bench:{BUCKET}/{prefix}"))
        .arg(format!("bench:{destination}/copies/"));
    let cpu_before = children_cpu_seconds();
    let started = Instant::now();
    let peak = Measured::spawn("rclone", command).wait().await;
    let seconds = started.elapsed().as_secs_f64();
    Measurement {
        provider: "s3",
        run: name.to_owned(),
        tool: "rclone copy",
        objects,
        bytes,
        seconds,
        seconds_persisted: seconds,
        cpu_seconds: children_cpu_seconds() - cpu_before,
        peak_rss_mib: vec![("rclone".into(), peak)],
        p99_ms: None,
    }
}
