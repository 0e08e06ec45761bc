//! Link import vs a bare listing of the same prefix.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tether_tests::TestEnv;

const DEFAULT_OBJECTS: usize = 20_000;
const PREFIX: &str = "bench/";

pub(crate) async fn run(env: &TestEnv) -> Value {
    let objects =
        std::env::var("TETHER_BENCH_OBJECTS").ok().and_then(|n| n.parse().ok()).unwrap_or(DEFAULT_OBJECTS);
    let started = Instant::now();
    env.put_many((0..objects).map(|i| format!("{PREFIX}{:03}/img_{i:07}.jpg", i % 100))).await;
    eprintln!("link: seeded {objects} objects in {:.1} s", started.elapsed().as_secs_f64());

    let listing = bare_listing(env, objects).await;
    let import = link_import(env, objects).await;
    let rate = |d: Duration| objects as f64 / d.as_secs_f64();
    println!(
        "\n{:<46} {:>10} {:>12}",
        format!("link, {objects} objects (S3 on moto)"),
        "seconds",
        "objects/s"
    );
    println!(
        "{:<46} {:>10.2} {:>12.0}",
        "bare ListObjectsV2, 1000 per page",
        listing.as_secs_f64(),
        rate(listing)
    );
    println!(
        "{:<46} {:>10.2} {:>12.0}",
        "Tether link import (1 scheduler, 2 workers)",
        import.as_secs_f64(),
        rate(import)
    );
    println!("{:<46} {:>23.2}", "Tether / bare listing", rate(import) / rate(listing));
    json!({
        "objects": objects,
        "bare_listing": crate::rates(objects, 0, listing.as_secs_f64()),
        "tether_link_import": crate::rates(objects, 0, import.as_secs_f64()),
        "ratio_tether_to_listing": rate(import) / rate(listing),
    })
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
