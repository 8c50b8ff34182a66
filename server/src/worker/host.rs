//! What a worker needs from whoever hands it runs: the one interface that
//! the server's in-process worker (`LocalHost`, straight to the store and
//! the artifact folder) and `sslab worker` on another machine
//! (`remote::RemoteHost`, over the HTTP API) both implement, so that one
//! `run_job::execute` trains runs for both.
//!
//! Reports answer `Ok(false)` when the lease is no longer held: the run was
//! taken from this worker, and nothing of the report was stored.

use std::future::Future;
use std::path::{Path, PathBuf};

use sslab_shared::api::{Evaluation, RunStatus};
use sslab_shared::spec::RunSpec;
use sslab_shared::worker::{LogLine, MetricBatch, StoredFile};

use crate::artifacts::Artifacts;
use crate::store::{Lease, Store};

/// A claimed run.
#[derive(Debug, Clone)]
pub struct RunJob {
    pub id: String,
    pub name: String,
    pub spec: RunSpec,
    pub lease: Lease,
    /// What an earlier attempt stored, to resume from.
    pub files: Vec<StoredFile>,
    /// How often to renew the lease.
    pub heartbeat: std::time::Duration,
}

pub type Report = anyhow::Result<bool>;

pub trait Host: Send + Sync + 'static {
    /// Who is training, for the run's log: worker, host and device.
    fn describe(&self) -> String;

    /// The spec with its registered data sets readable here (a remote
    /// worker fetches them by content hash and points the spec at its copy).
    fn data(&self, job: &RunJob) -> impl Future<Output = anyhow::Result<RunSpec>> + Send;

    /// Where the run's checkpoint lives while it trains, with the files of
    /// an earlier attempt in place.
    fn prepare(&self, job: &RunJob) -> impl Future<Output = anyhow::Result<PathBuf>> + Send;

    /// The run starts after `epochs` epochs (0: from scratch).
    fn start(&self, lease: &Lease, epochs: usize) -> impl Future<Output = Report> + Send;

    /// Keeps the lease; `Some(true)` when a cancel was asked, `None` when lost.
    fn heartbeat(&self, lease: &Lease)
    -> impl Future<Output = anyhow::Result<Option<bool>>> + Send;

    fn metrics(&self, lease: &Lease, batch: &MetricBatch) -> impl Future<Output = Report> + Send;

    fn log(&self, lease: &Lease, lines: &[LogLine]) -> impl Future<Output = Report> + Send;

    /// Stores the end-of-epoch checkpoint (weights and training state after
    /// `epochs` epochs) where another worker can resume from it.
    fn store_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &Path,
        epochs: usize,
    ) -> impl Future<Output = Report> + Send;

    fn finish(
        &self,
        lease: &Lease,
        status: RunStatus,
        error: Option<&str>,
        evaluations: &[Evaluation],
    ) -> impl Future<Output = Report> + Send;

    /// Hands the run back to the queue: this worker is stopping.
    fn release(&self, lease: &Lease, why: &str) -> impl Future<Output = ()> + Send;

    /// The run is over here: local copies may go.
    fn done(&self, job: &RunJob) -> impl Future<Output = ()> + Send;
}

/// The server's own worker: the store and the artifact folder, directly.
#[derive(Clone)]
pub struct LocalHost {
    pub worker: String,
    pub store: Store,
    pub artifacts: Artifacts,
    pub device: String,
}

impl Host for LocalHost {
    fn describe(&self) -> String {
        format!("in-process worker {} ({})", self.worker, self.device)
    }

    /// The registry's folders are on this machine (fetched from the
    /// artifact store when this disk lacks them).
    async fn data(&self, job: &RunJob) -> anyhow::Result<RunSpec> {
        self.artifacts.need_data(&job.spec.data).await?;
        if let Some(d) = &job.spec.eval.data {
            self.artifacts.need_data(d).await?;
        }
        Ok(job.spec.clone())
    }

    async fn prepare(&self, job: &RunJob) -> anyhow::Result<PathBuf> {
        let dir = self.artifacts.run_dir(&job.id);
        tokio::fs::create_dir_all(&dir).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot create the run's artifact folder {}: {e}",
                dir.display()
            )
        })?;
        // Another server may have trained the earlier attempt.
        if job.lease.attempt > 1 {
            self.artifacts.fetch_dir(&dir).await?;
        }
        Ok(self.artifacts.checkpoint(&job.id))
    }

    async fn start(&self, lease: &Lease, epochs: usize) -> Report {
        Ok(self.store.start_run(lease, epochs as i64).await?)
    }

    async fn heartbeat(&self, lease: &Lease) -> anyhow::Result<Option<bool>> {
        self.store.worker_seen(&self.worker).await?;
        Ok(self.store.heartbeat(lease, super::lease_ms()).await?)
    }

    async fn metrics(&self, lease: &Lease, batch: &MetricBatch) -> Report {
        Ok(self.store.add_metrics(lease, batch).await?)
    }

    async fn log(&self, lease: &Lease, lines: &[LogLine]) -> Report {
        Ok(self.store.add_run_logs(lease, lines).await?)
    }

    /// The engine wrote it into the artifact folder; the artifact store
    /// takes the training state, then the weights that name it.
    async fn store_checkpoint(&self, lease: &Lease, checkpoint: &Path, epochs: usize) -> Report {
        let state = sslab_engine::train::state_path(checkpoint, epochs);
        self.artifacts.persist(&state).await?;
        self.artifacts.persist(checkpoint).await?;
        let dir = self.artifacts.run_dir(&lease.id);
        let keep = state.file_name().map(|n| n.to_string_lossy().into_owned());
        for name in self.artifacts.list(&dir).await? {
            if name.starts_with("checkpoint.state-") && Some(&name) != keep.as_ref() {
                self.artifacts.remove(&dir.join(&name)).await?;
            }
        }
        Ok(true)
    }

    async fn finish(
        &self,
        lease: &Lease,
        status: RunStatus,
        error: Option<&str>,
        evaluations: &[Evaluation],
    ) -> Report {
        Ok(self
            .store
            .finish_run(lease, status, error, evaluations)
            .await?)
    }

    async fn release(&self, lease: &Lease, why: &str) {
        if let Err(e) = self.store.release(lease, why).await {
            tracing::error!(run = %lease.id, error = %e, "could not hand the run back");
        }
    }

    async fn done(&self, _: &RunJob) {}
}
