//! Infusion training (Bordes, Honari & Vincent, arXiv:1703.06975): a
//! transition operator, applied `T` times from a data-statistics prior,
//! learns to turn noise into an image. While training, each step of the
//! chain is nudged toward the target: a Bernoulli(α_t) share of its pixels
//! is drawn near the target instead of from the model.
//!
//! The operator is a small convolutional network whose weights are shared by
//! every step but whose normalisation parameters are the step's own; the
//! conditioning representation sets a scale and shift (FiLM) after every
//! normalisation, as in RCDM.

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Init, Linear, VarBuilder, VarMap};
use sslab_shared::decoder::InfusionSettings;
use sslab_shared::rng::Rng;
use sslab_shared::spec::{OptimizerKind, OptimizerSpec};

use super::Conv;
use crate::error::{EngineError, Result};
use crate::optim::Optimizer;

/// Variance of the target's pixels in the infusion chain.
const TARGET_VAR: f64 = 1e-4;
/// Added to the prior's per-pixel variance.
const PRIOR_EPS: f64 = 1e-5;
const NORM_EPS: f64 = 1e-5;

/// Normalisation (statistics over groups of channels, per image) followed
/// by the step's own scale and shift and the conditioning's.
struct StepNorm {
    groups: usize,
    channels: usize,
    /// `steps × channels`, flattened (1-D, so the seeding pass keeps zeros).
    scale: Tensor,
    shift: Tensor,
    film: Linear,
}

impl StepNorm {
    fn new(channels: usize, steps: usize, cond_dim: usize, vb: VarBuilder) -> Result<Self> {
        let scale = vb.get_with_hints(steps * channels, "step_scale", Init::Const(0.0))?;
        let shift = vb.get_with_hints(steps * channels, "step_shift", Init::Const(0.0))?;
        let film = candle_nn::linear(cond_dim, 2 * channels, vb.pp("film"))?;
        Ok(StepNorm {
            groups: groups_for(channels),
            channels,
            scale,
            shift,
            film,
        })
    }

    fn forward(&self, x: &Tensor, step: usize, cond: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let g = x.reshape((b, self.groups, (c / self.groups) * h * w))?;
        let mean = g.mean_keepdim(D::Minus1)?;
        let centred = g.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred
            .broadcast_div(&(var + NORM_EPS)?.sqrt()?)?
            .reshape((b, c, h, w))?;
        let at = |v: &Tensor| {
            v.narrow(0, step * self.channels, self.channels)?
                .reshape((1, c, 1, 1))
        };
        let film = self.film.forward(cond)?;
        let cond_scale = film.narrow(1, 0, c)?.reshape((b, c, 1, 1))?;
        let cond_shift = film.narrow(1, c, c)?.reshape((b, c, 1, 1))?;
        let scale = cond_scale.broadcast_add(&at(&self.scale)?)?;
        let shift = cond_shift.broadcast_add(&at(&self.shift)?)?;
        normed.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(&shift)
    }
}

/// Groups of at most 8 channels' worth, dividing `channels`.
fn groups_for(channels: usize) -> usize {
    (1..=channels.min(8))
        .rev()
        .find(|g| channels.is_multiple_of(*g))
        .unwrap_or(1)
}

struct Block {
    norm1: StepNorm,
    conv1: Conv,
    norm2: StepNorm,
    conv2: Conv,
}

impl Block {
    fn forward(&self, x: &Tensor, step: usize, cond: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.norm1.forward(x, step, cond)?.silu()?;
        let h = self.conv1.forward(&h)?;
        let h = self.norm2.forward(&h, step, cond)?.silu()?;
        x + self.conv2.forward(&h)?
    }
}

/// The operator: one step of the chain, the step's index choosing its
/// normalisation. Two heads give each pixel's mean and variance.
struct Operator {
    stem: Conv,
    blocks: Vec<Block>,
    out_norm: StepNorm,
    mean: Conv,
    var: Conv,
}

impl Operator {
    fn new(s: &InfusionSettings, cond_dim: usize, vb: VarBuilder) -> Result<Self> {
        let c = s.channels;
        let conv = |i, o, vb| Conv::new(i, o, 3, 1, vb);
        let blocks = (0..s.blocks)
            .map(|k| {
                let vb = vb.pp(format!("block{k}"));
                Ok(Block {
                    norm1: StepNorm::new(c, s.steps, cond_dim, vb.pp("norm1"))?,
                    conv1: conv(c, c, vb.pp("conv1"))?,
                    norm2: StepNorm::new(c, s.steps, cond_dim, vb.pp("norm2"))?,
                    conv2: conv(c, c, vb.pp("conv2"))?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Operator {
            stem: conv(3, c, vb.pp("stem"))?,
            blocks,
            out_norm: StepNorm::new(c, s.steps, cond_dim, vb.pp("out_norm"))?,
            mean: conv(c, 3, vb.pp("mean"))?,
            var: conv(c, 3, vb.pp("var"))?,
        })
    }

    /// Mean (sigmoid) and variance (sigmoid × 0.1 + 1e-4) of every pixel
    /// of the next state, from `z` at step `step` (0-based).
    fn forward(
        &self,
        z: &Tensor,
        step: usize,
        cond: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let mut h = self.stem.forward(z)?;
        for b in &self.blocks {
            h = b.forward(&h, step, cond)?;
        }
        let h = self.out_norm.forward(&h, step, cond)?.silu()?;
        let mean = candle_nn::ops::sigmoid(&self.mean.forward(&h)?)?;
        let var = (candle_nn::ops::sigmoid(&self.var.forward(&h)?)? * 0.1)? + 1e-4;
        Ok((mean, var?))
    }
}

/// A trained (or training) infusion decoder for images of one size,
/// conditioned on representations of one width.
pub struct Infusion {
    settings: InfusionSettings,
    image_size: usize,
    cond_dim: usize,
    net: Operator,
    vars: VarMap,
    opt: Optimizer,
    /// The prior: per-pixel mean and standard deviation of the training
    /// images (`3 × s × s`, in [0, 1] units).
    prior_mean: Tensor,
    prior_std: Tensor,
}

impl Infusion {
    /// A fresh decoder whose prior is the statistics of `images`
    /// (`n × 3 × s × s` in [0, 1]).
    pub fn new(
        settings: &InfusionSettings,
        images: &Tensor,
        cond_dim: usize,
        lr: f64,
        seed: u64,
    ) -> Result<Self> {
        let (n, c, h, w) = images.dims4()?;
        if c != 3 || h != w || n < 2 {
            return Err(EngineError::Data(format!(
                "the infusion prior needs at least 2 square RGB images; got {n}×{c}×{h}×{w}"
            )));
        }
        let device = images.device().clone();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let net = Operator::new(settings, cond_dim, vb)?;
        crate::model::seed_weights_under(&varmap, "", seed)?;
        let opt = Optimizer::new(
            &OptimizerSpec {
                kind: OptimizerKind::Adamw,
                lr,
                weight_decay: 0.0,
                ..Default::default()
            },
            &varmap,
        )?;
        let prior_mean = images.mean(0)?;
        let prior_std = (images.broadcast_sub(&prior_mean)?.sqr()?.mean(0)? + PRIOR_EPS)?.sqrt()?;
        Ok(Infusion {
            settings: settings.clone(),
            image_size: h,
            cond_dim,
            net,
            vars: varmap,
            opt,
            prior_mean,
            prior_std,
        })
    }

    /// The weights and the optimiser's state, to resume training from.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = super::vars_state(&self.vars, "w.");
        out.extend(self.opt.state("opt.")?);
        Ok(out)
    }

    /// Restores what [`Infusion::state`] saved.
    pub fn load_state(&mut self, state: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        super::load_vars(&self.vars, state, "w.")?;
        self.opt
            .load_state(state, "opt.")
            .map_err(EngineError::Data)
    }

    fn check(&self, images: Option<&Tensor>, cond: &Tensor) -> Result<usize> {
        let (b, dim) = cond.dims2()?;
        if dim != self.cond_dim {
            return Err(EngineError::Data(format!(
                "the decoder is conditioned on {}-wide representations; this one is {dim} wide",
                self.cond_dim
            )));
        }
        if let Some(x) = images {
            let (n, _, h, w) = x.dims4()?;
            if h != self.image_size || w != self.image_size {
                return Err(EngineError::Data(format!(
                    "the decoder was trained on {s}×{s} images; these are {h}×{w}",
                    s = self.image_size
                )));
            }
            if n != b {
                return Err(EngineError::Data(format!(
                    "{n} images but {b} conditioning rows"
                )));
            }
        }
        Ok(b)
    }

    /// A draw of shape `like`'s from N(mean, std²), elementwise.
    fn gaussian(mean: &Tensor, std: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        let noise = normal_like(mean, rng)?;
        Ok(mean.add(&noise.mul(std)?)?)
    }

    /// Per-pixel Bernoulli(`rate`) mask (1 = take the target), `b × 3 × s × s`, u8.
    fn mask(&self, b: usize, rate: f64, rng: &mut Rng, device: &Device) -> Result<Tensor> {
        let s = self.image_size;
        let values: Vec<u8> = (0..b * 3 * s * s).map(|_| rng.chance(rate) as u8).collect();
        Ok(Tensor::from_vec(values, (b, 3, s, s), device)?)
    }

    /// Mixes a draw near the target `x` into `z` where `mask` is 1.
    fn infuse(x: &Tensor, z: &Tensor, mask: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        let near = (x + normal_like(x, rng)?.affine(TARGET_VAR.sqrt(), 0.0)?)?;
        Ok(mask.where_cond(&near, z)?)
    }

    /// One optimiser step on a batch: `x` is `b × 3 × s × s` in [0, 1],
    /// `cond` `b × dim`. The loss is −Σ_t (t/T)·log N(x; μ_t, σ_t²) per
    /// pixel, averaged; no gradient flows through the chain's samples.
    pub fn train_step(&mut self, x: &Tensor, cond: &Tensor, rng: &mut Rng) -> Result<f32> {
        let b = self.check(Some(x), cond)?;
        let device = x.device().clone();
        let t_max = self.settings.steps;
        let prior = self.prior(b, rng)?;
        let mask = self.mask(b, self.settings.rate(0), rng, &device)?;
        let mut z = Self::infuse(x, &prior, &mask, rng)?;
        let mut loss: Option<Tensor> = None;
        for t in 1..=t_max {
            let (mean, var) = self.net.forward(&z, t - 1, cond)?;
            let nll = gaussian_nll(x, &mean, &var)?.affine(t as f64 / t_max as f64, 0.0)?;
            loss = Some(match loss {
                None => nll,
                Some(l) => (l + nll)?,
            });
            if t < t_max {
                let next = Self::gaussian(&mean.detach(), &var.detach().sqrt()?, rng)?;
                let mask = self.mask(b, self.settings.rate(t), rng, &device)?;
                z = Self::infuse(x, &next, &mask, rng)?;
            }
        }
        let loss = loss.expect("at least one step");
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(EngineError::NonFiniteLoss { step: 0, value });
        }
        let grads = loss.backward()?;
        self.opt.step(&grads)?;
        Ok(value)
    }

    /// `b` draws from the prior.
    fn prior(&self, b: usize, rng: &mut Rng) -> Result<Tensor> {
        let s = self.image_size;
        let mean = self.prior_mean.unsqueeze(0)?.broadcast_as((b, 3, s, s))?;
        let std = self.prior_std.unsqueeze(0)?.broadcast_as((b, 3, s, s))?;
        Self::gaussian(&mean.contiguous()?, &std.contiguous()?, rng)
    }

    /// One image per row of `cond`, in [0, 1]: the prior, then the operator
    /// `steps` times, sampling in between; the last step's mean is shown.
    pub fn sample(&self, cond: &Tensor, steps: usize, rng: &mut Rng) -> Result<Tensor> {
        let b = self.check(None, cond)?;
        if steps == 0 {
            return Err(EngineError::Data(
                "sampling takes at least one step; steps is 0".into(),
            ));
        }
        let mut z = self.prior(b, rng)?;
        let t_max = self.settings.steps;
        for t in 1..=steps {
            // Beyond the trained steps the last step's normalisation repeats.
            let (mean, var) = self.net.forward(&z, (t - 1).min(t_max - 1), cond)?;
            // Detached, or each drawing would hold every step's activations
            // for as long as it is kept (768 drawings of a tiny audit's
            // reconstruction held 2.5 GB).
            let mean = mean.detach();
            if t == steps {
                return Ok(mean);
            }
            z = Self::gaussian(&mean, &var.detach().sqrt()?, rng)?;
        }
        unreachable!("the loop returns at its last step")
    }
}

/// Standard normal noise of `like`'s shape, from `rng`.
pub(crate) fn normal_like(like: &Tensor, rng: &mut Rng) -> Result<Tensor> {
    let values: Vec<f32> = (0..like.elem_count())
        .map(|_| rng.normal() as f32)
        .collect();
    Ok(Tensor::from_vec(values, like.shape(), like.device())?)
}

/// Mean over every pixel of −log N(x; mean, var).
fn gaussian_nll(x: &Tensor, mean: &Tensor, var: &Tensor) -> candle_core::Result<Tensor> {
    let sq = x.sub(mean)?.sqr()?;
    let per = ((var.log()? + (2.0 * std::f64::consts::PI).ln())? + sq.div(var)?)?;
    (per * 0.5)?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> InfusionSettings {
        InfusionSettings {
            steps: 4,
            channels: 8,
            blocks: 1,
            ..Default::default()
        }
    }

    /// Two flat colours, a few images each: enough to learn and to condition.
    fn two_colours(n: usize) -> (Tensor, Tensor) {
        let s = 8;
        let mut pix = Vec::new();
        let mut cond = Vec::new();
        for i in 0..n {
            let red = i % 2 == 0;
            for c in 0..3 {
                let v = match (red, c) {
                    (true, 0) | (false, 2) => 0.9f32,
                    _ => 0.1,
                };
                pix.extend(std::iter::repeat_n(v, s * s));
            }
            cond.extend(if red { [1.0f32, 0.0] } else { [0.0, 1.0] });
        }
        (
            Tensor::from_vec(pix, (n, 3, s, s), &Device::Cpu).unwrap(),
            Tensor::from_vec(cond, (n, 2), &Device::Cpu).unwrap(),
        )
    }

    #[test]
    fn the_prior_has_the_data_statistics() {
        let (x, _) = two_colours(8);
        let model = Infusion::new(&settings(), &x, 2, 1e-3, 0).unwrap();
        let mean: Vec<f32> = model.prior_mean.flatten_all().unwrap().to_vec1().unwrap();
        let std: Vec<f32> = model.prior_std.flatten_all().unwrap().to_vec1().unwrap();
        // Red channel: half 0.9, half 0.1.
        assert!((mean[0] - 0.5).abs() < 1e-5, "{}", mean[0]);
        assert!((std[0] - 0.4).abs() < 1e-4, "{}", std[0]);
    }

    #[test]
    fn the_mask_follows_the_rate() {
        let (x, _) = two_colours(4);
        let model = Infusion::new(&settings(), &x, 2, 1e-3, 0).unwrap();
        let mut rng = Rng::new(3);
        for t in [0, 3] {
            let rate = model.settings.rate(t);
            let m = model.mask(64, rate, &mut rng, &Device::Cpu).unwrap();
            let got = m
                .to_dtype(DType::F32)
                .unwrap()
                .mean_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            // 12 288 draws: the standard error is below 0.003.
            assert!((got - rate).abs() < 0.01, "t {t}: {got} vs {rate}");
        }
    }

    #[test]
    fn it_learns_and_follows_its_conditioning() {
        let (x, cond) = two_colours(16);
        let mut model = Infusion::new(&settings(), &x, 2, 5e-3, 1).unwrap();
        let mut rng = Rng::new(1);
        let losses: Vec<f32> = (0..120)
            .map(|_| model.train_step(&x, &cond, &mut rng).unwrap())
            .collect();
        let first: f32 = losses[..10].iter().sum::<f32>() / 10.0;
        let last: f32 = losses[110..].iter().sum::<f32>() / 10.0;
        assert!(last < first - 0.5, "{first} → {last}");
        let samples = model
            .sample(&cond.narrow(0, 0, 2).unwrap(), 4, &mut rng)
            .unwrap();
        assert_eq!(samples.dims(), &[2, 3, 8, 8]);
        assert!(!samples.track_op(), "a drawing keeps no graph of its chain");
        let v: Vec<f32> = samples.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|p| p.is_finite() && (0.0..=1.0).contains(p)));
        // Red conditioning paints red, blue paints blue.
        let red = samples
            .get(0)
            .unwrap()
            .mean((1, 2))
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let blue = samples
            .get(1)
            .unwrap()
            .mean((1, 2))
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(red[0] > red[2] + 0.3, "{red:?}");
        assert!(blue[2] > blue[0] + 0.3, "{blue:?}");
    }

    #[test]
    fn bad_input_is_named() {
        let (x, cond) = two_colours(4);
        let mut model = Infusion::new(&settings(), &x, 2, 1e-3, 0).unwrap();
        let mut rng = Rng::new(0);
        let wide = Tensor::zeros((4, 5), DType::F32, &Device::Cpu).unwrap();
        let e = model
            .train_step(&x, &wide, &mut rng)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2-wide") && e.contains("5 wide"), "{e}");
        let big = Tensor::zeros((4, 3, 16, 16), DType::F32, &Device::Cpu).unwrap();
        let e = model
            .train_step(&big, &cond, &mut rng)
            .unwrap_err()
            .to_string();
        assert!(e.contains("8×8") && e.contains("16×16"), "{e}");
        let e = model.sample(&cond, 0, &mut rng).unwrap_err().to_string();
        assert!(e.contains("steps is 0"), "{e}");
    }
}
