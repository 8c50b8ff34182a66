//! The REST API against a real `sslab serve` on an ephemeral port: SQLite
//! (embedded default) and PostgreSQL (teams).

use crate::common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sslab_shared::api::{
    ErrorBody, Evaluation, MemorizationPoint, MetricPoint, Page, Run, RunFile, RunStatus, Sweep,
    SystemSample,
};
use sslab_shared::labels::{SearchHit, SearchKind};
use sslab_shared::project::Project;

/// create → run → done; metrics, memorization readings, evaluations,
/// checkpoint, pagination.
async fn lifecycle(server: &Server) {
    let client = server.client();
    let mut spec = tiny_spec(2);
    spec["eval"]["memorization"] = json!({"every": 1, "canaries_per_class": 2});
    let run = create(&client, server, &spec).await;
    assert_eq!(run.status, RunStatus::Queued);
    // 64 images less 3 × 2 held out by the monitor: 3 batches of 16 per epoch.
    assert_eq!(run.total_steps, 6);
    let done = wait_terminal(&client, server, &run.id).await;
    assert_succeeded(&done);
    assert_eq!(done.step, 6);
    let metrics: Vec<MetricPoint> =
        get_json(&client, server.url(&format!("/runs/{}/metrics", run.id))).await;
    assert_eq!(
        metrics.iter().map(|m| m.step).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    let readings: Vec<MemorizationPoint> = get_json(
        &client,
        server.url(&format!("/runs/{}/memorization", run.id)),
    )
    .await;
    assert_eq!(
        readings
            .iter()
            .map(|p| (p.epoch, p.step, p.canaries, p.heldout))
            .collect::<Vec<_>>(),
        [(1, 3, 6, 6), (2, 6, 6, 6)]
    );
    assert!(readings.iter().all(|p| {
        (0.0..=1.0).contains(&p.canary_top1)
            && (p.dejavu_gap - (p.canary_top1 - p.heldout_top1)).abs() < 1e-12
    }));
    assert!(metrics.iter().all(|m| m.loss.is_finite() && m.lr > 0.0));
    assert!(
        metrics
            .iter()
            .all(|m| m.data_wait.is_some_and(|w| (0.0..=1.0).contains(&w))),
        "every step reports the fraction of it spent waiting for data"
    );
    // The worker sampled the machine while the run trained, and once at
    // its end: this process's CPU and memory, no GPU.
    let system: Vec<SystemSample> =
        get_json(&client, server.url(&format!("/runs/{}/system", run.id))).await;
    assert!(!system.is_empty());
    assert!(system.windows(2).all(|w| w[0].at < w[1].at), "{system:?}");
    assert!(
        system.iter().all(|s| s.cpu_percent >= 0.0
            && s.rss_bytes > 1 << 20
            && (0..=6).contains(&s.step)
            && s.gpu_util.is_none()),
        "{system:?}"
    );
    assert_eq!(
        system.last().unwrap().step,
        6,
        "the last sample is taken at the end"
    );
    let evals: Vec<Evaluation> = get_json(
        &client,
        server.url(&format!("/runs/{}/evaluations", run.id)),
    )
    .await;
    // The default plan: every probe at every layer.
    for layer in ["backbone", "proj.0", "proj.1"] {
        let probes: Vec<&str> = evals
            .iter()
            .filter(|e| e.layer == layer)
            .map(|e| e.probe.as_str())
            .collect();
        for p in ["knn", "linear", "lowshot", "rankme"] {
            assert!(probes.contains(&p), "{layer} lacks {p}: {probes:?}");
        }
    }
    assert!(
        evals
            .iter()
            .filter(|e| e.probe != "rankme")
            .all(|e| (0.0..=1.0).contains(&e.value))
    );
    assert!(evals.iter().all(|e| e.job_id.is_none()));
    let knn = evals
        .iter()
        .find(|e| e.layer == "backbone" && e.probe == "knn")
        .unwrap();
    assert_eq!(done.knn_backbone, Some(knn.value));
    reevaluate(server, &done, evals.len()).await;
    let ck = client
        .get(server.url(&format!("/runs/{}/checkpoint", run.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(ck.status(), 200);
    assert!(ck.bytes().await.unwrap().len() > 1000);
    files(server, &done).await;

    // Idempotent creation, then pagination over three runs.
    let post = |key: &'static str| {
        client
            .post(server.url("/runs"))
            .header("Idempotency-Key", key)
            .json(&tiny_spec(1))
            .send()
    };
    let a: Run = post("k-1").await.unwrap().json().await.unwrap();
    let again = post("k-1").await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Run>().await.unwrap().id, a.id);
    let p1: Page<Run> = get_json(&client, server.url("/runs?page_size=1")).await;
    assert_eq!(p1.items.len(), 1);
    let token = p1.next_page_token.clone().expect("a second page");
    let p2: Page<Run> = get_json(
        &client,
        server.url(&format!("/runs?page_size=5&page_token={token}")),
    )
    .await;
    // Three runs so far: this one, the re-evaluation check's, and `a`.
    assert_eq!(p2.items.len(), 2);
    assert!(p2.items.iter().all(|r| r.id != p1.items[0].id));
    assert!(p2.next_page_token.is_none());
    wait_terminal(&client, server, &a.id).await;
}

/// A run's files: each listed with the size its download has, the spec as
/// TOML that parses back to the run's spec, and metrics as CSV.
async fn files(server: &Server, run: &Run) {
    let client = server.client();
    let files: Vec<RunFile> =
        get_json(&client, server.url(&format!("/runs/{}/files", run.id))).await;
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    let id = &run.id;
    assert_eq!(
        names,
        [
            format!("{id}.safetensors"),
            format!("{id}.toml"),
            format!("{id}-metrics.csv"),
            format!("{id}-evaluations.csv"),
            format!("{id}-evaluations.json"),
            format!("{id}-system.json"),
        ]
    );
    for f in &files {
        let resp = client
            .get(format!("{}{}", server.base, f.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", f.url);
        assert_eq!(
            resp.bytes().await.unwrap().len() as u64,
            f.bytes,
            "{}",
            f.name
        );
    }
    let toml = client
        .get(server.url(&format!("/runs/{id}/spec.toml")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sslab_shared::RunSpec::from_toml(&toml).unwrap(), run.spec);
    let csv = client
        .get(server.url(&format!("/runs/{id}/metrics.csv")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len() as i64, run.total_steps + 1, "{csv}");
    assert!(lines[0].starts_with("step,epoch,loss"), "{csv}");
    assert!(lines[1].starts_with("1,0,"), "{csv}");
}

/// A finished run evaluated again on other data with another plan, without
/// retraining; rows export as CSV.
async fn reevaluate(server: &Server, run: &Run, training_rows: usize) {
    let client = server.client();
    let url = server.url(&format!("/runs/{}/evaluate", run.id));
    for (body, field) in [
        (r#"{"eval": {"layers": ["proj.9"]}}"#, "eval.layers"),
        (
            r#"{"eval": {"data": {"source": "scenes", "classes": 99}}}"#,
            "eval.data.classes",
        ),
        (r#"{"data": {}}"#, "data"),
    ] {
        let bad = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 422);
        assert_eq!(
            bad.json::<ErrorBody>()
                .await
                .unwrap()
                .error
                .field
                .as_deref(),
            Some(field),
            "{body}"
        );
    }
    let plan = json!({"eval": {
        "probes": ["knn", "rankme"], "layers": ["backbone", "proj.1"], "knn_k": 5, "knn_metric": "l2",
        "data": {"source": "scenes", "classes": 4, "train_images": 40, "test_images": 20, "seed": 9}
    }});
    let resp = client.post(&url).json(&plan).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let job: Value = resp.json().await.unwrap();
    let job_id = job["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let j: Value = get_json(&client, server.url(&format!("/evaluation-jobs/{job_id}"))).await;
        if j["status"] == "succeeded" {
            break;
        }
        assert!(j["status"] == "queued" || j["status"] == "running", "{j}");
        assert!(
            std::time::Instant::now() < deadline,
            "evaluation did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows: Vec<Evaluation> = get_json(
        &client,
        server.url(&format!("/runs/{}/evaluations?job={job_id}", run.id)),
    )
    .await;
    let got: Vec<(&str, &str)> = rows
        .iter()
        .map(|e| (e.layer.as_str(), e.probe.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("backbone", "knn"),
            ("backbone", "rankme"),
            ("proj.1", "knn"),
            ("proj.1", "rankme")
        ]
    );
    assert_eq!(rows[0].settings["metric"], "l2");
    // Training's rows are untouched; the CSV holds both.
    let own: Vec<Evaluation> = get_json(
        &client,
        server.url(&format!("/runs/{}/evaluations?job=training", run.id)),
    )
    .await;
    assert_eq!(own.len(), training_rows);
    let csv = client
        .get(server.url(&format!("/runs/{}/evaluations?format=csv", run.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let text = csv.text().await.unwrap();
    assert_eq!(
        text.lines().next(),
        Some("run_id,job_id,layer,probe,metric,value,settings")
    );
    assert_eq!(text.lines().count(), 1 + training_rows + 4);
    // Only finished runs have final weights.
    let queued = create(&client, server, &tiny_spec(300)).await;
    let resp = client
        .post(server.url(&format!("/runs/{}/evaluate", queued.id)))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    client
        .post(server.url(&format!("/runs/{}/cancel", queued.id)))
        .send()
        .await
        .unwrap();
    wait_terminal(&client, server, &queued.id).await;
}

/// SSE delivers steps while the run trains, then the status and evaluations.
async fn live_events(server: &Server) {
    let client = server.client();
    let run = create(&client, server, &tiny_spec(6)).await;
    let resp = client
        .get(server.url(&format!("/runs/{}/events", run.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    let mut events: Vec<(String, Value)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, stream.next()).await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let name = block
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("")
                .to_string();
            let data = block
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect::<String>();
            if !name.is_empty() {
                events.push((name, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    let steps: Vec<i64> = events
        .iter()
        .filter(|(n, _)| n == "metric")
        .map(|(_, d)| d["step"].as_i64().unwrap())
        .collect();
    assert_eq!(
        steps,
        (1..=24).collect::<Vec<_>>(),
        "every step once, in order"
    );
    let statuses: Vec<&str> = events
        .iter()
        .filter(|(n, _)| n == "status")
        .map(|(_, d)| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.last(), Some(&"succeeded"));
    // Live: at least one status event came before the last metric.
    let first_status = events.iter().position(|(n, _)| n == "status").unwrap();
    let last_metric = events.iter().rposition(|(n, _)| n == "metric").unwrap();
    assert!(
        first_status < last_metric,
        "metrics arrived only after the run ended"
    );
    let (name, evals) = events.last().unwrap();
    assert_eq!(name, "evaluations");
    let knn_layers: Vec<&str> = evals
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["probe"] == "knn")
        .map(|e| e["layer"].as_str().unwrap())
        .collect();
    assert_eq!(knn_layers, ["backbone", "proj.0", "proj.1"]);
    // Every step carries the online probe's accuracy.
    assert!(
        events
            .iter()
            .filter(|(n, _)| n == "metric")
            .all(|(_, d)| d["online_probe_acc"].as_f64().is_some())
    );
}

/// Cancel stops a running run mid-epoch, and a queued one at once.
async fn cancel(server: &Server) {
    let client = server.client();
    let long = create(&client, server, &tiny_spec(500)).await;
    let queued = create(&client, server, &tiny_spec(1)).await;
    wait_for(&client, server, &long.id, 60, |r| r.step >= 1).await;
    let c: Run = client
        .post(server.url(&format!("/runs/{}/cancel", queued.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(c.status, RunStatus::Cancelled);
    let resp = client
        .post(server.url(&format!("/runs/{}/cancel", long.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let done = wait_terminal(&client, server, &long.id).await;
    assert_eq!(done.status, RunStatus::Cancelled);
    assert!(done.step < done.total_steps);
    // Ending an ended run is a conflict; the queued one never ran.
    let again = client
        .post(server.url(&format!("/runs/{}/cancel", long.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    assert_eq!(get_run(&client, server, &queued.id).await.step, 0);
}

async fn expect_422(
    client: &reqwest::Client,
    server: &Server,
    body: String,
    field: &str,
    words: &str,
) {
    let resp = client
        .post(server.url("/runs"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let err: ErrorBody = resp.json().await.unwrap();
    assert_eq!(err.error.code, "invalid_spec");
    assert_eq!(
        err.error.field.as_deref(),
        Some(field),
        "{}",
        err.error.message
    );
    assert!(err.error.message.contains(words), "{}", err.error.message);
}

/// Invalid specs are refused with a 422 naming the field; nothing is stored.
async fn invalid_specs(server: &Server) {
    let client = server.client();
    let before: Page<Run> = get_json(&client, server.url("/runs")).await;
    let cases = [
        ("optimizer", "lr", json!(-1.0), "optimizer.lr", "must be in"),
        (
            "optimizer",
            "momentum_typo",
            json!(0.9),
            "optimizer.momentum_typo",
            "unknown field",
        ),
        (
            "projector",
            "dims",
            json!("64-big"),
            "projector.dims",
            "`big`",
        ),
        (
            "schedule",
            "epochs",
            json!("many"),
            "schedule.epochs",
            "invalid type",
        ),
        (
            "data",
            "image_size",
            json!(48),
            "data.image_size",
            "32 or 64",
        ),
        (
            "eval",
            "memorization",
            json!({"every": 0}),
            "eval.memorization.every",
            "must be between 1 and epochs",
        ),
    ];
    for (section, key, value, field, words) in cases {
        let mut spec = tiny_spec(1);
        spec[section][key] = value;
        expect_422(&client, server, spec.to_string(), field, words).await;
    }
    // Malformed JSON: still a 422 with a message.
    let resp = client
        .post(server.url("/runs"))
        .header("content-type", "application/json")
        .body("{\"seed\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let after: Page<Run> = get_json(&client, server.url("/runs")).await;
    assert_eq!(before.items.len(), after.items.len());
    // Other bad requests.
    assert_eq!(
        client
            .get(server.url("/runs/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        client
            .get(server.url("/runs?status=done"))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        client
            .get(server.url("/runs?page_size=0"))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
}

/// Tags, notes and the archive narrow the list; a delete removes the rows
/// and the files, and is refused while the run is busy or still used.
async fn labels_and_delete(server: &Server, data_dir: &std::path::Path) {
    let client = server.client();
    let patch = |id: &str, body: Value| {
        client
            .patch(server.url(&format!("/runs/{id}")))
            .json(&body)
            .send()
    };
    let delete = |id: &str| client.delete(server.url(&format!("/runs/{id}"))).send();
    let a = create(&client, server, &tiny_spec(1)).await;
    let c = create(&client, server, &tiny_spec(1)).await;
    let a = wait_terminal(&client, server, &a.id).await;
    wait_terminal(&client, server, &c.id).await;

    let note = "# Baseline\n<script>alert(1)</script>";
    let r = patch(
        &a.id,
        json!({"tags": [" baseline ", "lr:0.3", "baseline"], "note": note}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let tagged: Run = r.json().await.unwrap();
    assert_eq!(tagged.tags, ["baseline", "lr:0.3"]);
    assert_eq!(
        tagged.note, note,
        "stored as written; the page renders it inert"
    );
    assert_eq!(get_run(&client, server, &a.id).await.tags, tagged.tags);
    for (body, field) in [
        (json!({"tags": ["a b"]}), "tags"),
        (
            json!({"tags": (0..1000).map(|i| format!("t{i}")).collect::<Vec<_>>()}),
            "tags",
        ),
        (json!({"note": "n".repeat(20_001)}), "note"),
        (json!({"name": "  "}), "name"),
        (json!({"colour": "red"}), "colour"),
    ] {
        let r = patch(&a.id, body).await.unwrap();
        assert_eq!(r.status(), 422);
        let e: ErrorBody = r.json().await.unwrap();
        assert_eq!(e.error.field.as_deref(), Some(field), "{}", e.error.message);
    }
    assert_eq!(
        get_run(&client, server, &a.id).await.tags,
        tagged.tags,
        "a refused change changes nothing"
    );

    let list =
        |query: &'static str| get_json::<Page<Run>>(&client, server.url(&format!("/runs?{query}")));
    let ids = |p: Page<Run>| p.items.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(list("tag=baseline").await), [a.id.clone()]);
    assert_eq!(ids(list("tag=lr:0.3").await), [a.id.clone()]);
    assert!(ids(list("tag=other").await).is_empty());
    patch(&a.id, json!({"archived": true})).await.unwrap();
    assert!(
        ids(list("tag=baseline").await).is_empty(),
        "archived runs are hidden"
    );
    assert_eq!(
        ids(list("tag=baseline&archived=true").await),
        [a.id.clone()]
    );
    assert_eq!(ids(list("tag=baseline&archived=all").await), [a.id.clone()]);
    assert!(!ids(list("archived=true").await).contains(&c.id));

    // Search: an id's start, a part of a name, a tag's start; archived runs
    // are found and say so.
    let search = |q: String| {
        let client = &client;
        async move {
            get_json::<Vec<SearchHit>>(client, server.url(&format!("/search?q={q}")))
                .await
                .into_iter()
                .filter(|h| h.kind == SearchKind::Run)
                .map(|h| (h.id, h.matched, h.archived))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        search("BASEL".into()).await,
        [(a.id.clone(), "tag".to_string(), true)]
    );
    assert_eq!(
        search(a.id[..8].to_string()).await,
        [(a.id.clone(), "id".to_string(), true)]
    );
    patch(&c.id, json!({"name": "the needle run"}))
        .await
        .unwrap();
    assert_eq!(
        search("EEDLE%20r".into()).await,
        [(c.id.clone(), "name".to_string(), false)]
    );
    assert!(
        search("lr%25".into()).await.is_empty(),
        "% is taken literally"
    );
    for bad in ["", "%20", "x&limit=0", "x&limit=51"] {
        let r = client
            .get(server.url(&format!("/search?q={bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "q={bad}");
    }
    let bad = client
        .get(server.url("/runs?archived=maybe"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // Busy: queued or running.
    let long = create(&client, server, &tiny_spec(500)).await;
    assert_eq!(delete(&long.id).await.unwrap().status(), 409);
    client
        .post(server.url(&format!("/runs/{}/cancel", long.id)))
        .send()
        .await
        .unwrap();
    wait_terminal(&client, server, &long.id).await;
    // Used: a CKA job compares `c`.
    post_json(&client, server.url("/cka"), &json!({"a": c.id})).await;
    let r = delete(&c.id).await.unwrap();
    assert_eq!(r.status(), 409);
    let e: ErrorBody = r.json().await.unwrap();
    assert!(e.error.message.contains("CKA job"), "{}", e.error.message);

    let runs_dir = data_dir.join("artifacts").join("runs");
    let names = || -> Vec<String> {
        std::fs::read_dir(&runs_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert!(names().contains(&a.id));
    assert_eq!(delete(&a.id).await.unwrap().status(), 204);
    assert!(!names().iter().any(|n| n.contains(&a.id)), "{:?}", names());
    assert_eq!(
        client
            .get(server.url(&format!("/runs/{}", a.id)))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let metrics = client
        .get(server.url(&format!("/runs/{}/metrics", a.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 404);
    assert_eq!(delete(&a.id).await.unwrap().status(), 404);
    assert!(ids(list("tag=baseline&archived=all").await).is_empty());

    // Two deletes of one run at once: one wins, the other finds it gone.
    let (x, y) = tokio::join!(delete(&long.id), delete(&long.id));
    let mut codes = [x.unwrap().status().as_u16(), y.unwrap().status().as_u16()];
    codes.sort();
    assert_eq!(codes, [204, 404], "{codes:?}");
    assert!(
        !names().iter().any(|n| n.contains(&long.id)),
        "{:?}",
        names()
    );
}

/// Projects: created, listed with their counts, named on creation, filtered
/// on, moved between (a sweep with its runs), and deleted only when empty.
async fn projects(server: &Server) {
    let client = server.client();
    let projects = || get_json::<Vec<Project>>(&client, server.url("/projects"));
    let names = |list: Vec<Project>| list.into_iter().map(|p| p.name).collect::<Vec<_>>();
    assert_eq!(names(projects().await)[0], "default");
    let post = |body: Value| client.post(server.url("/projects")).json(&body).send();
    for (body, field) in [
        (json!({"name": "width study"}), "name"),
        (json!({"name": ""}), "name"),
        (
            json!({"name": "w", "description": "d".repeat(2001)}),
            "description",
        ),
        (json!({"name": "w", "colour": "red"}), "colour"),
    ] {
        let r = post(body).await.unwrap();
        assert_eq!(r.status(), 422);
        let e: ErrorBody = r.json().await.unwrap();
        assert_eq!(e.error.field.as_deref(), Some(field), "{}", e.error.message);
    }
    let r = post(json!({"name": "width", "description": "last-block width"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for taken in ["width", "default"] {
        assert_eq!(
            post(json!({"name": taken})).await.unwrap().status(),
            409,
            "{taken}"
        );
    }

    let r = client
        .post(server.url("/runs?project=nope"))
        .json(&tiny_spec(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let e: ErrorBody = r.json().await.unwrap();
    assert_eq!(e.error.field.as_deref(), Some("project"));
    assert!(e.error.message.contains("`nope`"), "{}", e.error.message);
    let run: Run = client
        .post(server.url("/runs?project=width"))
        .json(&tiny_spec(1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run.project, "width");
    let list =
        |query: String| get_json::<Page<Run>>(&client, server.url(&format!("/runs?{query}")));
    let ids = |p: Page<Run>| p.items.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(list("project=width".into()).await), [run.id.clone()]);
    assert!(!ids(list("project=default&page_size=500".into()).await).contains(&run.id));

    let sweep: Sweep = client
        .post(server.url("/sweeps?project=width"))
        .json(&json!({"base": tiny_spec(1), "seeds": [1, 2], "axes": [{"path": "epochs", "values": [1]}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sweep.project, "width");
    let sweeps =
        |query: &str| get_json::<Page<Sweep>>(&client, server.url(&format!("/sweeps?{query}")));
    assert_eq!(sweeps("project=width").await.items.len(), 1);
    assert_eq!(
        list(format!("sweep={}&project=width", sweep.id))
            .await
            .items
            .len(),
        2
    );
    let counts = projects()
        .await
        .into_iter()
        .find(|p| p.name == "width")
        .unwrap();
    assert_eq!((counts.runs, counts.sweeps, counts.audits), (3, 1, 0));
    assert_eq!(counts.description, "last-block width");
    assert!(
        get_json::<Vec<Value>>(&client, server.url("/audits?project=width"))
            .await
            .is_empty()
    );

    // A sweep moves with its runs; a move to a project that does not exist is refused.
    let patch = |path: String, body: Value| client.patch(server.url(&path)).json(&body).send();
    let r = patch(format!("/sweeps/{}", sweep.id), json!({"project": "gone"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = patch(
        format!("/sweeps/{}", sweep.id),
        json!({"project": "default"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(sweeps("project=width").await.items.is_empty());
    assert_eq!(
        list(format!("sweep={}&project=default", sweep.id))
            .await
            .items
            .len(),
        2
    );

    let remove = || client.delete(server.url("/projects/width")).send();
    let r = remove().await.unwrap();
    assert_eq!(r.status(), 409);
    let e: ErrorBody = r.json().await.unwrap();
    assert!(e.error.message.contains("1 run"), "{}", e.error.message);
    patch(format!("/runs/{}", run.id), json!({"project": "default"}))
        .await
        .unwrap();
    assert_eq!(remove().await.unwrap().status(), 204);
    assert_eq!(remove().await.unwrap().status(), 404);
    assert!(!names(projects().await).contains(&"width".to_string()));
    let r = client
        .delete(server.url("/projects/default"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    invalid_specs(&server).await;
    lifecycle(&server).await;
    live_events(&server).await;
    cancel(&server).await;
    labels_and_delete(&server, dir.path()).await;
    projects(&server).await;
}

/// A server killed mid-run (no chance to clean up) re-queues the run when it
/// starts again, and the run resumes from its last end-of-epoch checkpoint:
/// the metrics of the epochs before it are the ones first recorded.
#[tokio::test(flavor = "multi_thread")]
async fn killed_server_requeues_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let client = server.client();
    let run = create(&client, &server, &tiny_spec(40)).await;
    // Four steps an epoch: past step 6 the first epoch's checkpoint is written.
    wait_for(&client, &server, &run.id, 60, |r| r.step >= 6).await;
    let metrics = |server: &Server| {
        get_json::<Vec<MetricPoint>>(&client, server.url(&format!("/runs/{}/metrics", run.id)))
    };
    let before = metrics(&server).await;
    server.stop("KILL");
    let server = Server::start(dir.path(), None);
    let done = wait_terminal(&client, &server, &run.id).await;
    assert_succeeded(&done);
    assert_eq!(done.step, done.total_steps);
    let after = metrics(&server).await;
    let steps: Vec<i64> = after.iter().map(|m| m.step).collect();
    assert_eq!(steps, (1..=done.total_steps).collect::<Vec<_>>());
    // Timings differ between attempts: equal ones were kept, not retrained.
    let first_epoch = |m: &[MetricPoint]| -> Vec<(i64, f64, f64)> {
        m.iter()
            .filter(|p| p.epoch == 0)
            .map(|p| (p.step, p.loss, p.images_per_sec))
            .collect()
    };
    assert_eq!(first_epoch(&after), first_epoch(&before));
    assert_eq!(first_epoch(&after).len(), 4);
}

/// The same API on PostgreSQL, and a graceful stop that hands the run back.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_api() {
    let Some(url) = fresh_postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Some(&url));
    invalid_specs(&server).await;
    lifecycle(&server).await;
    cancel(&server).await;
    labels_and_delete(&server, dir.path()).await;
    projects(&server).await;

    let client = server.client();
    let run = create(&client, &server, &tiny_spec(40)).await;
    wait_for(&client, &server, &run.id, 60, |r| r.step >= 2).await;
    server.stop("TERM");
    let server = Server::start(dir.path(), Some(&url));
    let done = wait_terminal(&client, &server, &run.id).await;
    assert_succeeded(&done);
}
