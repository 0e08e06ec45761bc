//! Child processes with their peak resident memory (VmHWM, sampled).

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// A running child and a sampler of its peak RSS.
pub(crate) struct Measured {
    pub name: String,
    child: Child,
    peak_kib: tokio::task::JoinHandle<u64>,
}

impl Measured {
    pub(crate) fn spawn(name: &str, mut command: Command) -> Self {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
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
        Self { name: name.to_owned(), child, peak_kib }
    }

    /// Waits for the child to exit; returns its peak RSS in MiB.
    pub(crate) async fn wait(mut self) -> f64 {
        let status = self.child.wait().await.expect("wait");
        assert!(status.success(), "{} exited with {status}", self.name);
        self.peak_kib.await.unwrap_or_default() as f64 / 1024.0
    }

    /// SIGTERM, then the peak RSS in MiB.
    pub(crate) async fn stop(self) -> f64 {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        }
        self.wait().await
    }
}
