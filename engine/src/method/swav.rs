//! SwAV (Caron et al. 2020, arXiv:2006.09882; facebookresearch/swav): each
//! global view's scores against K normalised prototypes are turned into
//! balanced codes by Sinkhorn-Knopp; every other view predicts them.
//! The feature queue of the paper (for batches far below 256) is not kept.

use candle_core::{Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sslab_shared::RunSpec;
use sslab_shared::spec::MethodSpec;

use super::prototypes::{Prototypes, cross_view_loss, scores_per_view};
use super::{Method, StepInfo, StepLoss};
use crate::model::Encoder;

pub struct Swav {
    prototypes: Prototypes,
    temperature: f64,
    epsilon: f64,
    iterations: usize,
    freeze_epochs: f64,
}

impl Swav {
    pub fn new(spec: &RunSpec, online: &VarMap, device: &Device) -> crate::Result<Self> {
        let MethodSpec::Swav {
            prototypes,
            temperature,
            epsilon,
            sinkhorn_iterations,
            freeze_prototypes_epochs,
        } = spec.method
        else {
            unreachable!("built for SwAV specs only")
        };
        let vb = VarBuilder::from_varmap(online, candle_core::DType::F32, device);
        let p = Prototypes::new(prototypes, spec.embedding_dim(), vb.pp("prototypes"))?;
        crate::model::seed_weights_under(online, "prototypes.", spec.seed ^ 0x5FA7)?;
        Ok(Swav {
            freeze_epochs: freeze_prototypes_epochs,
            prototypes: p,
            temperature,
            epsilon,
            iterations: sinkhorn_iterations,
        })
    }
}

/// Sinkhorn-Knopp codes (SwAV's `distributed_sinkhorn` on one process):
/// Q = exp(scores/ε) scaled so that its prototypes (columns) and samples
/// (rows) alternately sum to 1/K and 1/N; rows returned summing to 1.
/// `scores`: (N, K), no gradient.
pub fn sinkhorn(scores: &Tensor, epsilon: f64, iterations: usize) -> candle_core::Result<Tensor> {
    let (n, k) = scores.dims2()?;
    // Subtracting the maximum changes nothing after normalising and keeps exp finite.
    let scaled = (scores.detach() / epsilon)?;
    let mut q = scaled
        .broadcast_sub(&scaled.max_keepdim(1)?.max_keepdim(0)?)?
        .exp()?;
    q = q.broadcast_div(&q.sum_all()?)?;
    for _ in 0..iterations {
        q = (q.broadcast_div(&q.sum_keepdim(0)?)? / k as f64)?;
        q = (q.broadcast_div(&q.sum_keepdim(1)?)? / n as f64)?;
    }
    q * n as f64
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
        _at: &StepInfo,
    ) -> candle_core::Result<StepLoss> {
        let (scores, features) = scores_per_view(encoder, &self.prototypes, views)?;
        let codes = scores[..2]
            .iter()
            .map(|s| sinkhorn(s, self.epsilon, self.iterations))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let logits = scores
            .iter()
            .map(|s| s / self.temperature)
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(StepLoss {
            loss: cross_view_loss(&logits, &codes)?,
            features,
        })
    }
}
