//! `make bench`: Tether measured against rclone on this machine, in one run
//! and on the same stores, so the ratios mean something on a shared, noisy
//! machine. Results are printed and written to `bench/results/latest.json`.
//!
//! The stores are the benchmark's own ([`stores`]), seeded once: on S3
//! (moto) a wide tree (100 sub-prefixes x 1,000 objects), a flat prefix
//! (100,000 objects), 10,000 flat objects (the memory check's baseline),
//! 2,000 x 256 KiB and one 1 GiB; on GCS (fake-gcs-server) the wide tree and
//! the flat prefix at a tenth of the size (see [`stores`] for why).
//!
//! - `link`: link imports of each tree by the real release binaries (one
//!   `tether-scheduler`, two `tether-worker`s) against `rclone lsf -R`.
//! - `copy`: copy imports between two moto buckets against `rclone copy`.
//! - `api`: the access API's signing and proxy against the bare SDK
//!   presigner and a direct GET ([`api`]).
//! - `fairness`: a small import's time to final alone and behind a big
//!   import of another workspace ([`fairness`]); on the test services'
//!   moto when run alone (`tether-bench fairness`), it needs none of the
//!   benchmark's seeded stores.
//! - `history`: the GCS wide tree's link import into an empty database and
//!   into one with 10^7 images of history, and the plans of the platform's
//!   and staff's queries there ([`history`]).
//!
//! Each Tether figure: wall time from request to final state, objects/s and
//! MB/s, CPU seconds of the three Tether processes plus every PostgreSQL
//! process (utime + stime, the difference over the run), CPU µs per object,
//! and each process's peak RSS. `tether-bench [link] [copy] [api] [fairness] [history]`
//! runs the named ones (default: all) and writes `results/latest.json` (all)
//! or `results/NAME.json` (the named ones).

mod api;
mod copy;
mod fairness;
mod history;
mod link;
mod procs;
mod stores;

use std::path::Path;

use serde_json::{json, Value};
use tether_tests::TestEnv;

use crate::link::Provider;
use crate::procs::Cost;
use crate::stores::Stores;

/// One tool's run of one benchmark.
pub(crate) struct Measurement {
    pub provider: &'static str,
    pub run: String,
    pub tool: &'static str,
    pub objects: usize,
    pub bytes: u64,
    /// To the final state (rclone: to its exit).
    pub seconds: f64,
    /// Until every object is in Postgres (rclone: to its exit).
    pub seconds_persisted: f64,
    /// Tether: its processes plus PostgreSQL; rclone: rclone.
    pub cpu_seconds: f64,
    pub peak_rss_mib: Vec<(String, f64)>,
    /// The 99th percentile of a request's latency, where requests are timed.
    pub p99_ms: Option<f64>,
}

impl Measurement {
    pub(crate) fn tether(provider: &'static str, run: &str, objects: usize, bytes: u64, cost: Cost) -> Self {
        Self {
            provider,
            run: run.to_owned(),
            tool: "tether",
            objects,
            bytes,
            seconds: cost.seconds,
            seconds_persisted: cost.seconds_persisted,
            cpu_seconds: cost.cpu_seconds,
            peak_rss_mib: cost.peak_rss_mib,
            p99_ms: None,
        }
    }

    fn objects_per_second(&self) -> f64 {
        self.objects as f64 / self.seconds
    }

    fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds
    }

    fn cpu_us_per_object(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.objects as f64
    }

    fn peak_rss(&self, process: &str) -> f64 {
        self.peak_rss_mib.iter().filter(|(p, _)| p.starts_with(process)).map(|(_, m)| *m).fold(0.0, f64::max)
    }

    fn json(&self) -> Value {
        json!({
            "provider": self.provider, "run": self.run, "tool": self.tool,
            "objects": self.objects, "bytes": self.bytes, "seconds": self.seconds,
            "seconds_persisted": self.seconds_persisted,
            "objects_per_second": self.objects_per_second(),
            "megabytes_per_second": self.megabytes_per_second(),
            "cpu_seconds": self.cpu_seconds, "cpu_us_per_object": self.cpu_us_per_object(),
            "peak_rss_mib": self.peak_rss_mib.iter().map(|(p, m)| json!({p: m})).collect::<Vec<_>>(),
            "p99_ms": self.p99_ms,
        })
    }
}

fn main() {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wanted = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    let needs_stores = ["link", "copy", "api", "history"].iter().any(|name| wanted(name));
    let stores =
        needs_stores.then(|| runtime.block_on(Stores::start(&root, wanted("link") || wanted("history"))));
    if let Some(stores) = &stores {
        // Everything (this process's clients, Tether's processes, rclone's
        // S3 remote) talks to the benchmark's stores. Set before any thread
        // of ours reads the environment.
        std::env::set_var("AWS_ENDPOINT_URL_S3", &stores.s3_endpoint);
        std::env::set_var("AWS_ENDPOINT_URL_STS", &stores.s3_endpoint);
        std::env::set_var("STORAGE_EMULATOR_HOST", &stores.gcs_endpoint);
    }
    let (measurements, history) = runtime.block_on(async {
        let env = TestEnv::new().await;
        let mut measurements = Vec::new();
        let mut history = None;
        if let Some(stores) = &stores {
            if wanted("link") {
                for provider in [Provider::S3, Provider::Gcs] {
                    measurements.extend(link::run(&env, stores, provider).await);
                }
            }
            if wanted("copy") {
                measurements.extend(copy::run(&env, stores).await);
            }
            if wanted("api") {
                measurements.extend(api::run(&env).await);
            }
        }
        if wanted("fairness") {
            measurements.extend(fairness::run(&env).await);
        }
        if wanted("history") {
            // Last: it leaves 10^7 rows in the benchmark's database.
            let (runs, summary) = history::run(&TestEnv::new().await).await;
            measurements.extend(runs);
            history = Some(summary);
        }
        (measurements, history)
    });
    let mut results = report(&measurements, history.as_ref());
    if let Some(history) = history {
        results["history"] = history;
    }
    let name = if args.is_empty() { "latest".to_owned() } else { args.join("-") };
    let path = format!("{}/results/{name}.json", env!("CARGO_MANIFEST_DIR"));
    match std::fs::write(&path, format!("{results:#}\n")) {
        Ok(()) => println!("\nresults written to {path}"),
        Err(error) => eprintln!("cannot write {path}: {error}"),
    }
    drop(stores);
}

/// Prints the table, the ratios and the targets; returns them as JSON.
fn report(measurements: &[Measurement], history: Option<&Value>) -> Value {
    println!(
        "\n{:<4} {:<14} {:<14} {:>8} {:>8} {:>9} {:>10} {:>8} {:>8} {:>9}  peak RSS MiB",
        "", "run", "tool", "objects", "seconds", "persisted", "objects/s", "MB/s", "CPU s", "CPU µs/o"
    );
    for m in measurements {
        let rss: Vec<String> = m.peak_rss_mib.iter().map(|(p, mib)| format!("{p} {mib:.0}")).collect();
        println!(
            "{:<4} {:<14} {:<14} {:>8} {:>8.2} {:>9.2} {:>10.0} {:>8.1} {:>8.2} {:>9.1}  {}",
            m.provider,
            m.run,
            m.tool,
            m.objects,
            m.seconds,
            m.seconds_persisted,
            m.objects_per_second(),
            m.megabytes_per_second(),
            m.cpu_seconds,
            m.cpu_us_per_object(),
            rss.join(", ")
        );
    }
    let find = |provider: &str, run: &str, tether: bool| {
        measurements.iter().find(|m| m.provider == provider && m.run == run && (m.tool == "tether") == tether)
    };
    let mut ratios = Vec::new();
    println!("\nTether / rclone throughput   to final state   to all persisted");
    for m in measurements.iter().filter(|m| m.tool == "tether") {
        if let Some(rclone) = find(m.provider, &m.run, false) {
            let (ratio, persisted) = (rclone.seconds / m.seconds, rclone.seconds / m.seconds_persisted);
            println!("{:<4} {:<14} {ratio:>22.2} {persisted:>18.2}", m.provider, m.run);
            ratios.push(
                json!({"provider": m.provider, "run": m.run, "to_final": ratio, "to_persisted": persisted}),
            );
        }
    }
    let mut targets = Vec::new();
    let mut target = |what: String, value: f64, goal: &str, met: bool| {
        println!("{:<58} {value:>8.2}  {goal:<8} {}", what, if met { "met" } else { "MISSED" });
        targets.push(json!({"target": what, "value": value, "goal": goal, "met": met}));
    };
    println!("\ntargets");
    for provider in ["s3", "gcs"] {
        if let (Some(t), Some(r)) = (find(provider, "link wide", true), find(provider, "link wide", false)) {
            let ratio = r.seconds / t.seconds_persisted;
            target(
                format!("{provider}: link wide, Tether/rclone lsf -R objects/s (persisted)"),
                ratio,
                ">= 1.5",
                ratio >= 1.5,
            );
        }
    }
    for m in measurements.iter().filter(|m| m.tool == "tether" && m.run.starts_with("link")) {
        let us = m.cpu_us_per_object();
        target(
            format!("{}: {}, CPU µs per object (Tether + Postgres)", m.provider, m.run),
            us,
            "<= 50",
            us <= 50.0,
        );
    }
    for (run, goal) in [("copy 256 KiB", 1.0), ("copy 1 GiB", 0.9)] {
        if let (Some(t), Some(r)) = (find("s3", run, true), find("s3", run, false)) {
            let ratio = r.seconds / t.seconds;
            target(format!("s3: {run}, Tether/rclone MB/s"), ratio, &format!(">= {goal}"), ratio >= goal);
        }
    }
    if measurements.iter().any(|m| m.tool == "tether" && !m.peak_rss_mib.is_empty()) {
        let worker_peak = measurements
            .iter()
            .filter(|m| m.tool == "tether")
            .map(|m| m.peak_rss("worker"))
            .fold(0.0, f64::max);
        target("worker peak RSS in all runs, MiB".into(), worker_peak, "<= 150", worker_peak <= 150.0);
    }
    let tool = |run: &str, tool: &str| measurements.iter().find(|m| m.run == run && m.tool == tool);
    if let (Some(api), Some(bare)) =
        (tool("api sign 1000 ids", "tether-api"), tool("api sign 1000 ids", "aws-sdk presign"))
    {
        let ratio = api.objects_per_second() / bare.objects_per_second();
        target("api: signed URLs/s, tether-api / bare SDK presigner".into(), ratio, ">= 0.5", ratio >= 0.5);
        let p99 = api.p99_ms.unwrap_or(f64::INFINITY);
        target("api: p99 of a 1000-id request, ms".into(), p99, "<= 50", p99 <= 50.0);
    }
    if let (Some(api), Some(direct)) =
        (tool("api proxy 100 MiB", "tether-api"), tool("api proxy 100 MiB", "direct GET"))
    {
        let ratio = direct.seconds / api.seconds;
        target("api: proxied MB/s / direct GET MB/s (100 MiB)".into(), ratio, ">= 0.8", ratio >= 0.8);
    }
    if let Some(streams) = tool("api proxy 20 x 100 MiB", "tether-api") {
        let rss = streams.peak_rss("api");
        target("api: tether-api peak RSS, 20 streams at once, MiB".into(), rss, "<= 100", rss <= 100.0);
    }
    if let Some(history) = history {
        let ratio = history["filled_to_empty_ratio"].as_f64().unwrap_or(0.0);
        target("history: objects/s into the history / into none".into(), ratio, ">= 0.8", ratio >= 0.8);
        let scans = history["plans"]
            .as_array()
            .map_or(0, |p| p.iter().filter(|p| p["whole_table_scan"] == true).count());
        target("history: plans scanning images or tasks whole".into(), scans as f64, "= 0", scans == 0);
    }
    if let (Some(big), Some(small)) = (find("s3", "link flat", true), find("s3", "link flat-10k", true)) {
        let growth = big.peak_rss("worker") / small.peak_rss("worker");
        target("worker peak RSS, 100,000 / 10,000 flat objects".into(), growth, "<= 1.10", growth <= 1.10);
    }
    for mode in ["copy", "link"] {
        let alone = measurements.iter().find(|m| m.run == format!("fair {mode} alone"));
        let behind = measurements.iter().find(|m| m.run.starts_with(&format!("fair {mode} behind")));
        if let (Some(alone), Some(behind)) = (alone, behind) {
            let ratio = behind.seconds / alone.seconds;
            target(format!("fair share: {}, time / time alone", behind.run), ratio, "<= 3", ratio <= 3.0);
        }
    }
    json!({
        "measurements": measurements.iter().map(Measurement::json).collect::<Vec<_>>(),
        "ratios_tether_to_rclone": ratios,
        "targets": targets,
    })
}
