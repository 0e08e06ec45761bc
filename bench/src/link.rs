//! Link imports of the seeded trees against `rclone lsf -R` of the same
//! trees, on S3 (moto) and GCS (fake-gcs-server).

use std::process::Stdio;
use std::time::Instant;

use serde_json::{json, Value};
use tether_tests::{service_var, TestEnv};
use tokio::process::Command;

use crate::procs::{children_cpu_seconds, Fleet, Measured};
use crate::stores::{Stores, Tree, GCS_TREES, S3_TREES};
use crate::Measurement;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Provider {
    S3,
    Gcs,
}

impl Provider {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Provider::S3 => "s3",
            Provider::Gcs => "gcs",
        }
    }

    /// A link request for a tree.
    fn request(self, env: &TestEnv, dataset: &str, tree: Tree) -> Value {
        let mut request = env.request(dataset, &[tree.prefix]);
        request["filter"] = json!({"extensions": ["*"]});
        match self {
            Provider::S3 => request["source"]["bucket"] = json!(tree.bucket),
            Provider::Gcs => {
                request["source"] =
                    json!({"provider": "gcs", "bucket": tree.bucket, "prefixes": [tree.prefix]});
            }
        }
        request
    }

    /// rclone, with the remote `bench:` configured by environment.
    pub(crate) fn rclone(self, stores: &Stores) -> Command {
        let mut command = Command::new("rclone");
        command.env_remove("AWS_CA_BUNDLE"); // rclone's S3 backend breaks on it
        match self {
            Provider::S3 => {
                command
                    .env("RCLONE_CONFIG_BENCH_TYPE", "s3")
                    .env("RCLONE_CONFIG_BENCH_PROVIDER", "Other")
                    .env("RCLONE_CONFIG_BENCH_ENDPOINT", &stores.s3_endpoint)
                    .env("RCLONE_CONFIG_BENCH_ACCESS_KEY_ID", service_var("AWS_ACCESS_KEY_ID"))
                    .env("RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY", service_var("AWS_SECRET_ACCESS_KEY"))
                    .env("RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE", "true");
            }
            Provider::Gcs => {
                // fake-gcs-server serves the JSON API under /storage/v1/.
                command
                    .env("RCLONE_CONFIG_BENCH_TYPE", "google cloud storage")
                    .env("RCLONE_CONFIG_BENCH_ANONYMOUS", "true")
                    .env("RCLONE_CONFIG_BENCH_ENDPOINT", format!("{}/storage/v1/", stores.gcs_endpoint));
            }
        }
        command
    }
}

pub(crate) async fn run(env: &TestEnv, stores: &Stores, provider: Provider) -> Vec<Measurement> {
    let trees: &[Tree] = match provider {
        Provider::S3 => &S3_TREES,
        Provider::Gcs => &GCS_TREES,
    };
    let mut measurements = Vec::new();
    for &tree in trees {
        measurements.push(tether(env, provider, tree).await);
        // The 10,000-object baseline is for the memory check only.
        if !tree.name.ends_with("-10k") {
            measurements.push(rclone_lsf(stores, provider, tree).await);
        }
    }
    measurements
}

async fn tether(env: &TestEnv, provider: Provider, tree: Tree) -> Measurement {
    let fleet = Fleet::start(env, &[]).await;
    let dataset = format!("bench-{}-{}", provider.name(), tree.name);
    let request = provider.request(env, &dataset, tree);
    let cost = fleet
        .run(env, &request, tree.objects, |status| {
            assert_eq!(status["state"], "succeeded", "{status}");
            assert_eq!(status["objects_imported"], tree.objects, "{status}");
        })
        .await;
    Measurement::tether(provider.name(), &format!("link {}", tree.name), tree.objects, 0, cost)
}

async fn rclone_lsf(stores: &Stores, provider: Provider, tree: Tree) -> Measurement {
    let mut command = provider.rclone(stores);
    let listing = std::env::temp_dir().join(format!("tether-bench-lsf-{}.txt", std::process::id()));
    let file = std::fs::File::create(&listing).expect("a file for rclone's listing");
    command.args(["lsf", "-R", "--files-only"]).arg(format!("bench:{}/{}", tree.bucket, tree.prefix));
    let cpu_before = children_cpu_seconds();
    let started = Instant::now();
    let peak = Measured::spawn_to("rclone", command, Stdio::from(file)).wait().await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = children_cpu_seconds() - cpu_before;
    let lines = std::fs::read_to_string(&listing).map(|l| l.lines().count()).unwrap_or(0);
    let _ = std::fs::remove_file(&listing);
    assert_eq!(lines, tree.objects, "rclone lsf -R listed {lines} objects");
    Measurement {
        provider: provider.name(),
        run: format!("link {}", tree.name),
        tool: "rclone lsf -R",
        objects: tree.objects,
        bytes: 0,
        seconds,
        seconds_persisted: seconds,
        cpu_seconds,
        peak_rss_mib: vec![("rclone".into(), peak)],
        p99_ms: None,
    }
}
