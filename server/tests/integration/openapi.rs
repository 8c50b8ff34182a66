//! The OpenAPI document: served without credentials, naming exactly the
//! routes of the router (both ways, with their methods), and valid against
//! the OpenAPI schema (`openapi-spec-validator`, which `cargo xtask test`
//! installs).

use crate::common;

use std::collections::BTreeSet;

use common::{Server, admin, allowed_methods, client_with, e2e_required, last_line, routes};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn the_document_matches_the_router_and_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let resp = reqwest::get(server.url("/openapi.json")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["servers"][0]["url"], "/api/v1");

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                documented.insert((method.to_uppercase(), format!("/api/v1{path}")));
            }
        }
    }
    let client = server.client();
    // The workers' routes answer only worker tokens, even for the probe.
    let worker = client_with(&last_line(&admin(
        dir.path(),
        None,
        &["create-token", "--user", "admin", "--scope", "worker"],
    )));
    let mut routed = BTreeSet::new();
    // `/metrics` is Prometheus's, outside the API the document describes.
    for path in routes().into_iter().filter(|p| p.starts_with("/api/v1/")) {
        // Any value matches a parameter; the 405 comes before any handler.
        let concrete: Vec<String> = path
            .split('/')
            .map(|p| {
                if p.starts_with('{') {
                    "x".into()
                } else {
                    p.to_string()
                }
            })
            .collect();
        let url = format!("{}{}", server.base, concrete.join("/"));
        let prober = if path.starts_with("/api/v1/worker/") {
            &worker
        } else {
            &client
        };
        for method in allowed_methods(prober, &url).await {
            routed.insert((method, path.clone()));
        }
    }
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from the document: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "the document names routes that do not exist: {unrouted:?}"
    );
    assert!(routed.len() > 40, "{routed:?}");

    // Every documented body type is in the components.
    let text = doc.to_string();
    for schema in [
        "Run",
        "Page_Run",
        "ErrorBody",
        "Me",
        "TokenInfo",
        "Dataset",
        "Audit",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
    assert!(text.contains("\"bearer\""));

    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &text).unwrap();
    let validated = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output();
    match validated {
        Ok(out) if out.status.success() => {}
        Ok(out)
            if !e2e_required()
                && String::from_utf8_lossy(&out.stderr).contains("No module named") =>
        {
            eprintln!(
                "skipped the schema check: pip install openapi-spec-validator (cargo xtask test does)"
            );
        }
        Ok(out) => panic!(
            "the document is not valid OpenAPI: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => assert!(!e2e_required(), "python3: {e}"),
    }
}
