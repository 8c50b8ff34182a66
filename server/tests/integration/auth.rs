//! Authorization on every route, walked off the router itself (`sslab
//! routes`), not a hand-kept list: anonymous requests get 401 except on the
//! public surface; a viewer changes nothing; another team's objects do not
//! exist (404); revoked, expired, malformed and read-scoped tokens; sign-in
//! with a cookie and its CSRF token; the back-off on wrong passwords. On
//! SQLite and on PostgreSQL.

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use common::{
    Server, admin, allowed_methods, assert_succeeded, client_with, create, export_run,
    fresh_postgres_database, get_json, last_line, post_json, publish, routes, tar_dir, tiny_spec,
    wait_terminal,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// What anyone may call.
const PUBLIC: [(&str, &str); 5] = [
    ("GET", "/api/v1/health"),
    ("GET", "/api/v1/openapi.json"),
    ("POST", "/api/v1/sign-in"),
    ("GET", "/api/v1/public/demos/{slug}"),
    ("GET", "/api/v1/public/demos/{slug}/files/{sha256}"),
];

/// Changes a viewer may make: their own session and tokens.
const ACCOUNT_CHANGES: [&str; 5] = [
    "/api/v1/sign-out",
    "/api/v1/session/team",
    "/api/v1/session/password",
    "/api/v1/tokens",
    "/api/v1/tokens/{id}/revoke",
];

/// What workers call: worker tokens only.
const WORKER_ONLY: &str = "/api/v1/worker/";

/// Site-wide readings: the operator's (site admin, metrics tokens) only.
const SITE_ONLY: [&str; 1] = ["/metrics"];

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

fn sslab(dir: &Path, url: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sslab"));
    cmd.arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("DATABASE_URL");
    if let Some(url) = url {
        cmd.env("DATABASE_URL", url);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "sslab {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Team A's objects, one of each kind, by the path parameter that names them.
struct Objects {
    run: String,
    sweep: String,
    audit: String,
    evaluation_job: String,
    dataset: String,
    token: String,
    member: String,
    /// A published demo's slug, and the hash of one of its files.
    demo: String,
    demo_file: String,
    export: String,
    cka: String,
    decoder: String,
    study: String,
    worker: String,
    project: String,
}

impl Objects {
    /// `path` with its parameters filled in with team A's objects.
    fn fill(&self, path: &str) -> String {
        let mut out = Vec::new();
        let parts: Vec<&str> = path.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            if !part.starts_with('{') {
                out.push(part.to_string());
                continue;
            }
            let value = match (parts[i - 1], *part) {
                ("runs", "{id}") => &self.run,
                ("sweeps", "{id}") => &self.sweep,
                ("audits", "{id}") => &self.audit,
                ("evaluation-jobs", "{id}") | ("evaluations", "{id}") => &self.evaluation_job,
                ("datasets", "{name}") => &self.dataset,
                ("tokens", "{id}") => &self.token,
                ("members", "{user_id}") => &self.member,
                ("images", "{file}") => "0.png",
                ("demos", "{slug}") => &self.demo,
                ("exports", "{id}") => &self.export,
                ("cka", "{id}") => &self.cka,
                ("decoders", "{id}") => &self.decoder,
                ("{id}", "{file}") if parts[i - 2] == "decoders" => "samples.png",
                ("studies", "{id}") => &self.study,
                ("charts", "{file}") => "finding-1.png",
                ("workers", "{id}") => &self.worker,
                ("projects", "{name}") => &self.project,
                ("files", "{file}") => "checkpoint.safetensors",
                ("files", "{sha256}") => &self.demo_file,
                ("checkpoints", "{model}") => "target",
                ("checkpoints", "{run}") => &self.run,
                // A data set's content hash; the walk needs no real one.
                ("data", "{hash}") => "00000000000000000000000000000000",
                (before, param) => panic!(
                    "no test object for `{param}` after `{before}` in {path}: add one to Objects"
                ),
            };
            out.push(value.to_string());
        }
        out.join("/")
    }

    fn ids(&self) -> [&str; 13] {
        [
            &self.project,
            &self.study,
            &self.decoder,
            &self.worker,
            &self.cka,
            &self.demo,
            &self.export,
            &self.run,
            &self.sweep,
            &self.audit,
            &self.evaluation_job,
            &self.token,
            &self.member,
        ]
    }
}

async fn send(client: &reqwest::Client, method: Method, url: &str) -> (StatusCode, String) {
    let mut req = client.request(method.clone(), url);
    if method != Method::GET {
        req = req.json(&json!({}));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    // Event streams of another team never start, so reading ends.
    let body = resp.text().await.unwrap_or_default();
    (status, body)
}

async fn authorization(server: &Server, url: Option<&str>) {
    let dir = server.data_dir.as_path();
    let a = server.client();
    let anonymous = reqwest::Client::new();

    // Team A (the default team): a viewer; team B: its own admin.
    admin(
        dir,
        url,
        &[
            "create-user",
            "vic",
            "--team",
            "default",
            "--role",
            "viewer",
        ],
    );
    let viewer = client_with(&last_line(&admin(
        dir,
        url,
        &["create-token", "--user", "vic", "--name", "vic-cli"],
    )));
    admin(dir, url, &["create-team", "beta"]);
    admin(
        dir,
        url,
        &["create-user", "bob", "--team", "beta", "--role", "admin"],
    );
    let b = client_with(&last_line(&admin(
        dir,
        url,
        &["create-token", "--user", "bob"],
    )));

    // One object of each kind in team A.
    let run = create(&a, server, &tiny_spec(1)).await;
    assert_succeeded(&wait_terminal(&a, server, &run.id).await);
    let sweep: Value = a
        .post(server.url("/sweeps"))
        .json(&json!({"base": tiny_spec(1), "axes": [{"path": "projector.dims", "values": ["32-8"]}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let study = post_json(
        &a,
        server.url("/studies"),
        &json!({
            "name": "s",
            "sweeps": {"m": {"base": tiny_spec(1), "axes": [{"path": "projector.dims", "values": ["32-8"]}]}},
            "findings": [{"name": "f", "claim": "c", "expect": "positive",
                "of": {"part": "sweeps.m", "layer": "backbone", "metric": "knn.top1"}}],
        }),
    )
    .await;
    let audit: Value = a
        .post(server.url("/audits"))
        .json(&json!({"runs": {"target": run.id, "reference": run.id}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The run was not trained on a déjà vu partition: a 422, so queue a real one and cancel it.
    assert_eq!(audit["error"]["field"], "runs.target", "{audit}");
    let audit: Value = a
        .post(server.url("/audits"))
        .json(&json!({"name": "a", "snapshots": [1], "split": {"per_class": 6}, "attack": {"k": 10},
            "run": {"seed": 3, "data": {"source": "scenes", "classes": 3, "train_images": 90, "test_images": 30},
                    "backbone": {"kind": "tiny_cnn", "width": 8}, "projector": {"dims": "32-16"},
                    "optimizer": {"batch_size": 12}, "schedule": {"epochs": 1}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let audit_id = audit["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{audit}"))
        .to_string();
    a.post(server.url(&format!("/audits/{audit_id}/cancel")))
        .send()
        .await
        .unwrap();
    let job: Value = a
        .post(server.url(&format!("/runs/{}/evaluate", run.id)))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let folder = dir.join("pets");
    for (c, colour) in [("cat", [200, 40, 40]), ("dog", [40, 200, 40])] {
        std::fs::create_dir_all(folder.join(c)).unwrap();
        for i in 0..6 {
            std::fs::write(
                folder.join(c).join(format!("{i}.png")),
                common::png(colour, i),
            )
            .unwrap();
        }
    }
    let folder_text = folder.to_string_lossy().into_owned();
    sslab(
        dir,
        url,
        &[
            "data",
            "import",
            &folder_text,
            "--format",
            "folder",
            "--name",
            "pets",
            "--image-size",
            "16",
        ],
    );
    let work = tempfile::tempdir().unwrap();
    let bundle = export_run(work.path(), "demo", &tiny_spec(1), &[]);
    let published = publish(&a, server, tar_dir(&bundle)).await;
    assert_eq!(published.status(), 201);
    let demo: Value = published.json().await.unwrap();
    let manifest: Value = get_json(
        &anonymous,
        server.url(&format!("/public/demos/{}", demo["slug"].as_str().unwrap())),
    )
    .await;
    let export = post_json(
        &a,
        server.url(&format!("/runs/{}/export", run.id)),
        &json!({"f16": true}),
    )
    .await;
    let cka = post_json(&a, server.url("/cka"), &json!({"a": run.id})).await;
    let decoder = post_json(
        &a,
        server.url(&format!("/runs/{}/decoders", run.id)),
        &json!({"steps": 2, "batch": 4}),
    )
    .await;
    // A worker of team A, and a worker token of team B.
    let worker_a = client_with(&last_line(&admin(
        dir,
        url,
        &[
            "create-token",
            "--user",
            "admin",
            "--scope",
            "worker",
            "--name",
            "wa",
        ],
    )));
    let worker_b = client_with(&last_line(&admin(
        dir,
        url,
        &[
            "create-token",
            "--user",
            "bob",
            "--scope",
            "worker",
            "--name",
            "wb",
        ],
    )));
    let worker = post_json(
        &worker_a,
        server.url("/worker/register"),
        &json!({"host": "a", "device": "cpu", "slots": 1, "version": env!("CARGO_PKG_VERSION")}),
    )
    .await;
    let project = post_json(
        &a,
        server.url("/projects"),
        &json!({"name": "vision-a-only"}),
    )
    .await;
    let tokens: Vec<Value> = get_json(&a, server.url("/tokens")).await;
    let members: Vec<Value> = get_json(&a, server.url("/members")).await;
    let objects = Objects {
        run: run.id.clone(),
        sweep: sweep["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{sweep}"))
            .into(),
        audit: audit_id,
        evaluation_job: job["id"].as_str().unwrap_or_else(|| panic!("{job}")).into(),
        dataset: "pets".into(),
        token: tokens[0]["id"].as_str().unwrap().into(),
        member: members
            .iter()
            .find(|m| m["name"] == "vic")
            .and_then(|m| m["user_id"].as_str())
            .unwrap()
            .into(),
        demo: demo["slug"].as_str().unwrap().into(),
        demo_file: manifest["files"][0]["sha256"].as_str().unwrap().into(),
        export: export["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{export}"))
            .into(),
        cka: cka["id"].as_str().unwrap_or_else(|| panic!("{cka}")).into(),
        decoder: decoder["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{decoder}"))
            .into(),
        study: study["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{study}"))
            .into(),
        worker: worker["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{worker}"))
            .into(),
        project: project["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{project}"))
            .into(),
    };

    // Search finds another team's objects by no id or name.
    for q in [objects.run.as_str(), &objects.sweep, &objects.audit, "pets"] {
        let url = format!("{}/api/v1/search?q={q}", server.base);
        let (status, body) = send(&b, Method::GET, &url).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "[]"),
            "team B searches {q}"
        );
        let (status, body) = send(&viewer, Method::GET, &url).await;
        assert!(
            status == StatusCode::OK && body.contains(q),
            "team A searches {q}: {body}"
        );
    }

    // Every route of the router, as the binary itself lists them.
    let paths = routes();
    assert!(paths.len() >= 30, "{paths:?}");
    let mut routed: Vec<(Method, String)> = Vec::new();
    for path in &paths {
        let target = format!("{}{}", server.base, objects.fill(path));
        // The routes' methods, as someone who may call them sees them.
        let prober = if path.starts_with(WORKER_ONLY) {
            &worker_a
        } else {
            &a
        };
        for method in allowed_methods(prober, &target).await {
            routed.push((Method::from_bytes(method.as_bytes()).unwrap(), path.clone()));
        }
        for method in METHODS {
            let (status, body) = send(&anonymous, method.clone(), &target).await;
            let public = PUBLIC.contains(&(method.as_str(), path.as_str()));
            if public {
                continue;
            }
            // Unrouted methods too: nothing about a path shows without credentials.
            let expected = if PUBLIC.iter().any(|(_, p)| p == path) {
                StatusCode::METHOD_NOT_ALLOWED
            } else {
                StatusCode::UNAUTHORIZED
            };
            assert_eq!(status, expected, "anonymous {method} {path}: {body}");
        }
    }
    assert!(routed.len() >= paths.len(), "{routed:?}");
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (method, path) in &routed {
        *seen.entry(method.as_str()).or_default() += 1;
        if PUBLIC.contains(&(method.as_str(), path.as_str())) {
            continue;
        }
        let target = format!("{}{}", server.base, objects.fill(path));
        if SITE_ONLY.contains(&path.as_str()) {
            for (who, client) in [("team B's admin", &b), ("viewer", &viewer)] {
                let (status, body) = send(client, method.clone(), &target).await;
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{who} {method} {path}: {body}"
                );
            }
            let (status, body) = send(&a, method.clone(), &target).await;
            assert_eq!(status, StatusCode::OK, "site admin {method} {path}: {body}");
            continue;
        }
        // Only worker tokens call the workers' routes; another team's
        // worker finds nothing of team A's.
        if path.starts_with(WORKER_ONLY) {
            for (who, client) in [
                ("team A's admin", &a),
                ("team B's admin", &b),
                ("viewer", &viewer),
            ] {
                let (status, body) = send(client, method.clone(), &target).await;
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{who} {method} {path}: {body}"
                );
            }
            let (status, body) = send(&worker_b, method.clone(), &target).await;
            if path.contains('{') {
                assert_eq!(
                    status,
                    StatusCode::NOT_FOUND,
                    "team B's worker {method} {path}: {body}"
                );
            } else {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "team B's worker {method} {path}: {status} {body}"
                );
            }
            continue;
        }
        // Worker tokens read and change nothing of the team's.
        let account = ACCOUNT_CHANGES.contains(&path.as_str()) || path == "/api/v1/session";
        if !account {
            let (status, body) = send(&worker_a, method.clone(), &target).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "team A's worker {method} {path}: {body}"
            );
        }
        // Another team's objects do not exist, for any method.
        if path.contains('{') {
            let (status, body) = send(&b, method.clone(), &target).await;
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "team B {method} {path}: {body}"
            );
        } else if *method == Method::GET {
            let (status, body) = send(&b, Method::GET, &target).await;
            // `/compare` without its query is a 400; every other list answers.
            assert!(
                status.is_success() || status == StatusCode::BAD_REQUEST,
                "team B {method} {path}: {status} {body}"
            );
            for id in objects.ids() {
                assert!(
                    !body.contains(id),
                    "team B's {path} shows team A's `{id}`: {body}"
                );
            }
            assert!(
                !body.contains("\"pets\""),
                "team B's {path} shows team A's data set: {body}"
            );
        }
        // A viewer reads but changes nothing of the team's.
        if *method != Method::GET && !ACCOUNT_CHANGES.contains(&path.as_str()) {
            let (status, body) = send(&viewer, method.clone(), &target).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "viewer {method} {path}: {body}"
            );
        }
        if *method == Method::GET {
            let (status, body) = send(&viewer, Method::GET, &target).await;
            assert!(
                status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                "viewer GET {path}: {status} {body}"
            );
        }
    }
    assert!(seen["GET"] > 10 && seen["POST"] > 5, "{seen:?}");
    assert!(routed.iter().any(|(_, p)| p == "/metrics"));

    // Prometheus readings: requests and the jobs by kind and status.
    let text = a
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("sslab_http_requests_total{method=\"GET\",status=\"200\"}"),
        "{text}"
    );
    assert!(
        text.contains("sslab_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains("sslab_jobs{kind=\"run\",status=\"succeeded\"}"),
        "{text}"
    );
    let metrics_only = client_with(&last_line(&admin(
        dir,
        url,
        &["create-token", "--user", "admin", "--scope", "metrics"],
    )));
    let resp = metrics_only
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = metrics_only.get(server.url("/runs")).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    // Nothing of A's changed: the run is as it was, vic still a member.
    let again: Value = get_json(&a, server.url(&format!("/runs/{}", run.id))).await;
    assert_eq!(again["status"], "succeeded");
    let members: Vec<Value> = get_json(&a, server.url("/members")).await;
    assert!(members.iter().any(|m| m["name"] == "vic"));
    let demos: Vec<Value> = get_json(&a, server.url("/demos")).await;
    assert_eq!(demos.len(), 1, "{demos:?}");

    tokens_behave(server, url).await;
    cookies_and_csrf(server, url).await;
}

/// Revoked, expired, malformed and read-scoped tokens.
async fn tokens_behave(server: &Server, url: Option<&str>) {
    let dir = server.data_dir.as_path();
    let runs = server.url("/runs");
    let out = admin(
        dir,
        url,
        &["create-token", "--user", "admin", "--name", "short"],
    );
    let secret = last_line(&out);
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    let short = client_with(&secret);
    assert_eq!(short.get(&runs).send().await.unwrap().status(), 200);
    admin(dir, url, &["revoke-token", &id]);
    let resp = short.get(&runs).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.text().await.unwrap().contains("revoked"));
    assert!(admin(dir, url, &["list-tokens"]).contains("revoked"));

    let expired = client_with(&last_line(&admin(
        dir,
        url,
        &["create-token", "--user", "admin", "--expires-in-days", "0"],
    )));
    let resp = expired.get(&runs).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.text().await.unwrap().contains("expired"));

    // A token revoked while its event stream is open: the stream ends.
    let out = admin(
        dir,
        url,
        &["create-token", "--user", "admin", "--name", "watcher"],
    );
    let watcher_id = out.split_whitespace().nth(1).unwrap().to_string();
    let watcher = client_with(&last_line(&out));
    let long = create(&server.client(), server, &tiny_spec(300)).await;
    let resp = watcher
        .get(server.url(&format!("/runs/{}/events", long.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    use futures_util::StreamExt;
    assert!(
        stream.next().await.is_some(),
        "the stream sends its first event"
    );
    admin(dir, url, &["revoke-token", &watcher_id]);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        while let Some(chunk) = stream.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the event stream went on after its token was revoked"
    );
    let resp = server
        .client()
        .post(server.url(&format!("/runs/{}/cancel", long.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let good = server.token.clone();
    for header in [
        format!("Bearer  {good}"),
        format!("Token {good}"),
        format!("Bearer {}", good.replace("sslab_", "ghp_")),
        format!("Bearer {}x", good),
        "Bearer".to_string(),
    ] {
        let resp = reqwest::Client::new()
            .get(&runs)
            .header("authorization", &header)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{header}");
        assert!(resp.headers().contains_key("www-authenticate"));
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("malformed"),
            "{header}: {body}"
        );
    }
    // A well-formed secret the server never issued.
    let resp = client_with(&format!("sslab_{}", "0".repeat(61)))
        .get(&runs)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let read = client_with(&last_line(&admin(
        dir,
        url,
        &["create-token", "--user", "admin", "--scope", "read"],
    )));
    let before: Value = read.get(&runs).send().await.unwrap().json().await.unwrap();
    let resp = read.post(&runs).json(&tiny_spec(1)).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let resp = read
        .post(server.url("/tokens"))
        .json(&json!({"name": "escalate"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let after: Value = read.get(&runs).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        before["items"].as_array().unwrap().len(),
        after["items"].as_array().unwrap().len()
    );

    // A JSON body sent as text/plain (what a cross-site form can send) is refused.
    let resp = server
        .client()
        .post(&runs)
        .header("content-type", "text/plain")
        .body(tiny_spec(1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    // A body over the limit. The server may answer before the client has
    // sent it all and close the connection under it: then the client sees a
    // broken connection instead of the answer, so it tries again.
    let mut status = None;
    for _ in 0..5 {
        let sent = server
            .client()
            .post(&runs)
            .header("content-type", "application/json")
            .body(format!("{{\"name\": \"{}\"}}", "x".repeat(3 << 20)))
            .send()
            .await;
        if let Ok(resp) = sent {
            status = Some(resp.status().as_u16());
            break;
        }
    }
    assert_eq!(status, Some(413));
    let after: Value = read.get(&runs).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        before["items"].as_array().unwrap().len(),
        after["items"].as_array().unwrap().len()
    );

    // Conventions: a request id on every answer, compressed JSON when asked,
    // and no cross-origin access unless the operator allows an origin.
    let resp = read
        .get(&runs)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    assert!(!resp.headers()["x-request-id"].is_empty());
    let resp = reqwest::Client::new()
        .request(Method::OPTIONS, &runs)
        .header("origin", "https://elsewhere.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
}

/// The session cookie of a sign-in, without the `Secure` flag's https:
/// reqwest is given the cookie by hand.
async fn sign_in(server: &Server, body: Value) -> (StatusCode, Option<String>, Value) {
    let resp = reqwest::Client::new()
        .post(server.url("/sign-in"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap().to_string());
    if let Some(c) = &resp.headers().get("set-cookie") {
        let c = c.to_str().unwrap();
        for flag in ["HttpOnly", "SameSite=Strict", "Secure"] {
            assert!(c.contains(flag), "{c}");
        }
    }
    (status, cookie, resp.json().await.unwrap_or(Value::Null))
}

async fn cookies_and_csrf(server: &Server, url: Option<&str>) {
    let dir = server.data_dir.as_path();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sslab"));
    cmd.arg("--data-dir")
        .arg(dir)
        .args([
            "admin",
            "create-user",
            "pia",
            "--team",
            "default",
            "--password-stdin",
        ])
        .env_remove("DATABASE_URL")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    if let Some(url) = url {
        cmd.env("DATABASE_URL", url);
    }
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse battery\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let link = last_line(&String::from_utf8(out.stdout).unwrap());
    let code = link.split("code=").nth(1).unwrap().to_string();

    let (status, _, body) =
        sign_in(server, json!({"name": "pia", "password": "wrong horse"})).await;
    assert_eq!(status, 401, "{body}");
    let (status, cookie, me) = sign_in(
        server,
        json!({"name": "pia", "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(status, 200, "{me}");
    let cookie = cookie.expect("a session cookie");
    let csrf = me["csrf"].as_str().unwrap().to_string();
    let plain = reqwest::Client::new();
    let me: Value = plain
        .get(server.url("/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["name"], "pia");
    assert_eq!(me["team"]["role"], "member");
    // A change with the cookie alone is refused; with the CSRF header it is made.
    let resp = plain
        .post(server.url("/runs"))
        .header("cookie", &cookie)
        .json(&tiny_spec(1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = plain
        .post(server.url("/runs"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .json(&tiny_spec(1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let run: Value = resp.json().await.unwrap();
    assert_eq!(run["created_by"], me["user_id"]);
    // A forged cookie is not a session.
    let resp = plain
        .get(server.url("/session"))
        .header("cookie", format!("sslab_session=sslab_{}", "1".repeat(61)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Signing out ends the session; replaying its cookie gets 401.
    let resp = plain
        .post(server.url("/sign-out"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = plain
        .get(server.url("/runs"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // The one-time link works once; signed in with it, a user sets a password.
    let (status, cookie, me) = sign_in(server, json!({"code": code})).await;
    assert_eq!(status, 200);
    let cookie = cookie.unwrap();
    let (status, _, _) = sign_in(server, json!({"code": code})).await;
    assert_eq!(status, 401);
    let resp = plain
        .post(server.url("/session/password"))
        .header("cookie", &cookie)
        .header("x-csrf-token", me["csrf"].as_str().unwrap())
        .json(&json!({"password": "a new horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (status, _, _) = sign_in(
        server,
        json!({"name": "pia", "password": "a new horse battery"}),
    )
    .await;
    assert_eq!(status, 200);

    // Guessing slows down: after five wrong passwords, 429 with Retry-After,
    // even for the right one.
    for _ in 0..5 {
        let (status, _, _) =
            sign_in(server, json!({"name": "vic", "password": "guess-guess"})).await;
        assert!(status == 401 || status == 429, "{status}");
    }
    let resp = reqwest::Client::new()
        .post(server.url("/sign-in"))
        .json(&json!({"name": "vic", "password": "guess-guess"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_authorization() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    authorization(&server, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_authorization() {
    let Some(url) = fresh_postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Some(&url));
    authorization(&server, Some(&url)).await;
}

/// Each token has its own budget: past it, 429 with `Retry-After`, while
/// another token goes on.
#[tokio::test(flavor = "multi_thread")]
async fn requests_are_limited_per_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        None,
        &[("SSLAB_RATE_LIMIT", "1"), ("SSLAB_RATE_BURST", "3")],
    );
    let a = server.client();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..8 {
        let resp = a.get(server.url("/runs")).send().await.unwrap();
        if resp.status() == 429 {
            retry_after = resp.headers().get("retry-after").cloned();
        }
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(&statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    let secs: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&secs), "{secs}");
    let other = client_with(&last_line(&admin(
        dir.path(),
        None,
        &["create-token", "--user", "admin", "--name", "other"],
    )));
    assert_eq!(
        other
            .get(server.url("/runs"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Health is not counted against anyone.
    assert_eq!(
        reqwest::get(server.url("/health")).await.unwrap().status(),
        200
    );
}

/// Behind a proxy the operator names, the back-off counts the client the
/// proxy names; otherwise `X-Forwarded-For` is ignored.
#[tokio::test(flavor = "multi_thread")]
async fn the_back_off_counts_the_client_behind_a_trusted_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), None, &[("SSLAB_TRUSTED_PROXIES", "127.0.0.1")]);
    let attempt = |name: &'static str, from: &'static str| {
        reqwest::Client::new()
            .post(server.url("/sign-in"))
            .header("x-forwarded-for", from)
            .json(&json!({"name": name, "password": "guess-guess"}))
            .send()
    };
    let mut last = 0;
    for i in 0..7 {
        // Each try names another account: only the address adds up.
        let names = ["a1", "a2", "a3", "a4", "a5", "a6", "a7"];
        last = attempt(names[i], "10.0.0.1")
            .await
            .unwrap()
            .status()
            .as_u16();
    }
    assert_eq!(last, 429);
    assert_eq!(attempt("b1", "10.0.0.2").await.unwrap().status(), 401);
}
