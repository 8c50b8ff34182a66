//! Decoders through the REST API of a real server: one trained on a
//! finished run draws its grids and reports how well its samples carry
//! their class; bad requests are refused by field, and a running decoder
//! can be cancelled.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

async fn ended(client: &reqwest::Client, server: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let job: Value = get_json(client, server.url(&format!("/decoders/{id}"))).await;
        if job["status"] != "queued" && job["status"] != "running" {
            return job;
        }
        assert!(Instant::now() < deadline, "the decoder did not end: {job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn small() -> Value {
    json!({
        "kind": "infusion",
        "layers": ["backbone", "proj.1"],
        "image_size": 16,
        "held_out_per_class": 2,
        "steps": 20,
        "batch": 8,
        "samples": 2,
        "infusion": {"steps": 3, "channels": 8, "blocks": 1}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_decoder_trains_on_a_run_and_draws_its_grids() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let client = server.client();
    let run = create(&client, &server, &tiny_spec(1)).await;
    assert_succeeded(&wait_terminal(&client, &server, &run.id).await);
    let url = server.url(&format!("/runs/{}/decoders", run.id));

    let job = post_json(&client, url.clone(), &small()).await;
    let id = job["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{job}"))
        .to_string();
    assert_eq!(job["total_steps"], 40, "{job}");
    assert_eq!(job["spec"]["name"], "tiny-infusion");
    let job = ended(&client, &server, &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["step"], 40,
        "a finished decoder reads every step done: {job}"
    );
    let report = &job["report"];
    assert_eq!(report["held_out_images"], 6, "{job}");
    assert_eq!(report["image_size"], 16);
    for (layer, name) in report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(["backbone", "proj.1"])
    {
        assert_eq!(layer["layer"], name);
        assert!((layer["chance"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
        let acc = layer["conditioning_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{layer}");
        assert!(!layer["loss"].as_array().unwrap().is_empty());
    }
    for (file, width) in [
        ("samples.png", 32 + 2 * (6 + 2 * 32)),
        ("interpolation.png", 8 * 32 + 12),
    ] {
        let resp = client
            .get(server.url(&format!("/decoders/{id}/{file}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{file}");
        assert_eq!(resp.headers()["content-type"], "image/png");
        let img = image::load_from_memory(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!(img.width(), width as u32, "{file}");
    }
    let resp = client
        .get(server.url(&format!("/decoders/{id}/weights.bin")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let listed: Vec<Value> = get_json(&client, url.clone()).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());

    // Bad requests: named by field, nothing queued.
    let refused = |body: Value, status: u16, field: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let resp = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(resp.status(), status, "{body}");
            let err: Value = resp.json().await.unwrap();
            assert_eq!(err["error"]["field"], field, "{err}");
        }
    };
    let mut body = small();
    body["layers"] = json!(["proj.7"]);
    refused(body, 422, "layers[0]").await;
    let mut body = small();
    body["image_size"] = json!(12);
    refused(body, 422, "image_size").await;
    refused(
        json!({"kind": "rcdm", "rcdm": {"sample_steps": 0}}),
        422,
        "rcdm.sample_steps",
    )
    .await;
    refused(
        json!({"kind": "rcdm", "image_size": 32, "rcdm": {"multipliers": [1, 2, 2, 2, 2, 2, 2]}}),
        422,
        "rcdm.multipliers",
    )
    .await;
    let listed: Vec<Value> = get_json(&client, url.clone()).await;
    assert_eq!(listed.len(), 1, "a refused decoder was stored");
    let resp = client
        .post(server.url("/runs/nope/decoders"))
        .json(&small())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // A run that did not succeed has nothing to decode.
    let long = create(&client, &server, &tiny_spec(50)).await;
    client
        .post(server.url(&format!("/runs/{}/cancel", long.id)))
        .send()
        .await
        .unwrap();
    wait_terminal(&client, &server, &long.id).await;
    let resp = client
        .post(server.url(&format!("/runs/{}/decoders", long.id)))
        .json(&small())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cancelled"),
        "{err}"
    );

    // Cancelled while it trains.
    let mut body = small();
    body["steps"] = json!(100000);
    let job = post_json(&client, url.clone(), &body).await;
    let id = job["id"].as_str().unwrap().to_string();
    let cancel = server.url(&format!("/decoders/{id}/cancel"));
    let resp = client.post(cancel.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let job = ended(&client, &server, &id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let resp = client.post(cancel).send().await.unwrap();
    assert_eq!(resp.status(), 409);
    let resp = client
        .get(server.url(&format!("/decoders/{id}/samples.png")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

/// A server killed while a decoder trains queues the job again when it
/// starts, and the decoder carries on from the state it last saved
/// instead of starting over; the state goes once the job has ended.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_servers_decoder_carries_on_from_its_saved_state() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let client = server.client();
    let run = create(&client, &server, &tiny_spec(1)).await;
    assert_succeeded(&wait_terminal(&client, &server, &run.id).await);
    let mut body = small();
    body["layers"] = json!(["backbone"]);
    body["steps"] = json!(2000);
    let job = post_json(
        &client,
        server.url(&format!("/runs/{}/decoders", run.id)),
        &body,
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    // Saved every 100 steps: killed soon after the first save.
    let state = dir
        .path()
        .join("artifacts/decoders")
        .join(&id)
        .join("state");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !state.join("layer-0.safetensors").is_file() {
        assert!(Instant::now() < deadline, "no state was saved");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop("KILL");
    let server = Server::start(dir.path(), None);
    let job = ended(&client, &server, &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["step"], 2000, "{job}");
    let resumed = job["report"]["layers"][0]["resumed_from"]
        .as_u64()
        .unwrap_or_else(|| panic!("not resumed: {job}"));
    assert!((100..2000).contains(&resumed), "{job}");
    let loss = job["report"]["layers"][0]["loss"].as_array().unwrap();
    assert_eq!(loss.len(), 101, "one curve across both attempts: {job}");
    assert!(!state.exists(), "the state outlived its job");
}
