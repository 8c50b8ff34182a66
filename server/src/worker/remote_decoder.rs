//! A decoder job on `sslab worker`: the run's weights (checked by hash) and
//! registered data come through the API, the decoders train on a blocking
//! thread while progress keeps the lease, and the grids are uploaded before
//! the end is reported. A cancel stops it after the current step; a stop of
//! this worker hands it back.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use sslab_shared::api::RunStatus;
use sslab_shared::worker::{ClaimedDecoder, DecoderEnd, DecoderProgress};
use tokio::sync::watch;

use super::remote::{JobPath, RemoteHost};
use super::remote_jobs::{Followed, follow, hand_back, report_end};

/// Where a handed-back decoder job's training state waits for this worker
/// to claim the job again.
const STATES: &str = "decoder-states";

/// A state untouched for this long belongs to a job that another worker
/// finished (or that was deleted): nothing here learns of that, so age is
/// the sign. A job this worker claims again later starts afresh.
const STATE_KEPT_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// Removes the training states under `work_dir` that nothing has written
/// for [`STATE_KEPT_FOR`]; returns how many. Called when the worker starts.
pub(super) fn prune_stale_states(work_dir: &Path, now: SystemTime) -> usize {
    let Ok(entries) = std::fs::read_dir(work_dir.join(STATES)) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let stale = newest_write(&path)
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > STATE_KEPT_FOR);
        if stale && std::fs::remove_dir_all(&path).is_ok() {
            tracing::info!(state = %path.display(), "removed a decoder job's stale training state");
            removed += 1;
        }
    }
    removed
}

/// The latest modification time of `path` and everything under it.
fn newest_write(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let mut newest = meta.modified().ok()?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).ok()?.flatten() {
            newest = newest.max(newest_write(&entry.path())?);
        }
    }
    Some(newest)
}

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
    let state = host.work_dir.join(STATES).join(&claimed.id);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state(work: &Path, id: &str, written: SystemTime) {
        let dir = work.join(STATES).join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let file = std::fs::File::create(dir.join("decoders.safetensors")).unwrap();
        file.set_modified(written).unwrap();
        std::fs::File::open(&dir)
            .unwrap()
            .set_modified(written)
            .unwrap();
    }

    #[test]
    fn only_states_untouched_past_the_limit_are_removed() {
        let work = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let old = now - STATE_KEPT_FOR - Duration::from_secs(60);
        state(work.path(), "stale", old);
        state(work.path(), "fresh", now - Duration::from_secs(3600));
        // An old folder with one recent file is still being written.
        state(work.path(), "resumed", old);
        let recent = work.path().join(STATES).join("resumed").join("step");
        std::fs::write(&recent, b"1").unwrap();
        std::fs::File::open(recent.parent().unwrap())
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(prune_stale_states(work.path(), now), 1);
        let left: Vec<_> = std::fs::read_dir(work.path().join(STATES))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(!work.path().join(STATES).join("stale").exists());
        assert_eq!(prune_stale_states(&work.path().join("none"), now), 0);
    }
}
