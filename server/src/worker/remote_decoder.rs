//! A decoder job on `sslab worker`: the run's weights (checked by hash) and
//! registered data come through the API, the decoders train on a blocking
//! thread while progress keeps the lease, and the grids are uploaded before
//! the end is reported. A cancel stops it after the current step; a stop of
//! this worker hands it back.

use anyhow::Context;
use sslab_shared::api::RunStatus;
use sslab_shared::worker::{
    ClaimedDecoder, DecoderEnd, DecoderProgress, HeartbeatAnswer, LEASE_HEADER,
};
use tokio::sync::watch;

use super::remote::{Failure, JobPath, RemoteHost};
use super::remote_jobs::{hand_back, report_end};

pub(super) async fn decode(
    host: &RemoteHost,
    claimed: ClaimedDecoder,
    device: candle_core::Device,
    shutdown: &mut watch::Receiver<bool>,
) {
    let at = JobPath {
        path: format!("/worker/decoders/{}", claimed.id),
        lease: &claimed.lease,
    };
    let dir = host.work_dir.join("decoders").join(&claimed.id);
    tracing::info!(decoder = %claimed.id, run = %claimed.run.id, "decoder job started");
    let _ = tokio::fs::remove_dir_all(&dir).await;
    let prepared = async {
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
        let (mut run, mut spec) = (claimed.run.spec.clone(), claimed.spec.clone());
        host.fetch_data(&at, [Some(&mut run.data), spec.data.as_mut()])
            .await?;
        anyhow::Ok((run, spec, checkpoint))
    }
    .await;
    let (run, spec, checkpoint) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let end = DecoderEnd {
                status: RunStatus::Failed,
                error: Some(format!("{e:#}")),
                report: None,
            };
            report_end(host, &at, "decoder job", &claimed.id, end.status, &end).await;
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return;
        }
    };
    let (shared, mut job) = crate::decoder_job::spawn(run, checkpoint, spec, device);
    let progress = host.url(&format!("{}/progress", at.path));
    let mut tick = tokio::time::interval(super::heartbeat_every(claimed.lease_ms));
    let (mut cancelled, mut stopping, mut lost) = (false, false, false);
    let result = loop {
        tokio::select! {
            done = &mut job => break done.unwrap_or_else(|e| Err(format!("the decoder thread crashed: {e}"))),
            _ = tick.tick() => {
                let (step, loss) = shared.now();
                let body = DecoderProgress { step, loss: loss.is_finite().then_some(loss) };
                match host.call("decoder progress", |c| c.post(&progress).header(LEASE_HEADER, at.lease).json(&body)).await {
                    Ok(resp) => if resp.json::<HeartbeatAnswer>().await.is_ok_and(|a| a.cancel) {
                        cancelled = true;
                        shared.stop();
                    },
                    Err(Failure::Conflict(_)) => { lost = true; shared.stop(); }
                    Err(Failure::Other(e)) => tracing::warn!(decoder = %claimed.id, error = %e, "progress report failed"),
                }
            }
            _ = shutdown.changed(), if !stopping => { stopping = true; shared.stop(); }
        }
    };
    let end = match result {
        _ if lost => {
            tracing::warn!(decoder = %claimed.id, "the decoder job was taken from this worker");
            None
        }
        // A cancel or a stop asked while it trained ends it, whatever the
        // thread made of its last steps.
        _ if cancelled => Some(DecoderEnd {
            status: RunStatus::Cancelled,
            error: None,
            report: None,
        }),
        _ if stopping => {
            hand_back(host, &at, "decoder job", &claimed.id).await;
            None
        }
        Ok(decoded) => {
            let files = async {
                for (name, bytes) in decoded.files() {
                    let file = dir.join(name);
                    tokio::fs::write(&file, bytes)
                        .await
                        .with_context(|| format!("writing {}", file.display()))?;
                    let to = format!("{}/files/{name}", at.path);
                    if !host.upload_to(&to, at.lease, &file, name).await? {
                        anyhow::bail!("the decoder job was taken from this worker");
                    }
                }
                anyhow::Ok(())
            }
            .await;
            Some(match files {
                Ok(()) => DecoderEnd {
                    status: RunStatus::Succeeded,
                    error: None,
                    report: Some(decoded.report),
                },
                Err(e) => DecoderEnd {
                    status: RunStatus::Failed,
                    error: Some(format!("its grids could not be stored: {e:#}")),
                    report: None,
                },
            })
        }
        Err(e) => Some(DecoderEnd {
            status: RunStatus::Failed,
            error: Some(e),
            report: None,
        }),
    };
    if let Some(end) = end {
        report_end(host, &at, "decoder job", &claimed.id, end.status, &end).await;
    }
    let _ = tokio::fs::remove_dir_all(&dir).await;
}
