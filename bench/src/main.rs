//! `make bench`: Tether measured against the bare store on this machine, in
//! one run, so the ratios mean something on a shared, noisy machine.
//!
//! Link import of N objects under one prefix (one scheduler, two workers)
//! against a bare ListObjectsV2 walk of the same prefix with the same page
//! size. Results are printed and written to `bench/results/`.

use std::time::{Duration, Instant};

use serde_json::json;
use tether_tests::TestEnv;

const OBJECTS: usize = 20_000;
const PREFIX: &str = "bench/";

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let objects = std::env::var("TETHER_BENCH_OBJECTS").ok().and_then(|n| n.parse().ok()).unwrap_or(OBJECTS);
    let env = TestEnv::new().await;

    let started = Instant::now();
    env.put_many((0..objects).map(|i| format!("{PREFIX}{:03}/img_{i:07}.jpg", i % 100))).await;
    eprintln!("seeded {objects} objects in {:.1} s", started.elapsed().as_secs_f64());

    let listing = bare_listing(&env, objects).await;
    let import = link_import(&env, objects).await;

    let rate = |d: Duration| objects as f64 / d.as_secs_f64();
    println!();
    println!("{:<44} {:>10} {:>12}", "run (S3 on moto)", "seconds", "objects/s");
    println!(
        "{:<44} {:>10.2} {:>12.0}",
        "bare ListObjectsV2, 1000 per page",
        listing.as_secs_f64(),
        rate(listing)
    );
    println!(
        "{:<44} {:>10.2} {:>12.0}",
        "Tether link import (1 scheduler, 2 workers)",
        import.as_secs_f64(),
        rate(import)
    );
    println!("{:<44} {:>23.2}", "Tether / bare listing", rate(import) / rate(listing));

    let results = json!({
        "objects": objects,
        "bare_listing": { "seconds": listing.as_secs_f64(), "objects_per_second": rate(listing) },
        "link_import": { "seconds": import.as_secs_f64(), "objects_per_second": rate(import) },
        "ratio_import_to_listing": rate(import) / rate(listing),
    });
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/results/link-s3.json");
    if let Err(error) = std::fs::write(path, format!("{results:#}\n")) {
        eprintln!("cannot write {path}: {error}");
    }
}

async fn bare_listing(env: &TestEnv, expected: usize) -> Duration {
    let started = Instant::now();
    let mut seen = 0;
    let mut token = None;
    loop {
        let page = env
            .s3
            .list_objects_v2()
            .bucket(&env.bucket)
            .prefix(PREFIX)
            .max_keys(1000)
            .set_continuation_token(token)
            .send()
            .await
            .expect("list");
        seen += page.contents().len();
        token = page.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen, expected);
    started.elapsed()
}

async fn link_import(env: &TestEnv, expected: usize) -> Duration {
    let fleet = env.start_default(2).await;
    let started = Instant::now();
    let id = env.submit(&env.request("bench", &[PREFIX])).await;
    let status = env.wait_final_within(id, Duration::from_secs(1800)).await;
    let elapsed = started.elapsed();
    assert_eq!(status["objects_imported"], expected, "{status}");
    fleet.stop().await;
    elapsed
}
