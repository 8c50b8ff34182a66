//! BYOL (Grill et al. 2020, arXiv:2006.07733) and the pieces SimSiam and
//! MoCo v3 share: an MLP predictor on the online branch and a
//! negative-cosine regression loss; its target is an [`EmaTarget`].

use candle_core::{D, Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sslab_shared::{RunSpec, ValidSpec};

use super::ema::EmaTarget;
use super::{Method, StepInfo, StepLoss, l2_normalize};
use crate::model::{self, Encoder, Projector};

/// 2 − 2·cos(p, sg(z)) averaged over the batch (solo-learn's form; one
/// direction, the caller symmetrises).
pub fn regression_loss(p: &Tensor, z: &Tensor) -> candle_core::Result<Tensor> {
    let z = z.detach();
    let cos = (l2_normalize(p)? * l2_normalize(&z)?)?.sum(D::Minus1)?;
    (2.0 - (cos * 2.0)?)?.mean_all()
}

/// The predictor the spec names, with weights under `predictor.*` drawn from the run's seed.
pub fn predictor(spec: &RunSpec, varmap: &VarMap, device: &Device) -> crate::Result<Projector> {
    let widths = match spec.predictor_dims() {
        Some(Ok(w)) => w,
        Some(Err(m)) => return Err(sslab_shared::SpecError::new("method.predictor", m).into()),
        None => {
            return Err(crate::EngineError::Data(
                "this method has no predictor".into(),
            ));
        }
    };
    let vb = VarBuilder::from_varmap(varmap, candle_core::DType::F32, device);
    let input = *widths
        .last()
        .expect("a predictor ends at the projector's width");
    let p = Projector::new(input, &widths, true, vb.pp("predictor"))?;
    model::seed_weights_under(varmap, "predictor.", spec.seed ^ 0x9ED1C7)?;
    Ok(p)
}

pub struct Byol {
    predictor: Projector,
    target: EmaTarget,
}

impl Byol {
    pub fn new(
        spec: &ValidSpec,
        online: &VarMap,
        device: &Device,
        ema_base: f64,
    ) -> crate::Result<Self> {
        Ok(Byol {
            predictor: predictor(spec, online, device)?,
            target: EmaTarget::new(spec, online, device, ema_base)?,
        })
    }
}

impl Method for Byol {
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
        let p = self.predictor.forward_t(z, true)?;
        let t = self.target.forward(&both)?;
        let loss = (regression_loss(&p.narrow(0, 0, n)?, &t.narrow(0, n, n)?)?
            + regression_loss(&p.narrow(0, n, n)?, &t.narrow(0, 0, n)?)?)?;
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
