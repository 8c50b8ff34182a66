//! A data folder written by an earlier release (`tests/data/stored-v1/`: its
//! SQLite file and run artifacts): a finished run and one whose server was
//! killed in its second epoch. Both must still list and show, and the
//! interrupted one resume from its checkpoint with a continuous history.

use crate::common;

use std::path::Path;

use common::{Server, assert_succeeded, get_json, get_run, wait_terminal};
use sslab_shared::api::{Evaluation, MetricPoint, Page, Run, RunStatus};

const FINISHED: &str = "73830d5b9ea54d17";
const INTERRUPTED: &str = "ba8f8258241644ce";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

async fn metrics(client: &reqwest::Client, server: &Server, id: &str) -> Vec<MetricPoint> {
    get_json(client, server.url(&format!("/runs/{id}/metrics"))).await
}

#[tokio::test]
async fn runs_stored_by_an_earlier_release_load_show_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/stored-v1"),
        dir.path(),
    );
    let server = Server::start(dir.path(), None);
    let client = server.client();

    let page: Page<Run> = get_json(&client, server.url("/runs")).await;
    let mut names: Vec<_> = page.items.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["finished", "interrupted"]);

    let finished = get_run(&client, &server, FINISHED).await;
    assert_succeeded(&finished);
    assert_eq!(finished.spec.projector.dims, "32-16");
    let history = metrics(&client, &server, FINISHED).await;
    assert_eq!(history.len() as i64, finished.total_steps);
    let rows: Vec<Evaluation> = get_json(
        &client,
        server.url(&format!("/runs/{FINISHED}/evaluations")),
    )
    .await;
    assert!(rows.iter().any(|e| e.layer == "proj.1" && e.probe == "knn"));
    let checkpoint = client
        .get(server.url(&format!("/runs/{FINISHED}/checkpoint")))
        .send()
        .await
        .unwrap();
    assert_eq!(checkpoint.status(), 200);

    // The killed server's run goes back to the queue at start and resumes
    // after the epochs its checkpoint holds: what was stored of them stays.
    let before = metrics(&client, &server, INTERRUPTED).await;
    let first_epoch: Vec<_> = before.iter().filter(|m| m.epoch == 0).cloned().collect();
    assert!(!first_epoch.is_empty());
    let run = wait_terminal(&client, &server, INTERRUPTED).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    let after = metrics(&client, &server, INTERRUPTED).await;
    let steps: Vec<i64> = after.iter().map(|m| m.step).collect();
    assert_eq!(steps, (1..=run.total_steps).collect::<Vec<_>>());
    assert_eq!(after[..first_epoch.len()], first_epoch[..]);
}
