//! CKA jobs: two finished runs' layers, or a family of runs at one layer,
//! compared on a blocking thread while the async side keeps the lease; a
//! cancel asked meanwhile discards the result. `compute` is the comparison
//! itself, which the server's own worker (here) and `sslab worker` (with
//! the weights and data it fetched) both call.

use std::path::PathBuf;
use std::time::Duration;

use sslab_engine::cka;
use sslab_shared::api::{Run, RunStatus};
use sslab_shared::cka::{CkaFamily, CkaJob, CkaRequest, CkaResult, CkaSettings, CkaSide};
use sslab_shared::spec::DataSpec;

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

/// The runs a job compares, in the order `compute` takes them: the family,
/// or `a` and `b` (`a` again when `b` is left out).
pub fn run_ids(req: &CkaRequest) -> Vec<String> {
    match &req.runs {
        Some(family) => family.clone(),
        None => vec![
            req.a.clone(),
            req.b.clone().unwrap_or_else(|| req.a.clone()),
        ],
    }
}

/// The images a job compares on, as the job names them: its own, or its
/// runs' data.
pub fn job_data(req: &CkaRequest, runs: &[Run]) -> Option<DataSpec> {
    req.data
        .clone()
        .or_else(|| runs.first().map(|r| r.spec.data.clone()))
}

/// Compares `runs` (in `run_ids` order, all finished) with their weights at
/// `checkpoints`; blocking. `recorded` is the data as the job names it, for
/// the result's settings (a remote worker reads its own copy).
pub fn compute(
    req: &CkaRequest,
    runs: &[Run],
    checkpoints: &[PathBuf],
    recorded: DataSpec,
    device: &candle_core::Device,
) -> Result<Outcome, String> {
    let _release = sslab_engine::ReleaseMemoryAtEnd;
    let data = job_data(req, runs).ok_or("a CKA job needs runs")?;
    let batch = req.minibatch;
    let labels: Vec<String> = runs.iter().map(|r| format!("run {}", r.id)).collect();
    if req.runs.is_some() {
        let layer = family_layer(req);
        let picks = runs
            .iter()
            .map(|r| layer_indices(r, Some(std::slice::from_ref(&layer))))
            .collect::<Result<Vec<_>, _>>()?;
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
        let (matrix, images) =
            cka::family(&family, &data, batch, device).map_err(|e| e.to_string())?;
        let (merges, order) = cka::average_linkage(&matrix);
        let sides = runs
            .iter()
            .map(|r| CkaSide {
                run: r.id.clone(),
                name: r.spec.name.clone(),
                layers: vec![layer.clone()],
            })
            .collect();
        return Ok(Outcome::Family(CkaFamily {
            runs: sides,
            matrix,
            order,
            merges,
            settings: CkaSettings::on_test_split(batch, images, recorded),
        }));
    }
    let [a, b] = runs else {
        return Err(format!("a pair compares two runs, not {}", runs.len()));
    };
    let [ckpt_a, ckpt_b] = checkpoints else {
        return Err("a pair needs two checkpoints".into());
    };
    let pick_a = layer_indices(a, req.layers_a.as_deref())?;
    let pick_b = layer_indices(b, req.layers_b.as_deref())?;
    let side = |run: &Run, pick: &[usize]| CkaSide {
        run: run.id.clone(),
        name: run.spec.name.clone(),
        layers: pick
            .iter()
            .map(|&i| run.spec.cka_layer_names()[i].clone())
            .collect(),
    };
    let run_a = cka::Run {
        label: &labels[0],
        spec: &a.spec,
        checkpoint: ckpt_a,
        layers: &pick_a,
    };
    let run_b = cka::Run {
        label: &labels[1],
        spec: &b.spec,
        checkpoint: ckpt_b,
        layers: &pick_b,
    };
    let (matrix, images) =
        cka::compare_runs(&run_a, &run_b, &data, batch, device).map_err(|e| e.to_string())?;
    Ok(Outcome::Pair(CkaResult {
        a: side(a, &pick_a),
        b: side(b, &pick_b),
        matrix,
        settings: CkaSettings::on_test_split(batch, images, recorded),
    }))
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
        let (status, error, result) = match self.compare(&job, &lease).await {
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
    ) -> Result<Option<Outcome>, String> {
        let mut runs = Vec::new();
        for id in run_ids(&job.request) {
            runs.push(self.finished_run(&id).await?);
        }
        let checkpoints: Vec<PathBuf> = runs
            .iter()
            .map(|r| self.artifacts.checkpoint(&r.id))
            .collect();
        let req = job.request.clone();
        let recorded = job_data(&req, &runs).ok_or("a CKA job needs runs")?;
        self.artifacts
            .need_data(&recorded)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let thread = tokio::task::spawn_blocking(move || {
            let device = sslab_engine::default_device();
            compute(&req, &runs, &checkpoints, recorded, &device)
        });
        self.hold_lease(lease, thread).await
    }

    /// Waits for the comparing thread while heartbeating the lease: its
    /// answer, or `None` when a cancel was asked meanwhile.
    async fn hold_lease<T>(
        &self,
        lease: &crate::store::Lease,
        mut thread: tokio::task::JoinHandle<Result<T, String>>,
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
        outcome.map(Some)
    }
}

/// The layer a family compares: the one asked, or the representation.
pub fn family_layer(req: &CkaRequest) -> String {
    req.layer.clone().unwrap_or_else(|| "backbone".into())
}
