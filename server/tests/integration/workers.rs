//! Workers on other machines, as real processes: `sslab serve` with no
//! in-process worker on PostgreSQL, and `sslab worker` children that hold
//! only a worker token. A worker killed with SIGKILL mid-run loses the run
//! to another, which resumes from the stored checkpoint (checked by hash)
//! with a continuous metric history; four workers run twenty queued runs
//! exactly once each; a server killed and restarted loses nothing; a report
//! under a lease no longer held gets 409 and changes nothing.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::workers::{Worker, assert_continuous, free_addr, logs, settled_sha256, wait_log};
use common::{
    Server, admin, assert_succeeded, client_with, create, fresh_postgres_database, get_json,
    get_run, last_line, tiny_spec, wait_for,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sslab_shared::api::{MetricPoint, RunStatus};
use sslab_shared::worker::{RunLogLine, WorkerInfo};

/// Short leases, so that a dead worker's run moves on within seconds.
const LEASE_MS: &str = "3000";

/// A run long enough to be interrupted: 8 steps an epoch.
fn long_spec(name: &str, epochs: usize) -> Value {
    let mut spec = tiny_spec(epochs);
    spec["name"] = json!(name);
    spec["data"]["train_images"] = json!(128);
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remote_workers_on_postgres() {
    let Some(url) = fresh_postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let env = [("SSLAB_WORKERS", "0"), ("SSLAB_LEASE_MS", LEASE_MS)];
    let mut server = Server::start_on(&addr, dir.path(), Some(&url), &env);
    let a = server.client();
    let token = last_line(&admin(
        dir.path(),
        Some(&url),
        &[
            "create-token",
            "--user",
            "admin",
            "--scope",
            "worker",
            "--name",
            "gpu-box",
        ],
    ));
    let w = client_with(&token);

    // Another sslab version is refused at registration, both named.
    let resp = w
        .post(server.url("/worker/register"))
        .json(&json!({"host": "old-box", "device": "cpu", "slots": 1, "version": "0.0.1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("sslab 0.0.1") && text.contains(env!("CARGO_PKG_VERSION")),
        "{text}"
    );
    // Only worker tokens claim; a worker token reads nothing else.
    let resp = a
        .post(server.url("/worker/claim"))
        .json(&json!({"worker": "w-x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = w.get(server.url("/runs")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    stale_leases_change_nothing(&server, &a, &w).await;
    kill_a_worker_mid_run(&server, &a, &token, dir.path()).await;
    four_workers_twenty_runs(&server, &a, &token, dir.path()).await;
    server = restart_the_server(server, &a, &token, dir.path(), &addr, &url, &env).await;
    drop(server);
}

/// A lease taken over by another claim: its reports get 409 and store nothing.
async fn stale_leases_change_nothing(server: &Server, a: &reqwest::Client, w: &reqwest::Client) {
    let reg: WorkerInfo = w
        .post(server.url("/worker/register"))
        .json(&json!({"host": "test", "device": "cpu", "slots": 1, "version": env!("CARGO_PKG_VERSION")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run = create(a, server, &long_spec("stale", 2)).await;
    let claim = |worker: String| async move {
        let answer: Value = w
            .post(server.url("/worker/claim"))
            .json(&json!({"worker": worker}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["job"]["lease"]
            .as_str()
            .unwrap_or_else(|| panic!("{answer}"))
            .to_string()
    };
    let first = claim(reg.id.clone()).await;
    let report = |lease: String, tail: &'static str, body: Value| {
        let url = server.url(&format!("/worker/runs/{}/{tail}", run.id));
        async move {
            w.post(url)
                .header("sslab-lease", lease)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let point = |step: i64| json!({"step": step, "epoch": 0, "loss": 1.5, "lr": 0.1, "images_per_sec": 10.0});
    let batch = json!({"points": [point(1), point(2)], "total_steps": 16});
    assert_eq!(
        report(first.clone(), "start", json!({"resumed_epochs": 0})).await,
        204
    );
    assert_eq!(report(first.clone(), "metrics", batch.clone()).await, 204);
    // The same batch again (its answer was lost): nothing twice.
    assert_eq!(report(first.clone(), "metrics", batch.clone()).await, 204);
    let points: Vec<MetricPoint> =
        get_json(a, server.url(&format!("/runs/{}/metrics", run.id))).await;
    assert_eq!(points.len(), 2);

    // Handed back and claimed again: the first lease is dead.
    assert_eq!(
        report(first.clone(), "release", json!({"reason": "test"})).await,
        204
    );
    let second = claim(reg.id.clone()).await;
    assert_ne!(first, second);
    for (tail, body) in [
        ("heartbeat", json!({})),
        ("metrics", json!({"points": [point(3)], "total_steps": 16})),
        (
            "logs",
            json!({"lines": [{"seq": 0, "at": 0, "text": "stale"}]}),
        ),
        ("end", json!({"status": "failed", "error": "stale"})),
        ("release", json!({"reason": "stale"})),
    ] {
        assert_eq!(
            report(first.clone(), tail, body).await,
            StatusCode::CONFLICT,
            "{tail}"
        );
    }
    let resp = w
        .put(server.url(&format!(
            "/worker/runs/{}/files/checkpoint.safetensors",
            run.id
        )))
        .header("sslab-lease", &first)
        .body(vec![1u8; 64])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let after = get_run(a, server, &run.id).await;
    assert_eq!(after.status, RunStatus::Running);
    let points: Vec<MetricPoint> =
        get_json(a, server.url(&format!("/runs/{}/metrics", run.id))).await;
    assert_eq!(points.iter().map(|p| p.step).collect::<Vec<_>>(), [1, 2]);
    assert!(logs(a, server, &run.id).await.is_empty());
    assert!(
        !server
            .data_dir
            .join(format!("artifacts/runs/{}/checkpoint.safetensors", run.id))
            .exists()
    );
    // Success needs a stored checkpoint; the holder ends it.
    let resp = w
        .post(server.url(&format!("/worker/runs/{}/end", run.id)))
        .header("sslab-lease", &second)
        .json(&json!({"status": "succeeded"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(
        report(second, "end", json!({"status": "cancelled"})).await,
        204
    );
    // The Workers list shows it, and a team admin drains it.
    let workers: Vec<WorkerInfo> = get_json(a, server.url("/workers")).await;
    assert!(
        workers.iter().any(|x| x.id == reg.id && x.host == "test"),
        "{workers:?}"
    );
    let drained: WorkerInfo = a
        .post(server.url(&format!("/workers/{}/drain", reg.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(drained.draining);
    let answer: Value = w
        .post(server.url("/worker/claim"))
        .json(&json!({"worker": reg.id}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer, json!({"job": null, "drain": true}));
}

/// SIGKILL a worker after its second checkpoint: another resumes the run.
async fn kill_a_worker_mid_run(server: &Server, a: &reqwest::Client, token: &str, dir: &Path) {
    let run = create(a, server, &long_spec("killed", 40)).await;
    let first = Worker::start(&server.base, token, dir.join("w1"));
    wait_log(a, server, &run.id, "checkpoint after epoch 2 stored").await;
    let first_id = first.id.clone();
    first.kill();
    let stored_hash = settled_sha256(
        &server
            .data_dir
            .join(format!("artifacts/runs/{}/checkpoint.safetensors", run.id)),
    )
    .await;
    let killed_at = get_run(a, server, &run.id).await;
    assert_eq!(killed_at.status, RunStatus::Running);

    let second = Worker::start(&server.base, token, dir.join("w2"));
    let done = wait_for(a, server, &run.id, 180, |r| r.status.is_terminal()).await;
    assert_succeeded(&done);
    assert!(
        done.knn_backbone.is_some_and(|acc| acc > 0.5),
        "3 classes, chance is 0.33: {:?}",
        done.knn_backbone
    );
    assert_continuous(a, server, &run.id).await;
    let lines = logs(a, server, &run.id).await;
    let text: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.attempt == 1 && l.text.contains(&first_id)),
        "{text:?}"
    );
    let resumed = lines
        .iter()
        .find(|l| l.attempt == 2 && l.text.starts_with("resuming after the "))
        .unwrap_or_else(|| panic!("{text:?}"));
    let epochs: usize = resumed.text["resuming after the ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(epochs >= 2, "{text:?}");
    // The second worker resumed from the very checkpoint the first one
    // stored, checked against its hash as it was fetched.
    let fetched = lines
        .iter()
        .find(|l| l.attempt == 2 && l.text.starts_with("fetched checkpoint.safetensors"))
        .unwrap_or_else(|| panic!("{text:?}"));
    assert!(
        fetched.text.contains(&stored_hash),
        "{stored_hash}: {text:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.attempt == 2 && l.text.contains(&second.id)),
        "{text:?}"
    );
    second.terminate();
}

/// Twenty runs, four workers: each run is claimed once and succeeds.
async fn four_workers_twenty_runs(server: &Server, a: &reqwest::Client, token: &str, dir: &Path) {
    let mut ids = Vec::new();
    for i in 0..20 {
        let mut spec = tiny_spec(1);
        spec["name"] = json!(format!("many-{i}"));
        spec["data"]["train_images"] = json!(32);
        spec["data"]["test_images"] = json!(12);
        ids.push(create(a, server, &spec).await.id);
    }
    let workers: Vec<Worker> = (0..4)
        .map(|i| Worker::start(&server.base, token, dir.join(format!("many-{i}"))))
        .collect();
    let mut by_worker = std::collections::HashMap::<String, usize>::new();
    for id in &ids {
        let run = wait_for(a, server, id, 240, |r| r.status.is_terminal()).await;
        assert_succeeded(&run);
        let lines = logs(a, server, id).await;
        let claims: Vec<&RunLogLine> = lines
            .iter()
            .filter(|l| l.text.starts_with("attempt "))
            .collect();
        assert_eq!(
            claims.len(),
            1,
            "run {id} was claimed more than once: {lines:?}"
        );
        assert_eq!(claims[0].attempt, 1);
        let who = workers
            .iter()
            .find(|w| claims[0].text.contains(&w.id))
            .unwrap_or_else(|| panic!("{:?}", claims[0]));
        *by_worker.entry(who.id.clone()).or_default() += 1;
        assert_continuous(a, server, id).await;
    }
    assert_eq!(by_worker.values().sum::<usize>(), 20);
    assert!(
        by_worker.len() >= 2,
        "one worker ran everything: {by_worker:?}"
    );
    for w in workers {
        w.terminate();
    }
}

/// SIGKILL the server with runs queued and running, start it again on the
/// same address and database: every run finishes, its history whole.
async fn restart_the_server(
    server: Server,
    a: &reqwest::Client,
    token: &str,
    dir: &Path,
    addr: &str,
    url: &str,
    env: &[(&str, &str)],
) -> Server {
    let ids = [
        create(a, &server, &long_spec("restart-0", 30)).await.id,
        create(a, &server, &long_spec("restart-1", 4)).await.id,
        create(a, &server, &long_spec("restart-2", 4)).await.id,
    ];
    let worker = Worker::start(&server.base, token, dir.join("restart"));
    wait_log(a, &server, &ids[0], "checkpoint after epoch 1 stored").await;
    server.stop("KILL");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server = Server::start_on(addr, dir, Some(url), env);
    for id in &ids {
        let run = wait_for(a, &server, id, 240, |r| r.status.is_terminal()).await;
        assert_succeeded(&run);
        assert_continuous(a, &server, id).await;
    }
    worker.terminate();
    server
}
