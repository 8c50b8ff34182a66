//! Sweeps and comparison through the REST API of a real server, on SQLite
//! and PostgreSQL: refused up front when invalid, expanded into real runs,
//! aggregated per axis and layer, exported, cancelled and re-queued whole.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use sslab_shared::api::{Comparison, ErrorBody, Page, Run, RunStatus, Sweep, SweepSummary};
use sslab_shared::labels::{SearchHit, SearchKind};

async fn post_sweep(client: &reqwest::Client, server: &Server, body: &Value) -> reqwest::Response {
    client
        .post(server.url("/sweeps"))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn expect_refused(
    client: &reqwest::Client,
    server: &Server,
    body: Value,
    field: &str,
    words: &[&str],
) {
    let resp = post_sweep(client, server, &body).await;
    assert_eq!(resp.status(), 422);
    let err: ErrorBody = resp.json().await.unwrap();
    assert_eq!(
        err.error.field.as_deref(),
        Some(field),
        "{}",
        err.error.message
    );
    for w in words {
        assert!(err.error.message.contains(w), "{}", err.error.message);
    }
}

async fn wait_sweep_done(client: &reqwest::Client, server: &Server, id: &str) -> Sweep {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let s: Sweep = get_json(client, server.url(&format!("/sweeps/{id}"))).await;
        if s.counts.is_done() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "sweep still going: {:?}",
            s.counts
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn sweeps(server: &Server) {
    let client = server.client();
    let base = tiny_spec(1);
    let runs_before: Page<Run> = get_json(&client, server.url("/runs")).await;

    // Refused up front, with the field; nothing stored.
    expect_refused(
        &client,
        server,
        json!({"base": base, "axes": [{"path": "projector.dimz", "values": ["32-8"]}]}),
        "axes[0].path",
        &["no field `projector.dimz`"],
    )
    .await;
    expect_refused(
        &client,
        server,
        json!({"base": base, "axes": [{"path": "projector.dims", "values": ["32-8", "32-x"]}]}),
        "axes[0].values[1]",
        &["not a layer width"],
    )
    .await;
    let seeds: Vec<u64> = (0..201).collect();
    expect_refused(
        &client,
        server,
        json!({"base": base, "seeds": seeds, "axes": [{"path": "epochs", "values": [1]}]}),
        "axes",
        &["201 runs", "cap of 200"],
    )
    .await;
    let none: Page<Sweep> = get_json(&client, server.url("/sweeps")).await;
    assert!(none.items.is_empty());
    let runs_after: Page<Run> = get_json(&client, server.url("/runs")).await;
    assert_eq!(runs_before.items.len(), runs_after.items.len());

    // A real sweep: two projector widths, one seed.
    let spec = json!({
        "name": "proj",
        "seeds": [3],
        "axes": [{"path": "projector.dims", "values": ["32-8", "32-24"]}],
        "base": base,
    });
    let resp = client
        .post(server.url("/sweeps"))
        .header("Idempotency-Key", "sweep-1")
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let sweep: Sweep = resp.json().await.unwrap();
    assert_eq!(sweep.run_count, 2);
    assert_eq!(sweep.counts.total(), 2);
    // The same key gives the same sweep back, and no new runs.
    let again = client
        .post(server.url("/sweeps"))
        .header("Idempotency-Key", "sweep-1")
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Sweep>().await.unwrap().id, sweep.id);

    let members: Page<Run> =
        get_json(&client, server.url(&format!("/runs?sweep={}", sweep.id))).await;
    assert_eq!(members.items.len(), 2);
    assert!(
        members
            .items
            .iter()
            .all(|r| r.sweep_id.as_deref() == Some(sweep.id.as_str()))
    );
    for r in &members.items {
        assert_succeeded(&wait_terminal(&client, server, &r.id).await);
    }

    let summary: SweepSummary = get_json(
        &client,
        server.url(&format!("/sweeps/{}/summary", sweep.id)),
    )
    .await;
    assert_eq!(summary.axes, ["projector.dims"]);
    assert_eq!(summary.excluded.total(), 0);
    assert_eq!(summary.sweep.counts.succeeded, 2);
    for dims in ["32-8", "32-24"] {
        let run = summary
            .runs
            .iter()
            .find(|r| r.values["projector.dims"] == json!(dims))
            .expect("a run per value");
        for layer in ["backbone", "proj.0", "proj.1"] {
            let agg = summary
                .aggregates
                .iter()
                .find(|a| a.value == json!(dims) && a.layer == layer && a.probe == "knn")
                .unwrap_or_else(|| panic!("no kNN aggregate for {dims} at {layer}"));
            let own = run
                .evaluations
                .iter()
                .find(|e| e.layer == layer && e.probe == "knn")
                .unwrap();
            assert_eq!((agg.n, agg.mean, agg.std), (1, own.value, 0.0));
        }
    }

    let csv = client
        .get(server.url(&format!("/sweeps/{}/summary?format=csv", sweep.id)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(
        lines[0].starts_with("run_id,name,status,projector.dims,seed,layer,knn.top1"),
        "{}",
        lines[0]
    );
    assert_eq!(lines.len(), 1 + 2 * 3, "{csv}");

    // Server-side filters: name (any case, % taken literally), method, sweep.
    let hit: Page<Run> = get_json(&client, server.url("/runs?q=DIMS%3D32-24")).await;
    assert_eq!(hit.items.len(), 1);
    let literal: Page<Run> = get_json(&client, server.url("/runs?q=%25")).await;
    assert!(literal.items.is_empty());
    let by_method: Page<Run> = get_json(
        &client,
        server.url(&format!("/runs?method=simclr&sweep={}", sweep.id)),
    )
    .await;
    assert_eq!(by_method.items.len(), 2);

    // Compare the two runs: curves, probes and the one field that differs.
    let ids: Vec<&str> = members.items.iter().map(|r| r.id.as_str()).collect();
    let cmp: Comparison = get_json(
        &client,
        server.url(&format!("/compare?runs={}", ids.join(","))),
    )
    .await;
    assert_eq!(cmp.runs.len(), 2);
    assert!(cmp.metrics.iter().all(|m| m.len() == 4));
    assert!(cmp.evaluations.iter().all(|e| !e.is_empty()));
    let diff: Vec<&str> = cmp.spec_diff.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(diff, ["projector.dims"]);

    // Cancel a sweep as a whole, then put it back in the queue. The runs are
    // long enough that none can end before the worker's next heartbeat
    // passes the cancel on.
    let long = json!({
        "name": "long",
        "seeds": [1, 2, 3],
        "axes": [{"path": "schedule.epochs", "values": [5000]}],
        "base": base,
    });
    let resp = post_sweep(&client, server, &long).await;
    assert_eq!(resp.status(), 201);
    let long: Sweep = resp.json().await.unwrap();
    let resp = client
        .post(server.url(&format!("/sweeps/{}/cancel", long.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let done = wait_sweep_done(&client, server, &long.id).await;
    assert_eq!(done.counts.cancelled, 3, "{:?}", done.counts);
    let summary: SweepSummary =
        get_json(&client, server.url(&format!("/sweeps/{}/summary", long.id))).await;
    assert_eq!(summary.excluded.cancelled, 3);
    assert!(summary.aggregates.is_empty());
    let back: Sweep = client
        .post(server.url(&format!("/sweeps/{}/requeue", long.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        back.counts.queued + back.counts.running,
        3,
        "{:?}",
        back.counts
    );
    let delete = || {
        client
            .delete(server.url(&format!("/sweeps/{}", long.id)))
            .send()
    };
    assert_eq!(delete().await.unwrap().status(), 409, "runs still to do");
    client
        .post(server.url(&format!("/sweeps/{}/cancel", long.id)))
        .send()
        .await
        .unwrap();
    let done = wait_sweep_done(&client, server, &long.id).await;
    assert_eq!(done.counts.cancelled, 3);
    let members: Page<Run> = get_json(
        &client,
        server.url(&format!("/runs?sweep={}&status=cancelled", long.id)),
    )
    .await;
    assert_eq!(members.items.len(), 3);
    assert!(
        members
            .items
            .iter()
            .all(|r| r.status == RunStatus::Cancelled)
    );

    let list: Page<Sweep> = get_json(&client, server.url("/sweeps")).await;
    assert_eq!(list.items.len(), 2);
    assert_eq!(list.items[0].id, long.id, "newest first");

    // Tags, a note and the archive, as on runs; the list filters by them
    // and search finds the sweep by tag.
    let patch = |body: Value| {
        client
            .patch(server.url(&format!("/sweeps/{}", long.id)))
            .json(&body)
            .send()
    };
    let r = patch(json!({"tags": ["width_study", "seeds:4"], "note": "*flat* so far"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tagged: Sweep = r.json().await.unwrap();
    assert_eq!(
        (tagged.tags.clone(), tagged.note.as_str()),
        (
            vec!["width_study".to_string(), "seeds:4".to_string()],
            "*flat* so far"
        )
    );
    let r = patch(json!({"tags": ["no spaces"]})).await.unwrap();
    assert_eq!(r.status(), 422);
    let ids = |p: Page<Sweep>| p.items.into_iter().map(|s| s.id).collect::<Vec<_>>();
    // `_` is a LIKE wildcard: `widthXstudy` must not match `width_study`.
    assert_eq!(
        ids(get_json(&client, server.url("/sweeps?tag=width_study")).await),
        [long.id.clone()]
    );
    assert!(ids(get_json(&client, server.url("/sweeps?tag=width")).await).is_empty());
    let hits: Vec<SearchHit> = get_json(&client, server.url("/search?q=WIDTH_s")).await;
    assert!(
        hits.iter()
            .any(|h| h.kind == SearchKind::Sweep && h.id == long.id && h.matched == "tag"),
        "{hits:?}"
    );
    patch(json!({"archived": true})).await.unwrap();
    assert_eq!(
        get_json::<Page<Sweep>>(&client, server.url("/sweeps"))
            .await
            .items
            .len(),
        1,
        "archived sweeps are hidden"
    );
    assert_eq!(
        ids(get_json(&client, server.url("/sweeps?archived=true")).await),
        [long.id.clone()]
    );
    patch(json!({"archived": false})).await.unwrap();

    // Deleting the sweep deletes its runs, rows and files.
    assert_eq!(delete().await.unwrap().status(), 204);
    assert_eq!(delete().await.unwrap().status(), 404);
    let left: Page<Run> = get_json(
        &client,
        server.url(&format!("/runs?sweep={}&archived=all", long.id)),
    )
    .await;
    assert!(left.items.is_empty());
    for r in &members.items {
        let gone = client
            .get(server.url(&format!("/runs/{}", r.id)))
            .send()
            .await
            .unwrap();
        assert_eq!(gone.status(), 404);
        assert!(!server.data_dir.join("artifacts/runs").join(&r.id).exists());
    }
    let list: Page<Sweep> = get_json(&client, server.url("/sweeps")).await;
    assert_eq!(list.items.len(), 1);
    assert_eq!(
        client
            .get(server.url("/sweeps/nope/summary"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_sweeps() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    sweeps(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_sweeps() {
    let Some(url) = fresh_postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Some(&url));
    sweeps(&server).await;
}
