//! `examples/automation.py` against a real server: it authenticates with a
//! token, launches a projector-dimension sweep, waits, and downloads the
//! summary CSV; with a token the server does not know it stops with the
//! server's message.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{Server, admin, last_line};

fn script(base: &str, token: &str, out: &Path) -> std::process::Output {
    Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/automation.py"))
        .args([
            "--url",
            base,
            "--dims",
            "32-8,32-16",
            "--epochs",
            "1",
            "--timeout",
            "120",
        ])
        .arg("--out")
        .arg(out)
        .env("SSLAB_TOKEN", token)
        .output()
        .expect("python3")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_automation_example_runs_a_sweep_and_downloads_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let token = last_line(&admin(
        dir.path(),
        None,
        &["create-token", "--user", "admin", "--name", "automation"],
    ));
    let out = dir.path().join("summary.csv");
    let run = script(&server.base, &token, &out);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("succeeded 2"), "{stdout}");
    let csv = std::fs::read_to_string(&out).unwrap();
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("run_id,name,status,projector.dims,seed,layer"),
        "{header}"
    );
    // Two runs, three layers each (backbone, proj.0, proj.1).
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 6, "{csv}");
    assert!(rows.iter().all(|r| r.contains(",succeeded,")), "{csv}");
    assert_eq!(rows.iter().filter(|r| r.contains(",32-16,")).count(), 3);

    let bad = script(&server.base, &format!("sslab_{}", "0".repeat(61)), &out);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("401") && err.contains("not known"), "{err}");
}
