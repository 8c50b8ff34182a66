//! `cargo xtask bench api`: latency of the list, filter, search and
//! sweep-summary endpoints of a real `sslab serve` over a SQLite database
//! seeded with 10 000 runs (tags, metrics and evaluations included). Prints p50/p99 per query,
//! and what authentication costs: an authenticated request that does
//! nothing else (`POST /sign-out` with a token) against an unauthenticated
//! one (`GET /health`).

use std::time::{Duration, Instant};

use sqlx::Connection;
use sslab_shared::RunSpec;

const RUNS: usize = 10_000;
/// Runs in the one big sweep (the default cap).
const SWEEP_RUNS: usize = 200;
const METRICS_PER_RUN: usize = 20;
const REQUESTS: usize = 300;
const LAYERS: [&str; 3] = ["backbone", "proj.0", "proj.1"];
const PROBES: [(&str, &str); 4] = [
    ("knn", "top1"),
    ("linear", "top1"),
    ("lowshot", "top1_1shot"),
    ("rankme", "rank"),
];

#[path = "support/serve.rs"]
mod serve;
use serve::sslab;

async fn seed(url: &str) -> anyhow::Result<String> {
    let status = sslab().arg("migrate").env("DATABASE_URL", url).status()?;
    anyhow::ensure!(status.success(), "sslab migrate failed");
    let mut conn = sqlx::SqliteConnection::connect(url).await?;
    let mut tx = conn.begin().await?;
    let sweep_id = "swbench000000001".to_string();
    let base = RunSpec::default();
    let sweep_spec = serde_json::json!({
        "name": "bench", "seeds": [0, 1, 2, 3],
        "axes": [{"path": "projector.dims", "values": (0..SWEEP_RUNS / 4).map(|i| format!("256-{}", 16 + i)).collect::<Vec<_>>()}],
        "base": base,
    });
    sqlx::query("INSERT INTO sweeps (id, name, spec, created_at, run_count) VALUES ($1, 'bench', $2, 0, $3)")
        .bind(&sweep_id)
        .bind(sweep_spec.to_string())
        .bind(SWEEP_RUNS as i64)
        .execute(&mut *tx)
        .await?;
    let statuses = ["succeeded", "succeeded", "succeeded", "failed", "cancelled"];
    for i in 0..RUNS {
        let in_sweep = i < SWEEP_RUNS;
        let mut spec = base.clone();
        spec.seed = (i % 10) as u64;
        spec.projector.dims = sslab_shared::spec::Dims::new(vec![256, 16 + (i / 4) % 50]);
        spec.optimizer.lr = 1e-3 * (1 + i % 7) as f64;
        let name = format!("run-{i} dims={} seed={}", spec.projector.dims, spec.seed);
        let id = format!("bench{i:011}");
        let status = if in_sweep {
            "succeeded"
        } else {
            statuses[i % statuses.len()]
        };
        sqlx::query(
            "INSERT INTO runs (id, name, status, method, backbone, spec, created_at, finished_at, step, total_steps, epoch, last_loss, knn_backbone, sweep_id, sweep_point, tags) \
             VALUES ($1, $2, $3, 'simclr', 'tiny_cnn', $4, $5, $5, $6, $6, 19, $7, $8, $9, $10, $11)",
        )
        .bind(&id)
        .bind(&name)
        .bind(status)
        .bind(serde_json::to_string(&spec)?)
        .bind(1_000_000 + i as i64)
        .bind(METRICS_PER_RUN as i64)
        .bind(1.0 + (i % 13) as f64 / 10.0)
        .bind(0.3 + (i % 17) as f64 / 40.0)
        .bind(in_sweep.then(|| sweep_id.clone()))
        .bind(in_sweep.then(|| serde_json::json!({"projector.dims": spec.projector.dims}).to_string()))
        .bind(serde_json::to_string(&tags(i))?)
        .execute(&mut *tx)
        .await?;
        for tag in tags(i) {
            sqlx::query("INSERT INTO run_tags (run_id, tag) VALUES ($1, $2)")
                .bind(&id)
                .bind(tag)
                .execute(&mut *tx)
                .await?;
        }
        for step in 1..=METRICS_PER_RUN {
            sqlx::query("INSERT INTO metrics (run_id, step, epoch, loss, lr, images_per_sec, online_probe_acc) VALUES ($1, $2, $3, $4, 0.001, 500.0, 0.3)")
                .bind(&id)
                .bind(step as i64)
                .bind((step / 4) as i64)
                .bind(5.0 - step as f64 / 10.0)
                .execute(&mut *tx)
                .await?;
        }
        if status == "succeeded" {
            for (l, layer) in LAYERS.iter().enumerate() {
                for (p, (probe, metric)) in PROBES.iter().enumerate() {
                    sqlx::query("INSERT INTO evaluations (run_id, job_id, layer, probe, metric, value, settings) VALUES ($1, '', $2, $3, $4, $5, '{}')")
                        .bind(&id)
                        .bind(layer)
                        .bind(probe)
                        .bind(metric)
                        .bind(0.2 + ((i + l * 3 + p) % 50) as f64 / 100.0)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
    }
    tx.commit().await?;
    Ok(sweep_id)
}

/// Two tags a run: one of 50 groups (200 runs each) and its seed.
fn tags(i: usize) -> [String; 2] {
    [format!("group-{}", i % 50), format!("seed:{}", i % 10)]
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("sslab.db").display()
    );
    let t = Instant::now();
    let sweep = seed(&url).await?;
    println!(
        "seeded {RUNS} runs ({} metric rows, a {SWEEP_RUNS}-run sweep) in {:.1} s",
        RUNS * METRICS_PER_RUN,
        t.elapsed().as_secs_f64()
    );
    let served = serve::start(dir.path(), &url)?;
    let (mut child, base, token) = (served.child, served.base, served.admin_token);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;
    let queries = [
        ("health (no auth)", "GET /api/v1/health".to_string()),
        ("authenticated no-op", "POST /api/v1/sign-out".to_string()),
        (
            "runs list (newest 50)",
            "/api/v1/runs?page_size=50".to_string(),
        ),
        (
            "filtered list (status + name)",
            "/api/v1/runs?status=failed&q=seed%3D3&page_size=50".to_string(),
        ),
        (
            "runs of a sweep",
            format!("/api/v1/runs?sweep={sweep}&page_size=50"),
        ),
        (
            "tag filter (200 of 10 000)",
            "/api/v1/runs?tag=group-7&page_size=50".to_string(),
        ),
        (
            "search by tag (all kinds)",
            "/api/v1/search?q=group-7".to_string(),
        ),
        (
            "search by name, rare",
            "/api/v1/search?q=run-9999%20".to_string(),
        ),
        (
            "search, no match",
            "/api/v1/search?q=nothing-like-this".to_string(),
        ),
        (
            "search by id",
            "/api/v1/search?q=bench00000004321".to_string(),
        ),
        (
            "sweep summary (200 runs)",
            format!("/api/v1/sweeps/{sweep}/summary"),
        ),
    ];
    let mut worst_p99: f64 = 0.0;
    let mut p50s = std::collections::HashMap::new();
    println!(
        "{:<32} {:>9} {:>9} {:>9}",
        "query", "p50 ms", "p99 ms", "bytes"
    );
    for (label, path) in &queries {
        let mut times = Vec::with_capacity(REQUESTS);
        let mut bytes = 0;
        for i in 0..REQUESTS + 10 {
            let t = Instant::now();
            let resp = match path.split_once(' ') {
                Some(("POST", p)) => client.post(format!("{base}{p}")).send().await?,
                Some((_, p)) => client.get(format!("{base}{p}")).send().await?,
                None => client.get(format!("{base}{path}")).send().await?,
            };
            anyhow::ensure!(resp.status().is_success(), "{path}: {}", resp.status());
            bytes = resp.bytes().await?.len();
            // The first few warm the caches.
            if i >= 10 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
        worst_p99 = worst_p99.max(p99);
        p50s.insert(*label, p50);
        println!("{label:<32} {p50:>9.2} {p99:>9.2} {bytes:>9}");
    }
    let _ = child.kill();
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(50));
    println!("api_worst_p99_ms={worst_p99:.2}");
    println!(
        "api_auth_p50_ms={:.3}",
        p50s["authenticated no-op"] - p50s["health (no auth)"]
    );
    Ok(())
}
