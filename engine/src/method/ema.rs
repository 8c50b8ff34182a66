//! The target network of BYOL (Grill et al. 2020, arXiv:2006.07733), MoCo v3,
//! DINO and MSN: an exponential moving average of the online encoder.

use candle_core::{Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sslab_shared::ValidSpec;

use super::{State, StepInfo, state_tensor};
use crate::model::{self, Encoder};

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
    pub fn new(
        spec: &ValidSpec,
        online: &VarMap,
        device: &Device,
        base: f64,
    ) -> crate::Result<Self> {
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

    /// The target's weights as method state, under `target.`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let data = self.vars.data().lock().expect("varmap lock");
        data.iter()
            .map(|(name, var)| (format!("target.{name}"), var.as_tensor().clone()))
            .collect()
    }

    pub fn load_state(&self, state: &State) -> crate::Result<()> {
        let data = self.vars.data().lock().expect("varmap lock");
        for (name, var) in data.iter() {
            var.set(&state_tensor(state, &format!("target.{name}"))?)?;
        }
        Ok(())
    }
}

/// target ← τ·target + (1 − τ)·online, for every encoder variable (BatchNorm
/// statistics included); τ = 0 copies.
pub fn copy_encoder_vars(online: &VarMap, target: &VarMap, tau: f64) -> candle_core::Result<()> {
    let online = online.data().lock().expect("varmap lock");
    let target = target.data().lock().expect("varmap lock");
    for (name, t) in target.iter() {
        if let Some(o) = online.get(name) {
            if tau != 0.0 && crate::ops::ema_in_place(t.as_tensor(), o.as_tensor(), tau)? {
                continue;
            }
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
