//! The training loop. It reads top to bottom: data, model, method, optimiser,
//! then epochs of steps, a checkpoint after each epoch, and the evaluation
//! plan at the end. It reports through an [`Observer`] and stops when asked.

use std::path::Path;
use std::time::Instant;

use std::collections::HashMap;

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::VarMap;
use sslab_shared::api::{Evaluation, MemorizationPoint};
use sslab_shared::{RunSpec, ValidSpec};

use crate::data::Splits;
use crate::error::{EngineError, Result};
use crate::optim::{self, Optimizer, Schedule};
use crate::{augment, eval, method, model};
use sslab_shared::rng::Rng;

/// What one optimiser step reports.
#[derive(Debug, Clone, PartialEq)]
pub struct StepMetrics {
    /// Steps done so far, 1-based.
    pub step: usize,
    pub total_steps: usize,
    /// 0-based epoch the step belongs to.
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    /// Training images (not views) per second over this step.
    pub images_per_sec: f64,
    /// Fraction of this step spent waiting for its augmented batch: above a
    /// few percent the data pipeline, not the model, sets the pace.
    pub data_wait: f64,
    /// Accuracy of the online linear probe on this batch, before its update.
    pub online_probe_acc: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Stop,
}

/// Receives progress; returning [`Control::Stop`] ends training after the
/// current step without evaluating.
pub trait Observer {
    fn on_step(&mut self, metrics: &StepMetrics) -> Control;

    /// `epoch` is trained and its checkpoint is about to be written: what
    /// was reported so far should be made durable now, since a run resumed
    /// from that checkpoint does not report those steps again.
    fn before_checkpoint(&mut self, _epoch: usize) {}

    /// A checkpoint of the end of `epoch` was written to `path`.
    fn on_checkpoint(&mut self, _epoch: usize, _path: &Path) -> Control {
        Control::Continue
    }

    /// The memorization monitor attacked the model after `point.epoch` epochs.
    fn on_memorization(&mut self, _point: &MemorizationPoint) {}

    /// Training is done; the evaluation plan starts.
    fn on_evaluating(&mut self) {}
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Finished {
        last_loss: f64,
        evaluations: Vec<Evaluation>,
    },
    /// The observer asked to stop after `step` steps.
    Stopped { step: usize },
}

/// Trains the encoder `spec` describes on `splits.train`, writing a
/// safetensors checkpoint to `checkpoint` after every epoch (and the
/// optimiser and method state beside it, see [`state_path`]), and evaluates it.
pub fn train(
    spec: &ValidSpec,
    splits: &Splits,
    device: &Device,
    checkpoint: &Path,
    observer: &mut dyn Observer,
) -> Result<Outcome> {
    let _release = crate::ReleaseMemoryAtEnd;
    run(spec, splits, device, checkpoint, false, observer)
}

/// Continues a run from the last epoch its checkpoint holds: the same
/// weights, optimiser moments, EMA targets and data order, so that the
/// result equals an uninterrupted run.
pub fn resume(
    spec: &ValidSpec,
    splits: &Splits,
    device: &Device,
    checkpoint: &Path,
    observer: &mut dyn Observer,
) -> Result<Outcome> {
    let _release = crate::ReleaseMemoryAtEnd;
    run(spec, splits, device, checkpoint, true, observer)
}

/// Reads the data `spec` names, then trains it from the start, or
/// `resume`s it from the last epoch its checkpoint holds. What the server's
/// worker and `sslab train` both do.
pub fn start(
    spec: &ValidSpec,
    resume: bool,
    device: &Device,
    checkpoint: &Path,
    observer: &mut dyn Observer,
) -> Result<Outcome> {
    let _release = crate::ReleaseMemoryAtEnd;
    let splits = crate::data::load(&spec.data)?;
    run(spec, &splits, device, checkpoint, resume, observer)
}

/// Where the training state of `checkpoint` after `epochs_done` epochs
/// lives: `<name>.state-<epochs>.safetensors`. The previous epoch's file is
/// removed only once the new weights are in place, so a crash between the
/// two writes still leaves a matching pair.
pub fn state_path(checkpoint: &Path, epochs_done: usize) -> std::path::PathBuf {
    checkpoint.with_extension(format!("state-{epochs_done}.safetensors"))
}

/// The epochs [`resume`] would continue after: some, with the training
/// state that belongs to them beside the weights; `None` when there is
/// nothing to resume from.
pub fn resumable_epochs(checkpoint: &Path) -> Option<usize> {
    let done = checkpoint_epochs(checkpoint).ok().filter(|&e| e > 0)?;
    state_path(checkpoint, done).is_file().then_some(done)
}

/// The number of epochs a checkpoint written by [`train`] holds.
pub fn checkpoint_epochs(checkpoint: &Path) -> Result<usize> {
    epochs_in(
        &candle_core::safetensors::load(checkpoint, &Device::Cpu)?,
        checkpoint,
    )
}

/// The epoch count stored in `tensors`, read from `file`.
fn epochs_in(tensors: &HashMap<String, Tensor>, file: &Path) -> Result<usize> {
    let v = tensors
        .get(EPOCHS_DONE)
        .ok_or_else(|| EngineError::Data(format!("{} holds no epoch count", file.display())))?;
    Ok(v.to_vec1::<u32>()?.first().copied().unwrap_or(0) as usize)
}

/// The views of one batch as tensors: the method's global views at the
/// image size, then the local views.
pub fn batch_tensors(
    spec: &RunSpec,
    data: &crate::data::ImageSet,
    indices: &[usize],
    epoch: usize,
    globals: usize,
    device: &Device,
) -> Result<Vec<Tensor>> {
    let buffers = augment::batch_views(&spec.augment, data, indices, spec.seed, epoch, globals);
    view_tensors(spec, data.size, indices.len(), buffers, globals, device)
}

/// The buffers of [`augment::batch_views`] for `n` images as tensors.
fn view_tensors(
    spec: &RunSpec,
    size: usize,
    n: usize,
    buffers: Vec<Vec<f32>>,
    globals: usize,
    device: &Device,
) -> Result<Vec<Tensor>> {
    let local = spec.augment.local_side(size);
    buffers
        .into_iter()
        .enumerate()
        .map(|(v, buf)| {
            let side = if v < globals { size } else { local };
            Ok(Tensor::from_vec(buf, (n, 3, side, side), device)?)
        })
        .collect()
}

fn run(
    spec: &ValidSpec,
    splits: &Splits,
    device: &Device,
    checkpoint: &Path,
    resuming: bool,
    observer: &mut dyn Observer,
) -> Result<Outcome> {
    let part;
    let data = match (&spec.subset, &splits.unlabeled) {
        (None, None) => &splits.train,
        (subset, unlabeled) => {
            let labelled = match subset {
                Some(s) => crate::data::subset::apply(&splits.train, s)?,
                None => splits.train.clone(),
            };
            part = match unlabeled {
                Some(u) => labelled.concat(u),
                None => labelled,
            };
            &part
        }
    };
    // The monitor's held-out images leave training for the whole run.
    let dealt = spec
        .eval
        .memorization
        .as_ref()
        .map(|m| crate::dejavu::monitor::deal(data, m, spec.seed))
        .transpose()?;
    let kept;
    let data = match &dealt {
        Some(d) => {
            kept = data.subset(&d.train);
            &kept
        }
        None => data,
    };
    let monitor = dealt.map(|d| d.monitor);
    let (encoder, mut varmap) = model::build(spec, device)?;
    let mut method = method::build(spec, &varmap, device)?;
    let batch = spec.optimizer.batch_size;
    let steps_per_epoch = data.len() / batch;
    if steps_per_epoch == 0 {
        return Err(EngineError::Data(format!(
            "the training split has {} images, fewer than one batch of {batch}",
            data.len()
        )));
    }
    let total_steps = steps_per_epoch * spec.schedule.epochs;
    let schedule = Schedule::new(spec.optimizer.lr, &spec.schedule, steps_per_epoch);
    let mut optimizer = Optimizer::new(&spec.optimizer, &varmap)?;
    let trainable = optim::trainable(&varmap);
    let mut probe = if spec.eval.online_probe {
        Some(OnlineProbe::new(
            spec.backbone.output_dim(),
            data.classes(),
            device,
        )?)
    } else {
        None
    };
    let mut first_epoch = 0;
    if resuming {
        first_epoch = load_training_state(
            checkpoint,
            &mut varmap,
            &mut optimizer,
            method.as_mut(),
            probe.as_mut(),
            device,
        )?;
    }
    let mut step = first_epoch * steps_per_epoch;
    let mut last_loss = f64::NAN;
    let globals = method.global_views();

    for epoch in first_epoch..spec.schedule.epochs {
        let mut order: Vec<usize> = (0..data.len()).collect();
        Rng::derive(spec.seed, &[0xDA7A, epoch as u64]).shuffle(&mut order);
        let batches: Vec<&[usize]> = order.chunks_exact(batch).collect();
        let batches = &batches;
        // The next batch is augmented on other threads while this one trains.
        let stopped = std::thread::scope(|scope| -> Result<Option<Outcome>> {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            scope.spawn(move || {
                for indices in batches {
                    let views = augment::batch_views(
                        &spec.augment,
                        data,
                        indices,
                        spec.seed,
                        epoch,
                        globals,
                    );
                    if tx.send(views).is_err() {
                        break;
                    }
                }
            });
            let trained = (|| -> Result<Option<Outcome>> {
                for indices in batches {
                    let started = Instant::now();
                    let buffers = rx
                        .recv()
                        .map_err(|_| EngineError::Data("the augmentation thread stopped".into()))?;
                    let waited = started.elapsed();
                    let views =
                        view_tensors(spec, data.size, indices.len(), buffers, globals, device)?;
                    let at = method::StepInfo {
                        step,
                        total_steps,
                        steps_per_epoch,
                        seed: spec.seed,
                    };
                    let lr = schedule.lr(step);
                    optimizer.set_lr(lr);
                    if let Some(end) = spec.optimizer.weight_decay_end {
                        let start = spec.optimizer.weight_decay;
                        optimizer.set_weight_decay(optim::cosine(start, end, step, total_steps));
                    }
                    let (out, loss) = crate::on_workers(|| -> Result<_> {
                        let out = method.loss(&encoder, &views, &at)?;
                        let loss = out.loss.to_scalar::<f32>()?;
                        if !loss.is_finite() {
                            return Err(EngineError::NonFiniteLoss {
                                step: step + 1,
                                value: loss,
                            });
                        }
                        let mut grads = crate::ops::backward(&out.loss)?;
                        for held in method.frozen(&at) {
                            grads.remove(&held);
                        }
                        if spec.optimizer.grad_clip > 0.0 {
                            optim::clip_grad_norm(
                                &mut grads,
                                &trainable,
                                spec.optimizer.grad_clip,
                            )?;
                        }
                        optimizer.step(&grads)?;
                        method.after_step(&at)?;
                        Ok((out, loss))
                    })?;
                    let online_probe_acc = match &mut probe {
                        Some(p) => {
                            // Unlabelled images (STL-10's extra split) teach the probe nothing.
                            let (rows, labels): (Vec<u32>, Vec<u32>) = indices
                                .iter()
                                .enumerate()
                                .filter(|&(_, &i)| data.labels[i] != crate::data::UNLABELED)
                                .map(|(r, &i)| (r as u32, data.labels[i]))
                                .unzip();
                            if rows.is_empty() {
                                None
                            } else {
                                // A ViT's CLS token is a strided view, and
                                // candle's index_select wants contiguous rows.
                                let features = out
                                    .features
                                    .detach()
                                    .contiguous()?
                                    .index_select(&Tensor::new(rows.as_slice(), device)?, 0)?;
                                Some(p.step(&features, &Tensor::new(labels.as_slice(), device)?)?)
                            }
                        }
                        None => None,
                    };
                    step += 1;
                    last_loss = loss as f64;
                    let took = started.elapsed().as_secs_f64().max(1e-9);
                    let metrics = StepMetrics {
                        step,
                        total_steps,
                        epoch,
                        loss: last_loss,
                        lr,
                        images_per_sec: batch as f64 / took,
                        data_wait: (waited.as_secs_f64() / took).min(1.0),
                        online_probe_acc,
                    };
                    if observer.on_step(&metrics) == Control::Stop {
                        return Ok(Some(Outcome::Stopped { step }));
                    }
                }
                Ok(None)
            })();
            // Lets the producer's next send fail, so that the scope can end.
            drop(rx);
            trained
        })?;
        if let Some(outcome) = stopped {
            return Ok(outcome);
        }
        if let Some(m) = &monitor
            && m.due(epoch + 1, spec.schedule.epochs)
        {
            observer.on_memorization(&m.measure(&encoder, epoch + 1, step, device)?);
        }
        observer.before_checkpoint(epoch);
        save_training_state(
            checkpoint,
            epoch + 1,
            &optimizer,
            method.as_ref(),
            probe.as_ref(),
        )?;
        save_checkpoint(&varmap, epoch + 1, checkpoint)?;
        let _ = std::fs::remove_file(state_path(checkpoint, epoch));
        if observer.on_checkpoint(epoch, checkpoint) == Control::Stop {
            return Ok(Outcome::Stopped { step });
        }
    }

    observer.on_evaluating();
    let transfer;
    let probed = match &spec.eval.data {
        Some(d) => {
            transfer = crate::data::load(d)?;
            &transfer
        }
        None => splits,
    };
    let evaluations = eval::evaluate(&encoder, probed, &spec.eval, spec.seed, device)?;
    Ok(Outcome::Finished {
        last_loss,
        evaluations,
    })
}

/// A linear classifier trained on stop-gradient backbone features of the
/// first view during training (solo-learn's online probe): a running,
/// label-aware view of the representation at no extra forward pass.
struct OnlineProbe {
    vars: VarMap,
    w: Var,
    b: Var,
    opt: Optimizer,
}

impl OnlineProbe {
    fn new(dim: usize, classes: usize, device: &Device) -> candle_core::Result<Self> {
        let vars = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vars, DType::F32, device);
        vb.get_with_hints((dim, classes), "w", candle_nn::Init::Const(0.0))?;
        vb.get_with_hints(classes, "b", candle_nn::Init::Const(0.0))?;
        let (w, b) = {
            let data = vars.data().lock().expect("varmap lock");
            (data["w"].clone(), data["b"].clone())
        };
        let spec = sslab_shared::spec::OptimizerSpec {
            kind: sslab_shared::spec::OptimizerKind::Adamw,
            lr: 1e-2,
            weight_decay: 0.0,
            ..Default::default()
        };
        let opt = Optimizer::new(&spec, &vars)?;
        Ok(OnlineProbe { vars, w, b, opt })
    }

    /// Scores the batch, then takes one step on it.
    fn step(&mut self, features: &Tensor, labels: &Tensor) -> candle_core::Result<f64> {
        let logits = features
            .matmul(self.w.as_tensor())?
            .broadcast_add(self.b.as_tensor())?;
        let hits = logits
            .argmax(D::Minus1)?
            .eq(labels)?
            .to_dtype(DType::F32)?
            .mean_all()?
            .to_scalar::<f32>()?;
        let loss = candle_nn::loss::cross_entropy(&logits, labels)?;
        self.opt.step(&crate::ops::backward(&loss)?)?;
        Ok(hits as f64)
    }
}

/// Tensor names of the epoch count in the checkpoint and the state file:
/// resuming checks that both come from the same epoch.
const EPOCHS_DONE: &str = "sslab.epochs_done";

fn epochs_tensor(epochs: usize) -> candle_core::Result<Tensor> {
    Tensor::new(&[epochs as u32], &Device::Cpu)
}

/// Writes `tensors` to `path` through a temporary file, so a crash never
/// leaves a torn file.
fn save_atomically(tensors: HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|source| EngineError::Io {
        what: format!("cannot move {} into place", path.display()),
        source,
    })
}

/// The weights (BatchNorm statistics included) and the epoch count.
fn save_checkpoint(varmap: &VarMap, epochs_done: usize, path: &Path) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    tensors.insert(EPOCHS_DONE.into(), epochs_tensor(epochs_done)?);
    save_atomically(tensors, path)
}

fn save_training_state(
    checkpoint: &Path,
    epochs_done: usize,
    optimizer: &Optimizer,
    method: &dyn method::Method,
    probe: Option<&OnlineProbe>,
) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = optimizer.state("opt.")?.into_iter().collect();
    for (k, v) in method.state() {
        tensors.insert(format!("method.{k}"), v);
    }
    if let Some(p) = probe {
        tensors.extend(p.opt.state("probe.opt.")?);
        for (k, v) in p.vars.data().lock().expect("varmap lock").iter() {
            tensors.insert(format!("probe.{k}"), v.as_tensor().clone());
        }
    }
    tensors.insert(EPOCHS_DONE.into(), epochs_tensor(epochs_done)?);
    save_atomically(tensors, &state_path(checkpoint, epochs_done))
}

/// Loads what [`save_checkpoint`] and [`save_training_state`] wrote and
/// returns the number of epochs done.
fn load_training_state(
    checkpoint: &Path,
    varmap: &mut VarMap,
    optimizer: &mut Optimizer,
    method: &mut dyn method::Method,
    probe: Option<&mut OnlineProbe>,
    device: &Device,
) -> Result<usize> {
    let missing =
        |f: &Path| EngineError::Data(format!("cannot resume: {} is missing", f.display()));
    if !checkpoint.is_file() {
        return Err(missing(checkpoint));
    }
    let weights = candle_core::safetensors::load(checkpoint, device)?;
    let done = epochs_in(&weights, checkpoint)?;
    let state_file = state_path(checkpoint, done);
    if !state_file.is_file() {
        return Err(missing(&state_file));
    }
    let state = candle_core::safetensors::load(&state_file, device)?;
    if epochs_in(&state, &state_file)? != done {
        return Err(EngineError::Data(format!(
            "cannot resume: {} and {} are from different epochs",
            checkpoint.display(),
            state_file.display()
        )));
    }
    varmap.load(checkpoint)?;
    optimizer
        .load_state(&state, "opt.")
        .map_err(EngineError::Data)?;
    let method_state: method::State = state
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("method.")?.to_string(), v.clone())))
        .collect();
    method.load_state(&method_state)?;
    if let Some(p) = probe {
        for (k, v) in p.vars.data().lock().expect("varmap lock").iter() {
            if let Some(t) = state.get(&format!("probe.{k}")) {
                v.set(t)?;
            }
        }
        p.opt
            .load_state(&state, "probe.opt.")
            .map_err(EngineError::Data)?;
    }
    Ok(done)
}

/// Loads a checkpoint written by [`train`] into a fresh encoder.
pub fn load_encoder(spec: &ValidSpec, path: &Path, device: &Device) -> Result<model::Encoder> {
    let (encoder, mut varmap) = model::build(spec, device)?;
    varmap.load(path)?;
    Ok(encoder)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(spec: &RunSpec) -> ValidSpec {
        spec.clone().into_valid().unwrap()
    }
    use sslab_shared::spec::{DataSpec, ScenesSpec};

    /// Collects losses; stops after `stop_after` steps if set.
    struct Record {
        losses: Vec<f64>,
        online: Vec<f64>,
        stop_after: Option<usize>,
        checkpoints: usize,
    }

    impl Record {
        fn stopping_after(stop_after: Option<usize>) -> Self {
            Record {
                losses: vec![],
                online: vec![],
                stop_after,
                checkpoints: 0,
            }
        }
    }

    impl Observer for Record {
        fn on_step(&mut self, m: &StepMetrics) -> Control {
            assert!(m.lr > 0.0 && m.images_per_sec > 0.0);
            assert!((0.0..=1.0).contains(&m.data_wait), "{m:?}");
            self.losses.push(m.loss);
            self.online.extend(m.online_probe_acc);
            match self.stop_after {
                Some(n) if m.step >= n => Control::Stop,
                _ => Control::Continue,
            }
        }
        fn on_checkpoint(&mut self, _: usize, path: &Path) -> Control {
            assert!(path.exists());
            self.checkpoints += 1;
            Control::Continue
        }
    }

    fn tiny_spec(train_images: usize, epochs: usize) -> RunSpec {
        let mut spec = RunSpec::default();
        spec.data = DataSpec::Scenes(ScenesSpec {
            classes: 5,
            train_images,
            test_images: 200,
            image_size: 32,
            background_correlation: 0.0,
            seed: 11,
            ..ScenesSpec::default()
        });
        spec.backbone.width = 16;
        spec.projector.dims = "128-64".parse().expect("widths");
        spec.optimizer.batch_size = 64;
        spec.optimizer.lr = 3e-3;
        spec.schedule.epochs = epochs;
        spec.schedule.warmup_epochs = 1.0;
        spec.seed = 5;
        spec
    }

    #[test]
    fn same_seed_same_losses_and_stop_is_honoured() {
        let spec = tiny_spec(128, 1);
        let splits = crate::data::load(&spec.data).unwrap();
        let dir = tempdir();
        let ck = dir.join("a.safetensors");
        let mut a = Record::stopping_after(None);
        let mut b = Record::stopping_after(Some(1));
        train(&valid(&spec), &splits, &Device::Cpu, &ck, &mut a).unwrap();
        let out = train(
            &valid(&spec),
            &splits,
            &Device::Cpu,
            &dir.join("b.safetensors"),
            &mut b,
        )
        .unwrap();
        assert_eq!(a.losses.len(), 2);
        assert_eq!(a.checkpoints, 1);
        assert_eq!(a.losses[0], b.losses[0]);
        assert!(matches!(out, Outcome::Stopped { step: 1 }));
        assert_eq!(b.checkpoints, 0);
        // The checkpoint loads back into the same architecture.
        load_encoder(&valid(&spec), &ck, &Device::Cpu).unwrap();
    }

    /// Stops after `epochs` checkpoints.
    struct StopAfterEpochs {
        losses: Vec<f64>,
        epochs: usize,
    }

    impl Observer for StopAfterEpochs {
        fn on_step(&mut self, m: &StepMetrics) -> Control {
            self.losses.push(m.loss);
            Control::Continue
        }
        fn on_checkpoint(&mut self, epoch: usize, _: &Path) -> Control {
            if epoch + 1 >= self.epochs {
                Control::Stop
            } else {
                Control::Continue
            }
        }
    }

    fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
        let mut t: Vec<(String, Vec<f32>)> = candle_core::safetensors::load(path, &Device::Cpu)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k != EPOCHS_DONE)
            .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1().unwrap()))
            .collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    }

    /// 2 epochs, stop, resume for 2 = 4 epochs straight. DINO keeps an EMA
    /// teacher and a centre, AdamW its moments, the weight decay follows a
    /// schedule and the online probe trains beside; BYOL keeps its target
    /// and LARS momentum: all of it must carry over.
    #[test]
    fn a_resumed_run_equals_an_uninterrupted_one() {
        let mut dino = tiny_spec(64, 4);
        dino.optimizer.batch_size = 32;
        dino.method = sslab_shared::spec::MethodSpec::from_name("dino").unwrap();
        if let sslab_shared::spec::MethodSpec::Dino(sslab_shared::spec::DinoSpec {
            prototypes,
            ..
        }) = &mut dino.method
        {
            *prototypes = 32;
        }
        dino.augment.local_views = 2;
        dino.optimizer.weight_decay_end = Some(0.1);
        dino.eval.probes = vec![sslab_shared::spec::ProbeKind::Knn];
        dino.eval.layers = vec!["backbone".into()];
        let mut byol = dino.clone();
        byol.method = sslab_shared::spec::MethodSpec::from_name("byol").unwrap();
        byol.augment.local_views = 0;
        byol.optimizer.kind = sslab_shared::spec::OptimizerKind::Lars;
        byol.optimizer.lr = 0.5;
        for spec in [dino, byol] {
            check_resume(&spec);
        }
    }

    fn check_resume(spec: &RunSpec) {
        let spec = valid(spec);
        let splits = crate::data::load(&spec.data).unwrap();
        let dir = tempdir();
        let (straight, halves) = (
            dir.join("straight.safetensors"),
            dir.join("halves.safetensors"),
        );
        let mut all = StopAfterEpochs {
            losses: vec![],
            epochs: 99,
        };
        let Outcome::Finished {
            evaluations: e1, ..
        } = train(&valid(&spec), &splits, &Device::Cpu, &straight, &mut all).unwrap()
        else {
            panic!("stopped")
        };
        let mut first = StopAfterEpochs {
            losses: vec![],
            epochs: 2,
        };
        let out = train(&valid(&spec), &splits, &Device::Cpu, &halves, &mut first).unwrap();
        assert!(matches!(out, Outcome::Stopped { step: 4 }), "{out:?}");
        let mut second = StopAfterEpochs {
            losses: vec![],
            epochs: 99,
        };
        let Outcome::Finished {
            evaluations: e2, ..
        } = resume(&valid(&spec), &splits, &Device::Cpu, &halves, &mut second).unwrap()
        else {
            panic!("stopped")
        };
        assert_eq!(all.losses.len(), 8);
        assert_eq!(first.losses, all.losses[..4]);
        assert_eq!(second.losses, all.losses[4..]);
        assert_eq!(weights(&straight), weights(&halves));
        assert_eq!(e1[0].value, e2[0].value);
        // A state file from another epoch is refused.
        let mut stop = StopAfterEpochs {
            losses: vec![],
            epochs: 1,
        };
        let other = dir.join("other.safetensors");
        train(&valid(&spec), &splits, &Device::Cpu, &other, &mut stop).unwrap();
        std::fs::copy(state_path(&halves, 4), state_path(&other, 1)).unwrap();
        assert!(!state_path(&halves, 3).exists(), "older states are removed");
        let err = resume(&valid(&spec), &splits, &Device::Cpu, &other, &mut stop).unwrap_err();
        assert!(err.to_string().contains("different epochs"), "{err}");
        let err = resume(
            &spec,
            &splits,
            &Device::Cpu,
            &dir.join("none.safetensors"),
            &mut stop,
        )
        .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    /// DINO's last layer and SwAV's prototypes stay where they started for
    /// the frozen epochs, and move after them.
    #[test]
    fn prototypes_hold_still_while_frozen() {
        for name in ["dino", "swav"] {
            let mut spec = tiny_spec(64, 2);
            spec.optimizer.batch_size = 32;
            spec.eval.probes = vec![sslab_shared::spec::ProbeKind::Knn];
            spec.method = sslab_shared::spec::MethodSpec::from_name(name).unwrap();
            let (_, varmap) = model::build(&valid(&spec), &Device::Cpu).unwrap();
            method::build(&valid(&spec), &varmap, &Device::Cpu).unwrap();
            let start = varmap.data().lock().unwrap()["prototypes.weight"]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            struct AfterEpoch(Vec<Vec<f32>>);
            impl Observer for AfterEpoch {
                fn on_step(&mut self, _: &StepMetrics) -> Control {
                    Control::Continue
                }
                fn on_checkpoint(&mut self, _: usize, path: &Path) -> Control {
                    let t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
                    let w = t["prototypes.weight"].flatten_all().unwrap();
                    self.0.push(w.to_vec1().unwrap());
                    Control::Continue
                }
            }
            let splits = crate::data::load(&spec.data).unwrap();
            let mut seen = AfterEpoch(Vec::new());
            let dir = tempdir();
            train(
                &valid(&spec),
                &splits,
                &Device::Cpu,
                &dir.join("p.safetensors"),
                &mut seen,
            )
            .unwrap();
            assert_eq!(
                seen.0[0], start,
                "{name}: prototypes moved in the frozen epoch"
            );
            assert_ne!(seen.0[1], start, "{name}: prototypes never moved");
        }
    }

    /// Unlabelled images (STL-10's extra split) are pretrained on but never
    /// reach the online probe: batches of only unlabelled images report no
    /// probe accuracy.
    #[test]
    fn unlabelled_images_are_trained_on_but_not_probed() {
        let mut spec = tiny_spec(64, 1);
        spec.eval.probes = vec![sslab_shared::spec::ProbeKind::Knn];
        let mut splits = crate::data::load(&spec.data).unwrap();
        let mut extra = splits.train.clone();
        extra.labels = vec![crate::data::UNLABELED; extra.len()];
        // 64 labelled + 192 unlabelled = 4 batches of 64.
        splits.unlabeled = Some(extra.concat(&extra).concat(&extra));
        let mut rec = Record::stopping_after(None);
        train(
            &valid(&spec),
            &splits,
            &Device::Cpu,
            &tempdir().join("u.safetensors"),
            &mut rec,
        )
        .unwrap();
        assert_eq!(rec.losses.len(), 4);
        // A shuffled 64 of 256 holds ~16 labelled images; some batch may hold none.
        assert!(
            !rec.online.is_empty() && rec.online.len() <= 4,
            "{:?}",
            rec.online
        );
    }

    /// A bf16 run trains and writes f32 weights and statistics.
    #[test]
    fn a_bf16_run_trains_and_checkpoints_f32() {
        let mut spec = tiny_spec(128, 2);
        spec.optimizer.precision = sslab_shared::spec::Precision::Bf16;
        spec.eval.probes = vec![sslab_shared::spec::ProbeKind::Knn];
        let splits = crate::data::load(&spec.data).unwrap();
        let mut rec = Record::stopping_after(None);
        let ck = tempdir().join("bf16.safetensors");
        let out = train(&valid(&spec), &splits, &Device::Cpu, &ck, &mut rec).unwrap();
        assert_eq!(rec.losses.len(), 4);
        assert!(rec.losses.iter().all(|l| l.is_finite()), "{:?}", rec.losses);
        assert!(matches!(out, Outcome::Finished { .. }));
        let saved = candle_core::safetensors::load(&ck, &Device::Cpu).unwrap();
        for (name, t) in &saved {
            if name != EPOCHS_DONE {
                assert_eq!(t.dtype(), DType::F32, "{name}");
            }
        }
    }

    /// The ViT methods that drive the backbone's parts themselves (MAE,
    /// SimMIM, MSN) and DINO on a ViT train in bf16 too: finite losses,
    /// f32 weights.
    #[test]
    fn vit_methods_train_in_bf16() {
        for method in ["mae", "simmim", "msn", "dino"] {
            let mut spec = tiny_spec(64, 1);
            spec.backbone = sslab_shared::spec::BackboneSpec {
                kind: sslab_shared::spec::BackboneKind::Vit,
                width: 48,
                depth: 2,
                heads: 3,
                patch_size: 8,
                ..Default::default()
            };
            spec.method = sslab_shared::spec::MethodSpec::from_name(method).expect("a method");
            spec.projector.dims = if matches!(method, "mae" | "simmim") {
                "".parse().expect("no widths")
            } else {
                "64-32".parse().expect("widths")
            };
            spec.optimizer.batch_size = 32;
            spec.optimizer.precision = sslab_shared::spec::Precision::Bf16;
            spec.eval.probes = vec![sslab_shared::spec::ProbeKind::Knn];
            let splits = crate::data::load(&spec.data).unwrap();
            let mut rec = Record::stopping_after(None);
            let ck = tempdir().join(format!("vit-bf16-{method}.safetensors"));
            let out = train(&valid(&spec), &splits, &Device::Cpu, &ck, &mut rec)
                .unwrap_or_else(|e| panic!("{method}: {e}"));
            assert!(matches!(out, Outcome::Finished { .. }), "{method}");
            assert_eq!(rec.losses.len(), 2, "{method}");
            assert!(
                rec.losses.iter().all(|l| l.is_finite()),
                "{method}: {:?}",
                rec.losses
            );
            let saved = candle_core::safetensors::load(&ck, &Device::Cpu).unwrap();
            assert!(
                saved
                    .iter()
                    .all(|(n, t)| n == EPOCHS_DONE || t.dtype() == DType::F32),
                "{method}"
            );
        }
    }

    /// The monitor keeps its held-out images out of training and reports
    /// after the epochs it is due, always after the last.
    #[test]
    fn the_memorization_monitor_reports_when_due() {
        let mut spec = tiny_spec(160, 3);
        spec.eval.probes = vec![sslab_shared::spec::ProbeKind::Knn];
        spec.eval.memorization = Some(sslab_shared::spec::MemorizationMonitor {
            every: 2,
            canaries_per_class: 4,
            ..Default::default()
        });
        #[derive(Default)]
        struct Points {
            steps: usize,
            points: Vec<MemorizationPoint>,
        }
        impl Observer for Points {
            fn on_step(&mut self, _: &StepMetrics) -> Control {
                self.steps += 1;
                Control::Continue
            }
            fn on_memorization(&mut self, p: &MemorizationPoint) {
                self.points.push(p.clone());
            }
        }
        let splits = crate::data::load(&spec.data).unwrap();
        let mut rec = Points::default();
        let ck = tempdir().join("m.safetensors");
        train(&valid(&spec), &splits, &Device::Cpu, &ck, &mut rec).unwrap();
        // 160 images less 5 × 4 held out: two batches of 64 per epoch.
        assert_eq!(rec.steps, 3 * 2);
        let epochs: Vec<i64> = rec.points.iter().map(|p| p.epoch).collect();
        assert_eq!(epochs, [2, 3]);
        for p in &rec.points {
            assert_eq!((p.canaries, p.heldout, p.step), (20, 20, 2 * p.epoch));
            assert!((0.0..=1.0).contains(&p.canary_top1) && (0.0..=1.0).contains(&p.heldout_top1));
            assert!((p.dejavu_gap - (p.canary_top1 - p.heldout_top1)).abs() < 1e-12);
        }
    }

    /// With `eval.data` set, the end-of-training probes read that data set:
    /// here 4 classes, which the 5-class training data could not produce.
    #[test]
    fn the_plan_can_probe_other_data() {
        let mut spec = tiny_spec(64, 1);
        spec.eval.probes = vec![sslab_shared::spec::ProbeKind::Linear];
        spec.eval.layers = vec!["backbone".into()];
        spec.eval.online_probe = false;
        spec.eval.data = Some(DataSpec::Scenes(ScenesSpec {
            classes: 4,
            train_images: 40,
            test_images: 20,
            seed: 3,
            ..ScenesSpec::default()
        }));
        let splits = crate::data::load(&spec.data).unwrap();
        let (rec, evaluations) = train_to_end(&spec, &splits);
        assert_eq!(evaluations.len(), 1);
        assert!(rec.online.is_empty(), "online probe was off");
        // The linear probe's validation split came from the 40 transfer images.
        assert_eq!(evaluations[0].settings["val_fraction"], 0.2);
        let val = evaluations[0].settings["val_top1"].as_f64().unwrap();
        assert!(
            (val * 8.0 - (val * 8.0).round()).abs() < 1e-9,
            "8 validation images, got {val}"
        );
    }

    /// SimCLR on the built-in scenes must learn: 5 classes (chance 0.20),
    /// kNN top-1 at the backbone far above it after 60 steps, and above the
    /// same encoder before training (seen here: 0.53 untrained, 0.585 trained;
    /// colour alone already separates part of the classes). Guillotine
    /// regularization's sign (arXiv:2206.13378): the linear probe reads the
    /// backbone better than the projector output (seen: 0.690 vs 0.635).
    #[test]
    fn simclr_learns_on_the_builtin_scenes() {
        let spec = tiny_spec(640, 6);
        let splits = crate::data::load(&spec.data).unwrap();
        let (untrained, _) = model::build(&valid(&spec), &Device::Cpu).unwrap();
        let before =
            eval::evaluate(&untrained, &splits, &spec.eval, spec.seed, &Device::Cpu).unwrap();
        let (rec, evaluations) = train_to_end(&spec, &splits);
        let knn = |evals: &[Evaluation], layer: &str| {
            evals
                .iter()
                .find(|e| e.layer == layer && e.probe == "knn")
                .map(|e| e.value)
                .unwrap()
        };
        for e in &evaluations {
            eprintln!("{} {} {} {:.3}", e.layer, e.probe, e.metric, e.value);
        }
        let (b0, b1) = (knn(&before, "backbone"), knn(&evaluations, "backbone"));
        eprintln!(
            "kNN@backbone: untrained {b0:.3}, trained {b1:.3}; losses {:?}",
            rec.losses
        );
        let linear = |layer: &str| {
            evaluations
                .iter()
                .find(|e| e.layer == layer && e.probe == "linear")
                .unwrap()
                .value
        };
        assert!(
            linear("backbone") > linear("proj.1"),
            "guillotine: {} vs {}",
            linear("backbone"),
            linear("proj.1")
        );
        let layers: Vec<&str> = evaluations
            .iter()
            .filter(|e| e.probe == "knn")
            .map(|e| e.layer.as_str())
            .collect();
        assert_eq!(layers, ["backbone", "proj.0", "proj.1"]);
        assert!(
            rec.online.iter().rev().take(10).sum::<f64>() / 10.0 > 0.35,
            "online probe {:?}",
            rec.online
        );
        let first: f64 = rec.losses[..5].iter().sum::<f64>() / 5.0;
        let last: f64 = rec.losses[rec.losses.len() - 5..].iter().sum::<f64>() / 5.0;
        assert!(last < first - 0.3, "loss {first:.3} -> {last:.3}");
        assert!(
            b1 >= 0.45,
            "kNN top-1 at the backbone {b1:.3}, chance is 0.20"
        );
        assert!(
            b1 > b0 + 0.02,
            "training did not improve kNN: {b0:.3} -> {b1:.3}"
        );
    }

    /// The tiny recipes of SimCLR, VICReg, BYOL, DINO and MSN learn on scenes
    /// whose objects never wear their class's colour (form and texture are
    /// the only cues; chance 0.20). kNN top-1 at the backbone on 1000 test
    /// images (a score's noise ±0.015), untrained → trained at the recipes'
    /// seed, seen here: SimCLR 0.270 → 0.414, VICReg → 0.361 (160 steps in
    /// batches of 32), DINO → 0.384 (160 steps in batches of 64: its centre is
    /// a batch mean), BYOL → 0.423 (960 steps, a smaller step with more
    /// decay), MSN on its ViT with a conv stem 0.258 → 0.354 (480 steps in
    /// batches of 64). Seeds 1, 2, 3 learn too, by +0.04 to +0.17: trained
    /// 0.360 / 0.360 / 0.392 (SimCLR), 0.338 / 0.334 / 0.329 (VICReg), 0.419 /
    /// 0.345 / 0.346 (BYOL), 0.362 / 0.319 / 0.381 (DINO), 0.356 / 0.340 /
    /// 0.420 (MSN) from untrained 0.243–0.301; VICReg's +0.037 and +0.048 at
    /// seeds 1 and 3 are under this test's bar. One test per method, so the
    /// test threads share them out.
    fn learns_on_shape_only_scenes(method: &str) {
        let recipes = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
        let batch = if matches!(method, "dino" | "msn") {
            64
        } else {
            32
        };
        let text = std::fs::read_to_string(recipes.join(format!("{method}-tiny.toml"))).unwrap();
        let mut spec = RunSpec::from_toml(&text).unwrap();
        spec.data = DataSpec::Scenes(ScenesSpec {
            classes: 5,
            train_images: 640,
            test_images: 1000,
            image_size: 32,
            background_correlation: 0.0,
            class_colour: 0.0,
            background_signature: 0.0,
            seed: 11,
        });
        spec.eval.probes = vec![sslab_shared::spec::ProbeKind::Knn];
        spec.eval.layers = vec!["backbone".into()];
        spec.eval.online_probe = false;
        // 160 steps, more than the recipes' 96; BYOL needs 960 at this size,
        // and a smaller step with more decay; MSN's ViT 480.
        spec.optimizer.batch_size = batch;
        spec.schedule.epochs = 160 * batch / 640;
        if method == "msn" {
            spec.schedule.epochs *= 3;
        }
        if method == "byol" {
            spec.schedule.epochs *= 6;
            spec.optimizer.lr = 0.002;
            spec.optimizer.weight_decay = 0.01;
        }
        let splits = crate::data::load(&spec.data).unwrap();
        let (untrained, _) = model::build(&valid(&spec), &Device::Cpu).unwrap();
        let before = eval::evaluate(&untrained, &splits, &spec.eval, spec.seed, &Device::Cpu)
            .unwrap()[0]
            .value;
        let (_, evaluations) = train_to_end(&spec, &splits);
        let after = evaluations[0].value;
        eprintln!("{method}: kNN@backbone untrained {before:.3}, trained {after:.3}");
        assert!(
            after >= 0.30 && after >= before + 0.05,
            "{method}: kNN@backbone {before:.3} untrained -> {after:.3} trained (chance 0.20)"
        );
    }

    #[test]
    fn simclr_learns_on_shape_only_scenes() {
        learns_on_shape_only_scenes("simclr");
    }

    #[test]
    fn vicreg_learns_on_shape_only_scenes() {
        learns_on_shape_only_scenes("vicreg");
    }

    #[test]
    fn byol_learns_on_shape_only_scenes() {
        learns_on_shape_only_scenes("byol");
    }

    #[test]
    fn dino_learns_on_shape_only_scenes() {
        learns_on_shape_only_scenes("dino");
    }

    #[test]
    fn msn_learns_on_shape_only_scenes() {
        learns_on_shape_only_scenes("msn");
    }

    /// Every tiny recipe trains as written (method, backbone, online probe,
    /// evaluation plan), on 128 of its images for its 6 epochs.
    #[test]
    fn every_tiny_recipe_trains_as_written() {
        let recipes = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
        for method in [
            "simclr", "mocov3", "byol", "simsiam", "barlow", "vicreg", "swav", "dino", "msn",
            "pmsn", "mae", "simmim",
        ] {
            let text =
                std::fs::read_to_string(recipes.join(format!("{method}-tiny.toml"))).unwrap();
            let mut spec = RunSpec::from_toml(&text).unwrap();
            let DataSpec::Scenes(scenes) = &mut spec.data else {
                panic!("{method}: the tiny recipes use the built-in scenes")
            };
            scenes.train_images = 128;
            scenes.test_images = 40;
            let splits = crate::data::load(&spec.data).unwrap();
            let (rec, evaluations) = train_to_end(&spec, &splits);
            assert_eq!(rec.losses.len(), 12, "{method}");
            assert!(!evaluations.is_empty(), "{method}");
            for e in &evaluations {
                assert!(e.value.is_finite(), "{method}: {} {}", e.layer, e.probe);
            }
        }
    }

    /// Trains `spec` to its end on the CPU: what the observer saw, and the
    /// final evaluations.
    fn train_to_end(spec: &RunSpec, splits: &Splits) -> (Record, Vec<Evaluation>) {
        let mut rec = Record::stopping_after(None);
        let ck = tempdir().join("run.safetensors");
        match train(&valid(spec), splits, &Device::Cpu, &ck, &mut rec) {
            Ok(Outcome::Finished { evaluations, .. }) => (rec, evaluations),
            Ok(_) => panic!("{}: stopped before its end", spec.name),
            Err(e) => panic!("{}: {e}", spec.name),
        }
    }

    fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sslab-engine-test-{}-{}",
            std::process::id(),
            Rng::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            )
            .next_u64()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
