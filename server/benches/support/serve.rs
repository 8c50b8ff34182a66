//! A real `sslab serve` for the benches: no worker of its own, no rate
//! limit, its first-start admin token read off its output.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub fn sslab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sslab"))
}

pub struct Served {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub admin_token: String,
}

/// Starts the server on `database_url` with its data folder in `dir`.
pub fn start(dir: &Path, database_url: &str) -> anyhow::Result<Served> {
    let mut child = sslab()
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--workers",
            "0",
            "--rate-limit",
            "0",
            "--data-dir",
        ])
        .arg(dir)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut admin_token = String::new();
    // The first start prints its admin token before the listening line.
    loop {
        let mut line = String::new();
        anyhow::ensure!(reader.read_line(&mut line)? > 0, "the server exited early");
        if let Some(t) = line.trim().strip_prefix("sslab admin token: ") {
            admin_token = t.to_string();
        }
        if let Some(base) = line.trim().strip_prefix("sslab listening on ") {
            let base = base.to_string();
            return Ok(Served {
                child,
                base,
                admin_token,
            });
        }
    }
}
