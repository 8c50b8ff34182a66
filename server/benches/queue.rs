//! `cargo xtask bench queue`: the job queue as remote workers use it, over
//! loopback HTTP against a real `sslab serve` on PostgreSQL (a fresh
//! database on `SSLAB_TEST_DATABASE_URL`, default the local server's
//! `test`). Eight simulated workers (HTTP clients with a worker token, no
//! training) first drain queued runs — claim, start, end — then hold a run
//! each and send step-numbered metric batches. Prints claims/s and metric
//! rows/s, and checks that every run was claimed exactly once and every
//! row stored once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::{Value, json};
use sqlx::Connection;

const WORKERS: usize = 8;
const RUNS: usize = 400;
const BATCHES: usize = 40;
const POINTS: usize = 100;

#[path = "support/serve.rs"]
mod serve;
use serve::sslab;

fn client(token: &str) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

async fn post(
    c: &reqwest::Client,
    url: String,
    lease: Option<&str>,
    body: Value,
) -> anyhow::Result<Value> {
    let mut req = c.post(url).json(&body);
    if let Some(l) = lease {
        req = req.header("sslab-lease", l);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    anyhow::ensure!(status.is_success(), "{status}: {text}");
    Ok(if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)?
    })
}

async fn register(w: &reqwest::Client, api: &str, i: usize) -> anyhow::Result<String> {
    let reg = post(
        w,
        format!("{api}/worker/register"),
        None,
        json!({"host": format!("bench-{i}"), "device": "cpu", "slots": 1, "version": env!("CARGO_PKG_VERSION")}),
    )
    .await?;
    Ok(reg["id"].as_str().unwrap_or_default().to_string())
}

async fn claim(
    w: &reqwest::Client,
    api: &str,
    worker: &str,
) -> anyhow::Result<Option<(String, String)>> {
    let answer = post(
        w,
        format!("{api}/worker/claim"),
        None,
        json!({"worker": worker}),
    )
    .await?;
    let job = &answer["job"];
    Ok(job["id"].as_str().map(|id| {
        (
            id.to_string(),
            job["lease"].as_str().unwrap_or_default().to_string(),
        )
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin_url = std::env::var("SSLAB_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut conn = sqlx::postgres::PgConnection::connect(&admin_url).await?;
    let name = format!("sslab_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let (base, _) = admin_url
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("a database URL ends with /NAME"))?;
    let url = format!("{base}/{name}");
    let dir = tempfile::tempdir()?;
    let served = serve::start(dir.path(), &url)?;
    let (mut child, base, admin) = (served.child, served.base, served.admin_token);
    let out = sslab()
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "admin",
            "create-token",
            "--user",
            "admin",
            "--scope",
            "worker",
        ])
        .env("DATABASE_URL", &url)
        .output()?;
    anyhow::ensure!(out.status.success(), "sslab admin create-token failed");
    let token = String::from_utf8(out.stdout)?
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    let api = format!("{base}/api/v1");
    let a = client(&admin)?;
    let spec = json!({
        "name": "queued",
        "data": {"source": "scenes", "classes": 3, "train_images": 64, "test_images": 30, "image_size": 32},
        "backbone": {"kind": "tiny_cnn", "width": 8},
        "projector": {"dims": "32-16"},
        "optimizer": {"batch_size": 16},
        "schedule": {"epochs": 1},
    });
    for _ in 0..RUNS + 2 * WORKERS {
        post(&a, format!("{api}/runs"), None, spec.clone()).await?;
    }

    // Claims: each worker claims, starts and ends runs until none is left.
    let w = client(&token)?;
    let claimed = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..WORKERS {
        let (w, api, claimed) = (w.clone(), api.clone(), claimed.clone());
        tasks.push(tokio::spawn(async move {
            let me = register(&w, &api, i).await?;
            let mut ids = Vec::new();
            while claimed.load(Ordering::SeqCst) < RUNS {
                let Some((id, lease)) = claim(&w, &api, &me).await? else {
                    break;
                };
                claimed.fetch_add(1, Ordering::SeqCst);
                let run = format!("{api}/worker/runs/{id}");
                post(
                    &w,
                    format!("{run}/start"),
                    Some(&lease),
                    json!({"resumed_epochs": 0}),
                )
                .await?;
                post(
                    &w,
                    format!("{run}/end"),
                    Some(&lease),
                    json!({"status": "cancelled"}),
                )
                .await?;
                ids.push(id);
            }
            anyhow::Ok(ids)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let claim_secs = t.elapsed().as_secs_f64();
    let claims = all.len();
    all.sort();
    all.dedup();
    anyhow::ensure!(all.len() == claims, "a run was claimed twice");

    // Metrics: each worker holds one run and streams batches of steps.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..WORKERS {
        let (w, api) = (w.clone(), api.clone());
        tasks.push(tokio::spawn(async move {
            let me = register(&w, &api, 100 + i).await?;
            let (id, lease) = claim(&w, &api, &me)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no run left to hold"))?;
            let run = format!("{api}/worker/runs/{id}");
            post(&w, format!("{run}/start"), Some(&lease), json!({"resumed_epochs": 0})).await?;
            for b in 0..BATCHES {
                let points: Vec<Value> = (0..POINTS)
                    .map(|k| {
                        let step = b * POINTS + k + 1;
                        json!({"step": step, "epoch": 0, "loss": 1.0 / step as f64, "lr": 0.1, "images_per_sec": 1000.0})
                    })
                    .collect();
                post(
                    &w,
                    format!("{run}/metrics"),
                    Some(&lease),
                    json!({"points": points, "total_steps": BATCHES * POINTS}),
                )
                .await?;
            }
            anyhow::Ok(id)
        }));
    }
    let mut held = Vec::new();
    for task in tasks {
        held.push(task.await??);
    }
    let metric_secs = t.elapsed().as_secs_f64();
    let rows = WORKERS * BATCHES * POINTS;
    for id in &held {
        let stored: Vec<Value> = a
            .get(format!("{api}/runs/{id}/metrics?limit=100000"))
            .send()
            .await?
            .json()
            .await?;
        anyhow::ensure!(
            stored.len() == BATCHES * POINTS,
            "run {id} stored {} rows, not {}",
            stored.len(),
            BATCHES * POINTS
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(conn);
    println!(
        "{WORKERS} workers, PostgreSQL, loopback HTTP: {claims} runs claimed, started and ended in {claim_secs:.2} s; \
         {rows} metric rows in batches of {POINTS} in {metric_secs:.2} s"
    );
    println!("queue_claims_per_sec={:.0}", claims as f64 / claim_secs);
    println!("queue_metric_rows_per_sec={:.0}", rows as f64 / metric_secs);
    Ok(())
}
