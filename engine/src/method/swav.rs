//! SwAV (Caron et al. 2020, arXiv:2006.09882; facebookresearch/swav): each
//! global view's scores against K normalised prototypes are turned into
//! balanced codes by Sinkhorn-Knopp; every other view predicts them.
//! With `queue_size`, the embeddings of past batches join each batch's
//! scores before Sinkhorn-Knopp (the paper's queue for small batches).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sslab_shared::RunSpec;
use sslab_shared::spec::SwavSpec;

use super::prototypes::{Prototypes, cross_view_loss, scores_per_view};
use super::{Method, State, StepInfo, StepLoss, l2_normalize};
use crate::model::Encoder;

pub struct Swav {
    prototypes: Prototypes,
    temperature: f64,
    epsilon: f64,
    iterations: usize,
    freeze_epochs: f64,
    queue_size: usize,
    queue_starts_epoch: f64,
    /// (2, queue_size, d) unit-norm embeddings of past batches, newest
    /// first, per global view; made when the queue starts.
    queue: Option<Tensor>,
    /// Rows of the queue written so far, up to `queue_size`.
    queued: usize,
}

impl Swav {
    pub fn new(
        spec: &RunSpec,
        settings: &SwavSpec,
        online: &VarMap,
        device: &Device,
    ) -> crate::Result<Self> {
        let SwavSpec {
            prototypes,
            temperature,
            epsilon,
            sinkhorn_iterations,
            freeze_prototypes_epochs,
            queue_size,
            queue_starts_epoch,
        } = *settings;
        let vb = VarBuilder::from_varmap(online, DType::F32, device);
        let p = Prototypes::new(prototypes, spec.embedding_dim(), vb.pp("prototypes"))?;
        crate::model::seed_weights_under(online, "prototypes.", spec.seed ^ 0x5FA7)?;
        Ok(Swav {
            freeze_epochs: freeze_prototypes_epochs,
            prototypes: p,
            temperature,
            epsilon,
            iterations: sinkhorn_iterations,
            queue_size,
            queue_starts_epoch,
            queue: None,
            queued: 0,
        })
    }

    /// Pushes the batch's unit-norm global embeddings `z` (2N, d) into the
    /// queue, dropping its oldest rows.
    fn push(&mut self, z: &Tensor) -> candle_core::Result<()> {
        let (two_n, d) = z.dims2()?;
        let n = two_n / 2;
        let size = self.queue_size;
        let queue = match self.queue.take() {
            Some(q) => q,
            None => Tensor::zeros((2, size, d), DType::F32, z.device())?,
        };
        let fresh = z
            .to_dtype(DType::F32)?
            .reshape((2, n, d))?
            .narrow(1, 0, n.min(size))?;
        let kept = queue.narrow(1, 0, size - n.min(size))?;
        self.queue = Some(Tensor::cat(&[&fresh, &kept], 1)?);
        self.queued = (self.queued + n).min(size);
        Ok(())
    }
}

/// Sinkhorn-Knopp codes (SwAV's `distributed_sinkhorn` on one process):
/// Q = exp(scores/ε) scaled so that its prototypes (columns) and samples
/// (rows) alternately sum to 1/K and 1/N; rows returned summing to 1.
/// `scores`: (N, K), no gradient.
pub fn sinkhorn(scores: &Tensor, epsilon: f64, iterations: usize) -> candle_core::Result<Tensor> {
    balance(&(scores / epsilon)?, iterations)
}

/// The Sinkhorn-Knopp iterations on Q = exp(`log_q`), (N, K): columns scaled
/// to sum to 1/K, then rows to 1/N, `iterations` (≥ 1) times; rows returned
/// summing to 1. Kept in the log domain so that a sharply peaked Q (MSN's
/// p^(1/T)) cannot underflow into a column of zeros.
pub fn balance(log_q: &Tensor, iterations: usize) -> candle_core::Result<Tensor> {
    let (n, k) = log_q.dims2()?;
    let mut l = log_q.detach();
    for _ in 0..iterations {
        l = (l.broadcast_sub(&l.log_sum_exp(0)?.unsqueeze(0)?)? - (k as f64).ln())?;
        l = (l.broadcast_sub(&l.log_sum_exp(1)?.unsqueeze(1)?)? - (n as f64).ln())?;
    }
    (l + (n as f64).ln())?.exp()
}

impl Method for Swav {
    fn frozen(&self, at: &StepInfo) -> Vec<Tensor> {
        if (at.step as f64) < self.freeze_epochs * at.steps_per_epoch as f64 {
            vec![self.prototypes.weight().clone()]
        } else {
            Vec::new()
        }
    }

    fn loss(
        &mut self,
        encoder: &Encoder,
        views: &[Tensor],
        at: &StepInfo,
    ) -> candle_core::Result<StepLoss> {
        let (scores, features, z) = scores_per_view(encoder, &self.prototypes, views)?;
        let n = views[0].dim(0)?;
        // A full queue adds its rows to each view's scores; the batch's codes
        // are the first n rows of the balanced assignment over all of them.
        let full = self
            .queue
            .as_ref()
            .filter(|_| self.queued == self.queue_size);
        let mut codes = Vec::new();
        for (v, s) in scores[..2].iter().enumerate() {
            let all = match full {
                Some(q) => Tensor::cat(&[s, &self.prototypes.cosine_detached(&q.get(v)?)?], 0)?,
                None => s.clone(),
            };
            codes.push(sinkhorn(&all, self.epsilon, self.iterations)?.narrow(0, 0, n)?);
        }
        let epoch = at.step as f64 / at.steps_per_epoch.max(1) as f64;
        if self.queue_size > 0 && epoch >= self.queue_starts_epoch {
            self.push(&l2_normalize(&z.detach())?)?;
        }
        let logits = scores
            .iter()
            .map(|s| s / self.temperature)
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(StepLoss {
            loss: cross_view_loss(&logits, &codes)?,
            features,
        })
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let Some(q) = &self.queue else {
            return Vec::new();
        };
        let mut out = vec![("swav.queue".to_string(), q.clone())];
        if let Ok(t) = Tensor::new(&[self.queued as f32], q.device()) {
            out.push(("swav.queued".to_string(), t));
        }
        out
    }

    fn load_state(&mut self, state: &State) -> crate::Result<()> {
        let Some(q) = state.get("swav.queue") else {
            return Ok(());
        };
        let queued = super::state_tensor(state, "swav.queued")?.to_vec1::<f32>()?;
        let (_, size, _) = q.dims3()?;
        if size != self.queue_size {
            return Err(crate::EngineError::Data(format!(
                "the checkpoint's SwAV queue holds {size} rows, the spec asks for {}",
                self.queue_size
            )));
        }
        self.queue = Some(q.clone());
        self.queued = queued.first().map_or(0, |&r| r as usize);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sslab_shared::spec::{DataSpec, MethodSpec, ScenesSpec};

    fn valid(spec: &RunSpec) -> sslab_shared::ValidSpec {
        spec.clone().into_valid().unwrap()
    }

    use super::*;

    fn build(s: &RunSpec, varmap: &VarMap, device: &Device) -> crate::Result<Swav> {
        let MethodSpec::Swav(settings) = &s.method else {
            panic!("a SwAV spec")
        };
        Swav::new(s, settings, varmap, device)
    }

    fn spec(queue: usize) -> RunSpec {
        let mut s = RunSpec {
            method: MethodSpec::from_name("swav").unwrap(),
            ..RunSpec::default()
        };
        if let MethodSpec::Swav(m) = &mut s.method {
            m.prototypes = 16;
            m.queue_size = queue;
        }
        s.data = DataSpec::Scenes(ScenesSpec {
            classes: 4,
            train_images: 32,
            test_images: 8,
            ..ScenesSpec::default()
        });
        s.backbone.width = 8;
        s.projector.dims = "32-16".parse().expect("widths");
        s.optimizer.batch_size = 8;
        s.fit_model_to_method();
        s.validate().unwrap();
        s
    }

    /// A queue of two batches fills during two steps without changing the
    /// loss, then changes it; its state carries it over to a resumed run.
    #[test]
    fn the_queue_fills_then_joins_the_codes_and_resumes() {
        let device = Device::Cpu;
        let with_queue = spec(16);
        let splits = crate::data::load(&with_queue.data).unwrap();
        let (encoder, varmap) = crate::model::build(&valid(&with_queue), &device).unwrap();
        let mut queued = build(&with_queue, &varmap, &device).unwrap();
        let mut plain = build(&spec(0), &varmap, &device).unwrap();
        let loss = |m: &mut Swav, step: usize| {
            let idx: Vec<usize> = (8 * step..8 * step + 8).collect();
            let views =
                crate::train::batch_tensors(&with_queue, &splits.train, &idx, 0, 2, &device)
                    .unwrap();
            let at = StepInfo {
                step,
                total_steps: 4,
                steps_per_epoch: 4,
                seed: with_queue.seed,
            };
            m.loss(&encoder, &views, &at)
                .unwrap()
                .loss
                .to_scalar::<f32>()
                .unwrap()
        };
        for step in 0..2 {
            assert_eq!(
                loss(&mut queued, step),
                loss(&mut plain, step),
                "step {step}"
            );
        }
        assert_eq!(queued.queued, 16);
        let state: State = queued.state().into_iter().collect();
        let mut resumed = build(&with_queue, &varmap, &device).unwrap();
        resumed.load_state(&state).unwrap();
        let (a, b) = (loss(&mut queued, 2), loss(&mut plain, 2));
        assert_ne!(a, b, "a full queue changes the codes");
        assert_eq!(loss(&mut resumed, 2), a);
        let err = build(&spec(24), &varmap, &device)
            .unwrap()
            .load_state(&state)
            .unwrap_err();
        assert!(err.to_string().contains("16 rows"), "{err}");
    }
}
