//! `sslab worker` child processes, for the tests of remote workers.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sslab_shared::api::MetricPoint;
use sslab_shared::worker::RunLogLine;

use super::{Server, get_json, get_run};

/// A worker process; killed when dropped.
pub struct Worker {
    child: Child,
    pub id: String,
}

impl Worker {
    pub fn start(base: &str, token: &str, work: PathBuf) -> Worker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sslab"))
            .args([
                "worker",
                "--server",
                base,
                "--token",
                token,
                "--poll-ms",
                "150",
            ])
            .arg("--work-dir")
            .arg(&work)
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sslab worker");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let id = line
            .trim()
            .strip_prefix("sslab worker ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("the worker said `{line}`"))
            .to_string();
        Worker { child, id }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

pub fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The file's hash once nothing is landing in its folder any more: a killed
/// worker's last upload may still be finishing on the server when it dies.
pub async fn settled_sha256(path: &Path) -> String {
    let dir = path.parent().unwrap();
    let receiving = || {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".part"))
    };
    let mut last = sha256(path);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sha256(path);
        if now == last && !receiving() {
            return now;
        }
        last = now;
    }
}

pub async fn logs(client: &reqwest::Client, server: &Server, id: &str) -> Vec<RunLogLine> {
    get_json(client, server.url(&format!("/runs/{id}/logs"))).await
}

pub async fn wait_log(
    client: &reqwest::Client,
    server: &Server,
    id: &str,
    needle: &str,
) -> Vec<RunLogLine> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let lines = logs(client, server, id).await;
        if lines.iter().any(|l| l.text.contains(needle)) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "no log line `{needle}` for run {id}: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every step from 1 to the run's length, once each.
pub async fn assert_continuous(client: &reqwest::Client, server: &Server, id: &str) {
    let run = get_run(client, server, id).await;
    let points: Vec<MetricPoint> = get_json(
        client,
        server.url(&format!("/runs/{id}/metrics?limit=100000")),
    )
    .await;
    let steps: Vec<i64> = points.iter().map(|p| p.step).collect();
    let expected: Vec<i64> = (1..=run.total_steps).collect();
    assert_eq!(steps, expected, "run {id}'s steps");
}
