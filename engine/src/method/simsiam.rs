//! SimSiam (Chen & He 2021, arXiv:2011.10566): a predictor regresses the
//! other view's projection through a stop-gradient; no target network.

use candle_core::{D, Device, ModuleT, Tensor};
use candle_nn::VarMap;
use sslab_shared::RunSpec;

use super::{Method, StepInfo, StepLoss, l2_normalize};
use crate::model::{Encoder, Projector};

pub struct SimSiam {
    predictor: Projector,
}

impl SimSiam {
    pub fn new(spec: &RunSpec, varmap: &VarMap, device: &Device) -> crate::Result<Self> {
        Ok(SimSiam {
            predictor: super::byol::predictor(spec, varmap, device)?,
        })
    }
}

/// −cos(p, sg(z)) averaged over the batch; the caller symmetrises with ½.
pub fn negative_cosine(p: &Tensor, z: &Tensor) -> candle_core::Result<Tensor> {
    let z = z.detach();
    (l2_normalize(p)? * l2_normalize(&z)?)?
        .sum(D::Minus1)?
        .mean_all()?
        .neg()
}

impl Method for SimSiam {
    fn loss(
        &mut self,
        encoder: &Encoder,
        views: &[Tensor],
        _at: &StepInfo,
    ) -> candle_core::Result<StepLoss> {
        let n = views[0].dim(0)?;
        let layers = encoder.forward_layers(&Tensor::cat(&[&views[0], &views[1]], 0)?, true)?;
        let z = layers.last().expect("the backbone is always a layer");
        let p = self.predictor.forward_t(z, true)?;
        let loss = ((negative_cosine(&p.narrow(0, 0, n)?, &z.narrow(0, n, n)?)?
            + negative_cosine(&p.narrow(0, n, n)?, &z.narrow(0, 0, n)?)?)?
            * 0.5)?;
        Ok(StepLoss {
            loss,
            features: layers[0].narrow(0, 0, n)?,
        })
    }
}
