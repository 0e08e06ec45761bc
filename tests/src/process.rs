//! Tether's binaries as the tests run them: found wherever cargo built them
//! (next to the test executable, under `CARGO_TARGET_DIR`, or `target/`),
//! started with the settings of one process only (nothing goes through this
//! process's environment, which parallel tests share), and their whole
//! output, stdout and stderr, kept so that a test can search it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncBufReadExt;

/// The path of Tether's binary `name` from the same build as the tests.
pub fn binary(name: &str) -> PathBuf {
    let mut candidates = Vec::new();
    // The test executable lives in <target>/<profile>/deps/.
    if let Some(profile_dir) =
        std::env::current_exe().ok().and_then(|e| Some(e.parent()?.parent()?.to_owned()))
    {
        candidates.push(profile_dir.join(name));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(target).join("debug").join(name));
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug").join(name));
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "cannot find the {name} binary (looked at {candidates:?}): run `cargo build --workspace --bins` first (make test does)"
        )
    })
}

/// A running Tether process whose output is captured.
#[derive(Debug)]
pub struct Process {
    child: tokio::process::Child,
    name: String,
    logs: Arc<Mutex<String>>,
}

impl Process {
    /// Starts `command` (made by [`command`]) with its output captured.
    pub fn spawn(name: &str, mut command: tokio::process::Command) -> Self {
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!("cannot start {name} ({e}): run `cargo build --workspace --bins` first")
        });
        let logs = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(capture(out, name.to_owned(), Arc::clone(&logs)));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(capture(err, name.to_owned(), Arc::clone(&logs)));
        }
        Self { child, name: name.to_owned(), logs }
    }

    /// Everything the process wrote so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL, and waits for the process to be gone.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A command for Tether's binary `name`, with no settings yet.
pub fn command(name: &str) -> tokio::process::Command {
    tokio::process::Command::new(binary(name))
}

/// Copies a process's output, line by line, to `logs` and to stderr.
async fn capture(output: impl tokio::io::AsyncRead + Unpin, name: String, logs: Arc<Mutex<String>>) {
    let mut reader = tokio::io::BufReader::new(output);
    let mut raw = Vec::new();
    while reader.read_until(b'\n', &mut raw).await.is_ok_and(|n| n > 0) {
        let line = String::from_utf8_lossy(&raw).trim_end_matches('\n').to_owned();
        raw.clear();
        eprintln!("[{name}] {line}");
        let mut logs = logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        logs.push_str(&line);
        logs.push('\n');
    }
}
