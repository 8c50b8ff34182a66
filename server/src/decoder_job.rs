//! Decoder jobs: a conditional generator trained for a finished run on a
//! blocking thread, while the async side records its progress (which also
//! keeps the lease) and hears a cancel. The grids are written next to the
//! job's artifacts and the report is stored with its end.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use sslab_engine::generate::decode::Decoded;
use sslab_shared::RunSpec;
use sslab_shared::api::RunStatus;
use sslab_shared::decoder::{DecoderJob, DecoderReport, DecoderSpec};
use tokio::task::JoinHandle;

use crate::store::Lease;
use crate::worker::{Worker, lease_ms};

/// How often progress is written.
const PROGRESS: Duration = Duration::from_secs(2);
/// The decoders' training state, in the job's folder but never stored with
/// its files: an attempt after a crash carries on from it, and it goes once
/// the job has ended.
const STATE: &str = "state";

/// What the training thread shares with the async side.
#[derive(Default)]
pub(crate) struct Shared {
    /// Steps done over every layer's decoder.
    step: AtomicI64,
    /// The last loss, as f64 bits (NaN before the first step).
    loss: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    /// Steps done over every layer's decoder, and the last loss.
    pub(crate) fn now(&self) -> (i64, f64) {
        (
            self.step.load(Ordering::Relaxed),
            f64::from_bits(self.loss.load(Ordering::Relaxed)),
        )
    }

    /// Asks the training to stop after its current step.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Trains the decoders of `spec` for the run (`run` its spec, `checkpoint`
/// its weights) on a blocking thread, saving their training in `state` and
/// carrying on from what an earlier attempt saved there; what it shares
/// says where it is.
pub(crate) fn spawn(
    run: RunSpec,
    checkpoint: PathBuf,
    spec: DecoderSpec,
    state: PathBuf,
    device: candle_core::Device,
) -> (Arc<Shared>, JoinHandle<Result<Decoded, String>>) {
    let shared = Arc::new(Shared {
        loss: AtomicU64::new(f64::NAN.to_bits()),
        ..Shared::default()
    });
    let thread_shared = shared.clone();
    let handle = tokio::task::spawn_blocking(move || {
        let per_layer = spec.steps as i64;
        std::fs::create_dir_all(&state)
            .map_err(|e| format!("cannot create {}: {e}", state.display()))?;
        let state = Some(state.as_path());
        sslab_engine::generate::decode::decode(&run, &checkpoint, &spec, &device, state, &mut |p| {
            thread_shared.step.store(
                p.layer as i64 * per_layer + p.step as i64,
                Ordering::Relaxed,
            );
            thread_shared
                .loss
                .store((p.loss as f64).to_bits(), Ordering::Relaxed);
            !thread_shared.stop.load(Ordering::Relaxed)
        })
        .map_err(|e| e.to_string())
    });
    (shared, handle)
}

impl Worker {
    /// Runs one queued decoder job, if any. Returns whether there was one.
    pub async fn decoder_next(&self) -> bool {
        let (job, lease) = match self
            .store
            .claim_next_decoder(self.claimant(), lease_ms())
            .await
        {
            Ok(Some(claimed)) => claimed,
            Ok(None) => return false,
            Err(e) => {
                tracing::error!(error = %e, "claiming a decoder job failed");
                return false;
            }
        };
        tracing::info!(decoder = %job.id, run = %job.run, "decoder job started");
        let (status, error, report) = match self.train_decoder(&job, &lease).await {
            Ok(Some(report)) => (RunStatus::Succeeded, None, Some(report)),
            Ok(None) => (RunStatus::Cancelled, None, None),
            Err(e) => (RunStatus::Failed, Some(e), None),
        };
        match self
            .store
            .finish_decoder(&lease, status, error.as_deref(), report.as_ref())
            .await
        {
            Ok(true) => {
                tracing::info!(decoder = %job.id, status = status.as_str(), error = error.as_deref().unwrap_or(""), "decoder job ended");
                // Ended for good: nothing will carry on from its state.
                let state = self.artifacts.decoder_dir(&job.id).join(STATE);
                let _ = tokio::fs::remove_dir_all(&state).await;
            }
            Ok(false) => {
                tracing::warn!(decoder = %job.id, "decoder job was taken from this worker before it ended")
            }
            Err(e) => {
                tracing::error!(decoder = %job.id, error = %e, "recording the end of a decoder job failed")
            }
        }
        true
    }

    /// The report, or `None` when a cancel was asked while it trained.
    async fn train_decoder(
        &self,
        job: &DecoderJob,
        lease: &Lease,
    ) -> Result<Option<DecoderReport>, String> {
        let run = self
            .store
            .run(&job.run)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("run {} no longer exists", job.run))?;
        if run.status != RunStatus::Succeeded {
            return Err(format!("run {} has not succeeded", job.run));
        }
        let checkpoint = self.artifacts.checkpoint(&run.id);
        self.artifacts
            .need(&checkpoint)
            .await
            .map_err(|e| format!("run {}'s checkpoint: {e:#}", run.id))?;
        self.artifacts
            .need_data(&run.spec.data)
            .await
            .map_err(|e| format!("{e:#}"))?;
        if let Some(data) = &job.spec.data {
            self.artifacts
                .need_data(data)
                .await
                .map_err(|e| format!("{e:#}"))?;
        }
        let dir = self.artifacts.decoder_dir(&job.id);
        let state = dir.join(STATE);
        let (shared, mut thread) = spawn(
            run.spec.clone(),
            checkpoint,
            job.spec.clone(),
            state.clone(),
            sslab_engine::default_device(),
        );
        let mut tick = tokio::time::interval(PROGRESS);
        let (mut cancelled, mut lost) = (false, false);
        let outcome = loop {
            tokio::select! {
                done = &mut thread => break done.map_err(|e| format!("the decoder thread crashed: {e}"))?,
                _ = tick.tick() => {
                    let (step, loss) = shared.now();
                    match self.store.decoder_progress(lease, step, loss, lease_ms()).await {
                        Ok(Some(true)) => { cancelled = true; shared.stop(); }
                        Ok(Some(false)) => {}
                        Ok(None) => { lost = true; shared.stop(); }
                        Err(e) => tracing::warn!(decoder = %job.id, error = %e, "decoder progress update failed"),
                    }
                }
            }
        };
        if cancelled || lost {
            return Ok(None);
        }
        let decoded = outcome?;
        // Stored with the job's files otherwise.
        let _ = tokio::fs::remove_dir_all(&state).await;
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        for (name, bytes) in decoded.files() {
            let path = dir.join(name);
            tokio::fs::write(&path, bytes)
                .await
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        self.artifacts
            .persist_dir(&dir)
            .await
            .map_err(|e| format!("{e:#}"))?;
        Ok(Some(decoded.report))
    }
}
