//! Workers. The server's in-process worker (here) claims every kind of job
//! from the store; `sslab worker` (`remote`) claims runs over the HTTP API.
//! Both train runs with `run_job::execute` through a `host::Host`.

pub mod host;
pub mod remote;
mod remote_decoder;
mod remote_jobs;
pub mod run_job;
mod system;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use host::{LocalHost, RunJob};
use sslab_shared::api::{Evaluation, EvaluationJob, RunStatus};
use tokio::sync::watch;

use crate::artifacts::Artifacts;
use crate::store::{Claim, Lease, Store};

static LEASE_MS: AtomicI64 = AtomicI64::new(30_000);

/// How long a worker that misses heartbeats keeps its job: 30 s unless
/// `sslab serve --lease-ms` says otherwise.
pub fn lease_ms() -> i64 {
    LEASE_MS.load(Ordering::Relaxed)
}

pub fn set_lease_ms(ms: i64) {
    LEASE_MS.store(ms.max(1000), Ordering::Relaxed);
}

/// How often a job's holder renews a lease of `lease_ms`: well inside it.
pub fn heartbeat_every(lease_ms: i64) -> Duration {
    Duration::from_millis((lease_ms as u64 / 4).clamp(100, 2000))
}
const IDLE_POLL: Duration = Duration::from_secs(2);

pub struct Worker {
    pub id: String,
    /// What it can run beyond the plain CPU: `cuda` with a GPU.
    pub capabilities: Vec<String>,
    pub store: Store,
    pub artifacts: Artifacts,
    pub queued: Arc<tokio::sync::Notify>,
}

impl Worker {
    pub fn claimant(&self) -> crate::store::Claimant<'_> {
        crate::store::Claimant {
            id: &self.id,
            capabilities: &self.capabilities,
            team: None,
        }
    }

    /// What the server's own workers can run: runs on its data folders, and
    /// with a GPU, CUDA jobs.
    pub fn local_capabilities() -> Vec<String> {
        let mut can = vec![crate::store::SERVER_DATA.to_string()];
        if sslab_engine::default_device().is_cuda() {
            can.push("cuda".into());
        }
        can
    }

    /// Claims and runs jobs until `shutdown` turns true. A run in progress at
    /// shutdown is stopped and handed back to the queue.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(worker = %self.id, "worker started");
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Err(e) = self.store.worker_seen(&self.id).await {
                tracing::warn!(error = %e, "could not note this worker as alive");
            }
            match self.store.claim_next(self.claimant(), lease_ms()).await {
                Ok(Some(claim)) => self.execute(claim, &mut shutdown).await,
                // No run waits: take a re-evaluation, an audit, an export, a
                // CKA job or a decoder, else sleep until woken.
                Ok(None) => {
                    if self.evaluate_next().await
                        || self.audit_next(&mut shutdown).await
                        || self.export_next().await
                        || self.cka_next().await
                        || self.decoder_next().await
                    {
                        continue;
                    }
                    tokio::select! {
                        _ = self.queued.notified() => {}
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "claiming a run failed");
                    tokio::time::sleep(IDLE_POLL).await;
                }
            }
        }
        tracing::info!(worker = %self.id, "worker stopped");
    }

    /// The store and artifact folder as a `Host` for `run_job`.
    fn host(&self) -> LocalHost {
        LocalHost {
            worker: self.id.clone(),
            store: self.store.clone(),
            artifacts: self.artifacts.clone(),
            device: device_name(&sslab_engine::default_device()),
        }
    }

    async fn execute(&self, claim: Claim, shutdown: &mut watch::Receiver<bool>) {
        let Claim { run, lease } = claim;
        let job = RunJob {
            id: run.id,
            name: run.name,
            spec: run.spec,
            lease,
            files: Vec::new(),
            heartbeat: heartbeat_every(lease_ms()),
        };
        run_job::execute(&self.host(), job, sslab_engine::default_device(), shutdown).await
    }

    /// Runs one queued re-evaluation, if any. Returns whether there was one.
    async fn evaluate_next(&self) -> bool {
        let (job, lease) = match self
            .store
            .claim_next_evaluation(self.claimant(), lease_ms())
            .await
        {
            Ok(Some(claimed)) => claimed,
            Ok(None) => return false,
            Err(e) => {
                tracing::error!(error = %e, "claiming an evaluation failed");
                return false;
            }
        };
        tracing::info!(job = %job.id, run = %job.run_id, "evaluation started");
        let run = match self.store.run(&job.run_id).await {
            Ok(Some(run)) => run,
            Ok(None) => {
                return self
                    .end_evaluation(&job, &lease, Err(Some("its run was deleted".into())))
                    .await;
            }
            Err(e) => {
                return self
                    .end_evaluation(&job, &lease, Err(Some(e.to_string())))
                    .await;
            }
        };
        let checkpoint = self.artifacts.checkpoint(&run.id);
        let fetched = async {
            self.artifacts.fetch(&checkpoint).await?;
            self.artifacts.need_data(&run.spec.data).await?;
            match &job.request.eval.data {
                Some(d) => self.artifacts.need_data(d).await,
                None => Ok(()),
            }
        };
        if let Err(e) = fetched.await {
            return self
                .end_evaluation(&job, &lease, Err(Some(format!("{e:#}"))))
                .await;
        }
        let request = job.request.clone();
        let mut work = tokio::task::spawn_blocking(move || {
            let spec = run.spec.into_valid()?;
            let device = sslab_engine::default_device();
            sslab_engine::eval::evaluate_checkpoint(&spec, &checkpoint, &request.eval, &device)
        });
        // The engine's evaluation cannot be interrupted; the heartbeat keeps
        // the lease, and a cancel asked meanwhile discards the rows.
        let mut heartbeat = tokio::time::interval(heartbeat_every(lease_ms()));
        let mut cancelled = false;
        let result = loop {
            tokio::select! {
                res = &mut work => break res
                    .map_err(|e| format!("the evaluation thread crashed: {e}"))
                    .and_then(|r| r.map_err(|e| e.to_string())),
                _ = heartbeat.tick() => match self.store.heartbeat(&lease, lease_ms()).await {
                    Ok(Some(cancel)) => cancelled |= cancel,
                    Ok(None) => {
                        tracing::warn!(job = %job.id, "lost the evaluation's lease");
                        return true;
                    }
                    Err(e) => tracing::warn!(job = %job.id, error = %e, "heartbeat failed"),
                },
            }
        };
        let result = if cancelled {
            Err(None)
        } else {
            result.map_err(Some)
        };
        self.end_evaluation(&job, &lease, result).await
    }

    /// Records a job's end: its rows, its error, or (`Err(None)`) cancelled.
    async fn end_evaluation(
        &self,
        job: &EvaluationJob,
        lease: &Lease,
        result: Result<Vec<Evaluation>, Option<String>>,
    ) -> bool {
        let (status, error, rows) = match result {
            Ok(rows) => (RunStatus::Succeeded, None, rows),
            Err(None) => (RunStatus::Cancelled, None, Vec::new()),
            Err(Some(e)) => (RunStatus::Failed, Some(e), Vec::new()),
        };
        match self
            .store
            .finish_evaluation(job, lease, status, error.as_deref(), &rows)
            .await
        {
            Ok(true) => tracing::info!(job = %job.id, status = status.as_str(), "evaluation ended"),
            Ok(false) => {
                tracing::warn!(job = %job.id, "evaluation was taken from this worker before it ended")
            }
            Err(e) => tracing::error!(job = %job.id, error = %e, "recording an evaluation failed"),
        }
        true
    }
}

/// A device as workers list it.
pub fn device_name(device: &candle_core::Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        candle_core::DeviceLocation::Cpu => "cpu".into(),
    }
}
