//! Trains one claimed run on a blocking thread and reports through a
//! `Host`: metrics in step-numbered batches, log lines, the lease's
//! heartbeat, each end-of-epoch checkpoint (stored before training goes on),
//! and the end. The same code for the in-process worker and `sslab worker`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sslab_engine::train::{Control, Observer, Outcome, StepMetrics};
use sslab_shared::api::{Evaluation, MemorizationPoint, MetricPoint, RunStatus, SystemSample};
use sslab_shared::worker::{LogLine, MetricBatch};
use tokio::sync::{mpsc, oneshot, watch};

use super::host::{Host, RunJob};
use crate::store::now_ms;

const FLUSH: Duration = Duration::from_millis(300);
/// How often the machine is sampled while a run trains.
const SAMPLE: Duration = Duration::from_secs(2);

/// What the training thread tells the async side, in order.
enum Progress {
    Step(MetricPoint),
    Memorization(MemorizationPoint),
    /// Store everything before this, then answer.
    Flush(oneshot::Sender<()>),
    /// The checkpoint after `epochs` epochs is on disk: store it, then
    /// answer whether that worked.
    Checkpoint(usize, oneshot::Sender<bool>),
    Evaluating,
}

/// Forwards engine progress to the async side; stops when told to.
struct ChannelObserver {
    tx: mpsc::UnboundedSender<Progress>,
    stop: Arc<AtomicBool>,
    /// The run's length as the engine counts it, once the data is read.
    total_steps: Arc<AtomicUsize>,
}

impl ChannelObserver {
    fn control(&self) -> Control {
        if self.stop.load(Ordering::Relaxed) {
            Control::Stop
        } else {
            Control::Continue
        }
    }
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
        self.control()
    }

    /// Training goes on only once the checkpoint is stored: a run resumed
    /// elsewhere finds every epoch it was told about.
    fn on_checkpoint(&mut self, epoch: usize, _: &std::path::Path) -> Control {
        let (done, stored) = oneshot::channel();
        if self.tx.send(Progress::Checkpoint(epoch + 1, done)).is_ok()
            && !stored.blocking_recv().unwrap_or(false)
        {
            self.stop.store(true, Ordering::Relaxed);
        }
        self.control()
    }

    fn on_memorization(&mut self, point: &MemorizationPoint) {
        let _ = self.tx.send(Progress::Memorization(point.clone()));
    }

    fn on_evaluating(&mut self) {
        let _ = self.tx.send(Progress::Evaluating);
    }

    /// The epoch's metrics are stored before its checkpoint is written: a
    /// run resumed from that checkpoint does not train them again.
    fn before_checkpoint(&mut self, _epoch: usize) {
        let (done, stored) = oneshot::channel();
        if self.tx.send(Progress::Flush(done)).is_ok() {
            let _ = stored.blocking_recv();
        }
    }
}

/// Why the loop ended early, if it did.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Interruption {
    None,
    Cancelled,
    /// The worker is stopping: hand the run back.
    Shutdown,
    /// The lease went to someone else: report nothing more.
    Lost,
    /// A checkpoint could not be stored: hand the run back.
    Storage,
}

/// What is reported, batched: metrics and log lines wait for the next flush.
struct Reporter<'a, H: Host> {
    host: &'a H,
    job: &'a RunJob,
    points: Vec<MetricPoint>,
    memorization: Vec<MemorizationPoint>,
    system: Vec<SystemSample>,
    /// The last step the engine reported, for the system samples.
    last_step: i64,
    lines: Vec<LogLine>,
    next_line: i64,
    total_steps: Arc<AtomicUsize>,
    lost: bool,
}

impl<H: Host> Reporter<'_, H> {
    fn say(&mut self, text: impl Into<String>) {
        let text = text.into();
        tracing::debug!(run = %self.job.id, "{text}");
        self.lines.push(LogLine {
            seq: self.next_line,
            at: now_ms(),
            text,
        });
        self.next_line += 1;
    }

    /// Sends what waits. A batch that failed stays for the next flush (the
    /// server keeps each step once); a lost lease drops it.
    async fn flush(&mut self) {
        if self.lost {
            return;
        }
        let lease = &self.job.lease;
        if !self.points.is_empty() || !self.memorization.is_empty() || !self.system.is_empty() {
            let batch = MetricBatch {
                points: std::mem::take(&mut self.points),
                total_steps: Some(self.total_steps.load(Ordering::Relaxed) as i64)
                    .filter(|t| *t > 0),
                memorization: std::mem::take(&mut self.memorization),
                system: std::mem::take(&mut self.system),
            };
            match self.host.metrics(lease, &batch).await {
                Ok(true) => {}
                Ok(false) => self.lost = true,
                Err(e) => {
                    tracing::warn!(run = %self.job.id, error = %e, "storing metrics failed; will send them again");
                    self.points = batch.points;
                    self.memorization = batch.memorization;
                    self.system = batch.system;
                }
            }
        }
        if !self.lines.is_empty() && !self.lost {
            match self.host.log(lease, &self.lines).await {
                Ok(true) => self.lines.clear(),
                Ok(false) => self.lost = true,
                Err(e) => {
                    tracing::warn!(run = %self.job.id, error = %e, "sending log lines failed; will send them again")
                }
            }
        }
    }
}

/// Trains `job` on `device` and reports its end, unless the lease was lost
/// or `shutdown` turned true (then the run is handed back).
pub async fn execute<H: Host>(
    host: &H,
    job: RunJob,
    device: candle_core::Device,
    shutdown: &mut watch::Receiver<bool>,
) {
    let lease = job.lease.clone();
    let total_steps = Arc::new(AtomicUsize::new(0));
    let mut report = Reporter {
        host,
        job: &job,
        points: Vec::new(),
        memorization: Vec::new(),
        system: Vec::new(),
        last_step: 0,
        lines: Vec::new(),
        // Lines are numbered per attempt; 0 is the first.
        next_line: 0,
        total_steps: total_steps.clone(),
        lost: false,
    };
    report.say(format!(
        "attempt {} of run `{}` on {}",
        lease.attempt,
        job.name,
        host.describe()
    ));
    let spec = match host.data(&job).await {
        Ok(spec) => spec,
        Err(e) => {
            let msg = format!("its data cannot be read here: {e:#}");
            end(&mut report, RunStatus::Failed, Some(msg), &[]).await;
            return host.done(&job).await;
        }
    };
    // Checked when it was created; checked again here, as the engine takes
    // only a checked spec, in case a stored one no longer passes.
    let spec = match spec.into_valid() {
        Ok(spec) => spec,
        Err(e) => {
            let msg = format!("its spec does not pass the checks: {e}");
            end(&mut report, RunStatus::Failed, Some(msg), &[]).await;
            return host.done(&job).await;
        }
    };
    let checkpoint = match host.prepare(&job).await {
        Ok(path) => path,
        Err(e) => {
            let msg = format!("{e:#}");
            // A worker that cannot fetch the checkpoint may be the problem:
            // another one may do better.
            report.say(format!("cannot prepare the run: {msg}"));
            report.flush().await;
            host.release(&lease, &msg).await;
            return host.done(&job).await;
        }
    };
    // A run whose worker died continues from its last end-of-epoch
    // checkpoint (as exactly as `sslab train --resume`); a first attempt, or
    // one with nothing to resume from, starts over.
    let resume_from = if lease.attempt > 1 {
        sslab_engine::train::resumable_epochs(&checkpoint)
    } else {
        None
    };
    match host.start(&lease, resume_from.unwrap_or(0)).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(run = %job.id, "lost the lease before starting");
            return host.done(&job).await;
        }
        Err(e) => {
            report.say(format!("cannot start: {e:#}"));
            report.flush().await;
            host.release(&lease, &format!("{e:#}")).await;
            return host.done(&job).await;
        }
    }
    match resume_from {
        Some(epochs) => {
            for f in &job.files {
                report.say(format!(
                    "fetched {} ({} bytes, SHA-256 {})",
                    f.name, f.bytes, f.sha256
                ));
            }
            report.say(format!(
                "resuming after the {epochs} epochs its checkpoint holds"
            ))
        }
        None => report.say(format!(
            "training {} epochs from scratch",
            spec.schedule.epochs
        )),
    }

    let mut sampler = super::system::Sampler::new(&device);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let observer_stop = stop.clone();
    let observer_total = total_steps.clone();
    let train_checkpoint = checkpoint.clone();
    let mut work = tokio::task::spawn_blocking(move || {
        let mut observer = ChannelObserver {
            tx,
            stop: observer_stop,
            total_steps: observer_total,
        };
        let resume = resume_from.is_some();
        sslab_engine::train::start(&spec, resume, &device, &train_checkpoint, &mut observer)
    });

    let mut flush = tokio::time::interval(FLUSH);
    let mut heartbeat = tokio::time::interval(job.heartbeat);
    let mut sample = tokio::time::interval(SAMPLE);
    let mut why = Interruption::None;
    let result = loop {
        tokio::select! {
            res = &mut work => {
                while let Ok(p) = rx.try_recv() {
                    progress(&mut report, p, &checkpoint, &mut why).await;
                }
                break res;
            }
            Some(p) = rx.recv() => progress(&mut report, p, &checkpoint, &mut why).await,
            _ = flush.tick() => report.flush().await,
            _ = sample.tick() => {
                if let Some(s) = sampler.sample(report.last_step).await {
                    report.system.push(s);
                }
            }
            _ = heartbeat.tick() => match host.heartbeat(&lease).await {
                Ok(Some(true)) => { why = Interruption::Cancelled; stop.store(true, Ordering::Relaxed); }
                Ok(Some(false)) => {}
                Ok(None) => {
                    tracing::warn!(run = %job.id, "lost the lease; stopping");
                    why = Interruption::Lost;
                    stop.store(true, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(run = %job.id, error = %e, "heartbeat failed"),
            },
            _ = shutdown.changed() => {
                if why == Interruption::None { why = Interruption::Shutdown; }
                stop.store(true, Ordering::Relaxed);
            }
        }
        if report.lost && why != Interruption::Lost {
            why = Interruption::Lost;
            stop.store(true, Ordering::Relaxed);
        }
    };
    // The last reading covers the end of training and the evaluation.
    if let Some(s) = sampler.sample(report.last_step).await {
        report.system.push(s);
    }
    report.flush().await;
    let outcome = result
        .map_err(|e| format!("the training thread crashed: {e}"))
        .and_then(|r| r.map_err(|e| e.to_string()));
    match (outcome, why) {
        (_, Interruption::Lost) => {
            tracing::warn!(run = %job.id, "the run was taken from this worker");
        }
        (Ok(Outcome::Finished { evaluations, .. }), _) => {
            end(&mut report, RunStatus::Succeeded, None, &evaluations).await
        }
        (Ok(Outcome::Stopped { .. }), Interruption::Cancelled) => {
            end(&mut report, RunStatus::Cancelled, None, &[]).await
        }
        (Ok(Outcome::Stopped { .. }), Interruption::Storage) => {
            let msg = "its checkpoint could not be stored";
            report.say(format!("handed back: {msg}"));
            report.flush().await;
            host.release(&lease, msg).await;
        }
        (Ok(Outcome::Stopped { .. }), _) => {
            report.say("handed back to the queue: the worker is stopping");
            report.flush().await;
            host.release(&lease, "its worker stopped during the run")
                .await;
        }
        (Err(msg), _) => end(&mut report, RunStatus::Failed, Some(msg), &[]).await,
    }
    host.done(&job).await;
}

async fn progress<H: Host>(
    report: &mut Reporter<'_, H>,
    progress: Progress,
    checkpoint: &std::path::Path,
    why: &mut Interruption,
) {
    match progress {
        Progress::Step(m) => {
            report.last_step = m.step;
            report.points.push(m);
        }
        Progress::Memorization(p) => report.memorization.push(p),
        Progress::Flush(done) => {
            if let Some(last) = report.points.last() {
                let line = format!(
                    "epoch {} done: step {}, loss {:.4}, {:.0} images/s",
                    last.epoch + 1,
                    last.step,
                    last.loss,
                    last.images_per_sec
                );
                report.say(line);
            }
            report.flush().await;
            let _ = done.send(());
        }
        Progress::Checkpoint(epochs, done) => {
            // A big checkpoint on a slow store takes longer than a lease:
            // the heartbeat goes on meanwhile.
            let (host, lease) = (report.host, &report.job.lease);
            let store = host.store_checkpoint(lease, checkpoint, epochs);
            tokio::pin!(store);
            let mut beat = tokio::time::interval(report.job.heartbeat);
            beat.tick().await;
            let stored = loop {
                tokio::select! {
                    stored = &mut store => break stored,
                    _ = beat.tick() => {
                        if let Err(e) = host.heartbeat(lease).await {
                            tracing::warn!(run = %lease.id, error = %e, "heartbeat failed");
                        }
                    }
                }
            };
            let ok = match stored {
                Ok(true) => {
                    report.say(format!("checkpoint after epoch {epochs} stored"));
                    true
                }
                Ok(false) => {
                    report.lost = true;
                    false
                }
                Err(e) => {
                    report.say(format!(
                        "storing the checkpoint after epoch {epochs} failed: {e:#}"
                    ));
                    *why = Interruption::Storage;
                    false
                }
            };
            let _ = done.send(ok);
        }
        Progress::Evaluating => report.say("training done; evaluating"),
    }
}

async fn end<H: Host>(
    report: &mut Reporter<'_, H>,
    status: RunStatus,
    error: Option<String>,
    evaluations: &[Evaluation],
) {
    match &error {
        Some(e) => report.say(format!("{}: {e}", status.as_str())),
        None => report.say(status.as_str()),
    }
    report.flush().await;
    let id = &report.job.id;
    match report
        .host
        .finish(&report.job.lease, status, error.as_deref(), evaluations)
        .await
    {
        Ok(true) => {
            tracing::info!(run = %id, status = status.as_str(), error = error.as_deref().unwrap_or(""), "run ended")
        }
        Ok(false) => tracing::warn!(run = %id, "run was taken from this worker before it ended"),
        Err(e) => tracing::error!(run = %id, error = %e, "recording the end of a run failed"),
    }
}
