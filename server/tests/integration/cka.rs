//! CKA jobs through the REST API of a real server: a run against itself is
//! 1 on the diagonal, two runs give a matrix in [0, 1] (linear or
//! minibatch), a family of runs is ordered by its dendrogram, and bad
//! requests are refused by field before anything runs.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

async fn finished(client: &reqwest::Client, server: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job: Value = get_json(client, server.url(&format!("/cka/{id}"))).await;
        if job["status"] != "queued" && job["status"] != "running" {
            return job;
        }
        assert!(Instant::now() < deadline, "the CKA job did not end: {job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn refused(client: &reqwest::Client, server: &Server, body: Value, status: u16, field: &str) {
    let resp = client
        .post(server.url("/cka"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), status, "{body}");
    let err: Value = resp.json().await.unwrap();
    if !field.is_empty() {
        assert_eq!(err["error"]["field"], field, "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cka_jobs_compare_runs_layer_by_layer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let client = server.client();
    let a = create(&client, &server, &tiny_spec(1)).await;
    let mut other = tiny_spec(1);
    other["seed"] = json!(9);
    let b = create(&client, &server, &other).await;
    let mut elsewhere = tiny_spec(1);
    elsewhere["data"]["seed"] = json!(2);
    let c = create(&client, &server, &elsewhere).await;
    for run in [&a, &b, &c] {
        assert_succeeded(&wait_terminal(&client, &server, &run.id).await);
    }

    let job = post_json(&client, server.url("/cka"), &json!({"a": a.id})).await;
    let job = finished(&client, &server, job["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let result = &job["result"];
    assert_eq!(
        result["a"]["layers"],
        json!(["block0", "block1", "block2", "backbone", "proj.0", "proj.1"])
    );
    assert_eq!(result["settings"]["kind"], "linear");
    assert_eq!(result["settings"]["images"], 30);
    for i in 0..6 {
        let v = result["matrix"][i][i].as_f64().unwrap();
        assert!((v - 1.0).abs() < 1e-6, "{result}");
    }

    let job = post_json(
        &client,
        server.url("/cka"),
        &json!({"a": a.id, "b": b.id, "layers_b": ["backbone", "proj.1"], "minibatch": 8}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    let job = finished(&client, &server, &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let matrix: Vec<Vec<f64>> = serde_json::from_value(job["result"]["matrix"].clone()).unwrap();
    assert_eq!((matrix.len(), matrix[0].len()), (6, 2));
    assert!(
        matrix
            .iter()
            .flatten()
            .all(|v| (-0.05..=1.0 + 1e-9).contains(v)),
        "{matrix:?}"
    );
    assert_eq!(job["result"]["settings"]["kind"], "minibatch");
    let resp = client
        .post(server.url(&format!("/cka/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);

    refused(
        &client,
        &server,
        json!({"a": a.id, "layers_a": ["nope"]}),
        422,
        "layers_a",
    )
    .await;
    refused(
        &client,
        &server,
        json!({"a": a.id, "minibatch": 2}),
        422,
        "minibatch",
    )
    .await;
    refused(&client, &server, json!({"a": a.id, "b": c.id}), 422, "data").await;
    refused(&client, &server, json!({"a": a.id, "extra": 1}), 422, "").await;
    refused(&client, &server, json!({"a": "run-that-is-not"}), 404, "").await;
    // With the images named, runs on other data compare.
    let job = post_json(
        &client,
        server.url("/cka"),
        &json!({"a": a.id, "b": c.id, "layers_a": ["backbone"], "layers_b": ["backbone"], "data": tiny_spec(1)["data"]}),
    )
    .await;
    let job = finished(&client, &server, job["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");

    // A family: every run against every other at the representation.
    let mut twin = tiny_spec(1);
    twin["seed"] = json!(9);
    twin["name"] = json!("twin");
    let d = create(&client, &server, &twin).await;
    assert_succeeded(&wait_terminal(&client, &server, &d.id).await);
    let ids = [&a.id, &b.id, &d.id];
    let job = post_json(&client, server.url("/cka"), &json!({"runs": ids})).await;
    let job = finished(&client, &server, job["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(job["result"].is_null(), "{job}");
    let family = &job["family"];
    let runs: Vec<&str> = family["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"].as_str().unwrap())
        .collect();
    assert_eq!(runs, ids.map(|s| s.as_str()));
    assert_eq!(family["runs"][0]["layers"], json!(["backbone"]));
    let m: Vec<Vec<f64>> = serde_json::from_value(family["matrix"].clone()).unwrap();
    for i in 0..3 {
        assert!((m[i][i] - 1.0).abs() < 1e-6, "{m:?}");
        for j in 0..3 {
            assert!((m[i][j] - m[j][i]).abs() < 1e-9, "{m:?}");
        }
    }
    // b and d trained from the same seed on the same data: one family, merged first.
    assert!(
        m[1][2] > 0.95 && m[1][2] > m[0][1] && m[1][2] > m[0][2],
        "{m:?}"
    );
    assert_eq!(family["merges"][0]["left"], 1, "{family}");
    assert_eq!(family["merges"][0]["right"], 2, "{family}");
    assert_eq!(family["merges"][1]["size"], 3, "{family}");
    let mut order: Vec<u64> = serde_json::from_value(family["order"].clone()).unwrap();
    assert_eq!(
        order
            .iter()
            .position(|&r| r == 1)
            .unwrap()
            .abs_diff(order.iter().position(|&r| r == 2).unwrap()),
        1
    );
    order.sort();
    assert_eq!(order, vec![0, 1, 2]);

    refused(&client, &server, json!({"runs": [a.id]}), 422, "runs").await;
    refused(&client, &server, json!({"runs": [a.id, a.id]}), 422, "runs").await;
    refused(
        &client,
        &server,
        json!({"runs": [a.id, b.id], "a": a.id}),
        422,
        "runs",
    )
    .await;
    refused(
        &client,
        &server,
        json!({"runs": [a.id, b.id], "layer": "proj.9"}),
        422,
        "layer",
    )
    .await;
    refused(&client, &server, json!({"runs": [a.id, c.id]}), 422, "data").await;
    refused(
        &client,
        &server,
        json!({"a": a.id, "layer": "backbone"}),
        422,
        "layer",
    )
    .await;
}
