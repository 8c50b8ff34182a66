//! Optimisers and learning-rate schedules.
//!
//! Weight decay applies only to weights with two or more dimensions, never to
//! biases or norm parameters (as nanoGPT and most SSL code do); candle's AdamW
//! decays everything it holds, so the parameters are split in two groups.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::{AdamW, Optimizer as _, ParamsAdamW, VarMap};
use sslab_shared::spec::{OptimizerKind, OptimizerSpec, ScheduleSpec};

/// Linear warm-up to the peak, then cosine decay to `final_lr_fraction` × peak.
#[derive(Debug, Clone)]
pub struct Schedule {
    peak: f64,
    warmup_steps: usize,
    total_steps: usize,
    final_fraction: f64,
}

impl Schedule {
    pub fn new(peak: f64, spec: &ScheduleSpec, steps_per_epoch: usize) -> Self {
        Schedule {
            peak,
            warmup_steps: (spec.warmup_epochs * steps_per_epoch as f64).round() as usize,
            total_steps: spec.epochs * steps_per_epoch,
            final_fraction: spec.final_lr_fraction,
        }
    }

    /// Learning rate for 0-based `step`.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = (self.total_steps - self.warmup_steps).max(1) as f64;
        let t = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let low = self.peak * self.final_fraction;
        low + (self.peak - low) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// Splits trainable variables into (decayed, not decayed), sorted by name so
/// that the order never depends on hashing. BatchNorm running statistics are
/// not trainable and are left out.
fn param_groups(varmap: &VarMap) -> (Vec<Var>, Vec<Var>) {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().filter(|n| !n.contains("running_")).collect();
    names.sort();
    let (mut decay, mut no_decay) = (Vec::new(), Vec::new());
    for n in names {
        let v = data[n].clone();
        if v.rank() >= 2 {
            decay.push(v)
        } else {
            no_decay.push(v)
        }
    }
    (decay, no_decay)
}

pub enum Optimizer {
    AdamW { decay: AdamW, no_decay: AdamW },
    Sgd(Sgd),
}

impl Optimizer {
    pub fn new(spec: &OptimizerSpec, varmap: &VarMap) -> candle_core::Result<Self> {
        let (decay, no_decay) = param_groups(varmap);
        Ok(match spec.kind {
            OptimizerKind::Adamw => {
                let p = |wd| ParamsAdamW {
                    lr: spec.lr,
                    weight_decay: wd,
                    ..Default::default()
                };
                Optimizer::AdamW {
                    decay: AdamW::new(decay, p(spec.weight_decay))?,
                    no_decay: AdamW::new(no_decay, p(0.0))?,
                }
            }
            OptimizerKind::Sgd | OptimizerKind::Lars => {
                let mut sgd = Sgd::new(decay, no_decay, spec.momentum, spec.weight_decay)?;
                sgd.lr = spec.lr;
                if spec.kind == OptimizerKind::Lars {
                    sgd.lars_eta = Some(spec.lars_eta);
                }
                Optimizer::Sgd(sgd)
            }
        })
    }

    pub fn set_lr(&mut self, lr: f64) {
        match self {
            Optimizer::AdamW { decay, no_decay } => {
                decay.set_learning_rate(lr);
                no_decay.set_learning_rate(lr);
            }
            Optimizer::Sgd(s) => s.lr = lr,
        }
    }

    pub fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        match self {
            Optimizer::AdamW { decay, no_decay } => {
                decay.step(grads)?;
                no_decay.step(grads)
            }
            Optimizer::Sgd(s) => s.step(grads),
        }
    }
}

/// SGD with heavy-ball momentum (PyTorch's form: v = μv + g + λw, w -= lr·v),
/// and LARS when `lars_eta` is set: for decayed weights the update g + λw is
/// scaled by min(η‖w‖ / (‖g‖ + λ‖w‖) / lr, 1) before the momentum, as
/// solo-learn's LARS with `clip_lr` and biases and norms excluded.
pub struct Sgd {
    params: Vec<(Var, Var, bool)>,
    momentum: f64,
    weight_decay: f64,
    lr: f64,
    lars_eta: Option<f64>,
}

impl Sgd {
    fn new(
        decay: Vec<Var>,
        no_decay: Vec<Var>,
        momentum: f64,
        weight_decay: f64,
    ) -> candle_core::Result<Self> {
        let mut params = Vec::new();
        for (vars, d) in [(decay, true), (no_decay, false)] {
            for v in vars {
                let buf = Var::zeros(v.shape(), v.dtype(), v.device())?;
                params.push((v, buf, d));
            }
        }
        Ok(Sgd {
            params,
            momentum,
            weight_decay,
            lr: 0.0,
            lars_eta: None,
        })
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        for (w, buf, decays) in &self.params {
            let Some(g) = grads.get(w) else { continue };
            let mut g: Tensor = if *decays && self.weight_decay > 0.0 {
                (g + (w.as_tensor() * self.weight_decay)?)?
            } else {
                g.clone()
            };
            if let Some(eta) = self.lars_eta.filter(|_| *decays) {
                let norm = |t: &Tensor| -> candle_core::Result<f64> {
                    t.sqr()?
                        .sum_all()?
                        .to_dtype(candle_core::DType::F64)?
                        .to_scalar::<f64>()
                        .map(f64::sqrt)
                };
                let (w_norm, g_norm) = (norm(w.as_tensor())?, norm(grads.get(w).unwrap_or(&g))?);
                if w_norm > 0.0 && g_norm > 0.0 {
                    let trust = eta * w_norm / (g_norm + self.weight_decay * w_norm + 1e-8);
                    let scale = if self.lr > 0.0 {
                        (trust / self.lr).min(1.0)
                    } else {
                        1.0
                    };
                    g = (g * scale)?;
                }
            }
            let v = ((buf.as_tensor() * self.momentum)? + g)?;
            w.set(&(w.as_tensor() - (&v * self.lr)?)?)?;
            buf.set(&v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let spec = ScheduleSpec {
            epochs: 10,
            warmup_epochs: 1.0,
            final_lr_fraction: 0.1,
        };
        let s = Schedule::new(1.0, &spec, 10);
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(9) - 1.0).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(55) - 0.55).abs() < 1e-12, "{}", s.lr(55));
        assert!((s.lr(100) - 0.1).abs() < 1e-12);
        assert!(s.lr(30) > s.lr(60));
    }

    #[test]
    fn sgd_momentum_matches_hand_computation() {
        let dev = candle_core::Device::Cpu;
        let w = Var::new(&[1.0f32, -2.0], &dev).unwrap();
        let b = Var::new(&[0.5f32], &dev).unwrap();
        let mut sgd = Sgd::new(vec![w.clone()], vec![b.clone()], 0.9, 0.1).unwrap();
        sgd.lr = 0.1;
        for _ in 0..2 {
            // loss = sum(w²)/2 + sum(b): grad w = w, grad b = 1.
            let loss = ((w.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap()
                + b.as_tensor().sum_all().unwrap())
            .unwrap();
            sgd.step(&loss.backward().unwrap()).unwrap();
        }
        // By hand, w0 = 1: g = w + 0.1w. Step 1: v = 1.1, w = 0.89.
        // Step 2: g = 0.979, v = 0.99 + 0.979 = 1.969, w = 0.89 - 0.1969 = 0.6931.
        let got = w.as_tensor().to_vec1::<f32>().unwrap();
        assert!((got[0] - 0.6931).abs() < 1e-5, "{got:?}");
        // Biases are not decayed: v = 1, then 1.9; b = 0.5 - 0.1 - 0.19.
        let got = b.as_tensor().to_vec1::<f32>().unwrap();
        assert!((got[0] - 0.21).abs() < 1e-5, "{got:?}");
    }
}

/// Rescales every gradient so that their global L2 norm is at most `max`.
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max: f64) -> candle_core::Result<f64> {
    let mut total = 0.0;
    for v in vars {
        if let Some(g) = grads.get(v) {
            total += g
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    let norm = total.sqrt();
    if norm > max {
        let scale = max / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.remove(v) {
                grads.insert(v, (g * scale)?);
            }
        }
    }
    Ok(norm)
}

/// The variables the optimiser updates (BatchNorm statistics left out).
pub fn trainable(varmap: &VarMap) -> Vec<Var> {
    let (mut decay, no_decay) = param_groups(varmap);
    decay.extend(no_decay);
    decay
}

#[cfg(test)]
mod machinery_tests {
    use candle_core::{DType, Device};

    use super::*;

    #[test]
    fn lars_scales_matrix_steps_by_the_trust_ratio() {
        let varmap = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
        let w = vb
            .get_with_hints((1, 2), "w", candle_nn::Init::Const(0.0))
            .unwrap();
        let b = vb
            .get_with_hints(2, "b", candle_nn::Init::Const(0.0))
            .unwrap();
        let data = varmap.data().lock().unwrap();
        data["w"]
            .set(&Tensor::new(&[[3.0f64, 4.0]], &Device::Cpu).unwrap())
            .unwrap();
        data["b"]
            .set(&Tensor::new(&[1.0f64, 1.0], &Device::Cpu).unwrap())
            .unwrap();
        drop(data);
        let _ = (w, b);
        let spec = OptimizerSpec {
            kind: OptimizerKind::Lars,
            lr: 1.0,
            weight_decay: 0.0,
            momentum: 0.0,
            lars_eta: 0.1,
            ..OptimizerSpec::default()
        };
        let mut opt = Optimizer::new(&spec, &varmap).unwrap();
        opt.set_lr(1.0);
        // loss = sum(w)·10 + sum(b): ∂/∂w = [10, 10], ∂/∂b = [1, 1].
        let data = varmap.data().lock().unwrap();
        let (wv, bv) = (data["w"].clone(), data["b"].clone());
        drop(data);
        let loss = ((wv.as_tensor().sum_all().unwrap() * 10.0).unwrap()
            + bv.as_tensor().sum_all().unwrap())
        .unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        // Trust ratio 0.1·5 / ‖[10, 10]‖ = 0.5 / 14.142…; the bias takes a plain step.
        let trust = 0.1 * 5.0 / (200f64).sqrt();
        let got: Vec<Vec<f64>> = wv.as_tensor().to_vec2().unwrap();
        assert!((got[0][0] - (3.0 - 10.0 * trust)).abs() < 1e-6, "{got:?}");
        assert!((got[0][1] - (4.0 - 10.0 * trust)).abs() < 1e-6, "{got:?}");
        assert_eq!(bv.as_tensor().to_vec1::<f64>().unwrap(), [0.0, 0.0]);
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let a = Var::new(&[1.0f64, 2.0], &Device::Cpu).unwrap();
        let b = Var::new(&[3.0f64], &Device::Cpu).unwrap();
        let loss = ((a.as_tensor().sum_all().unwrap() * 3.0).unwrap()
            + (b.as_tensor().sum_all().unwrap() * 4.0).unwrap())
        .unwrap();
        // Gradients [3, 3] and [4]: global norm sqrt(34).
        let mut grads = loss.backward().unwrap();
        let vars = [a.clone(), b.clone()];
        let norm = clip_grad_norm(&mut grads, &vars, 1.0).unwrap();
        assert!((norm - 34f64.sqrt()).abs() < 1e-12);
        let ga: Vec<f64> = grads.get(&a).unwrap().to_vec1().unwrap();
        let gb: Vec<f64> = grads.get(&b).unwrap().to_vec1().unwrap();
        let after = (ga.iter().chain(&gb).map(|x| x * x).sum::<f64>()).sqrt();
        assert!((after - 1.0).abs() < 1e-5, "{after}");
        // Under the bound nothing changes.
        assert!((clip_grad_norm(&mut grads, &vars, 10.0).unwrap() - after).abs() < 1e-12);
    }
}
