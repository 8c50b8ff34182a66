//! The in-process worker: claims queued runs, trains them on a blocking
//! thread, writes their metrics in batches, keeps the lease alive, and
//! passes cancel requests to the engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sslab_engine::train::{Control, Observer, Outcome, StepMetrics};
use sslab_shared::api::{Evaluation, EvaluationJob, MemorizationPoint, MetricPoint, RunStatus};
use tokio::sync::{mpsc, watch};

use crate::artifacts::Artifacts;
use crate::store::{Claim, Lease, Store};

/// A worker that misses heartbeats this long loses its run.
pub const LEASE_MS: i64 = 30_000;
const HEARTBEAT: Duration = Duration::from_secs(2);
const FLUSH: Duration = Duration::from_millis(300);
const IDLE_POLL: Duration = Duration::from_secs(2);

pub struct Worker {
    pub id: String,
    /// What it can run beyond the plain CPU: `cuda` with a GPU.
    pub capabilities: Vec<String>,
    pub store: Store,
    pub artifacts: Artifacts,
    pub queued: Arc<tokio::sync::Notify>,
}

/// What the training thread tells the async side, in order.
enum Progress {
    Step(MetricPoint),
    Memorization(MemorizationPoint),
    /// Store everything before this, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Forwards engine progress to the async side; stops when told to.
struct ChannelObserver {
    tx: mpsc::UnboundedSender<Progress>,
    stop: Arc<AtomicBool>,
    /// The run's length as the engine counts it, once the data is read.
    total_steps: Arc<AtomicUsize>,
}

impl Observer for ChannelObserver {
    fn on_step(&mut self, m: &StepMetrics) -> Control {
        self.total_steps.store(m.total_steps, Ordering::Relaxed);
        let _ = self.tx.send(Progress::Step(MetricPoint {
            step: m.step as i64,
            epoch: m.epoch as i64,
            loss: m.loss,
            lr: m.lr,
            images_per_sec: m.images_per_sec,
            data_wait: Some(m.data_wait),
            online_probe_acc: m.online_probe_acc,
        }));
        if self.stop.load(Ordering::Relaxed) {
            Control::Stop
        } else {
            Control::Continue
        }
    }

    fn on_checkpoint(&mut self, _: usize, _: &std::path::Path) -> Control {
        if self.stop.load(Ordering::Relaxed) {
            Control::Stop
        } else {
            Control::Continue
        }
    }

    fn on_memorization(&mut self, point: &MemorizationPoint) {
        let _ = self.tx.send(Progress::Memorization(point.clone()));
    }

    /// The epoch's metrics reach the database before its checkpoint is
    /// written: a run resumed from that checkpoint does not train them again.
    fn before_checkpoint(&mut self, _epoch: usize) {
        let (done, stored) = tokio::sync::oneshot::channel();
        if self.tx.send(Progress::Flush(done)).is_ok() {
            let _ = stored.blocking_recv();
        }
    }
}

enum Ending {
    Finished(Outcome),
    Failed(String),
}

impl Worker {
    pub fn claimant(&self) -> crate::store::Claimant<'_> {
        crate::store::Claimant {
            id: &self.id,
            capabilities: &self.capabilities,
        }
    }

    /// What this machine's default device adds to a worker's capabilities.
    pub fn local_capabilities() -> Vec<String> {
        if sslab_engine::default_device().is_cuda() {
            vec!["cuda".into()]
        } else {
            Vec::new()
        }
    }

    /// Claims and runs jobs until `shutdown` turns true. A run in progress at
    /// shutdown is stopped and handed back to the queue.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(worker = %self.id, "worker started");
        loop {
            if *shutdown.borrow() {
                break;
            }
            match self.store.claim_next(self.claimant(), LEASE_MS).await {
                Ok(Some(claim)) => self.execute(claim, &mut shutdown).await,
                // No run waits: take a re-evaluation, an audit, an export or
                // a CKA job, else sleep until woken.
                Ok(None) => {
                    if self.evaluate_next().await
                        || self.audit_next(&mut shutdown).await
                        || self.export_next().await
                        || self.cka_next().await
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

    async fn execute(&self, claim: Claim, shutdown: &mut watch::Receiver<bool>) {
        let Claim { run, lease } = claim;
        tracing::info!(run = %run.id, name = %run.name, attempt = lease.attempt, "run started");
        // Checked when it was created; checked again here, as the engine
        // takes only a checked spec, in case a stored one no longer passes.
        let spec = match run.spec.clone().into_valid() {
            Ok(spec) => spec,
            Err(e) => {
                let msg = format!("its spec does not pass the checks: {e}");
                self.finish(&lease, RunStatus::Failed, Some(&msg), &[])
                    .await;
                return;
            }
        };
        let dir = self.artifacts.run_dir(&run.id);
        if let Err(e) = tokio::fs::create_dir_all(&dir).await {
            tracing::error!(run = %run.id, folder = %dir.display(), error = %e, "cannot create the run's folder");
            let msg = format!("cannot create the run's artifact folder: {e}");
            self.finish(&lease, RunStatus::Failed, Some(&msg), &[])
                .await;
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let checkpoint = self.artifacts.checkpoint(&run.id);
        let observer_stop = stop.clone();
        let total_steps = Arc::new(AtomicUsize::new(0));
        let observer_total = total_steps.clone();
        // A run whose worker died continues from its last end-of-epoch
        // checkpoint (as exactly as `sslab train --resume`); a first attempt,
        // or one with nothing to resume from, starts over.
        let resume_from = if lease.attempt > 1 {
            sslab_engine::train::resumable_epochs(&checkpoint)
        } else {
            None
        };
        if let Err(e) = self
            .store
            .drop_metrics_from(&run.id, resume_from.unwrap_or(0) as i64)
            .await
        {
            tracing::warn!(run = %run.id, error = %e, "could not drop the metrics to train again");
        }
        if let Some(epochs) = resume_from {
            tracing::info!(run = %run.id, epochs, "resuming after the epochs its checkpoint holds");
        }
        let mut job = tokio::task::spawn_blocking(move || {
            let mut observer = ChannelObserver {
                tx,
                stop: observer_stop,
                total_steps: observer_total,
            };
            let device = sslab_engine::default_device();
            let resume = resume_from.is_some();
            sslab_engine::train::start(&spec, resume, &device, &checkpoint, &mut observer)
        });

        let mut buffer = Vec::new();
        let mut flush = tokio::time::interval(FLUSH);
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut cancelled = false;
        let mut interrupted = false;
        let ending = loop {
            tokio::select! {
                res = &mut job => {
                    while let Ok(p) = rx.try_recv() {
                        self.progress(&run.id, p, &mut buffer, &total_steps).await;
                    }
                    break match res {
                        Ok(Ok(outcome)) => Ending::Finished(outcome),
                        Ok(Err(e)) => Ending::Failed(e.to_string()),
                        Err(e) => Ending::Failed(format!("the training thread crashed: {e}")),
                    };
                }
                Some(p) = rx.recv() => self.progress(&run.id, p, &mut buffer, &total_steps).await,
                _ = flush.tick() => self.flush(&run.id, &mut buffer, &total_steps).await,
                _ = heartbeat.tick() => match self.store.heartbeat(&lease, LEASE_MS).await {
                    Ok(Some(cancel)) if cancel => { cancelled = true; stop.store(true, Ordering::Relaxed); }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        tracing::warn!(run = %run.id, "lost the lease; stopping");
                        interrupted = true;
                        stop.store(true, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(run = %run.id, error = %e, "heartbeat failed"),
                },
                _ = shutdown.changed() => { interrupted = true; stop.store(true, Ordering::Relaxed); }
            }
        };
        self.flush(&run.id, &mut buffer, &total_steps).await;
        match ending {
            Ending::Finished(Outcome::Finished { evaluations, .. }) => {
                self.finish(&lease, RunStatus::Succeeded, None, &evaluations)
                    .await
            }
            Ending::Finished(Outcome::Stopped { .. }) if cancelled => {
                self.finish(&lease, RunStatus::Cancelled, None, &[]).await
            }
            Ending::Finished(Outcome::Stopped { .. }) => {
                if interrupted {
                    if let Err(e) = self
                        .store
                        .release(&lease, "the server stopped during the run")
                        .await
                    {
                        tracing::error!(run = %run.id, error = %e, "could not hand the run back");
                    }
                    tracing::info!(run = %run.id, "run handed back to the queue");
                }
            }
            Ending::Failed(msg) => {
                self.finish(&lease, RunStatus::Failed, Some(&msg), &[])
                    .await
            }
        }
    }

    /// Buffers a step's metrics; stores the rest at once, in order.
    async fn progress(
        &self,
        run_id: &str,
        progress: Progress,
        buffer: &mut Vec<MetricPoint>,
        total_steps: &AtomicUsize,
    ) {
        match progress {
            Progress::Step(m) => buffer.push(m),
            Progress::Memorization(p) => {
                self.flush(run_id, buffer, total_steps).await;
                if let Err(e) = self.store.add_memorization(run_id, &p).await {
                    tracing::warn!(run = %run_id, error = %e, "could not store a memorization reading");
                }
            }
            Progress::Flush(done) => {
                self.flush(run_id, buffer, total_steps).await;
                let _ = done.send(());
            }
        }
    }

    /// Runs one queued re-evaluation, if any. Returns whether there was one.
    async fn evaluate_next(&self) -> bool {
        let (job, lease) = match self
            .store
            .claim_next_evaluation(self.claimant(), LEASE_MS)
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
        let request = job.request.clone();
        let mut work = tokio::task::spawn_blocking(move || {
            let spec = run.spec.into_valid()?;
            let device = sslab_engine::default_device();
            sslab_engine::eval::evaluate_checkpoint(&spec, &checkpoint, &request.eval, &device)
        });
        // The engine's evaluation cannot be interrupted; the heartbeat keeps
        // the lease, and a cancel asked meanwhile discards the rows.
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut cancelled = false;
        let result = loop {
            tokio::select! {
                res = &mut work => break res
                    .map_err(|e| format!("the evaluation thread crashed: {e}"))
                    .and_then(|r| r.map_err(|e| e.to_string())),
                _ = heartbeat.tick() => match self.store.heartbeat(&lease, LEASE_MS).await {
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

    async fn flush(&self, id: &str, buffer: &mut Vec<MetricPoint>, total_steps: &AtomicUsize) {
        if buffer.is_empty() {
            return;
        }
        let total = Some(total_steps.load(Ordering::Relaxed) as i64).filter(|t| *t > 0);
        if let Err(e) = self.store.add_metrics(id, buffer, total).await {
            tracing::error!(run = %id, error = %e, "writing metrics failed");
        }
        buffer.clear();
    }

    async fn finish(
        &self,
        lease: &Lease,
        status: RunStatus,
        error: Option<&str>,
        evals: &[Evaluation],
    ) {
        let id = &lease.id;
        match self.store.finish_run(lease, status, error, evals).await {
            Ok(true) => {
                tracing::info!(run = %id, status = status.as_str(), error = error.unwrap_or(""), "run ended")
            }
            Ok(false) => {
                tracing::warn!(run = %id, "run was taken from this worker before it ended")
            }
            Err(e) => tracing::error!(run = %id, error = %e, "recording the end of a run failed"),
        }
    }
}
