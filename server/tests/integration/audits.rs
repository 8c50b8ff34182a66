//! Déjà vu audits through the API of a real server: queued, trained by the
//! in-process worker, their report and per-image rows read back; bad specs
//! refused by field.

use crate::common;

use std::time::{Duration, Instant};

use common::{
    Server, assert_succeeded, create, fresh_postgres_database, get_json, tiny_audit,
    tiny_reconstruct, wait_terminal,
};
use serde_json::{Value, json};
use sslab_shared::api::{Audit, RunStatus};

async fn wait_audit(client: &reqwest::Client, server: &Server, id: &str) -> Audit {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let a: Audit = get_json(client, server.url(&format!("/audits/{id}"))).await;
        if a.status.is_terminal() {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "audit still {:?} at {} {}",
            a.status,
            a.stage,
            a.step
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn post(client: &reqwest::Client, url: String, body: &Value) -> (u16, Value) {
    let resp = client.post(url).json(body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn audits_api(server: &Server) {
    let client = server.client();
    let mut spec = tiny_audit();
    spec["reconstruct"] = tiny_reconstruct();
    let (status, body) = post(&client, server.url("/audits"), &spec).await;
    assert_eq!(status, 201, "{body}");
    let audit: Audit = serde_json::from_value(body).unwrap();
    assert_eq!(
        (audit.name.as_str(), audit.status),
        ("api-audit", RunStatus::Queued)
    );
    // Its report does not exist yet.
    let early = client
        .get(server.url(&format!("/audits/{}/report", audit.id)))
        .send()
        .await
        .unwrap();
    assert!(early.status() == 409 || early.status() == 200);

    let done = wait_audit(&client, server, &audit.id).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.error);
    // The last stage: the reference model's decoder.
    assert_eq!((done.stage.as_str(), done.step), ("decoder-b", 20));
    let report: Value =
        get_json(&client, server.url(&format!("/audits/{}/report", audit.id))).await;
    assert_eq!(report["split"]["a_only"], 18);
    let snapshots = report["snapshots"].as_array().unwrap();
    assert_eq!(
        snapshots
            .iter()
            .map(|s| s["epoch"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2]
    );
    let attacked = report["split"]["attacked_a"].as_u64().unwrap()
        + report["split"]["attacked_b"].as_u64().unwrap();
    let csv = client
        .get(server.url(&format!("/audits/{}/examples.csv", audit.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    assert_eq!(csv.lines().count() as u64, 1 + attacked);
    assert!(csv.starts_with("image,set,label,class,crop_x0"));
    // The gallery's images are kept: each memorized image and its neighbours.
    let typed: sslab_shared::audit::AuditReport = serde_json::from_value(report.clone()).unwrap();
    let shown = typed.memorized(12);
    assert!(!shown.is_empty(), "no memorized image to show");
    for i in std::iter::once(shown[0].image).chain(shown[0].target.neighbours.iter().copied()) {
        let png = client
            .get(server.url(&format!("/audits/{}/images/{i}.png", audit.id)))
            .send()
            .await
            .unwrap();
        assert_eq!(png.status(), 200, "image {i}");
        let img = image::load_from_memory(&png.bytes().await.unwrap()).unwrap();
        assert_eq!(img.width(), 32);
    }
    // Both models' drawings from the crops: 3 rows of crop, image and two
    // drawings per model.
    let drawn = &report["reconstruction"];
    assert_eq!(drawn["rows"].as_array().unwrap().len(), 3, "{drawn}");
    assert_eq!(drawn["loss_b"].as_array().unwrap().len(), 20, "{drawn}");
    let png = client
        .get(server.url(&format!("/audits/{}/reconstruction.png", audit.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(png.headers()["content-type"], "image/png");
    let grid = image::load_from_memory(&png.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (grid.width(), grid.height()),
        (2 * 32 + 2 * (6 + 2 * 32), 96)
    );
    let missing = client
        .get(server.url(&format!("/audits/{}/images/..%2Fx.png", audit.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let listed: Vec<Audit> = get_json(&client, server.url("/audits")).await;
    assert_eq!(listed[0].id, audit.id);
    let (status, _) = post(
        &client,
        server.url(&format!("/audits/{}/cancel", audit.id)),
        &json!({}),
    )
    .await;
    assert_eq!(status, 409);

    // Refused by field, nothing stored.
    let mut bad = tiny_audit();
    bad["split"]["per_class"] = json!(0);
    let (status, body) = post(&client, server.url("/audits"), &bad).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("split.per_class")),
        "{body}"
    );
    let mut bad = tiny_audit();
    bad["run"]["data"] = json!({"source": "cifar10", "path": "/data/cifar"});
    let (status, body) = post(&client, server.url("/audits"), &bad).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("run.data.source")),
        "{body}"
    );
    let mut bad = tiny_audit();
    bad["reconstruct"] = json!({"kind": "rcdm", "rcdm": {"sample_steps": 0}});
    let (status, body) = post(&client, server.url("/audits"), &bad).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("reconstruct.rcdm.sample_steps")),
        "{body}"
    );
    let mut bad = tiny_audit();
    bad["run"]["data"] = json!({"source": "dataset", "name": "missing"});
    let (status, body) = post(&client, server.url("/audits"), &bad).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("run.data.name")),
        "{body}"
    );
    let listed: Vec<Audit> = get_json(&client, server.url("/audits")).await;
    assert_eq!(listed.len(), 1);

    // A queued audit is cancelled at once; one already claimed stops at the
    // worker's next heartbeat, long before its training could end.
    let mut long = tiny_audit();
    long["run"]["schedule"]["epochs"] = json!(5000);
    long["snapshots"] = json!([]);
    let (_, body) = post(&client, server.url("/audits"), &long).await;
    let id = body["id"].as_str().unwrap().to_string();
    let (status, body) = post(
        &client,
        server.url(&format!("/audits/{id}/cancel")),
        &json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let ended = wait_audit(&client, server, &id).await;
    assert_eq!(ended.status, RunStatus::Cancelled);

    // The same spec trained as two runs on parts A and B, then audited as
    // they are: the same split and the same last snapshot as the audit that
    // trained both itself.
    let part = |p: &str| {
        let mut run = tiny_audit()["run"].clone();
        run["subset"] = json!({"kind": "dejavu", "part": p, "per_class": 6});
        run
    };
    let target = create(&client, server, &part("a")).await;
    let reference = create(&client, server, &part("b")).await;
    for run in [&target, &reference] {
        assert_succeeded(&wait_terminal(&client, server, &run.id).await);
    }
    let existing = |t: &str, r: &str| json!({"name": "existing", "attack": {"k": 10}, "runs": {"target": t, "reference": r}});
    let (status, body) = post(
        &client,
        server.url("/audits"),
        &existing(&target.id, &reference.id),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(
        wait_audit(&client, server, &id).await.status,
        RunStatus::Succeeded
    );
    let again: Value = get_json(&client, server.url(&format!("/audits/{id}/report"))).await;
    assert_eq!(again["split"], report["split"]);
    // It asked for no drawings.
    assert!(again.get("reconstruction").is_none(), "{again}");
    let none = client
        .get(server.url(&format!("/audits/{id}/reconstruction.png")))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 404);
    assert_eq!(again["snapshots"].as_array().unwrap().len(), 1);
    assert_eq!(again["snapshots"][0], snapshots[1]);
    // Runs that are not A and B of one partition are refused by field.
    for (t, r, field) in [
        (target.id.as_str(), target.id.as_str(), "runs.reference"),
        ("nope", reference.id.as_str(), "runs.target"),
        (reference.id.as_str(), reference.id.as_str(), "runs.target"),
    ] {
        let (status, body) = post(&client, server.url("/audits"), &existing(t, r)).await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (422, Some(field)),
            "{body}"
        );
    }

    // A run an audit read stays; the audit goes with its files.
    let resp = client
        .delete(server.url(&format!("/runs/{}", target.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("audit `{id}`")),
        "{body}"
    );
    // Labels, as on runs.
    let patch = |body: Value| {
        client
            .patch(server.url(&format!("/audits/{id}")))
            .json(&body)
            .send()
    };
    let r = patch(json!({"tags": ["dejavu"], "note": "<b>kept</b>", "archived": true}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let labelled: Audit = r.json().await.unwrap();
    assert_eq!(
        (labelled.tags.as_slice(), labelled.archived),
        (&["dejavu".to_string()][..], true)
    );
    let listed = |q: &'static str| {
        let client = &client;
        async move {
            get_json::<Vec<Audit>>(client, server.url(&format!("/audits{q}")))
                .await
                .into_iter()
                .map(|a| a.id)
                .collect::<Vec<_>>()
        }
    };
    assert!(
        !listed("").await.contains(&id),
        "archived audits are hidden"
    );
    assert!(listed("?tag=dejavu&archived=all").await.contains(&id));
    assert!(listed("?tag=other&archived=all").await.is_empty());
    let r = patch(json!({"note": "n".repeat(20_001)})).await.unwrap();
    assert_eq!(r.status(), 422);

    let delete = || client.delete(server.url(&format!("/audits/{id}"))).send();
    assert_eq!(delete().await.unwrap().status(), 204);
    assert_eq!(delete().await.unwrap().status(), 404);
    assert!(!server.data_dir.join("artifacts/audits").join(&id).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_audits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    audits_api(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_audits() {
    let Some(url) = fresh_postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Some(&url));
    audits_api(&server).await;
}
