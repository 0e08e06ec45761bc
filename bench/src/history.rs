//! History: the same link import into an empty `tether.images` and into
//! one that holds 10^7 rows of other workspaces and datasets (made in SQL,
//! with random ids like those of rows imported before migration 0017), plus
//! 2×10^5 imports and 10^6 tasks; then the plans of the platform's and
//! staff's queries on that history. Cost must not grow with history: the
//! filled/empty throughput ratio's target is ≥ 0.8, and no plan may scan
//! `images` or `tasks` whole.
//!
//! The import is the GCS wide tree (10,000 objects, 100 sub-prefixes:
//! fake-gcs-server lists it at ~50,000 objects/s, so Postgres is the
//! bottleneck), run three times into new datasets on each side; the
//! figures are the medians.

use std::time::Instant;

use serde_json::{json, Value};
use tether_tests::history::{self, History};
use tether_tests::TestEnv;

use crate::procs::Fleet;
use crate::stores::GCS_TREES;
use crate::Measurement;

/// The history's size; `TETHER_BENCH_HISTORY_IMAGES` changes the images'
/// (5×10^7 to show the trend, where the disk allows: ~25 GB).
fn history() -> History {
    let images =
        std::env::var("TETHER_BENCH_HISTORY_IMAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000);
    History { imports: 200_000, tasks: 1_000_000, images }
}

const RUNS: usize = 3;

pub(crate) async fn run(env: &TestEnv) -> (Vec<Measurement>, Value) {
    let tree = GCS_TREES[0];
    let mut measurements = Vec::new();
    let empty = imports(env, "empty", tree.bucket, tree.prefix, tree.objects).await;
    let client = history::connect(&env.database_url).await;
    let history = history();
    let started = Instant::now();
    history.fill(&client).await;
    // What a long-lived installation would have: vacuumed, all-visible, and
    // no checkpoint of the fill itself due in the middle of the runs.
    // One statement each: VACUUM cannot run in the implicit transaction of
    // a multi-statement string.
    for sql in ["VACUUM ANALYZE tether.images", "VACUUM ANALYZE tether.tasks"] {
        client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    // CHECKPOINT needs a superuser or pg_checkpoint (PostgreSQL 15), which
    // the test role may not have: then the fill's checkpoint may fall in
    // the runs, and the ratio is the lower for it.
    if let Err(error) = client.batch_execute("CHECKPOINT").await {
        eprintln!("history: no CHECKPOINT after the fill ({error}); the ratio may be understated");
    }
    let size: String = client
        .query_one("SELECT pg_size_pretty(pg_total_relation_size('tether.images'))", &[])
        .await
        .expect("size")
        .get(0);
    eprintln!(
        "history: {} images ({size} with indexes), {} tasks, {} imports made in {:.0} s",
        history.images,
        history.tasks,
        history.imports,
        started.elapsed().as_secs_f64()
    );
    let filled = imports(env, "filled", tree.bucket, tree.prefix, tree.objects).await;
    let rate =
        |runs: &[Measurement]| median(runs.iter().map(|m| m.objects as f64 / m.seconds_persisted).collect());
    let ratio = rate(&filled) / rate(&empty);
    measurements.extend(empty);
    measurements.extend(filled);
    let plans = history::plans(&client).await;
    for (what, plan, scans) in &plans {
        if *scans {
            eprintln!("{what} scans a whole table:\n{plan}");
        }
    }
    let summary = json!({
        "images": history.images, "tasks": history.tasks, "imports": history.imports,
        "images_table_size": size,
        "filled_to_empty_ratio": ratio,
        "plans": plans.iter().map(|(what, plan, scans)| json!({"query": what, "whole_table_scan": scans, "plan": plan})).collect::<Vec<_>>(),
    });
    (measurements, summary)
}

/// `RUNS` link imports of the tree into new datasets, each with a fresh fleet.
async fn imports(env: &TestEnv, side: &str, bucket: &str, prefix: &str, objects: usize) -> Vec<Measurement> {
    let mut runs = Vec::new();
    for run in 0..RUNS {
        let fleet = Fleet::start(env, &[]).await;
        let mut request = env.request(&format!("history-{side}-{run}"), &[prefix]);
        request["filter"] = json!({"extensions": ["*"]});
        request["source"] = json!({"provider": "gcs", "bucket": bucket, "prefixes": [prefix]});
        let cost = fleet
            .run(env, &request, objects, |status| {
                assert_eq!(status["state"], "succeeded", "{status}");
                assert_eq!(status["objects_imported"], objects, "{status}");
            })
            .await;
        runs.push(Measurement::tether("gcs", &format!("history {side}"), objects, 0, cost));
    }
    runs
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}
