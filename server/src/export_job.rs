//! Export jobs on the worker: a finished run's or audit's models written as
//! a demo bundle into the artifact store, on a blocking thread while the
//! async side keeps the lease.

use std::path::PathBuf;
use std::time::Duration;

use sslab_engine::export::{self, Options};
use sslab_shared::api::RunStatus;
use sslab_shared::audit::AuditReport;
use sslab_shared::demo::{Export, ExportSource};

use crate::worker::{Worker, lease_ms};

/// What the blocking thread exports.
enum Work {
    Run {
        spec: sslab_shared::RunSpec,
        checkpoint: PathBuf,
        layer: String,
    },
    Audit {
        report: Box<AuditReport>,
        target: PathBuf,
        reference: PathBuf,
    },
}

impl Worker {
    /// Runs one queued export, if any. Returns whether there was one.
    pub async fn export_next(&self) -> bool {
        let (job, lease) = match self
            .store
            .claim_next_export(self.claimant(), lease_ms())
            .await
        {
            Ok(Some(claimed)) => claimed,
            Ok(None) => return false,
            Err(e) => {
                tracing::error!(error = %e, "claiming an export failed");
                return false;
            }
        };
        tracing::info!(export = %job.id, source = %job.source_id, "export started");
        let result = self.export(&job, &lease).await;
        let (status, error, bytes) = match result {
            Ok(bytes) => (RunStatus::Succeeded, None, bytes),
            Err(e) => (RunStatus::Failed, Some(e), 0),
        };
        match self
            .store
            .finish_export(&lease, status, error.as_deref(), bytes)
            .await
        {
            Ok(true) => {
                tracing::info!(export = %job.id, status = status.as_str(), error = error.as_deref().unwrap_or(""), "export ended")
            }
            Ok(false) => {
                tracing::warn!(export = %job.id, "export was taken from this worker before it ended")
            }
            Err(e) => {
                tracing::error!(export = %job.id, error = %e, "recording the end of an export failed")
            }
        }
        true
    }

    /// What the job reads, checked again: the source may have changed since
    /// the job was queued.
    async fn work(&self, job: &Export) -> Result<(Work, Options), String> {
        let failed = |e: crate::store::StoreError| e.to_string();
        let mut opts = Options {
            f16: job.options.f16,
            ..Options::default()
        };
        let work = match job.source {
            ExportSource::Run => {
                let run = self
                    .store
                    .run(&job.source_id)
                    .await
                    .map_err(failed)?
                    .ok_or_else(|| format!("run {} no longer exists", job.source_id))?;
                if run.status != RunStatus::Succeeded {
                    return Err(format!("run {} has not succeeded", run.id));
                }
                opts.title = run.spec.name.clone();
                opts.source = format!("run {}", run.id);
                Work::Run {
                    checkpoint: self.artifacts.checkpoint(&run.id),
                    layer: job
                        .options
                        .layer
                        .clone()
                        .unwrap_or_else(|| "backbone".into()),
                    spec: run.spec,
                }
            }
            ExportSource::Audit => {
                let audit = self
                    .store
                    .audit(&job.source_id)
                    .await
                    .map_err(failed)?
                    .ok_or_else(|| format!("audit {} no longer exists", job.source_id))?;
                let report = self
                    .store
                    .audit_report(&audit.id)
                    .await
                    .map_err(failed)?
                    .ok_or_else(|| format!("audit {} has no report", audit.id))?;
                let (target, reference) = match &audit.spec.runs {
                    Some(r) => (
                        self.artifacts.checkpoint(&r.target),
                        self.artifacts.checkpoint(&r.reference),
                    ),
                    None => {
                        let dir = self.artifacts.audit_dir(&audit.id);
                        (
                            dir.join("target-a.safetensors"),
                            dir.join("reference-b.safetensors"),
                        )
                    }
                };
                opts.title = format!("{}: a déjà vu memorization audit", audit.name);
                opts.source = format!("audit {}", audit.id);
                Work::Audit {
                    report: Box::new(report),
                    target,
                    reference,
                }
            }
        };
        let need = |path: std::path::PathBuf| async move {
            self.artifacts
                .need(&path)
                .await
                .map_err(|e| format!("{e:#}"))
        };
        match &work {
            Work::Run { checkpoint, .. } => need(checkpoint.clone()).await?,
            Work::Audit {
                target, reference, ..
            } => {
                need(target.clone()).await?;
                need(reference.clone()).await?;
            }
        }
        Ok((work, opts))
    }

    /// Writes the bundle; returns its size.
    async fn export(&self, job: &Export, lease: &crate::store::Lease) -> Result<u64, String> {
        let (work, opts) = self.work(job).await?;
        let dir = self.artifacts.export_dir(&job.id);
        // An earlier attempt's files go; the export starts over.
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let out = dir.clone();
        let mut thread = tokio::task::spawn_blocking(move || match work {
            Work::Run {
                spec,
                checkpoint,
                layer,
            } => export::export_run(&spec, &checkpoint, None, &layer, &opts, &out),
            Work::Audit {
                report,
                target,
                reference,
            } => export::export_audit(&report, &target, &reference, &opts, &out),
        });
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let manifest = loop {
            tokio::select! {
                done = &mut thread => break done.map_err(|e| format!("the export thread crashed: {e}"))?,
                _ = tick.tick() => {
                    if let Ok(None) = self.store.heartbeat(lease, lease_ms()).await {
                        tracing::warn!(export = %job.id, "lost the lease during an export");
                    }
                }
            }
        };
        let manifest = manifest.map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            e.to_string()
        })?;
        self.artifacts
            .persist_dir(&dir)
            .await
            .map_err(|e| format!("{e:#}"))?;
        Ok(manifest.total_bytes())
    }
}
