//! RCDM (arXiv:2112.09164): a diffusion model whose denoiser is conditioned
//! on a frozen representation. It trains on ε-prediction MSE at uniform
//! timesteps with AdamW and samples with an EMA of its weights.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sslab_shared::SpecError;
use sslab_shared::decoder::{RcdmSettings, Sampler};
use sslab_shared::rng::Rng;
use sslab_shared::spec::{OptimizerKind, OptimizerSpec};

use super::schedule::{Respaced, Schedule};
use super::unet::{self, UNet};
use crate::error::EngineError;
use crate::optim::Optimizer;

pub struct Rcdm {
    settings: RcdmSettings,
    image_size: usize,
    cond_dim: usize,
    schedule: Schedule,
    respaced: Respaced,
    unet: UNet,
    vars: VarMap,
    /// The same network over the EMA weights; it samples.
    ema_unet: UNet,
    ema_vars: VarMap,
    optimizer: Optimizer,
    steps: usize,
    device: Device,
}

impl Rcdm {
    pub fn new(
        settings: &RcdmSettings,
        image_size: usize,
        cond_dim: usize,
        lr: f64,
        seed: u64,
        device: &Device,
    ) -> crate::Result<Self> {
        check_settings(settings)?;
        settings.check_image_size(image_size)?;
        if cond_dim == 0 {
            return Err(EngineError::Data(
                "RCDM needs a representation of at least 1 dimension to condition on".into(),
            ));
        }
        let vars = VarMap::new();
        let unet = UNet::new(
            settings,
            image_size,
            cond_dim,
            VarBuilder::from_varmap(&vars, DType::F32, device),
        )?;
        unet::init_weights(&vars, seed)?;
        let ema_vars = VarMap::new();
        let ema_unet = UNet::new(
            settings,
            image_size,
            cond_dim,
            VarBuilder::from_varmap(&ema_vars, DType::F32, device),
        )?;
        blend(&ema_vars, &vars, 0.0)?;
        let spec = OptimizerSpec {
            kind: OptimizerKind::Adamw,
            lr,
            weight_decay: 0.0,
            ..Default::default()
        };
        let optimizer = Optimizer::new(&spec, &vars)?;
        let schedule = Schedule::from_settings(settings);
        let respaced = schedule.respace(settings.sample_steps);
        Ok(Rcdm {
            settings: settings.clone(),
            image_size,
            cond_dim,
            schedule,
            respaced,
            unet,
            vars,
            ema_unet,
            ema_vars,
            optimizer,
            steps: 0,
            device: device.clone(),
        })
    }

    /// The weights, their moving average and the optimiser's state, to
    /// resume training from.
    pub fn state(&self) -> crate::Result<Vec<(String, Tensor)>> {
        let mut out = super::vars_state(&self.vars, "w.");
        out.extend(super::vars_state(&self.ema_vars, "ema."));
        out.extend(self.optimizer.state("opt.")?);
        Ok(out)
    }

    /// Restores what [`Rcdm::state`] saved.
    pub fn load_state(
        &mut self,
        state: &std::collections::HashMap<String, Tensor>,
    ) -> crate::Result<()> {
        super::load_vars(&self.vars, state, "w.")?;
        super::load_vars(&self.ema_vars, state, "ema.")?;
        self.optimizer
            .load_state(state, "opt.")
            .map_err(EngineError::Data)?;
        self.steps = self.optimizer.steps();
        Ok(())
    }

    /// Optimiser steps taken.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// One AdamW step on a batch: `x` B×3×s×s scaled to [−1, 1], `cond`
    /// B×cond_dim (f32). Uniform timesteps, ε-prediction MSE. Returns the loss.
    pub fn train_step(&mut self, x: &Tensor, cond: &Tensor, rng: &mut Rng) -> crate::Result<f32> {
        let b = self.check_images(x)?;
        self.check_cond(cond, Some(b))?;
        let x = x.to_device(&self.device)?.to_dtype(DType::F32)?;
        let cond = cond.to_device(&self.device)?.to_dtype(DType::F32)?;
        let t: Vec<usize> = (0..b).map(|_| rng.below(self.schedule.len())).collect();
        let noise = self.normal(x.dims(), rng)?;
        let xt = self.schedule.q_sample(&x, &t, &noise)?;
        let predicted = self.unet.forward(&xt, &t, &cond)?;
        let loss = (predicted - &noise)?.sqr()?.mean_all()?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(EngineError::NonFiniteLoss {
                step: self.steps,
                value,
            });
        }
        self.optimizer.step(&loss.backward()?)?;
        self.steps += 1;
        blend(&self.ema_vars, &self.vars, self.ema_decay())?;
        Ok(value)
    }

    /// N×3×s×s samples in [0, 1] for the N rows of `cond`, with the EMA
    /// weights, `settings.sample_steps` respaced steps and `settings.sampler`.
    pub fn sample(&self, cond: &Tensor, rng: &mut Rng) -> crate::Result<Tensor> {
        let n = self.check_cond(cond, None)?;
        let cond = cond.to_device(&self.device)?.to_dtype(DType::F32)?;
        let s = self.image_size;
        let shape = [n, 3, s, s];
        let mut x = self.normal(&shape, rng)?;
        for i in (0..self.respaced.len()).rev() {
            let t = vec![self.respaced.timesteps[i]; n];
            // Detached so that each step's graph is freed.
            let eps = self.ema_unet.forward(&x, &t, &cond)?.detach();
            x = match self.settings.sampler {
                Sampler::Ddim => self.respaced.ddim_step(&x, &eps, i)?,
                Sampler::Ddpm => {
                    // Unused at the last step, which adds no noise.
                    let noise = self.normal(&shape, rng)?;
                    self.respaced.ddpm_step(&x, &eps, i, &noise)?
                }
            }
            .detach();
        }
        Ok(((x + 1.0)? / 2.0)?.clamp(0.0, 1.0)?)
    }

    /// The EMA's decay after `steps` steps: `settings.ema`, warmed up as
    /// (1 + n)/(10 + n) so that a short run's average is not mostly the
    /// random initial weights.
    fn ema_decay(&self) -> f64 {
        let n = self.steps as f64;
        self.settings.ema.min((1.0 + n) / (10.0 + n))
    }

    fn normal(&self, shape: &[usize], rng: &mut Rng) -> crate::Result<Tensor> {
        let count: usize = shape.iter().product();
        let values: Vec<f32> = (0..count).map(|_| rng.normal() as f32).collect();
        Ok(Tensor::from_vec(values, shape, &self.device)?)
    }

    /// The batch size of images of this decoder's size.
    fn check_images(&self, x: &Tensor) -> crate::Result<usize> {
        let s = self.image_size;
        match x.dims() {
            &[b, 3, h, w] if h == s && w == s && b > 0 => Ok(b),
            dims => Err(EngineError::Data(format!(
                "RCDM was built for {s}×{s} px RGB images (B×3×{s}×{s}); got a batch of shape {dims:?}"
            ))),
        }
    }

    /// The number of representations, `batch` of them when given.
    fn check_cond(&self, cond: &Tensor, batch: Option<usize>) -> crate::Result<usize> {
        let dim = self.cond_dim;
        let &[n, width] = cond.dims() else {
            return Err(EngineError::Data(format!(
                "RCDM conditions on N×{dim} representations; got shape {:?}",
                cond.dims()
            )));
        };
        if width != dim {
            return Err(EngineError::Data(format!(
                "RCDM was built for {dim}-dimensional representations; got {width} dimensions"
            )));
        }
        if n == 0 || batch.is_some_and(|b| b != n) {
            return Err(EngineError::Data(format!(
                "RCDM needs one representation per image: {n} representations for {} images",
                batch.unwrap_or(0)
            )));
        }
        Ok(n)
    }
}

/// What the network and the schedule need of settings that may not have
/// been validated (a spec's `validate` checks these too).
fn check_settings(s: &RcdmSettings) -> Result<(), SpecError> {
    let bad = |field: &str, msg: String| Err(SpecError::new(format!("rcdm.{field}"), msg));
    if s.multipliers.is_empty() || s.multipliers.contains(&0) {
        return bad(
            "multipliers",
            "one positive multiplier per level, e.g. [1, 2, 2]".into(),
        );
    }
    if s.groups == 0 || s.channels == 0 || !s.channels.is_multiple_of(s.groups) {
        return bad(
            "groups",
            format!(
                "{} groups do not divide the first level's {} channels",
                s.groups, s.channels
            ),
        );
    }
    if s.diffusion_steps == 0 || !(1..=s.diffusion_steps).contains(&s.sample_steps) {
        return bad(
            "sample_steps",
            format!(
                "need 1 to {} sampling steps (the training steps); got {}",
                s.diffusion_steps, s.sample_steps
            ),
        );
    }
    Ok(())
}

/// target ← τ·target + (1 − τ)·source, variable by variable; τ = 0 copies.
fn blend(target: &VarMap, source: &VarMap, tau: f64) -> candle_core::Result<()> {
    let source = source.data().lock().expect("varmap lock");
    let target = target.data().lock().expect("varmap lock");
    for (name, t) in target.iter() {
        let s = source[name].as_tensor();
        let next = if tau == 0.0 {
            s.copy()?
        } else {
            ((t.as_tensor() * tau)? + (s * (1.0 - tau))?)?
        };
        t.set(&next.detach())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> RcdmSettings {
        RcdmSettings {
            channels: 8,
            multipliers: vec![1, 2],
            res_blocks: 1,
            attention: vec![4],
            groups: 4,
            diffusion_steps: 100,
            // guided-diffusion scales the 1000-step schedule by 1000/T so
            // that x_T is still nearly pure noise.
            beta_start: 1e-3,
            beta_end: 0.2,
            sample_steps: 10,
            sampler: Sampler::Ddim,
            ema: 0.999,
        }
    }

    /// Four fixed 8 px images in [−1, 1] with distinct smooth patterns, and
    /// a 6-dimensional code for each.
    fn batch() -> (Tensor, Tensor) {
        let s = 8;
        let mut pixels = Vec::new();
        for k in 0..4 {
            for c in 0..3 {
                for y in 0..s {
                    for x in 0..s {
                        let v = match k {
                            0 => (x as f32 / 7.0) * 2.0 - 1.0,
                            1 => (y as f32 / 7.0) * 2.0 - 1.0,
                            2 => {
                                if (x / 4 + y / 4) % 2 == 0 {
                                    0.8
                                } else {
                                    -0.8
                                }
                            }
                            _ => 0.3 * (c as f32 - 1.0),
                        };
                        pixels.push(v);
                    }
                }
            }
        }
        let x = Tensor::from_vec(pixels, (4, 3, s, s), &Device::Cpu).unwrap();
        let mut rng = Rng::new(11);
        let codes: Vec<f32> = (0..24).map(|_| rng.normal() as f32).collect();
        let cond = Tensor::from_vec(codes, (4, 6), &Device::Cpu).unwrap();
        (x, cond)
    }

    fn in_unit_range(samples: &Tensor) {
        let v = samples.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|p| p.is_finite() && (0.0..=1.0).contains(p)));
    }

    #[test]
    fn the_loss_falls_and_samples_are_images() {
        let (x, cond) = batch();
        let mut model = Rcdm::new(&toy(), 8, 6, 2e-3, 1, &Device::Cpu).unwrap();
        let mut rng = Rng::new(5);
        let losses: Vec<f32> = (0..70)
            .map(|_| model.train_step(&x, &cond, &mut rng).unwrap())
            .collect();
        let mean = |l: &[f32]| l.iter().sum::<f32>() / l.len() as f32;
        let (first, last) = (mean(&losses[..10]), mean(&losses[60..]));
        assert!(last < 0.6 * first, "first {first}, last {last}: {losses:?}");
        assert_eq!(model.steps(), 70);

        let samples = model
            .sample(&cond.narrow(0, 0, 3).unwrap(), &mut rng)
            .unwrap();
        assert_eq!(samples.dims(), &[3, 3, 8, 8]);
        in_unit_range(&samples);
        let mut ddpm = toy();
        ddpm.sampler = Sampler::Ddpm;
        model.settings = ddpm;
        let samples = model.sample(&cond, &mut rng).unwrap();
        assert_eq!(samples.dims(), &[4, 3, 8, 8]);
        in_unit_range(&samples);
    }

    #[test]
    fn training_and_sampling_reproduce_from_the_seeds() {
        let (x, cond) = batch();
        let run = || {
            let mut model = Rcdm::new(&toy(), 8, 6, 1e-3, 3, &Device::Cpu).unwrap();
            let mut rng = Rng::new(9);
            let losses: Vec<f32> = (0..3)
                .map(|_| model.train_step(&x, &cond, &mut rng).unwrap())
                .collect();
            let samples = model
                .sample(&cond.narrow(0, 0, 1).unwrap(), &mut rng)
                .unwrap();
            (
                losses,
                samples.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        };
        assert_eq!(run(), run());
    }

    /// The EMA copy starts at the weights, then lags behind them.
    #[test]
    fn the_ema_follows_the_weights() {
        let (x, cond) = batch();
        let mut model = Rcdm::new(&toy(), 8, 6, 1e-2, 2, &Device::Cpu).unwrap();
        let name = "down.0.res.in_conv.weight";
        let get = |m: &VarMap| {
            m.data().lock().unwrap()[name]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let start = get(&model.vars);
        assert_eq!(get(&model.ema_vars), start);
        let mut rng = Rng::new(1);
        for _ in 0..5 {
            model.train_step(&x, &cond, &mut rng).unwrap();
        }
        let (now, ema) = (get(&model.vars), get(&model.ema_vars));
        let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| (p - q).abs()).sum::<f32>();
        assert!(dist(&ema, &start) > 0.0);
        assert!(dist(&ema, &start) < dist(&now, &start));
        // Decay warms up toward settings.ema.
        assert!((model.ema_decay() - 6.0 / 15.0).abs() < 1e-12);
        model.steps = 1_000_000;
        assert_eq!(model.ema_decay(), 0.999);
    }

    #[test]
    fn wrong_sizes_are_errors_that_name_them() {
        let (x, cond) = batch();
        let mut model = Rcdm::new(&toy(), 8, 6, 1e-3, 1, &Device::Cpu).unwrap();
        let mut rng = Rng::new(1);
        let wide = Tensor::zeros((4, 7), DType::F32, &Device::Cpu).unwrap();
        let e = model
            .train_step(&x, &wide, &mut rng)
            .unwrap_err()
            .to_string();
        assert!(e.contains("6-dimensional") && e.contains("got 7"), "{e}");
        let e = model.sample(&wide, &mut rng).unwrap_err().to_string();
        assert!(e.contains("6-dimensional") && e.contains("got 7"), "{e}");
        let big = Tensor::zeros((4, 3, 16, 16), DType::F32, &Device::Cpu).unwrap();
        let e = model
            .train_step(&big, &cond, &mut rng)
            .unwrap_err()
            .to_string();
        assert!(e.contains("8×8") && e.contains("16"), "{e}");
        let e = model
            .train_step(&x, &cond.narrow(0, 0, 2).unwrap(), &mut rng)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 representations for 4 images"), "{e}");
        let flat = Tensor::zeros(6, DType::F32, &Device::Cpu).unwrap();
        assert!(model.sample(&flat, &mut rng).is_err());
        assert_eq!(model.steps(), 0);

        // 3 levels halve twice: 10 px does not divide by 4.
        let mut deep = toy();
        deep.multipliers = vec![1, 2, 2];
        let e = Rcdm::new(&deep, 10, 6, 1e-3, 1, &Device::Cpu)
            .err()
            .unwrap();
        assert!(
            matches!(&e, EngineError::Spec(s) if s.field == "rcdm.multipliers"),
            "{e}"
        );
        assert!(e.to_string().contains("10 px"), "{e}");
        let mut odd = toy();
        odd.channels = 6;
        let e = Rcdm::new(&odd, 8, 6, 1e-3, 1, &Device::Cpu).err().unwrap();
        assert!(e.to_string().contains("6 channels"), "{e}");
    }
}
