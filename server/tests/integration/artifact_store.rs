//! Artifacts in S3 and data sets on workers, with real processes: moto's S3
//! server on loopback (behind a proxy the test can cut), PostgreSQL, `sslab
//! serve --artifacts s3://…` with no worker of its own, and `sslab worker`
//! children that hold only a worker token.
//!
//! A remote worker trains on an uploaded data set it fetches by content
//! hash (a spoilt cached copy is fetched again), re-evaluates the run from
//! its weights in S3, compares it with CKA, trains a decoder on it and runs
//! a déjà vu audit, whose files land in S3; a worker killed mid-run
//! loses the run to another, which resumes from the checkpoint in S3 (the
//! server's local cache wiped in between, the hash checked); an S3 outage
//! during a checkpoint upload is retried and the run is not done until the
//! checkpoint is stored; a server on a fresh disk serves what S3 holds (its
//! checkpoints, and the data set's thumbnails and files); a deleted run
//! leaves nothing in the bucket.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::workers::{Worker, free_addr, logs, wait_log};
use common::{
    Server, admin, assert_succeeded, create, e2e_required, fresh_postgres_database, get_run,
    last_line, tiny_spec, wait_for,
};
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use sslab_shared::api::RunStatus;

const BUCKET: &str = "sslab-test";
const PREFIX: &str = "lab";

/// moto's S3 server, stopped when dropped.
struct Moto {
    child: Child,
    url: String,
}

impl Moto {
    /// `None` when moto is not installed (`cargo xtask test` installs it).
    fn start() -> Option<Moto> {
        let addr = free_addr();
        let port = addr.rsplit(':').next().unwrap().to_string();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut moto = Moto {
            child,
            url: format!("http://{addr}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            if Instant::now() > deadline || moto.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }

    /// The bucket as the test reads it, signed like any client.
    fn bucket(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_endpoint(&self.url)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap()
    }

    /// One stored object's bytes (below the server's prefix); empty when absent.
    async fn object(&self, key: &str) -> Vec<u8> {
        let path = object_store::path::Path::from(format!("{PREFIX}/{key}"));
        match self.bucket().get(&path).await {
            Ok(got) => got.bytes().await.unwrap().to_vec(),
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => panic!("{key}: {e}"),
        }
    }

    /// The keys under `prefix` (below the server's own prefix).
    async fn keys(&self, prefix: &str) -> Vec<String> {
        use futures_util::TryStreamExt;
        let under = object_store::path::Path::from(format!("{PREFIX}/{prefix}"));
        let listed: Vec<_> = self
            .bucket()
            .list(Some(&under))
            .try_collect()
            .await
            .unwrap();
        listed
            .into_iter()
            .map(|m| {
                m.location
                    .as_ref()
                    .trim_start_matches(&format!("{PREFIX}/"))
                    .to_string()
            })
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of the S3 server: `cut` drops every connection and
/// refuses new ones until `mend`.
struct Proxy {
    url: String,
    down: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_string();
        let down = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (d, o) = (down.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if d.load(Ordering::SeqCst) {
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                o.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { url, down, open }
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for task in self.open.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn mend(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Three classes of 16 images as an image-folder tar.
fn pets_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (c, colour) in [
        ("cat", [200, 40, 40]),
        ("dog", [40, 200, 40]),
        ("fox", [40, 40, 200]),
    ] {
        for i in 0..16 {
            let png = common::png(colour, i);
            let mut h = tar::Header::new_gnu();
            h.set_size(png.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, format!("pets/{c}/{i:02}.png"), png.as_slice())
                .unwrap();
        }
    }
    b.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn artifacts_in_s3_and_data_on_workers() {
    let Some(db) = fresh_postgres_database().await else {
        return;
    };
    let Some(moto) = Moto::start() else {
        assert!(
            !e2e_required(),
            "moto's S3 server does not start: pip install 'moto[server]'"
        );
        eprintln!("skipped: moto is not installed (pip install 'moto[server]')");
        return;
    };
    let proxy = Proxy::start(&moto.url).await;
    let made = reqwest::Client::new()
        .put(format!("{}/{BUCKET}", moto.url))
        .send()
        .await
        .unwrap();
    assert!(made.status().is_success(), "{made:?}");
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let artifacts = format!("s3://{BUCKET}/{PREFIX}");
    let env = [
        ("SSLAB_WORKERS", "0"),
        ("SSLAB_LEASE_MS", "3000"),
        ("SSLAB_ARTIFACTS", artifacts.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT", proxy.url.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
    ];
    let server = Server::start_on(&addr, &dir.path().join("disk-a"), Some(&db), &env);
    let a = server.client();
    let token = last_line(&admin(
        &server.data_dir,
        Some(&db),
        &["create-token", "--user", "admin", "--scope", "worker"],
    ));

    // A data set uploaded to the server, trained on by a remote worker.
    let resp = a
        .post(server.url("/datasets/upload?name=pets&format=folder&image_size=16"))
        .body(pets_tar())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let mut spec = tiny_spec(2);
    spec["name"] = json!("on-pets");
    spec["data"] = json!({"source": "dataset", "name": "pets"});
    let on_pets = create(&a, &server, &spec).await;
    let work = dir.path().join("w1");
    let first = Worker::start(&server.base, &token, work.clone());
    let done = wait_for(&a, &server, &on_pets.id, 180, |r| r.status.is_terminal()).await;
    assert_succeeded(&done);
    assert!(
        done.knn_backbone.is_some_and(|acc| acc > 0.6),
        "3 colours, chance is 0.33: {:?}",
        done.knn_backbone
    );
    let hash = done.spec.data.clone();
    let hash = serde_json::to_value(hash).unwrap()["registered"]["hash"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let cached = work.join("datasets").join(&hash).join("cat/00.png");
    let original = std::fs::read(&cached).expect("the worker caches the data set by hash");
    // Its checkpoint is in the bucket, byte for byte what the API serves.
    let key = format!("runs/{}/checkpoint.safetensors", on_pets.id);
    assert!(moto.keys("runs/").await.contains(&key));
    let in_s3 = moto.object(&key).await;
    let served = a
        .get(server.url(&format!("/runs/{}/checkpoint", on_pets.id)))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(!in_s3.is_empty());
    assert_eq!(hex_sha256(&in_s3), hex_sha256(&served));

    // A re-evaluation on the registered data, by the remote worker: it
    // fetches the weights from the store through the API.
    let plan = json!({"eval": {
        "probes": ["knn", "rankme"], "layers": ["backbone"], "knn_k": 5,
        "data": {"source": "dataset", "name": "pets"}
    }});
    let job = common::post_json(
        &a,
        server.url(&format!("/runs/{}/evaluate", on_pets.id)),
        &plan,
    )
    .await;
    let job_id = job["id"].as_str().unwrap_or_else(|| panic!("{job}"));
    let ended = common::wait_job(&a, server.url(&format!("/evaluation-jobs/{job_id}")), 120).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let rows: Vec<sslab_shared::api::Evaluation> = common::get_json(
        &a,
        server.url(&format!("/runs/{}/evaluations?job={job_id}", on_pets.id)),
    )
    .await;
    let knn = rows
        .iter()
        .find(|e| e.probe == "knn" && e.metric == "top1")
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert!(knn.value > 0.6, "{rows:?}");
    assert!(rows.iter().any(|e| e.probe == "rankme"), "{rows:?}");

    // A déjà vu audit on the remote worker: its files land in S3 and its
    // page's images are served from there.
    let mut spec_audit = common::tiny_audit();
    spec_audit["name"] = json!("remote-audit");
    spec_audit["reconstruct"] = common::tiny_reconstruct();
    let audit = common::post_json(&a, server.url("/audits"), &spec_audit).await;
    let audit_id = audit["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{audit}"))
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut listed = false;
    let audit = loop {
        let got: sslab_shared::api::Audit =
            common::get_json(&a, server.url(&format!("/audits/{audit_id}"))).await;
        if got.status.is_terminal() {
            break got;
        }
        // The Workers list shows who holds it.
        let workers: Vec<sslab_shared::worker::WorkerInfo> =
            common::get_json(&a, server.url("/workers")).await;
        listed |= workers
            .iter()
            .any(|w| w.jobs.iter().any(|j| j.kind == "audit" && j.id == audit_id));
        assert!(
            Instant::now() < deadline,
            "the audit did not finish: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(audit.status, RunStatus::Succeeded, "{audit:?}");
    assert!(listed, "no worker listed audit {audit_id} among its jobs");
    let kept = moto.keys(&format!("audits/{audit_id}/")).await;
    for file in [
        "examples.csv",
        "target-a.safetensors",
        "reference-b.safetensors",
        "reconstruction.png",
    ] {
        let key = format!("audits/{audit_id}/{file}");
        assert!(kept.contains(&key), "{key} not in {kept:?}");
    }
    let image = kept
        .iter()
        .find_map(|k| k.strip_prefix(&format!("audits/{audit_id}/images/")))
        .unwrap_or_else(|| panic!("no gallery image in {kept:?}"));
    let png = a
        .get(server.url(&format!("/audits/{audit_id}/images/{image}")))
        .send()
        .await
        .unwrap();
    assert_eq!(png.status(), 200);
    assert_eq!(png.headers()["content-type"], "image/png");

    // CKA of the run with itself on the remote worker: weights from S3,
    // images fetched by hash; a layer compared with itself scores 1.
    let cka = common::post_json(
        &a,
        server.url("/cka"),
        &json!({"a": on_pets.id, "layers_a": ["backbone"], "layers_b": ["backbone"]}),
    )
    .await;
    let cka_id = cka["id"].as_str().unwrap_or_else(|| panic!("{cka}"));
    let cka: sslab_shared::cka::CkaJob = serde_json::from_value(
        common::wait_job(&a, server.url(&format!("/cka/{cka_id}")), 120).await,
    )
    .unwrap();
    assert_eq!(cka.status, RunStatus::Succeeded, "{cka:?}");
    let result = cka.result.expect("a pair's result");
    assert!(
        (result.matrix[0][0] - 1.0).abs() < 1e-3,
        "{:?}",
        result.matrix
    );
    assert_eq!(
        serde_json::to_value(&result.settings).unwrap()["data"]["registered"]["hash"],
        json!(format!("sha256:{hash}")),
        "the settings name the data as the job did"
    );

    // A decoder on the remote worker, learning from the registered images
    // it fetches by hash: its grids land in S3 and are served from there.
    let decoder = common::post_json(
        &a,
        server.url(&format!("/runs/{}/decoders", on_pets.id)),
        &json!({
            "kind": "infusion", "layers": ["backbone"],
            "data": {"source": "dataset", "name": "pets"},
            "held_out_per_class": 2, "steps": 10, "batch": 8, "samples": 2,
            "infusion": {"steps": 3, "channels": 8, "blocks": 1}
        }),
    )
    .await;
    let decoder_id = decoder["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{decoder}"));
    let ended = common::wait_job(&a, server.url(&format!("/decoders/{decoder_id}")), 120).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    assert_eq!(ended["step"], 10, "{ended}");
    assert_eq!(ended["report"]["layers"][0]["layer"], "backbone", "{ended}");
    let kept = moto.keys(&format!("decoders/{decoder_id}/")).await;
    for file in sslab_shared::worker::DECODER_FILES {
        let key = format!("decoders/{decoder_id}/{file}");
        assert!(kept.contains(&key), "{key} not in {kept:?}");
        let png = a
            .get(server.url(&format!("/decoders/{decoder_id}/{file}")))
            .send()
            .await
            .unwrap();
        assert_eq!(png.status(), 200, "{file}");
        assert_eq!(png.headers()["content-type"], "image/png");
    }

    // A spoilt cached copy no longer hashes as registered: fetched again.
    std::fs::write(&cached, common::png([1, 2, 3], 7)).unwrap();
    spec["name"] = json!("on-pets-again");
    spec["schedule"]["epochs"] = json!(1);
    let again = create(&a, &server, &spec).await;
    let done = wait_for(&a, &server, &again.id, 180, |r| r.status.is_terminal()).await;
    assert_succeeded(&done);
    assert_eq!(std::fs::read(&cached).unwrap(), original);

    // Killed mid-run: the next worker resumes from the checkpoint in S3,
    // with the server's local copy gone.
    let mut long = tiny_spec(40);
    long["name"] = json!("killed");
    long["data"]["train_images"] = json!(128);
    let killed = create(&a, &server, &long).await;
    wait_log(&a, &server, &killed.id, "checkpoint after epoch 2 stored").await;
    first.kill();
    let key = format!("runs/{}/checkpoint.safetensors", killed.id);
    // Its last upload may still be landing: take the object once it holds.
    let mut stored = moto.object(&key).await;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let now = moto.object(&key).await;
        if now == stored {
            break;
        }
        stored = now;
    }
    assert!(!stored.is_empty(), "no {key} in S3");
    let stored_hash = hex_sha256(&stored);
    std::fs::remove_dir_all(server.data_dir.join("artifacts/runs")).unwrap();
    let second = Worker::start(&server.base, &token, dir.path().join("w2"));
    let done = wait_for(&a, &server, &killed.id, 240, |r| r.status.is_terminal()).await;
    assert_succeeded(&done);
    let lines = logs(&a, &server, &killed.id).await;
    let text: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert!(
        lines.iter().any(|l| l.attempt == 2
            && l.text.starts_with("fetched checkpoint.safetensors")
            && l.text.contains(&stored_hash)),
        "{stored_hash}: {text:?}"
    );
    assert!(
        text.iter().any(|t| t.starts_with("resuming after the ")),
        "{text:?}"
    );

    // S3 goes away while the checkpoint is uploaded: the run waits, and
    // succeeds once the store is back, its checkpoint stored.
    let mut short = tiny_spec(1);
    short["name"] = json!("outage");
    proxy.cut();
    let outage = create(&a, &server, &short).await;
    wait_log(&a, &server, &outage.id, "training 1 epochs from scratch").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = get_run(&a, &server, &outage.id).await;
    assert_eq!(during.status, RunStatus::Running, "{during:?}");
    let said = logs(&a, &server, &outage.id).await;
    assert!(
        !said.iter().any(|l| l.text.contains("stored")),
        "stored while S3 was away: {said:?}"
    );
    proxy.mend();
    let done = wait_for(&a, &server, &outage.id, 180, |r| r.status.is_terminal()).await;
    assert_succeeded(&done);
    let key = format!("runs/{}/checkpoint.safetensors", outage.id);
    assert!(moto.keys("runs/").await.contains(&key));
    second.terminate();

    // A server on a fresh disk serves what S3 holds.
    // A fresh disk in the same place: the server's data folder loses its
    // artifacts and data sets (the database is PostgreSQL's).
    server.stop("TERM");
    let disk = dir.path().join("disk-a");
    std::fs::remove_dir_all(disk.join("artifacts")).unwrap();
    std::fs::remove_dir_all(disk.join("datasets")).unwrap();
    let server = Server::start_on(&addr, &disk, Some(&db), &env);
    let served = a
        .get(server.url(&format!("/runs/{}/checkpoint", killed.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let in_s3 = moto
        .object(&format!("runs/{}/checkpoint.safetensors", killed.id))
        .await;
    assert_eq!(
        hex_sha256(&served.bytes().await.unwrap()),
        hex_sha256(&in_s3)
    );
    // The data set came back too: its thumbnails, and its files for a
    // worker that has no copy yet.
    let sheet = a
        .get(server.url("/datasets/pets/samples.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(sheet.status(), 200);
    assert!(
        moto.keys("datasets/")
            .await
            .iter()
            .any(|k| k.ends_with("/samples.png")),
        "no data set files in S3"
    );
    let third = Worker::start(&server.base, &token, dir.path().join("w3"));
    spec["name"] = json!("pets-after-the-disk");
    let after = create(&a, &server, &spec).await;
    let done = wait_for(&a, &server, &after.id, 180, |r| r.status.is_terminal()).await;
    assert_succeeded(&done);
    third.terminate();

    // Deleting a run deletes its objects.
    let resp = a
        .delete(server.url(&format!("/runs/{}", killed.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let left = moto.keys(&format!("runs/{}/", killed.id)).await;
    assert!(left.is_empty(), "{left:?}");
    assert!(!moto.keys(&format!("runs/{}/", on_pets.id)).await.is_empty());
    drop(server);
}
