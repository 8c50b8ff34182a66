//! Audits on the worker: one claimed audit trains its target and reference
//! on a blocking thread while the async side reports progress, keeps the
//! lease and passes cancel requests on; the report is stored with its end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::time::Duration;

use sslab_engine::data::ImageSet;
use sslab_engine::dejavu::{AuditObserver, Model};
use sslab_engine::train::{Control, StepMetrics};
use sslab_shared::api::{Audit, RunStatus};
use sslab_shared::audit::AuditReport;
use tokio::sync::watch;

use crate::store::Lease;
use crate::worker::{Worker, lease_ms};

const PROGRESS: Duration = Duration::from_secs(2);
/// Memorized images the audit page shows.
pub const GALLERY: usize = 12;
/// The grid of what both models draw from the crops, in the audit's folder.
pub const RECONSTRUCTION: &str = "reconstruction.png";

/// What an audit is doing, by `Shared::now`'s names.
pub(crate) const STAGES: [&str; 5] = ["", "target", "reference", "decoder-a", "decoder-b"];

/// Shared with the training thread: where it is, and whether to stop.
#[derive(Default)]
pub(crate) struct Shared {
    /// An index into `STAGES`.
    stage: AtomicU8,
    step: AtomicI64,
    total: AtomicI64,
    stop: AtomicBool,
}

/// Reports steps to `Shared`; at the end, writes the page's gallery (the
/// memorized images and their neighbours) into `dir/images` and the
/// reconstruction grid into `dir`.
pub(crate) struct Progress {
    shared: Arc<Shared>,
    dir: std::path::PathBuf,
    /// Why the reconstruction grid could not be written: the audit fails.
    unwritten: Option<String>,
}

impl Progress {
    /// An observer that writes the page's images under the audit's `dir`,
    /// and what it shares.
    pub(crate) fn new(dir: std::path::PathBuf) -> (Progress, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        (
            Progress {
                shared: shared.clone(),
                dir,
                unwritten: None,
            },
            shared,
        )
    }

    /// The audit's report, unless a file its page needs was not written.
    pub(crate) fn checked(
        &mut self,
        report: sslab_engine::Result<AuditReport>,
    ) -> Result<AuditReport, String> {
        let report = report.map_err(|e| e.to_string())?;
        match self.unwritten.take() {
            Some(why) => Err(why),
            None => Ok(report),
        }
    }

    fn at(&self, stage: usize, step: usize, total: usize) -> Control {
        let s = &self.shared;
        s.stage.store(stage as u8, Ordering::Relaxed);
        s.step.store(step as i64, Ordering::Relaxed);
        s.total.store(total as i64, Ordering::Relaxed);
        if s.stop.load(Ordering::Relaxed) {
            Control::Stop
        } else {
            Control::Continue
        }
    }
}

impl Shared {
    /// What runs: the model in training (`target`, `reference`), the
    /// decoder of model A or B (`decoder-a`, `decoder-b`), or nothing yet;
    /// its step and its steps in all.
    pub(crate) fn now(&self) -> (&'static str, i64, i64) {
        let stage = STAGES[usize::from(self.stage.load(Ordering::Relaxed)).min(STAGES.len() - 1)];
        (
            stage,
            self.step.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }

    /// Asks the training to stop after its current step.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl AuditObserver for Progress {
    fn on_finished(&mut self, pool: &ImageSet, report: &AuditReport) {
        let images = self.dir.join("images");
        let written = sslab_engine::dejavu::gallery(pool, report, GALLERY)
            .map_err(|e| e.to_string())
            .and_then(|pngs| {
                std::fs::create_dir_all(&images).map_err(|e| e.to_string())?;
                pngs.into_iter().try_for_each(|(i, png)| {
                    std::fs::write(images.join(format!("{i}.png")), png).map_err(|e| e.to_string())
                })
            });
        if let Err(e) = written {
            tracing::warn!(error = %e, "the audit's gallery images were not written");
        }
    }

    fn on_reconstruction(&mut self, png: &[u8]) {
        let path = self.dir.join(RECONSTRUCTION);
        if let Err(e) = std::fs::write(&path, png) {
            self.unwritten = Some(format!("cannot write {}: {e}", path.display()));
        }
    }

    fn on_step(&mut self, model: Model, m: &StepMetrics) -> Control {
        let stage = if model == Model::A { 1 } else { 2 };
        self.at(stage, m.step, m.total_steps)
    }

    fn on_decoder_step(&mut self, model: Model, step: usize, steps: usize) -> Control {
        let stage = if model == Model::A { 3 } else { 4 };
        self.at(stage, step, steps)
    }
}

impl Worker {
    /// Stores where the audit is and extends its lease; see `Store::audit_progress`.
    async fn report_progress(
        &self,
        lease: &Lease,
        shared: &Shared,
    ) -> crate::store::Result<Option<bool>> {
        let (stage, step, total) = shared.now();
        self.store
            .audit_progress(lease, lease_ms(), stage, step, total)
            .await
    }

    /// Runs one queued audit, if any. Returns whether there was one.
    pub async fn audit_next(&self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let (audit, lease) = match self
            .store
            .claim_next_audit(self.claimant(), lease_ms())
            .await
        {
            Ok(Some(claimed)) => claimed,
            Ok(None) => return false,
            Err(e) => {
                tracing::error!(error = %e, "claiming an audit failed");
                return false;
            }
        };
        tracing::info!(audit = %audit.id, name = %audit.name, "audit started");
        self.execute_audit(audit, &lease, shutdown).await;
        true
    }

    async fn execute_audit(
        &self,
        audit: Audit,
        lease: &Lease,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let dir = self.artifacts.audit_dir(&audit.id);
        let (observer, shared) = Progress::new(dir.clone());
        let (spec, job_dir) = (audit.spec.clone(), dir.clone());
        let trained = spec.runs.as_ref().map(|r| {
            (
                self.artifacts.checkpoint(&r.target),
                self.artifacts.checkpoint(&r.reference),
            )
        });
        let mut missing = self
            .artifacts
            .need_data(&spec.run.data)
            .await
            .err()
            .map(|e| format!("{e:#}"));
        if let Some((target, reference)) = &trained {
            for path in [target, reference] {
                if let Err(e) = self.artifacts.need(path).await {
                    missing = Some(format!("{e:#}"));
                }
            }
        }
        let mut job = tokio::task::spawn_blocking(move || {
            if let Some(why) = missing {
                return Err(why);
            }
            std::fs::create_dir_all(&job_dir).map_err(|e| {
                tracing::error!(folder = %job_dir.display(), error = %e, "cannot create an audit's folder");
                format!("cannot create the audit's folder: {e}")
            })?;
            let mut observer = observer;
            let device = sslab_engine::default_device();
            let report = match &trained {
                Some((target, reference)) => sslab_engine::dejavu::run_trained(
                    &spec,
                    target,
                    reference,
                    &device,
                    &mut observer,
                ),
                None => sslab_engine::dejavu::run(&spec, &device, &job_dir, &mut observer),
            };
            observer.checked(report)
        });
        let mut tick = tokio::time::interval(PROGRESS);
        let (mut cancelled, mut interrupted) = (false, false);
        let result = loop {
            tokio::select! {
                res = &mut job => break res.unwrap_or_else(|e| Err(format!("the audit thread crashed: {e}"))),
                _ = tick.tick() => {
                    match self.report_progress(lease, &shared).await {
                        Ok(Some(true)) => { cancelled = true; shared.stop(); }
                        Ok(Some(false)) => {}
                        Ok(None) => {
                            tracing::warn!(audit = %audit.id, "lost the lease; stopping");
                            interrupted = true;
                            shared.stop();
                        }
                        Err(e) => tracing::warn!(audit = %audit.id, error = %e, "progress update failed"),
                    }
                }
                _ = shutdown.changed() => { interrupted = true; shared.stop(); }
            }
        };
        // The last progress, however short the audit was.
        let _ = self.report_progress(lease, &shared).await;
        let (status, error, report) = match result {
            Ok(report) => (RunStatus::Succeeded, None, Some(report)),
            Err(_) if cancelled => (RunStatus::Cancelled, None, None),
            Err(_) if interrupted => {
                if let Err(e) = self
                    .store
                    .release(lease, "the server stopped during the audit")
                    .await
                {
                    tracing::error!(audit = %audit.id, error = %e, "could not hand the audit back");
                }
                tracing::info!(audit = %audit.id, "audit handed back to the queue");
                return;
            }
            Err(e) => (RunStatus::Failed, Some(e), None),
        };
        if let Some(r) = &report
            && let Err(e) = std::fs::write(dir.join("examples.csv"), crate::csv::examples(r))
        {
            tracing::warn!(audit = %audit.id, error = %e, "could not write examples.csv");
        }
        // Not done until its files are stored.
        let (status, error, report) = match self.artifacts.persist_dir(&dir).await {
            Err(e) if status == RunStatus::Succeeded => {
                (RunStatus::Failed, Some(format!("{e:#}")), None)
            }
            _ => (status, error, report),
        };
        match self
            .store
            .finish_audit(lease, status, error.as_deref(), report.as_ref())
            .await
        {
            Ok(true) => {
                tracing::info!(audit = %audit.id, status = status.as_str(), error = error.as_deref().unwrap_or(""), "audit ended")
            }
            Ok(false) => {
                tracing::warn!(audit = %audit.id, "audit was taken from this worker before it ended")
            }
            Err(e) => {
                tracing::error!(audit = %audit.id, error = %e, "recording the end of an audit failed")
            }
        }
    }
}
