//! The diffusion maths of RCDM: a linear β schedule, respacing to fewer
//! sampling steps (guided-diffusion's `space_timesteps`), the forward
//! process and one reverse step of DDPM or DDIM (η = 0). The schedule is
//! plain f64; the steps are tensor ops in the tensors' dtype and device.

use candle_core::Tensor;
use sslab_shared::decoder::RcdmSettings;

/// The training schedule: β_t and ᾱ_t = Π_{s≤t} (1 − β_s), t = 0..T−1.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
}

impl Schedule {
    /// β evenly spaced from `beta_start` to `beta_end` (both included) over
    /// `steps` timesteps.
    pub fn linear(beta_start: f64, beta_end: f64, steps: usize) -> Self {
        let betas = (0..steps)
            .map(|t| {
                if steps == 1 {
                    beta_start
                } else {
                    beta_start + (beta_end - beta_start) * t as f64 / (steps - 1) as f64
                }
            })
            .collect();
        Self::from_betas(betas)
    }

    pub fn from_settings(settings: &RcdmSettings) -> Self {
        Self::linear(
            settings.beta_start,
            settings.beta_end,
            settings.diffusion_steps,
        )
    }

    fn from_betas(betas: Vec<f64>) -> Self {
        let mut product = 1.0;
        let alphas_cumprod = betas
            .iter()
            .map(|b| {
                product *= 1.0 - b;
                product
            })
            .collect();
        Schedule {
            betas,
            alphas_cumprod,
        }
    }

    pub fn len(&self) -> usize {
        self.betas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, with one timestep per row of `x0`.
    pub fn q_sample(
        &self,
        x0: &Tensor,
        t: &[usize],
        noise: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let b = x0.dim(0)?;
        if t.len() != b {
            candle_core::bail!("q_sample: {} timesteps for a batch of {b}", t.len());
        }
        let signal: Vec<f64> = t.iter().map(|&t| self.alphas_cumprod[t].sqrt()).collect();
        let sigma: Vec<f64> = t
            .iter()
            .map(|&t| (1.0 - self.alphas_cumprod[t]).sqrt())
            .collect();
        let a = per_row(&signal, x0)?;
        let s = per_row(&sigma, x0)?;
        x0.broadcast_mul(&a)? + noise.broadcast_mul(&s)?
    }

    /// `k` timesteps evenly spaced over the training steps, the first and
    /// the last included (a single one is the last), with the β that make
    /// the respaced chain's ᾱ equal the original ᾱ at those steps.
    pub fn respace(&self, k: usize) -> Respaced {
        let n = self.len();
        assert!(
            (1..=n).contains(&k),
            "respace: {k} steps out of {n} training steps"
        );
        let timesteps: Vec<usize> = if k == 1 {
            vec![n - 1]
        } else {
            // Rounding keeps them distinct: the stride is at least 1.
            (0..k)
                .map(|i| ((i * (n - 1)) as f64 / (k - 1) as f64).round() as usize)
                .collect()
        };
        let alphas_cumprod: Vec<f64> = timesteps.iter().map(|&t| self.alphas_cumprod[t]).collect();
        let betas = alphas_cumprod
            .iter()
            .enumerate()
            .map(|(i, a)| 1.0 - a / if i == 0 { 1.0 } else { alphas_cumprod[i - 1] })
            .collect();
        Respaced {
            timesteps,
            betas,
            alphas_cumprod,
        }
    }
}

/// A chain over fewer steps: step `i` stands for training timestep
/// `timesteps[i]` (what the network is told).
#[derive(Debug, Clone, PartialEq)]
pub struct Respaced {
    pub timesteps: Vec<usize>,
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
}

/// The coefficients of q(x_{i−1} | x_i, x_0) on the respaced chain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Posterior {
    /// Multiplies x_0 in the mean.
    pub coef_x0: f64,
    /// Multiplies x_i in the mean.
    pub coef_xt: f64,
    /// β̃ = β'(1 − ᾱ'_{i−1}) / (1 − ᾱ'_i).
    pub variance: f64,
}

impl Respaced {
    pub fn len(&self) -> usize {
        self.timesteps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timesteps.is_empty()
    }

    /// ᾱ'_{i−1}, 1 before the first step.
    pub fn alpha_cumprod_prev(&self, i: usize) -> f64 {
        if i == 0 {
            1.0
        } else {
            self.alphas_cumprod[i - 1]
        }
    }

    pub fn posterior(&self, i: usize) -> Posterior {
        let (beta, abar) = (self.betas[i], self.alphas_cumprod[i]);
        let prev = self.alpha_cumprod_prev(i);
        Posterior {
            coef_x0: beta * prev.sqrt() / (1.0 - abar),
            coef_xt: (1.0 - prev) * (1.0 - beta).sqrt() / (1.0 - abar),
            variance: beta * (1.0 - prev) / (1.0 - abar),
        }
    }

    /// x_0 = (x_i − √(1−ᾱ'_i) ε) / √ᾱ'_i, clipped to [−1, 1].
    pub fn predict_x0(&self, x: &Tensor, eps: &Tensor, i: usize) -> candle_core::Result<Tensor> {
        let abar = self.alphas_cumprod[i];
        let x0 = ((x * (1.0 / abar).sqrt())? - (eps * (1.0 / abar - 1.0).sqrt())?)?;
        x0.clamp(-1.0, 1.0)
    }

    /// One ancestral step from x_i to x_{i−1}: the posterior mean from the
    /// clipped x_0, plus √β̃ times `noise` except at the last step (i = 0).
    pub fn ddpm_step(
        &self,
        x: &Tensor,
        eps: &Tensor,
        i: usize,
        noise: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let x0 = self.predict_x0(x, eps, i)?;
        let p = self.posterior(i);
        let mean = ((x0 * p.coef_x0)? + (x * p.coef_xt)?)?;
        if i == 0 {
            return Ok(mean);
        }
        mean + (noise * p.variance.sqrt())?
    }

    /// One deterministic DDIM step (η = 0): x_{i−1} = √ᾱ'_{i−1} x_0 +
    /// √(1−ᾱ'_{i−1}) ε̂, with ε̂ re-derived from the clipped x_0.
    pub fn ddim_step(&self, x: &Tensor, eps: &Tensor, i: usize) -> candle_core::Result<Tensor> {
        let x0 = self.predict_x0(x, eps, i)?;
        let prev = self.alpha_cumprod_prev(i);
        if i == 0 {
            return Ok(x0);
        }
        let abar = self.alphas_cumprod[i];
        let eps = ((x * (1.0 / abar).sqrt())? - &x0)?;
        let eps = (eps / (1.0 / abar - 1.0).sqrt())?;
        (x0 * prev.sqrt())? + (eps * (1.0 - prev).sqrt())?
    }
}

/// A B×1×…×1 tensor of one value per row of `like`.
fn per_row(values: &[f64], like: &Tensor) -> candle_core::Result<Tensor> {
    let mut shape = vec![1; like.rank()];
    shape[0] = values.len();
    Tensor::from_vec(values.to_vec(), shape, like.device())?.to_dtype(like.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use sslab_shared::rng::Rng;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f64> {
        t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
    }

    #[test]
    fn linear_betas_and_cumulative_alphas_follow_their_formulas() {
        let s = Schedule::linear(1e-4, 0.02, 1000);
        assert_eq!(s.len(), 1000);
        assert!(close(s.betas[0], 1e-4, 1e-15));
        assert!(close(s.betas[999], 0.02, 1e-15));
        let step = (0.02 - 1e-4) / 999.0;
        for t in [1, 17, 500, 998] {
            assert!(close(s.betas[t], 1e-4 + step * t as f64, 1e-12), "β_{t}");
        }
        let mut product = 1.0;
        for t in 0..1000 {
            product *= 1.0 - (1e-4 + step * t as f64);
            assert!(close(s.alphas_cumprod[t], product, 1e-12), "ᾱ_{t}");
        }
        // Known value of the standard schedule: ᾱ_{T−1} ≈ 4.0e-5.
        assert!(
            (s.alphas_cumprod[999] - 4.04e-5).abs() < 1e-6,
            "{}",
            s.alphas_cumprod[999]
        );
        let settings = RcdmSettings::default();
        assert_eq!(Schedule::from_settings(&settings), s);
    }

    #[test]
    fn respacing_keeps_evenly_spaced_steps_and_their_alpha_bars() {
        let s = Schedule::linear(1e-4, 0.02, 1000);
        let r = s.respace(4);
        assert_eq!(r.timesteps, vec![0, 333, 666, 999]);
        let r = s.respace(50);
        assert_eq!(r.len(), 50);
        assert_eq!((r.timesteps[0], r.timesteps[49]), (0, 999));
        assert_eq!(r.timesteps[1], 20); // 999/49 = 20.39
        assert!(r.timesteps.windows(2).all(|w| w[0] < w[1]));
        for (i, &t) in r.timesteps.iter().enumerate() {
            assert!(close(r.alphas_cumprod[i], s.alphas_cumprod[t], 1e-15));
        }
        // The respaced chain's own product of (1 − β') gives back ᾱ.
        let mut product = 1.0;
        for i in 0..r.len() {
            product *= 1.0 - r.betas[i];
            assert!(
                close(product, s.alphas_cumprod[r.timesteps[i]], 1e-12),
                "step {i}"
            );
        }
        assert_eq!(s.respace(1).timesteps, vec![999]);
        let small = Schedule::linear(0.01, 0.2, 10);
        assert_eq!(small.respace(10).timesteps, (0..10).collect::<Vec<_>>());
        assert_eq!(small.respace(3).timesteps, vec![0, 5, 9]); // 4.5 rounds up
    }

    #[test]
    fn respacing_to_every_step_gives_back_the_betas() {
        let s = Schedule::linear(1e-4, 0.02, 200);
        let r = s.respace(200);
        for t in 0..200 {
            assert!(
                close(r.betas[t], s.betas[t], 1e-9),
                "β_{t}: {} vs {}",
                r.betas[t],
                s.betas[t]
            );
        }
    }

    #[test]
    fn q_sample_mixes_signal_and_noise_per_row() {
        let s = Schedule::linear(1e-4, 0.02, 100);
        let x0 = random(&[2, 3, 2, 2], 1);
        let eps = random(&[2, 3, 2, 2], 2);
        let xt = s.q_sample(&x0, &[0, 70], &eps).unwrap();
        let (x0v, ev, xv) = (values(&x0), values(&eps), values(&xt));
        for j in 0..24 {
            let t = if j < 12 { 0 } else { 70 };
            let a = s.alphas_cumprod[t];
            let want = a.sqrt() * x0v[j] + (1.0 - a).sqrt() * ev[j];
            assert!(close(xv[j], want, 1e-12));
        }
        assert!(s.q_sample(&x0, &[1], &eps).is_err());
    }

    /// With the true ε, DDIM lands on the forward process's x_{i−1} for the
    /// same ε, and on x_0 itself at the last step.
    #[test]
    fn ddim_with_the_true_noise_recovers_x0() {
        let s = Schedule::linear(1e-3, 0.2, 100);
        let r = s.respace(10);
        let x0 = (random(&[2, 3, 4, 4], 3) * 0.3)
            .unwrap()
            .clamp(-1.0, 1.0)
            .unwrap();
        let eps = random(&[2, 3, 4, 4], 4);
        let x0v = values(&x0);
        for i in [0, 1, 5, 9] {
            let t = r.timesteps[i];
            let xt = s.q_sample(&x0, &[t, t], &eps).unwrap();
            let prev = values(&r.ddim_step(&xt, &eps, i).unwrap());
            let a = r.alpha_cumprod_prev(i);
            for (j, (p, e)) in prev.iter().zip(values(&eps)).enumerate() {
                let want = a.sqrt() * x0v[j] + (1.0 - a).sqrt() * e;
                assert!((p - want).abs() < 1e-9, "step {i}: {p} vs {want}");
            }
            if i == 0 {
                for (p, w) in prev.iter().zip(&x0v) {
                    assert!((p - w).abs() < 1e-12);
                }
            }
        }
    }

    /// One DDPM step against q(x_{i−1} | x_i, x_0) written out from the
    /// respaced β' and ᾱ'.
    #[test]
    fn ddpm_step_is_the_posterior_mean_plus_its_noise() {
        let s = Schedule::linear(1e-3, 0.2, 100);
        let r = s.respace(10);
        let i = 4;
        let (beta, abar, prev) = (r.betas[i], r.alphas_cumprod[i], r.alphas_cumprod[i - 1]);
        let alpha = 1.0 - beta;
        let p = r.posterior(i);
        assert!(close(p.coef_x0, prev.sqrt() * beta / (1.0 - abar), 1e-14));
        assert!(close(
            p.coef_xt,
            alpha.sqrt() * (1.0 - prev) / (1.0 - abar),
            1e-14
        ));
        assert!(close(p.variance, (1.0 - prev) / (1.0 - abar) * beta, 1e-14));
        let x = (random(&[1, 3, 4, 4], 5) * 0.5).unwrap();
        let eps = (random(&[1, 3, 4, 4], 6) * 0.5).unwrap();
        let z = random(&[1, 3, 4, 4], 7);
        let got = values(&r.ddpm_step(&x, &eps, i, &z).unwrap());
        let (xv, ev, zv) = (values(&x), values(&eps), values(&z));
        for j in 0..xv.len() {
            let x0 = ((xv[j] - (1.0 - abar).sqrt() * ev[j]) / abar.sqrt()).clamp(-1.0, 1.0);
            let mean = p.coef_x0 * x0 + p.coef_xt * xv[j];
            let want = mean + p.variance.sqrt() * zv[j];
            assert!((got[j] - want).abs() < 1e-12, "{} vs {want}", got[j]);
        }
        // No noise at the last step, where the mean is x_0 itself.
        let last = values(&r.ddpm_step(&x, &eps, 0, &z).unwrap());
        let x0 = values(&r.predict_x0(&x, &eps, 0).unwrap());
        assert_eq!(r.posterior(0).variance, 0.0);
        for (a, b) in last.iter().zip(&x0) {
            assert!((a - b).abs() < 1e-12);
        }
    }
}
