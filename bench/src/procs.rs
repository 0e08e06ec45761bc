//! Child processes with their peak resident memory (VmHWM, sampled) and CPU
//! time (utime + stime from `/proc`), the CPU time of every PostgreSQL
//! process, and the fleet of real release binaries a Tether run uses.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tether_tests::TestEnv;
use tokio::process::{Child, Command};

/// A running child and a sampler of its peak RSS.
pub(crate) struct Measured {
    pub name: String,
    pid: u32,
    child: Child,
    peak_kib: tokio::task::JoinHandle<u64>,
}

impl Measured {
    pub(crate) fn spawn(name: &str, command: Command) -> Self {
        Self::spawn_to(name, command, Stdio::null())
    }

    /// Like [`Measured::spawn`], with the child's stdout going to `stdout`.
    pub(crate) fn spawn_to(name: &str, mut command: Command, stdout: Stdio) -> Self {
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let pid = child.id().unwrap_or_default();
        let peak_kib = tokio::spawn(async move {
            let mut peak = 0;
            while let Ok(status) = tokio::fs::read_to_string(format!("/proc/{pid}/status")).await {
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak = peak.max(kib);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        });
        Self { name: name.to_owned(), pid, child, peak_kib }
    }

    /// CPU seconds the child has used so far.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid).unwrap_or(0.0)
    }

    /// Waits for the child to exit; returns its peak RSS in MiB.
    pub(crate) async fn wait(mut self) -> f64 {
        let status = self.child.wait().await.expect("wait");
        assert!(status.success(), "{} exited with {status}", self.name);
        self.peak_kib.await.unwrap_or_default() as f64 / 1024.0
    }

    /// SIGTERM, then the peak RSS in MiB.
    pub(crate) async fn stop(self) -> f64 {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status().await;
        self.wait().await
    }
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The sum of two clock-tick fields of a `/proc/.../stat` file, in seconds;
/// fields are counted after the command name (which may hold spaces), from
/// the state at 0.
fn stat_seconds(path: &str, fields: [usize; 2]) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let values: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.iter().map(|&i| values.get(i)?.parse::<f64>().ok()).sum::<Option<f64>>()?;
    Some(ticks / clock_ticks())
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_seconds(&format!("/proc/{pid}/stat"), [11, 12])
}

/// CPU seconds of the children this process has waited for, from
/// `/proc/self/stat` cutime + cstime: an exited `rclone`'s, as a difference.
pub(crate) fn children_cpu_seconds() -> f64 {
    stat_seconds("/proc/self/stat", [13, 14]).unwrap_or(0.0)
}

/// CPU seconds of every PostgreSQL process (backends and background
/// workers) on this machine.
pub(crate) fn postgres_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(cpu_seconds)
        .sum()
}

/// utime + stime of this process (a loop it runs itself), in seconds.
pub(crate) fn own_cpu_seconds() -> f64 {
    stat_seconds("/proc/self/stat", [11, 12]).unwrap_or(0.0)
}

/// The release binaries sit beside this one (`target/release/`).
pub(crate) fn release_bin(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("the benchmark's own path");
    me.parent().map(|dir| dir.join(name)).unwrap_or_else(|| PathBuf::from(name))
}

/// One `tether-scheduler` and two `tether-worker` processes on the
/// benchmark's database and virtual host.
pub(crate) struct Fleet {
    processes: Vec<Measured>,
}

/// What one Tether run cost.
pub(crate) struct Cost {
    /// From the request to the final state (the scheduler is woken when the
    /// last task ends).
    pub seconds: f64,
    /// From the request until every object is accounted for in Postgres
    /// (imported + skipped + failed = the objects expected).
    pub seconds_persisted: f64,
    /// Tether processes plus PostgreSQL.
    pub cpu_seconds: f64,
    pub peak_rss_mib: Vec<(String, f64)>,
}

impl Fleet {
    pub(crate) async fn start(env: &TestEnv, settings: &[(&str, String)]) -> Self {
        let command = |bin: &str| {
            let mut c = Command::new(release_bin(bin));
            c.env("TETHER_DATABASE_URL", &env.database_url)
                .env("TETHER_AMQP_URL", &env.amqp_url)
                .env("TETHER_GCS_ALLOW_OWN_IDENTITY", "true")
                .env("RUST_LOG", "warn")
                .envs(settings.iter().map(|(k, v)| (*k, v.as_str())));
            c
        };
        let mut processes = vec![Measured::spawn("scheduler", command("tether-scheduler"))];
        processes.extend((1..=2).map(|i| Measured::spawn(&format!("worker-{i}"), command("tether-worker"))));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !env.schema_ready().await {
            assert!(Instant::now() < deadline, "the scheduler did not create the schema");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let the workers connect and start consuming before the clock runs.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Self { processes }
    }

    fn cpu_seconds(&self) -> f64 {
        self.processes.iter().map(Measured::cpu_seconds).sum::<f64>() + postgres_cpu_seconds()
    }

    /// SIGTERM for every process, without measuring.
    pub(crate) async fn stop(self) {
        for process in self.processes {
            process.stop().await;
        }
    }

    /// Submits `request` for `objects` objects, waits until the import is
    /// final, checks it with `check`, and stops the fleet.
    pub(crate) async fn run(
        self,
        env: &TestEnv,
        request: &serde_json::Value,
        objects: usize,
        check: impl FnOnce(&serde_json::Value),
    ) -> Cost {
        let cpu_before = self.cpu_seconds();
        let started = Instant::now();
        let import_id = env.submit(request).await;
        let mut seconds_persisted = None;
        let status = loop {
            let status = env.status(import_id).await.unwrap_or_default();
            let counted = ["objects_imported", "objects_skipped", "objects_failed"]
                .iter()
                .map(|c| status[c].as_u64().unwrap_or(0))
                .sum::<u64>();
            if seconds_persisted.is_none() && counted == objects as u64 {
                seconds_persisted = Some(started.elapsed().as_secs_f64());
            }
            let state = status["state"].as_str().unwrap_or("queued");
            if !["queued", "running"].contains(&state) {
                break status;
            }
            assert!(started.elapsed() < Duration::from_secs(3600), "not final after an hour: {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let seconds = started.elapsed().as_secs_f64();
        let cpu_seconds = self.cpu_seconds() - cpu_before;
        check(&status);
        let mut peak_rss_mib = Vec::new();
        for process in self.processes {
            let name = process.name.clone();
            peak_rss_mib.push((name, process.stop().await));
        }
        Cost { seconds, seconds_persisted: seconds_persisted.unwrap_or(seconds), cpu_seconds, peak_rss_mib }
    }
}
