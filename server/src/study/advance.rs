//! Queues a study's CKA comparisons once the runs they compare have
//! finished: the server calls [`advance`] every few seconds and when a
//! study's report is read.

use sslab_shared::api::RunStatus;
use sslab_shared::cka::CkaRequest;
use sslab_shared::study::{RunGroup, StudyItem};

use super::report::matches;
use crate::store::{Result, SERVER_DATA, Store};

/// Queues every comparison whose two runs have succeeded, in every pending
/// study or in `only` that one; a study whose pairs are all queued, or can
/// no longer be (a run failed), is settled. Returns whether anything was
/// queued.
pub async fn advance(store: &Store, only: Option<&str>) -> Result<bool> {
    let mut queued = false;
    for (id, spec, owner) in store.pending_studies(only).await? {
        let results = store.study_results(&id).await?;
        let mut waiting = false;
        for (key, pair) in &spec.cka {
            let part = format!("cka.{key}");
            let seeds = spec
                .sweeps
                .get(&pair.a.sweep)
                .map(|s| s.run_seeds())
                .unwrap_or_default();
            for seed in seeds {
                if results
                    .cka
                    .iter()
                    .any(|(i, _)| i.part == part && i.seed == seed)
                {
                    continue;
                }
                let find =
                    |g: &RunGroup| -> Option<&StudyItem> {
                        let sweep = format!("sweeps.{}", g.sweep);
                        results.runs.iter().map(|(i, _)| i).find(|i| {
                            i.part == sweep && i.seed == seed && matches(&i.values, &g.at)
                        })
                    };
                let (Some(a), Some(b)) = (find(&pair.a), find(&pair.b)) else {
                    continue;
                };
                let busy = |s: RunStatus| matches!(s, RunStatus::Queued | RunStatus::Running);
                if busy(a.status) || busy(b.status) {
                    waiting = true;
                    continue;
                }
                if a.status != RunStatus::Succeeded || b.status != RunStatus::Succeeded {
                    continue;
                }
                let (Some(run_a), Some(run_b)) = (store.run(&a.id).await?, store.run(&b.id).await?)
                else {
                    continue;
                };
                let mut req = CkaRequest {
                    a: a.id.clone(),
                    b: Some(b.id.clone()),
                    layers_a: Some(pair.layers.clone()),
                    layers_b: Some(pair.layers.clone()),
                    minibatch: None,
                    data: None,
                    runs: None,
                    layer: None,
                };
                // Runs on different data are compared on the first run's.
                if run_a.spec.data.resolved() != run_b.spec.data.resolved() {
                    req.data = Some(run_a.spec.data.clone());
                }
                let reads_server = crate::cka_job::job_data(&req, &[run_a, run_b])
                    .is_some_and(|d| d.server_path().is_some());
                let requires = if reads_server { SERVER_DATA } else { "" };
                queued |= store
                    .add_study_cka(&id, &part, seed, &req, &owner, requires)
                    .await?;
            }
        }
        if !waiting {
            store.study_settled(&id).await?;
        }
    }
    Ok(queued)
}
