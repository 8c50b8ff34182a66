//! `sslab study`: every shipped study end to end at its micro size, the
//! report's shape, and verdicts that follow the stored results.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn study(spec: &Path, out: &Path, micro: bool) -> std::process::Output {
    let mut args = vec![
        "study".to_string(),
        "--spec".into(),
        spec.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    if micro {
        args.push("--micro".into());
    }
    Command::new(env!("CARGO_BIN_EXE_sslab"))
        .args(&args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("run sslab")
}

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../recipes/studies")
        .join(format!("{name}.toml"))
}

fn report(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

fn check_shape(name: &str, out: &Path, res: &std::process::Output) -> Value {
    assert!(
        res.status.success(),
        "{name}: {}\n{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    let r = report(out);
    assert_eq!(r["study"], name);
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("study.json")).unwrap()).unwrap();
    let findings = r["findings"].as_array().unwrap();
    assert_eq!(
        findings.len(),
        spec["findings"].as_array().unwrap().len(),
        "{name}"
    );
    for (i, f) in findings.iter().enumerate() {
        for key in ["name", "claim", "ours", "std", "agrees", "verdict"] {
            assert!(f.get(key).is_some(), "{name}: finding {i} lacks {key}");
        }
        let verdict = f["verdict"].as_str().unwrap();
        assert!(
            ["agrees", "disagrees", "inconclusive"].contains(&verdict),
            "{name}: finding {i}: {verdict}: {}",
            f["detail"]
        );
        assert!(f["ours"].as_f64().unwrap().is_finite(), "{name}: {f}");
        let chart = std::fs::read(out.join(format!("charts/finding-{}.png", i + 1))).unwrap();
        assert!(chart.starts_with(b"\x89PNG"), "{name}: chart {i}");
    }
    let runs = r["runs"].as_array().unwrap();
    assert!(!runs.is_empty());
    assert!(
        runs.iter().all(|item| item["status"] == "succeeded"),
        "{name}: {:?}",
        r["problems"]
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("| finding | paper's claim | ours | std | seeds | agrees? |"),
        "{md}"
    );
    assert!(md.contains("charts/finding-1.png"));
    r
}

/// Every shipped CPU study runs at its micro size and reports every
/// finding with a verdict and a chart.
#[test]
fn every_shipped_study_runs_at_micro_size() {
    let root = tempfile::tempdir().unwrap();
    for name in [
        "guillotine",
        "width",
        "pmsn-imbalance",
        "negatives-noise",
        "dejavu-trend",
        "je-vs-mae",
    ] {
        let out = root.path().join(name);
        let res = study(&shipped(name), &out, true);
        let r = check_shape(name, &out, &res);
        if name == "je-vs-mae" {
            let cka = r["runs"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["kind"] == "cka")
                .count();
            assert_eq!(cka, 4, "two comparisons × two seeds");
        }
        if name == "dejavu-trend" {
            let audits = r["runs"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["kind"] == "audit")
                .count();
            assert_eq!(audits, 4, "two sizes × two seeds");
        }
    }
}

/// A second invocation keeps the finished parts and reads the report from
/// the stored files: change a stored figure and the verdict follows.
#[test]
fn the_verdict_follows_the_stored_results() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("g");
    let spec = shipped("guillotine");
    check_shape("guillotine", &out, &study(&spec, &out, true));
    // The projector output now beats the backbone at the longest training.
    let mut edited = 0;
    for run in std::fs::read_dir(out.join("sweeps/epochs")).unwrap() {
        let dir = run.unwrap().path();
        if !dir.to_string_lossy().contains("epochs=3") {
            continue;
        }
        let file = dir.join("evaluations.json");
        let mut rows: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for row in &mut rows {
            if row["probe"] == "knn" && row["metric"] == "top1" {
                row["value"] = Value::from(if row["layer"] == "proj.1" { 0.99 } else { 0.01 });
            }
        }
        std::fs::write(&file, serde_json::to_string(&rows).unwrap()).unwrap();
        edited += 1;
    }
    assert_eq!(edited, 2, "two seeds at the longest training");
    let res = study(&spec, &out, true);
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert_eq!(
        stdout.matches("finished earlier; kept").count(),
        6,
        "{stdout}"
    );
    let r = check_shape("guillotine", &out, &res);
    let first = &r["findings"][0];
    assert_eq!(first["verdict"], "disagrees", "{}", first["detail"]);
    assert_eq!(first["agrees"], false);
    assert!(
        (first["ours"].as_f64().unwrap() + 0.98).abs() < 1e-9,
        "{first}"
    );
}

#[test]
fn bad_studies_are_refused_by_name() {
    let root = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(shipped("guillotine")).unwrap();
    let cases = [
        (
            "layer = \"proj.1\"",
            "layer = \"proj.9\"",
            "findings[0].minus.layer",
        ),
        (
            "metric = \"knn.top1\" }\nminus",
            "metric = \"knn\" }\nminus",
            "findings[0].of.metric",
        ),
        (
            "values = [3, 10, 30]",
            "values = []",
            "sweeps.epochs.axes[0].values",
        ),
    ];
    for (from, to, field) in cases {
        assert!(text.contains(from), "{from}");
        let path = root.path().join("bad.toml");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        let res = study(&path, &root.path().join("out"), false);
        assert!(!res.status.success());
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(err.contains(field), "{field}: {err}");
        assert!(!root.path().join("out").exists(), "nothing is written");
    }
}

use crate::common;

use common::*;
use serde_json::json;

/// A study of two tiny sweeps and a CKA comparison between them.
fn api_study(name: &str) -> Value {
    let mut other = tiny_spec(1);
    other["method"] = json!({"name": "vicreg"});
    json!({
        "name": name, "paper": "arXiv:2206.13378", "question": "q?", "claim": "c",
        "sweeps": {
            "je": {"seeds": [1, 2], "base": tiny_spec(1)},
            "other": {"seeds": [1, 2], "base": other},
        },
        "cka": {"pair": {"a": {"sweep": "je"}, "b": {"sweep": "other"}, "layers": ["backbone"]}},
        "findings": [
            {"name": "backbone beats projector", "claim": "+20 points", "expect": "positive",
             "of": {"part": "sweeps.je", "layer": "backbone", "metric": "knn.top1"},
             "minus": {"part": "sweeps.je", "layer": "proj.1", "metric": "knn.top1"}},
            {"name": "alike", "claim": "CKA above zero", "expect": "positive",
             "of": {"part": "cka.pair", "layer": "backbone", "metric": "cka"}},
            {"name": "a probe no run has", "claim": "x", "expect": "positive",
             "of": {"part": "sweeps.je", "layer": "backbone", "metric": "svm.top1"}},
        ],
    })
}

/// Through the API on PostgreSQL: bad studies refused by field with nothing
/// stored; a study's runs, then its comparisons once they end, then a
/// report whose verdicts follow the stored rows; charts, Markdown,
/// idempotent creation and cancel.
#[tokio::test(flavor = "multi_thread")]
async fn a_study_through_the_api_on_postgres() {
    use sqlx::Connection;
    let Some(db) = fresh_postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Some(&db));
    let client = server.client();

    let mut bad = api_study("bad");
    bad["findings"][0]["minus"]["layer"] = json!("proj.9");
    let mut bad_sweep = api_study("bad");
    bad_sweep["sweeps"]["je"]["base"]["optimizer"]["lr"] = json!(-1.0);
    for (body, field) in [
        (bad, "findings[0].minus.layer"),
        (bad_sweep, "sweeps.je.base.optimizer.lr"),
    ] {
        let resp = client
            .post(server.url("/studies"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 422);
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["field"], field, "{err}");
    }
    let none: Value = get_json(&client, server.url("/studies")).await;
    assert_eq!(none["items"], json!([]));
    let runs: Value = get_json(&client, server.url("/runs")).await;
    assert_eq!(runs["items"], json!([]), "a refused study queues nothing");

    let study = post_json(&client, server.url("/studies"), &api_study("api-study")).await;
    let id = study["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{study}"))
        .to_string();
    assert_eq!(study["parts"], 6, "4 runs and 2 comparisons");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let finished = loop {
        let s: Value = get_json(&client, server.url(&format!("/studies/{id}"))).await;
        // Reading the report queues the comparisons whose runs have ended.
        let _: Value = get_json(&client, server.url(&format!("/studies/{id}/report"))).await;
        if s["counts"]["succeeded"] == 6 {
            break s;
        }
        assert_eq!(s["counts"]["failed"], 0, "{s}");
        assert!(std::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert_eq!(finished["name"], "api-study");
    let report: Value = get_json(&client, server.url(&format!("/studies/{id}/report"))).await;
    let f = &report["findings"];
    assert_eq!(f[0]["n"], 2, "{}", f[0]);
    assert!(f[0]["std"].is_number(), "{}", f[0]);
    assert!(["agrees", "disagrees", "inconclusive"].contains(&f[0]["verdict"].as_str().unwrap()));
    let cka = f[1]["ours"].as_f64().unwrap();
    assert!(cka > 0.0 && cka <= 1.0 + 1e-9, "{}", f[1]);
    assert_eq!(f[2]["verdict"], "no data");
    assert!(
        f[2]["detail"].as_str().unwrap().contains("svm.top1"),
        "{}",
        f[2]
    );
    assert_eq!(report["runs"].as_array().unwrap().len(), 6);
    let png = client
        .get(server.url(&format!("/studies/{id}/charts/finding-2.png")))
        .send()
        .await
        .unwrap();
    assert_eq!(png.status(), 200);
    assert!(png.bytes().await.unwrap().starts_with(b"\x89PNG"));
    let missing = client
        .get(server.url(&format!("/studies/{id}/charts/finding-9.png")))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let md = client
        .get(server.url(&format!("/studies/{id}/report.md")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(md.contains("| backbone beats projector |"), "{md}");

    // Change the stored rows: the projector output now wins, and the verdict follows.
    let mut conn = sqlx::postgres::PgConnection::connect(&db).await.unwrap();
    for (layer, value) in [("proj.1", 0.99), ("backbone", 0.01)] {
        let done = sqlx::query(
            "UPDATE evaluations SET value = $1 WHERE layer = $2 AND probe = 'knn' AND metric = 'top1' \
             AND run_id IN (SELECT r.id FROM runs r JOIN study_parts p ON p.target_id = r.sweep_id \
                            WHERE p.study_id = $3 AND p.part = 'sweeps.je')",
        )
        .bind(value)
        .bind(layer)
        .bind(&id)
        .execute(&mut conn)
        .await
        .unwrap();
        assert_eq!(done.rows_affected(), 2);
    }
    let report: Value = get_json(&client, server.url(&format!("/studies/{id}/report"))).await;
    let first = &report["findings"][0];
    assert_eq!(first["verdict"], "disagrees", "{first}");
    assert!(
        (first["ours"].as_f64().unwrap() + 0.98).abs() < 1e-9,
        "{first}"
    );

    // Idempotent creation, then cancel: the cancelled parts are named.
    let send = |key: &'static str| {
        client
            .post(server.url("/studies"))
            .header("Idempotency-Key", key)
            .json(&api_study("again"))
            .send()
    };
    let first = send("k1").await.unwrap();
    assert_eq!(first.status(), 201);
    let again = send("k1").await.unwrap();
    assert_eq!(again.status(), 200);
    let (a, b): (Value, Value) = (first.json().await.unwrap(), again.json().await.unwrap());
    assert_eq!(a["id"], b["id"]);
    let again_id = a["id"].as_str().unwrap();
    let cancelled = post_json(
        &client,
        server.url(&format!("/studies/{again_id}/cancel")),
        &json!({}),
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let s: Value = get_json(&client, server.url(&format!("/studies/{again_id}"))).await;
        if s["counts"]["queued"] == 0 && s["counts"]["running"] == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{cancelled} {s}");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let report: Value = get_json(&client, server.url(&format!("/studies/{again_id}/report"))).await;
    let problems = report["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().unwrap().contains("cancelled")),
        "{problems:?}"
    );
    let list: Value = get_json(&client, server.url("/studies")).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
}
