//! BYOL (Grill et al. 2020, arXiv:2006.07733) and the pieces SimSiam shares:
//! an MLP predictor on the online branch, a negative-cosine regression loss,
//! and an EMA target network whose rate rises from `ema_base` to 1.

use candle_core::{D, Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sslab_shared::RunSpec;

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

/// A target network: an EMA copy of the online backbone + projector (and of
/// any module built with [`EmaTarget::var_builder`]) whose rate rises from
/// `base` to 1 along a cosine (BYOL, MoCo v3, DINO, MSN).
pub struct EmaTarget {
    online: VarMap,
    encoder: Encoder,
    vars: VarMap,
    base: f64,
}

impl EmaTarget {
    pub fn new(spec: &RunSpec, online: &VarMap, device: &Device, base: f64) -> crate::Result<Self> {
        let (encoder, vars) = model::build(spec, device)?;
        copy_encoder_vars(online, &vars, 0.0)?;
        Ok(EmaTarget {
            online: online.clone(),
            encoder,
            vars,
            base,
        })
    }

    /// The target's projection, cut from the graph.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self.encoder.forward_t(x, true)?.detach())
    }

    /// Builds extra target modules (DINO's prototypes) beside the encoder;
    /// call [`EmaTarget::sync`] afterwards to start them from the online weights.
    pub fn var_builder(&self, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_varmap(&self.vars, candle_core::DType::F32, device)
    }

    /// Copies the online weights into the target.
    pub fn sync(&self) -> candle_core::Result<()> {
        copy_encoder_vars(&self.online, &self.vars, 0.0)
    }

    /// Moves the target toward the online weights after an optimiser step.
    pub fn update(&self, at: &StepInfo) -> candle_core::Result<()> {
        copy_encoder_vars(
            &self.online,
            &self.vars,
            ema_rate(self.base, at.step + 1, at.total_steps),
        )
    }

    /// The target's weights, for a checkpoint that resumes exactly.
    pub fn vars(&self) -> &VarMap {
        &self.vars
    }
}

pub struct Byol {
    predictor: Projector,
    target: EmaTarget,
}

impl Byol {
    pub fn new(
        spec: &RunSpec,
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

/// target ← τ·target + (1 − τ)·online, for every encoder variable (BatchNorm
/// statistics included); τ = 0 copies.
pub fn copy_encoder_vars(online: &VarMap, target: &VarMap, tau: f64) -> candle_core::Result<()> {
    let online = online.data().lock().expect("varmap lock");
    let target = target.data().lock().expect("varmap lock");
    for (name, t) in target.iter() {
        if let Some(o) = online.get(name) {
            let next = if tau == 0.0 {
                o.as_tensor().clone()
            } else {
                ((t.as_tensor() * tau)? + (o.as_tensor() * (1.0 - tau))?)?
            };
            t.set(&next.detach())?;
        }
    }
    Ok(())
}

/// The EMA rate after `step` of `total` steps: 1 − (1 − base)(cos(πk/K) + 1)/2.
pub fn ema_rate(base: f64, step: usize, total: usize) -> f64 {
    let progress = step as f64 / total.max(1) as f64;
    1.0 - (1.0 - base) * ((std::f64::consts::PI * progress).cos() + 1.0) / 2.0
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
        super::target_state(&self.target)
    }

    fn load_state(&mut self, state: &super::State) -> crate::Result<()> {
        super::load_target_state(&self.target, state)
    }
}
