//! A decoder job on `sslab worker`: the run's weights (checked by hash) and
//! registered data come through the API, the decoders train on a blocking
//! thread while progress keeps the lease, and the grids are uploaded before
//! the end is reported. A cancel stops it after the current step; a stop of
//! this worker hands it back.

use anyhow::Context;
use sslab_shared::api::RunStatus;
use sslab_shared::worker::{ClaimedDecoder, DecoderEnd, DecoderProgress};
use tokio::sync::watch;

use super::remote::{JobPath, RemoteHost};
use super::remote_jobs::{Followed, follow, hand_back, report_end};

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
    // Kept apart from the job's folder, which each attempt starts afresh:
    // when this worker claims the job again after handing it back, it
    // carries on from here.
    let state = host.work_dir.join("decoder-states").join(&claimed.id);
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
            let _ = tokio::fs::remove_dir_all(&state).await;
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return;
        }
    };
    let (shared, job) = crate::decoder_job::spawn(run, checkpoint, spec, state.clone(), device);
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
            let (step, loss) = shared.now();
            DecoderProgress {
                step,
                loss: loss.is_finite().then_some(loss),
            }
        },
        || shared.stop(),
        shutdown,
    )
    .await;
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
    let handed_back = end.is_none() && !lost;
    if let Some(end) = end {
        report_end(host, &at, "decoder job", &claimed.id, end.status, &end).await;
    }
    if !handed_back {
        let _ = tokio::fs::remove_dir_all(&state).await;
    }
    let _ = tokio::fs::remove_dir_all(&dir).await;
}
