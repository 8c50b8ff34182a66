//! MoCo v3 (Chen, Xie & He 2021, arXiv:2104.02057; authors' code
//! facebookresearch/moco-v3): InfoNCE between the online predictor's output
//! for one view and the momentum encoder's projection of the other, the
//! other keys of the batch as negatives.

use candle_core::{Device, ModuleT, Tensor};
use candle_nn::VarMap;
use sslab_shared::ValidSpec;

use super::byol::predictor;
use super::ema::EmaTarget;
use super::{Method, StepInfo, StepLoss, l2_normalize};
use crate::model::{Encoder, Projector};

pub struct MocoV3 {
    predictor: Projector,
    target: EmaTarget,
    temperature: f64,
}

impl MocoV3 {
    pub fn new(
        spec: &ValidSpec,
        online: &VarMap,
        device: &Device,
        temperature: f64,
        ema_base: f64,
    ) -> crate::Result<Self> {
        Ok(MocoV3 {
            predictor: predictor(spec, online, device)?,
            target: EmaTarget::new(spec, online, device, ema_base)?,
            temperature,
        })
    }
}

/// Cross-entropy of q·kᵀ/τ against the diagonal, scaled by 2τ as in the
/// authors' code; keys are cut from the graph. `q`, `k`: (N, d).
pub fn contrastive_loss(q: &Tensor, k: &Tensor, temperature: f64) -> candle_core::Result<Tensor> {
    let logits = (l2_normalize(q)?.matmul(&l2_normalize(&k.detach())?.t()?)? / temperature)?;
    let n = q.dim(0)? as u32;
    let labels = Tensor::new((0..n).collect::<Vec<u32>>().as_slice(), q.device())?;
    candle_nn::loss::cross_entropy(&logits, &labels)? * (2.0 * temperature)
}

impl Method for MocoV3 {
    fn loss(
        &mut self,
        encoder: &Encoder,
        views: &[Tensor],
        _at: &StepInfo,
    ) -> candle_core::Result<StepLoss> {
        let n = views[0].dim(0)?;
        let both = Tensor::cat(&[&views[0], &views[1]], 0)?;
        let layers = encoder.forward_layers(&both, true)?;
        let z = layers.last().expect("the backbone is always a layer");
        let q = self.predictor.forward_t(z, true)?;
        let k = self.target.forward(&both)?;
        let t = self.temperature;
        let loss = (contrastive_loss(&q.narrow(0, 0, n)?, &k.narrow(0, n, n)?, t)?
            + contrastive_loss(&q.narrow(0, n, n)?, &k.narrow(0, 0, n)?, t)?)?;
        Ok(StepLoss {
            loss,
            features: layers[0].narrow(0, 0, n)?,
        })
    }

    fn after_step(&mut self, at: &StepInfo) -> candle_core::Result<()> {
        self.target.update(at)
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.target.state()
    }

    fn load_state(&mut self, state: &super::State) -> crate::Result<()> {
        self.target.load_state(state)
    }
}
