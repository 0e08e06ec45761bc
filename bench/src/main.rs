//! `make bench`: Tether measured against the bare store and against rclone
//! on this machine, in one run, so the ratios mean something on a shared,
//! noisy machine. Results are printed and written to `bench/results/`.
//!
//! - `link`: a link import of N objects under one prefix (one scheduler, two
//!   workers, in-process) against a bare ListObjectsV2 walk of the same
//!   prefix with the same page size.
//! - `copy`: a copy import of 2,000 x 256 KiB objects and of one 1 GiB
//!   object between two buckets, by the real `tether-scheduler` and two
//!   `tether-worker` processes, against `rclone copy`; with each side's peak
//!   RSS.
//!
//! `tether-bench [link] [copy]` runs the named ones (default: both).

mod copy;
mod link;
mod procs;

use serde_json::{json, Value};
use tether_tests::TestEnv;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wanted = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    let mut results = serde_json::Map::new();
    if wanted("link") {
        let env = TestEnv::new().await;
        results.insert("link".into(), link::run(&env).await);
    }
    if wanted("copy") {
        let env = TestEnv::new().await;
        results.insert("copy".into(), copy::run(&env).await);
    }
    let results = Value::Object(results);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/results/latest.json");
    match std::fs::write(path, format!("{results:#}\n")) {
        Ok(()) => println!("\nresults written to {path}"),
        Err(error) => eprintln!("cannot write {path}: {error}"),
    }
}

/// objects/s and MB/s of a run.
pub(crate) fn rates(objects: usize, bytes: u64, seconds: f64) -> Value {
    json!({
        "seconds": seconds,
        "objects_per_second": objects as f64 / seconds,
        "megabytes_per_second": bytes as f64 / 1e6 / seconds,
    })
}
