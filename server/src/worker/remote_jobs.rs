//! The jobs other than runs that `sslab worker` takes: re-evaluations,
//! déjà vu audits and CKA jobs (decoder jobs are in `remote_decoder.rs`).
//! Each fetches what it needs through the API (weights by hash, registered
//! data by content hash), works on a blocking thread while its lease is
//! renewed, and reports its end.

use anyhow::{Context, anyhow};
use sslab_shared::api::RunStatus;
use sslab_shared::worker::{
    AuditEnd, AuditProgress, CkaEnd, ClaimedAudit, ClaimedCka, ClaimedEvaluation, HeartbeatAnswer,
    LEASE_HEADER, RunEnd, RunRelease, is_audit_file,
};
use tokio::sync::watch;

use super::remote::{Failure, JobPath, RemoteHost};

/// Runs a claimed re-evaluation: fetches the run's weights (checked by
/// hash) and its data, evaluates while the lease is kept, and reports the
/// rows — or the error, or a cancel asked meanwhile.
pub(super) async fn evaluate(
    host: &RemoteHost,
    claimed: ClaimedEvaluation,
    device: candle_core::Device,
) {
    let at = JobPath {
        path: format!("/worker/evaluations/{}", claimed.id),
        lease: &claimed.lease,
    };
    let dir = host.work_dir.join("evaluations").join(&claimed.id);
    tracing::info!(job = %claimed.id, run = %claimed.run_id, "evaluation started");
    let work = async {
        tokio::fs::create_dir_all(&dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
        let checkpoint = dir.join("checkpoint.safetensors");
        host.download(
            &format!("{}/checkpoint", at.path),
            at.lease,
            &claimed.checkpoint,
            &checkpoint,
        )
        .await?;
        let (mut spec, mut request) = (claimed.spec.clone(), claimed.request.clone());
        host.fetch_data(
            &at,
            [
                Some(&mut spec.data),
                spec.eval.data.as_mut(),
                request.eval.data.as_mut(),
            ],
        )
        .await?;
        let spec = spec
            .into_valid()
            .map_err(|e| anyhow!("its run's spec: {e}"))?;
        anyhow::Ok((spec, request, checkpoint))
    }
    .await;
    let result = match work {
        Err(e) => Err(Some(format!("{e:#}"))),
        Ok((spec, request, checkpoint)) => {
            let job = tokio::task::spawn_blocking(move || {
                sslab_engine::eval::evaluate_checkpoint(&spec, &checkpoint, &request.eval, &device)
                    .map_err(|e| e.to_string())
            });
            match hold(host, &at, claimed.lease_ms, job).await {
                Some(result) => result,
                None => {
                    tracing::warn!(job = %claimed.id, "lost the evaluation's lease");
                    let _ = tokio::fs::remove_dir_all(&dir).await;
                    return;
                }
            }
        }
    };
    let end = match result {
        Ok(rows) => RunEnd {
            status: RunStatus::Succeeded,
            error: None,
            evaluations: rows,
        },
        Err(None) => RunEnd {
            status: RunStatus::Cancelled,
            error: None,
            evaluations: Vec::new(),
        },
        Err(Some(e)) => RunEnd {
            status: RunStatus::Failed,
            error: Some(e),
            evaluations: Vec::new(),
        },
    };
    report_end(host, &at, "evaluation", &claimed.id, end.status, &end).await;
    let _ = tokio::fs::remove_dir_all(&dir).await;
}

/// Runs a claimed audit: fetches what it needs (the two runs' weights, or
/// the data to train both models on), trains and attacks while reporting
/// progress, stores its files and ends it with its report. A cancel stops
/// it after the current step; a stop of this worker hands it back.
pub(super) async fn audit(
    host: &RemoteHost,
    claimed: ClaimedAudit,
    device: candle_core::Device,
    shutdown: &mut watch::Receiver<bool>,
) {
    let at = JobPath {
        path: format!("/worker/audits/{}", claimed.id),
        lease: &claimed.lease,
    };
    let dir = host.work_dir.join("audits").join(&claimed.id);
    tracing::info!(audit = %claimed.id, name = %claimed.name, "audit started");
    let _ = tokio::fs::remove_dir_all(&dir).await;
    let prepared = async {
        tokio::fs::create_dir_all(&dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut spec = claimed.spec.clone();
        host.fetch_data(&at, [Some(&mut spec.run.data), spec.run.eval.data.as_mut()])
            .await?;
        let mut trained = None;
        if let (Some(target), Some(reference)) = (&claimed.target, &claimed.reference) {
            let paths = (dir.join("target.ckpt"), dir.join("reference.ckpt"));
            host.download(
                &format!("{}/checkpoints/target", at.path),
                at.lease,
                target,
                &paths.0,
            )
            .await?;
            host.download(
                &format!("{}/checkpoints/reference", at.path),
                at.lease,
                reference,
                &paths.1,
            )
            .await?;
            trained = Some(paths);
        }
        anyhow::Ok((spec, trained))
    }
    .await;
    let (spec, trained) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let end = AuditEnd {
                status: RunStatus::Failed,
                error: Some(format!("{e:#}")),
                report: None,
            };
            report_end(host, &at, "audit", &claimed.id, end.status, &end).await;
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return;
        }
    };
    let (observer, shared) = crate::audit_job::Progress::new(dir.clone());
    let job_dir = dir.clone();
    let job = tokio::task::spawn_blocking(move || {
        let mut observer = observer;
        let report = match &trained {
            Some((target, reference)) => {
                sslab_engine::dejavu::run_trained(&spec, target, reference, &device, &mut observer)
            }
            None => sslab_engine::dejavu::run(&spec, &device, &job_dir, &mut observer),
        };
        observer.checked(report)
    });
    let Followed {
        result,
        cancelled,
        stopping,
        lost,
    } = follow(
        host,
        &at,
        claimed.lease_ms,
        job,
        || {
            let (stage, step, total_steps) = shared.now();
            AuditProgress {
                stage: stage.to_string(),
                step,
                total_steps,
            }
        },
        || shared.stop(),
        shutdown,
    )
    .await;
    let end = match result {
        _ if lost => {
            tracing::warn!(audit = %claimed.id, "the audit was taken from this worker");
            None
        }
        Ok(report) => {
            let files = async {
                tokio::fs::write(dir.join("examples.csv"), crate::csv::examples(&report)).await?;
                for file in crate::artifacts::files_under(&dir).await? {
                    let Some(name) = file
                        .strip_prefix(&dir)
                        .ok()
                        .map(|p| p.to_string_lossy().replace('\\', "/"))
                        .filter(|n| is_audit_file(n))
                    else {
                        continue;
                    };
                    if !host
                        .upload_to(&audit_file_path(&at.path, &name), at.lease, &file, &name)
                        .await?
                    {
                        anyhow::bail!("the audit was taken from this worker");
                    }
                }
                anyhow::Ok(())
            }
            .await;
            Some(match files {
                Ok(()) => AuditEnd {
                    status: RunStatus::Succeeded,
                    error: None,
                    report: Some(report),
                },
                Err(e) => AuditEnd {
                    status: RunStatus::Failed,
                    error: Some(format!("its files could not be stored: {e:#}")),
                    report: None,
                },
            })
        }
        Err(_) if cancelled => Some(AuditEnd {
            status: RunStatus::Cancelled,
            error: None,
            report: None,
        }),
        Err(_) if stopping => {
            hand_back(host, &at, "audit", &claimed.id).await;
            None
        }
        Err(e) => Some(AuditEnd {
            status: RunStatus::Failed,
            error: Some(e),
            report: None,
        }),
    };
    if let Some(end) = end {
        report_end(host, &at, "audit", &claimed.id, end.status, &end).await;
    }
    let _ = tokio::fs::remove_dir_all(&dir).await;
}

/// Runs a claimed CKA job: fetches the runs' weights (checked by hash) and
/// the images, compares while the lease is kept, and reports the result —
/// or the error, or a cancel asked meanwhile.
pub(super) async fn compare(host: &RemoteHost, claimed: ClaimedCka, device: candle_core::Device) {
    let at = JobPath {
        path: format!("/worker/cka/{}", claimed.id),
        lease: &claimed.lease,
    };
    let dir = host.work_dir.join("cka").join(&claimed.id);
    tracing::info!(cka = %claimed.id, "CKA job started");
    let prepared = async {
        tokio::fs::create_dir_all(&dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut paths = Vec::new();
        for (run, file) in claimed.runs.iter().zip(&claimed.checkpoints) {
            let to = dir.join(format!("{}.safetensors", run.id));
            let from = format!("{}/checkpoints/{}", at.path, run.id);
            host.download(&from, at.lease, file, &to).await?;
            paths.push(to);
        }
        let (mut req, mut runs) = (claimed.request.clone(), claimed.runs.clone());
        let recorded =
            crate::cka_job::job_data(&req, &runs).ok_or_else(|| anyhow!("a CKA job needs runs"))?;
        // The images it compares on: the job's own, else its runs' data.
        if req.data.is_some() {
            host.fetch_data(&at, [req.data.as_mut()]).await?;
        } else {
            for run in runs.iter_mut() {
                host.fetch_data(&at, [Some(&mut run.spec.data)]).await?;
            }
        }
        anyhow::Ok((req, runs, paths, recorded))
    }
    .await;
    let result = match prepared {
        Err(e) => Err(Some(format!("{e:#}"))),
        Ok((req, runs, paths, recorded)) => {
            let job = tokio::task::spawn_blocking(move || {
                crate::cka_job::compute(&req, &runs, &paths, recorded, &device)
            });
            match hold(host, &at, claimed.lease_ms, job).await {
                Some(result) => result,
                None => {
                    tracing::warn!(cka = %claimed.id, "lost the CKA job's lease");
                    let _ = tokio::fs::remove_dir_all(&dir).await;
                    return;
                }
            }
        }
    };
    let mut end = CkaEnd {
        status: RunStatus::Succeeded,
        error: None,
        pair: None,
        family: None,
    };
    match result {
        Ok(crate::store::CkaOutcome::Pair(pair)) => end.pair = Some(pair),
        Ok(crate::store::CkaOutcome::Family(family)) => end.family = Some(family),
        Err(None) => end.status = RunStatus::Cancelled,
        Err(Some(e)) => {
            end.status = RunStatus::Failed;
            end.error = Some(e);
        }
    }
    report_end(host, &at, "CKA job", &claimed.id, end.status, &end).await;
    let _ = tokio::fs::remove_dir_all(&dir).await;
}

/// Where an audit file goes: gallery images under `images/`, the rest under `files/`.
fn audit_file_path(audit: &str, name: &str) -> String {
    match name.strip_prefix("images/") {
        Some(image) => format!("{audit}/images/{image}"),
        None => format!("{audit}/files/{name}"),
    }
}

/// Waits for a job's thread while renewing its lease: the thread's answer,
/// `Err(None)` when a cancel was asked meanwhile (the answer is dropped), or
/// `None` when the lease was lost.
async fn hold<T>(
    host: &RemoteHost,
    at: &JobPath<'_>,
    lease_ms: i64,
    mut job: tokio::task::JoinHandle<Result<T, String>>,
) -> Option<Result<T, Option<String>>> {
    let mut beat = tokio::time::interval(super::heartbeat_every(lease_ms));
    let heartbeat = host.url(&format!("{}/heartbeat", at.path));
    let mut cancelled = false;
    loop {
        tokio::select! {
            done = &mut job => return Some(match done {
                Err(e) => Err(Some(format!("its thread crashed: {e}"))),
                Ok(Err(e)) => Err(Some(e)),
                Ok(Ok(_)) if cancelled => Err(None),
                Ok(Ok(answer)) => Ok(answer),
            }),
            _ = beat.tick() => match host.call("heartbeat", |c| c.post(&heartbeat).header(LEASE_HEADER, at.lease)).await {
                Ok(resp) => cancelled |= resp.json::<HeartbeatAnswer>().await.is_ok_and(|a| a.cancel),
                Err(Failure::Conflict(_)) => return None,
                Err(Failure::Other(e)) => tracing::warn!(job = %at.path, error = %e, "heartbeat failed"),
            },
        }
    }
}

/// How a job that `follow` waited for ended on this worker's side.
pub(super) struct Followed<T> {
    /// The thread's answer (an error when it crashed).
    pub result: Result<T, String>,
    pub cancelled: bool,
    /// This worker is stopping: the job goes back to the queue.
    pub stopping: bool,
    /// The lease went to another worker.
    pub lost: bool,
}

/// Waits for a job's thread while posting `progress()` to `…/progress`
/// every heartbeat (which keeps the lease); `stop` asks the thread to stop
/// after a cancel, a lost lease or this worker's shutdown.
pub(super) async fn follow<T, B: serde::Serialize>(
    host: &RemoteHost,
    at: &JobPath<'_>,
    lease_ms: i64,
    mut job: tokio::task::JoinHandle<Result<T, String>>,
    progress: impl Fn() -> B,
    stop: impl Fn(),
    shutdown: &mut watch::Receiver<bool>,
) -> Followed<T> {
    let url = host.url(&format!("{}/progress", at.path));
    let mut tick = tokio::time::interval(super::heartbeat_every(lease_ms));
    let (mut cancelled, mut stopping, mut lost) = (false, false, false);
    let result = loop {
        tokio::select! {
            done = &mut job => break done.unwrap_or_else(|e| Err(format!("its thread crashed: {e}"))),
            _ = tick.tick() => {
                let body = progress();
                match host.call("progress", |c| c.post(&url).header(LEASE_HEADER, at.lease).json(&body)).await {
                    Ok(resp) => if resp.json::<HeartbeatAnswer>().await.is_ok_and(|a| a.cancel) {
                        cancelled = true;
                        stop();
                    },
                    Err(Failure::Conflict(_)) => { lost = true; stop(); }
                    Err(Failure::Other(e)) => tracing::warn!(job = %at.path, error = %e, "progress report failed"),
                }
            }
            _ = shutdown.changed(), if !stopping => { stopping = true; stop(); }
        }
    };
    Followed {
        result,
        cancelled,
        stopping,
        lost,
    }
}

/// Hands a job back to the queue through `…/release`: this worker is
/// stopping.
pub(super) async fn hand_back(host: &RemoteHost, at: &JobPath<'_>, what: &str, id: &str) {
    let url = host.url(&format!("{}/release", at.path));
    let body = RunRelease {
        reason: format!("its worker stopped during the {what}"),
    };
    if let Err(Failure::Other(e)) = host
        .call(&format!("releasing the {what}"), |c| {
            c.post(&url).header(LEASE_HEADER, at.lease).json(&body)
        })
        .await
    {
        tracing::error!(job = %id, error = %e, "could not hand the {what} back; its lease will expire");
    }
}

/// Posts a job's end to `…/end`.
pub(super) async fn report_end(
    host: &RemoteHost,
    at: &JobPath<'_>,
    what: &str,
    id: &str,
    status: RunStatus,
    end: &impl serde::Serialize,
) {
    let url = host.url(&format!("{}/end", at.path));
    match host
        .call(&format!("ending the {what}"), |c| {
            c.post(&url).header(LEASE_HEADER, at.lease).json(end)
        })
        .await
    {
        Ok(_) => tracing::info!(job = %id, status = status.as_str(), "{what} ended"),
        Err(Failure::Conflict(_)) => {
            tracing::warn!(job = %id, "the {what} was taken from this worker")
        }
        Err(Failure::Other(e)) => {
            tracing::error!(job = %id, error = %e, "reporting the {what} failed")
        }
    }
}
