//! A real `sslab serve` process on an ephemeral port, for the integration tests.
#![allow(dead_code)]

pub mod browser;
pub mod workers;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sslab_shared::api::{Run, RunStatus};

pub struct Server {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    /// The first start's admin token (empty when the database had users).
    pub token: String,
    /// The first start's one-time sign-in link for that admin.
    pub sign_in_link: String,
}

impl Server {
    /// Starts a server on `data_dir`, with `database_url` (default: SQLite in `data_dir`).
    pub fn start(data_dir: &Path, database_url: Option<&str>) -> Server {
        Server::start_with(data_dir, database_url, &[])
    }

    /// `start`, with extra environment variables for the server.
    pub fn start_with(data_dir: &Path, database_url: Option<&str>, env: &[(&str, &str)]) -> Server {
        Server::start_on("127.0.0.1:0", data_dir, database_url, env)
    }

    /// `start_with` on a given address (a restarted server keeps its own).
    pub fn start_on(
        addr: &str,
        data_dir: &Path,
        database_url: Option<&str>,
        env: &[(&str, &str)],
    ) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sslab"));
        cmd.envs(env.iter().copied());
        cmd.args(["serve", "--addr", addr, "--data-dir"])
            .arg(data_dir)
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "info,sqlx=warn,tower_http=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Ok(dir) = std::env::var("SSLAB_STATIC_DIR") {
            cmd.args(["--static-dir", &dir]);
        }
        if let Some(url) = database_url {
            cmd.env("DATABASE_URL", url);
        }
        let mut child = cmd.spawn().expect("start sslab serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut token = String::new();
        let mut sign_in_link = String::new();
        // The first start prints its admin's token before the listening line.
        let base = loop {
            let mut line = String::new();
            let n = reader
                .read_line(&mut line)
                .expect("read the server's output");
            assert!(n > 0, "the server exited before it listened");
            if let Some(t) = line.trim().strip_prefix("sslab admin token: ") {
                token = t.to_string();
            }
            if let Some(l) = line
                .trim()
                .strip_prefix("sslab sign-in link (once, 24 h): ")
            {
                sign_in_link = l.to_string();
            }
            if let Some(base) = line.trim().strip_prefix("sslab listening on ") {
                break base.to_string();
            }
        };
        Server {
            child,
            base,
            data_dir: data_dir.to_path_buf(),
            token,
            sign_in_link,
        }
    }

    /// A client that sends the admin token with every request.
    pub fn client(&self) -> reqwest::Client {
        client_with(&self.token)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    /// Sends a signal (`TERM`, `KILL`) and waits for the process to exit.
    pub fn stop(mut self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server did not stop within 30 s of SIG{signal}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that sends `token` as its bearer token.
pub fn client_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("a token is ASCII"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("a client")
}

/// Runs `sslab admin ARGS…` on the server's data folder and database;
/// returns its standard output.
pub fn admin(data_dir: &Path, database_url: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sslab"));
    cmd.arg("--data-dir").arg(data_dir).arg("admin").args(args);
    cmd.env_remove("DATABASE_URL");
    if let Some(url) = database_url {
        cmd.env("DATABASE_URL", url);
    }
    let out = cmd.output().expect("run sslab admin");
    assert!(
        out.status.success(),
        "sslab admin {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Every API path the server binary serves (`sslab routes`, read off its router).
pub fn routes() -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_sslab"))
        .args(["--data-dir", "/nonexistent-sslab-routes", "routes"])
        .output()
        .expect("run sslab routes");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The methods `url`'s route takes, as its 405 lists them for a method no
/// route has (no handler runs); HEAD, which GET brings, left out.
pub async fn allowed_methods(client: &reqwest::Client, url: &str) -> Vec<String> {
    let probe = reqwest::Method::from_bytes(b"PROBE").unwrap();
    let resp = client.request(probe, url).send().await.unwrap();
    assert_eq!(resp.status(), 405, "PROBE {url}");
    resp.headers()["allow"]
        .to_str()
        .unwrap()
        .split(',')
        .map(|m| m.trim().to_string())
        .filter(|m| m != "HEAD")
        .collect()
}

/// The token `sslab admin create-token` printed on its last line.
pub fn last_line(out: &str) -> String {
    out.lines().last().unwrap_or_default().trim().to_string()
}

/// A 20×16 PNG of one colour with a pattern in its complement.
pub fn png(colour: [u8; 3], seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(20, 16, |x, y| {
        if (x + y + seed).is_multiple_of(5) {
            image::Rgb([255 - colour[0], 255 - colour[1], 255 - colour[2]])
        } else {
            image::Rgb(colour)
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A déjà vu audit of two tiny models on the built-in scenes.
pub fn tiny_audit() -> Value {
    json!({
        "name": "api-audit",
        "snapshots": [1],
        "split": {"per_class": 6},
        "attack": {"k": 10},
        "run": {
            "seed": 3,
            "data": {"source": "scenes", "classes": 3, "train_images": 90, "test_images": 30},
            "backbone": {"kind": "tiny_cnn", "width": 8},
            "projector": {"dims": "32-16"},
            "optimizer": {"batch_size": 12},
            "schedule": {"epochs": 2}
        }
    })
}

/// Small decoders for an audit's drawings (`reconstruct`): seconds on the
/// tiny audit.
pub fn tiny_reconstruct() -> Value {
    json!({"steps": 20, "batch": 16, "samples": 2, "images": 3,
        "infusion": {"steps": 3, "channels": 8, "blocks": 1}})
}

/// Polls a job (`GET url`, a JSON body with `status`) until it ends;
/// its last body.
pub async fn wait_job(client: &reqwest::Client, url: String, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let job: Value = get_json(client, url.clone()).await;
        if matches!(
            job["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return job;
        }
        assert!(Instant::now() < deadline, "{url} did not end: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A run that takes a second or two on a CPU.
pub fn tiny_spec(epochs: usize) -> Value {
    json!({
        "name": "tiny",
        "data": {"source": "scenes", "classes": 3, "train_images": 64, "test_images": 30, "image_size": 32, "seed": 1},
        "backbone": {"kind": "tiny_cnn", "width": 8},
        "projector": {"dims": "32-16"},
        "optimizer": {"batch_size": 16, "lr": 0.003},
        "schedule": {"epochs": epochs, "warmup_epochs": 0.5},
        "eval": {"knn_k": 10},
        "seed": 3
    })
}

pub async fn create(client: &reqwest::Client, server: &Server, spec: &Value) -> Run {
    let resp = client
        .post(server.url("/runs"))
        .json(spec)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    resp.json().await.unwrap()
}

/// GET `url` and decode its JSON body.
pub async fn get_json<T: serde::de::DeserializeOwned>(client: &reqwest::Client, url: String) -> T {
    let resp = client.get(&url).send().await.unwrap();
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    resp.json().await.unwrap()
}

/// POSTs `body` as JSON and reads the answer, whatever its status.
pub async fn post_json(client: &reqwest::Client, url: String, body: &Value) -> Value {
    client
        .post(&url)
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub async fn get_run(client: &reqwest::Client, server: &Server, id: &str) -> Run {
    get_json(client, server.url(&format!("/runs/{id}"))).await
}

/// Polls until `pred` holds for the run, or panics after `secs`.
pub async fn wait_for(
    client: &reqwest::Client,
    server: &Server,
    id: &str,
    secs: u64,
    pred: impl Fn(&Run) -> bool,
) -> Run {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let run = get_run(client, server, id).await;
        if pred(&run) {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting; run is {:?} at step {}: {:?}",
            run.status,
            run.step,
            run.error
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn wait_terminal(client: &reqwest::Client, server: &Server, id: &str) -> Run {
    wait_for(client, server, id, 120, |r| r.status.is_terminal()).await
}

pub fn e2e_required() -> bool {
    std::env::var("SSLAB_E2E").is_ok_and(|v| v == "1")
}

pub fn assert_succeeded(run: &Run) {
    assert_eq!(
        run.status,
        RunStatus::Succeeded,
        "run failed: {:?}",
        run.error
    );
}

/// A new, empty PostgreSQL database on the test server, or `None` (skip)
/// when none is configured outside `cargo xtask test`.
pub async fn fresh_postgres_database() -> Option<String> {
    use sqlx::Connection;
    let Ok(admin) = std::env::var("SSLAB_TEST_DATABASE_URL") else {
        assert!(
            !e2e_required(),
            "SSLAB_TEST_DATABASE_URL is required (cargo xtask test sets it)"
        );
        eprintln!("skipped: set SSLAB_TEST_DATABASE_URL to a PostgreSQL database");
        return None;
    };
    let mut conn = sqlx::postgres::PgConnection::connect(&admin)
        .await
        .expect("connect to PostgreSQL");
    let name = format!("sslab_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let (base, _) = admin
        .rsplit_once('/')
        .expect("a database URL ends with /NAME");
    Some(format!("{base}/{name}"))
}

/// Trains `spec` with `sslab train` into `work/NAME` and exports it with
/// `sslab export` (plus `extra` arguments) into `work/NAME-bundle`.
pub fn export_run(work: &Path, name: &str, spec: &Value, extra: &[&str]) -> PathBuf {
    let spec_file = work.join(format!("{name}.json"));
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    let (run, bundle) = (work.join(name), work.join(format!("{name}-bundle")));
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let train = vec![
        "train".into(),
        "--spec".into(),
        path(&spec_file),
        "--out".into(),
        path(&run),
    ];
    let mut export = vec![
        "export".into(),
        "--run".into(),
        path(&run),
        "--out".into(),
        path(&bundle),
    ];
    export.extend(extra.iter().map(|s| s.to_string()));
    for args in [train, export] {
        let out = Command::new(env!("CARGO_BIN_EXE_sslab"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sslab {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    bundle
}

/// A folder as a tar archive, as `tar -cf - -C DIR .` makes it.
pub fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_dir_all(".", dir).unwrap();
    builder.into_inner().unwrap()
}

/// `POST /demos` with a bundle archive.
pub async fn publish(
    client: &reqwest::Client,
    server: &Server,
    archive: Vec<u8>,
) -> reqwest::Response {
    client
        .post(server.url("/demos"))
        .header("content-type", "application/x-tar")
        .body(archive)
        .send()
        .await
        .unwrap()
}
