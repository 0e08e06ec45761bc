//! Fair share at a larger size than the tests (`tests/tests/fairness.rs`):
//! a 10-object copy import of one workspace, alone and then submitted once
//! a 10,000-object copy import of another workspace has recorded all its
//! copy tasks; and a 1-prefix link import alone and behind a 1,000-prefix
//! one. The figure is the ratio of the two times to the final state (goal:
//! at most 3). The big imports are cancelled once measured.
//!
//! The fleet (release binaries, one scheduler, two workers with four copy
//! slots) runs at the default fair share and the default copy tasks of 20
//! objects: the task queues stay shallow, so a newcomer waits for about one
//! task of the others (no task is cut short).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tether_tests::TestEnv;
use uuid::Uuid;

use crate::procs::Fleet;
use crate::Measurement;

const BIG_COPY: usize = 10_000;
/// The contract's most prefixes per request.
const BIG_LINK_PREFIXES: usize = 1_000;
const FINAL_STATES: [&str; 4] = ["succeeded", "partially_succeeded", "failed", "cancelled"];

pub(crate) async fn run(env: &TestEnv) -> Vec<Measurement> {
    let started = Instant::now();
    env.put_many((0..BIG_COPY).map(|i| format!("fair-big/{i:05}.jpg"))).await;
    env.put_many((0..10).map(|i| format!("fair-small/{i:02}.jpg"))).await;
    let prefixes: Vec<String> = (0..BIG_LINK_PREFIXES).map(|i| format!("fair-p{i:04}/")).collect();
    env.put_many(prefixes.iter().map(|p| format!("{p}a.jpg"))).await;
    env.put("fair-one/a.jpg", b"a").await;
    eprintln!("fairness: seeded in {:.0} s", started.elapsed().as_secs_f64());
    let dir = std::env::temp_dir().join(format!("tether-bench-fair-{}", env.id));
    let fleet = Fleet::start(env, &[("TETHER_DESTINATION", format!("file://{}", dir.display()))]).await;
    let small = ["fair-small/".to_owned()];
    let mut measurements = pair(
        env,
        "copy",
        &request(env, "ws-a", "fair-big", "copy", &["fair-big/".to_owned()]),
        &[
            request(env, "ws-b", "fair-alone", "copy", &small),
            request(env, "ws-b", "fair-behind", "copy", &small),
        ],
        BIG_COPY,
    )
    .await;
    let one = ["fair-one/".to_owned()];
    measurements.extend(
        pair(
            env,
            "link",
            &request(env, "ws-a", "fair-wide", "link", &prefixes),
            &[
                request(env, "ws-b", "fair-one-alone", "link", &one),
                request(env, "ws-b", "fair-one-behind", "link", &one),
            ],
            1,
        )
        .await,
    );
    fleet.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    measurements
}

/// The small import alone, then behind the big one: two measurements.
async fn pair(
    env: &TestEnv,
    mode: &str,
    big: &Value,
    small: &[Value; 2],
    wait_listed: usize,
) -> Vec<Measurement> {
    let size = match mode {
        "copy" => format!("{BIG_COPY} objects"),
        _ => format!("{BIG_LINK_PREFIXES} prefixes"),
    };
    let alone = timed(env, &small[0]).await;
    let big_id = env.submit(big).await;
    // The worst case for copy: every copy task of the big import recorded.
    let deadline = Instant::now() + Duration::from_secs(600);
    while env
        .status(big_id)
        .await
        .is_none_or(|s| s["objects_listed"].as_u64().unwrap_or(0) < wait_listed as u64)
    {
        assert!(Instant::now() < deadline, "the big {mode} import did not list in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let behind = timed(env, &small[1]).await;
    let big_final =
        env.status(big_id).await.is_some_and(|s| FINAL_STATES.contains(&s["state"].as_str().unwrap_or("")));
    if big_final {
        eprintln!("fairness: the big {mode} import ended before the small one: the figure means little");
    }
    env.publish_raw(
        "import.cancel",
        json!({ "import_id": big_id }).to_string().as_bytes(),
        Some("application/json"),
    )
    .await;
    let small_objects = if mode == "copy" { 10 } else { 1 };
    vec![
        measurement(&format!("fair {mode} alone"), small_objects, alone),
        measurement(&format!("fair {mode} behind {size}"), small_objects, behind),
    ]
}

fn measurement(run: &str, objects: usize, seconds: f64) -> Measurement {
    Measurement {
        provider: "s3",
        run: run.to_owned(),
        tool: "tether",
        objects,
        bytes: 0,
        seconds,
        seconds_persisted: seconds,
        cpu_seconds: 0.0,
        peak_rss_mib: Vec::new(),
        p99_ms: None,
    }
}

fn request(env: &TestEnv, workspace: &str, dataset: &str, mode: &str, prefixes: &[String]) -> Value {
    let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    let mut request = env.request(&format!("{dataset}-{}", Uuid::new_v4().simple()), &prefixes);
    request["workspace_id"] = json!(workspace);
    request["mode"] = json!(mode);
    request
}

/// Seconds from submitting `request` to its final state.
async fn timed(env: &TestEnv, request: &Value) -> f64 {
    let started = Instant::now();
    let id = env.submit(request).await;
    loop {
        if let Some(status) = env.status(id).await {
            if FINAL_STATES.contains(&status["state"].as_str().unwrap_or("")) {
                assert_eq!(status["state"], "succeeded", "{status}");
                return started.elapsed().as_secs_f64();
            }
        }
        assert!(started.elapsed() < Duration::from_secs(600), "import {id} not final after 10 minutes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
