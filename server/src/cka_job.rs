//! CKA jobs on the worker: two finished runs' layers, or a family of runs
//! at one layer, compared on a blocking thread while the async side keeps
//! the lease; a cancel asked meanwhile discards the result.

use std::time::Duration;

use sslab_engine::cka;
use sslab_shared::api::{Run, RunStatus};
use sslab_shared::cka::{CkaFamily, CkaJob, CkaResult, CkaSettings, CkaSide};

use crate::store::CkaOutcome as Outcome;
use crate::worker::{Worker, lease_ms};

/// Indices of `names` among the run's layers; all of them without a list.
pub fn layer_indices(run: &Run, names: Option<&[String]>) -> Result<Vec<usize>, String> {
    let all = run.spec.cka_layer_names();
    let Some(names) = names else {
        return Ok((0..all.len()).collect());
    };
    names
        .iter()
        .map(|l| {
            all.iter().position(|a| a == l).ok_or_else(|| {
                format!(
                    "run {} has no layer `{l}`; its layers are {}",
                    run.id,
                    all.join(", ")
                )
            })
        })
        .collect()
}

impl Worker {
    /// Runs one queued CKA job, if any. Returns whether there was one.
    pub async fn cka_next(&self) -> bool {
        let (job, lease) = match self.store.claim_next_cka(self.claimant(), lease_ms()).await {
            Ok(Some(claimed)) => claimed,
            Ok(None) => return false,
            Err(e) => {
                tracing::error!(error = %e, "claiming a CKA job failed");
                return false;
            }
        };
        tracing::info!(cka = %job.id, "CKA job started");
        let outcome = if job.request.runs.is_some() {
            self.compare_family(&job, &lease)
                .await
                .map(|f| f.map(Outcome::Family))
        } else {
            self.compare(&job, &lease)
                .await
                .map(|r| r.map(Outcome::Pair))
        };
        let (status, error, result) = match outcome {
            Ok(Some(result)) => (RunStatus::Succeeded, None, Some(result)),
            Ok(None) => (RunStatus::Cancelled, None, None),
            Err(e) => (RunStatus::Failed, Some(e), None),
        };
        match self
            .store
            .finish_cka(&lease, status, error.as_deref(), result.as_ref())
            .await
        {
            Ok(true) => {
                tracing::info!(cka = %job.id, status = status.as_str(), error = error.as_deref().unwrap_or(""), "CKA job ended")
            }
            Ok(false) => {
                tracing::warn!(cka = %job.id, "CKA job was taken from this worker before it ended")
            }
            Err(e) => {
                tracing::error!(cka = %job.id, error = %e, "recording the end of a CKA job failed")
            }
        }
        true
    }

    async fn finished_run(&self, id: &str) -> Result<Run, String> {
        let run = self
            .store
            .run(id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("run {id} no longer exists"))?;
        if run.status != RunStatus::Succeeded {
            return Err(format!("run {id} has not succeeded"));
        }
        self.artifacts
            .need(&self.artifacts.checkpoint(id))
            .await
            .map_err(|e| format!("run {id}'s checkpoint: {e:#}"))?;
        Ok(run)
    }

    /// The result, or `None` when a cancel was asked while it ran.
    async fn compare(
        &self,
        job: &CkaJob,
        lease: &crate::store::Lease,
    ) -> Result<Option<CkaResult>, String> {
        let req = &job.request;
        let a = self.finished_run(&req.a).await?;
        let b = self
            .finished_run(req.b.as_deref().unwrap_or(&req.a))
            .await?;
        let pick_a = layer_indices(&a, req.layers_a.as_deref())?;
        let pick_b = layer_indices(&b, req.layers_b.as_deref())?;
        let data = req.data.clone().unwrap_or_else(|| a.spec.data.clone());
        let side = |run: &Run, pick: &[usize]| CkaSide {
            run: run.id.clone(),
            name: run.spec.name.clone(),
            layers: pick
                .iter()
                .map(|&i| run.spec.cka_layer_names()[i].clone())
                .collect(),
        };
        let (side_a, side_b) = (side(&a, &pick_a), side(&b, &pick_b));
        let (ckpt_a, ckpt_b) = (
            self.artifacts.checkpoint(&a.id),
            self.artifacts.checkpoint(&b.id),
        );
        let (batch, on) = (req.minibatch, data.clone());
        let thread = tokio::task::spawn_blocking(move || {
            let (label_a, label_b) = (format!("run {}", a.id), format!("run {}", b.id));
            let run_a = cka::Run {
                label: &label_a,
                spec: &a.spec,
                checkpoint: &ckpt_a,
                layers: &pick_a,
            };
            let run_b = cka::Run {
                label: &label_b,
                spec: &b.spec,
                checkpoint: &ckpt_b,
                layers: &pick_b,
            };
            let device = sslab_engine::default_device();
            cka::compare_runs(&run_a, &run_b, &on, batch, &device)
        });
        let Some((matrix, images)) = self.hold_lease(lease, thread).await? else {
            return Ok(None);
        };
        Ok(Some(CkaResult {
            a: side_a,
            b: side_b,
            matrix,
            settings: CkaSettings::on_test_split(batch, images, data),
        }))
    }

    /// A family's run × run matrix at one layer, with its dendrogram; `None`
    /// when a cancel was asked while it ran.
    async fn compare_family(
        &self,
        job: &CkaJob,
        lease: &crate::store::Lease,
    ) -> Result<Option<CkaFamily>, String> {
        let req = &job.request;
        let mut runs = Vec::new();
        for id in req.runs.iter().flatten() {
            runs.push(self.finished_run(id).await?);
        }
        let layer = family_layer(req);
        let picks = runs
            .iter()
            .map(|r| layer_indices(r, Some(std::slice::from_ref(&layer))))
            .collect::<Result<Vec<_>, _>>()?;
        let data = req
            .data
            .clone()
            .or_else(|| runs.first().map(|r| r.spec.data.clone()))
            .ok_or("a family needs runs")?;
        let sides: Vec<CkaSide> = runs
            .iter()
            .map(|r| CkaSide {
                run: r.id.clone(),
                name: r.spec.name.clone(),
                layers: vec![layer.clone()],
            })
            .collect();
        let checkpoints: Vec<_> = runs
            .iter()
            .map(|r| self.artifacts.checkpoint(&r.id))
            .collect();
        let (batch, on) = (req.minibatch, data.clone());
        let thread = tokio::task::spawn_blocking(move || {
            let labels: Vec<String> = runs.iter().map(|r| format!("run {}", r.id)).collect();
            let family: Vec<cka::Run> = runs
                .iter()
                .zip(&labels)
                .zip(checkpoints.iter().zip(&picks))
                .map(|((r, label), (checkpoint, layers))| cka::Run {
                    label,
                    spec: &r.spec,
                    checkpoint,
                    layers,
                })
                .collect();
            let device = sslab_engine::default_device();
            cka::family(&family, &on, batch, &device)
        });
        let Some((matrix, images)) = self.hold_lease(lease, thread).await? else {
            return Ok(None);
        };
        let (merges, order) = cka::average_linkage(&matrix);
        Ok(Some(CkaFamily {
            runs: sides,
            matrix,
            order,
            merges,
            settings: CkaSettings::on_test_split(batch, images, data),
        }))
    }

    /// Waits for the comparing thread while heartbeating the lease: its
    /// answer, or `None` when a cancel was asked meanwhile.
    async fn hold_lease<T>(
        &self,
        lease: &crate::store::Lease,
        mut thread: tokio::task::JoinHandle<sslab_engine::Result<T>>,
    ) -> Result<Option<T>, String> {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let mut cancelled = false;
        let outcome = loop {
            tokio::select! {
                done = &mut thread => break done.map_err(|e| format!("the CKA thread crashed: {e}"))?,
                _ = tick.tick() => {
                    if let Ok(Some(true)) = self.store.heartbeat(lease, lease_ms()).await {
                        cancelled = true;
                    }
                }
            }
        };
        if cancelled {
            return Ok(None);
        }
        outcome.map(Some).map_err(|e| e.to_string())
    }
}

/// The layer a family compares: the one asked, or the representation.
pub fn family_layer(req: &sslab_shared::cka::CkaRequest) -> String {
    req.layer.clone().unwrap_or_else(|| "backbone".into())
}
