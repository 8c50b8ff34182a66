//! Optimisers and learning-rate schedules.
//!
//! Weight decay applies only to weights with two or more dimensions, never to
//! biases or norm parameters (as nanoGPT and most SSL code do). candle's own
//! optimisers keep their state private, so a resumed run could not continue
//! exactly; these keep it in tensors the checkpoint saves.

use std::collections::HashMap;

use crate::ops::AdamwStep;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::VarMap;
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

/// Cosine from `start` at step 0 to `end` at `total` (DINO's weight-decay
/// schedule, 0.04 → 0.4).
pub fn cosine(start: f64, end: f64, step: usize, total: usize) -> f64 {
    let t = (step as f64 / total.max(1) as f64).min(1.0);
    end + (start - end) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Trainable variables by name, sorted so that the order never depends on
/// hashing; BatchNorm running statistics are not trainable and are left out.
fn named_params(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut out: Vec<(String, Var)> = data
        .iter()
        .filter(|(n, _)| !n.contains("running_"))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

struct Param {
    name: String,
    var: Var,
    /// Weight decay applies (two or more dimensions).
    decays: bool,
    /// AdamW's first moment, or SGD's momentum buffer.
    m: Tensor,
    /// AdamW's second moment (unused by SGD).
    v: Tensor,
}

/// AdamW (PyTorch's form: decoupled decay w ← w(1 − lr·λ), bias-corrected
/// moments, β = (0.9, 0.999), ε = 1e-8), SGD with heavy-ball momentum
/// (v = μv + g + λw, w ← w − lr·v) and LARS (SGD whose update g + λw for
/// decayed weights is scaled by min(η‖w‖ / (‖g‖ + λ‖w‖) / lr, 1) before the
/// momentum, as solo-learn's LARS with `clip_lr`). The state lives in
/// tensors that [`Optimizer::state`] hands to the checkpoint, so a resumed
/// run continues exactly.
pub struct Optimizer {
    kind: OptimizerKind,
    params: Vec<Param>,
    lr: f64,
    weight_decay: f64,
    momentum: f64,
    lars_eta: f64,
    /// Steps taken (AdamW's bias correction).
    steps: usize,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl Optimizer {
    pub fn new(spec: &OptimizerSpec, varmap: &VarMap) -> candle_core::Result<Self> {
        let params = named_params(varmap)
            .into_iter()
            .map(|(name, var)| {
                Ok(Param {
                    decays: var.rank() >= 2,
                    m: var.zeros_like()?,
                    v: var.zeros_like()?,
                    name,
                    var,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Optimizer {
            kind: spec.kind,
            params,
            lr: spec.lr,
            weight_decay: spec.weight_decay,
            momentum: spec.momentum,
            lars_eta: spec.lars_eta,
            steps: 0,
        })
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    pub fn set_weight_decay(&mut self, weight_decay: f64) {
        self.weight_decay = weight_decay;
    }

    pub fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        self.steps += 1;
        let (lr, wd) = (self.lr, self.weight_decay);
        let t = self.steps as i32;
        for p in &mut self.params {
            let Some(g) = grads.get(&p.var) else { continue };
            let w = p.var.as_tensor();
            let decay = if p.decays { wd } else { 0.0 };
            match self.kind {
                OptimizerKind::Adamw => {
                    let fused = AdamwStep {
                        lr,
                        decay,
                        beta1: BETA1,
                        beta2: BETA2,
                        eps: EPS,
                        correction1: 1.0 - BETA1.powi(t),
                        correction2: 1.0 - BETA2.powi(t),
                    };
                    if fused.apply(w, g, &p.m, &p.v)? {
                        continue;
                    }
                    let m = ((&p.m * BETA1)? + (g * (1.0 - BETA1))?)?;
                    let v = ((&p.v * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
                    let m_hat = (&m / (1.0 - BETA1.powi(t)))?;
                    let v_hat = (&v / (1.0 - BETA2.powi(t)))?;
                    let w = if decay > 0.0 {
                        (w * (1.0 - lr * decay))?
                    } else {
                        w.clone()
                    };
                    let next = (w - ((m_hat / (v_hat.sqrt()? + EPS)?)? * lr)?)?;
                    p.var.set(&next)?;
                    // Detached: the moments must not hold on to this step's graph.
                    (p.m, p.v) = (m.detach(), v.detach());
                }
                OptimizerKind::Sgd | OptimizerKind::Lars => {
                    let mut update = if decay > 0.0 {
                        (g + (w * decay)?)?
                    } else {
                        g.clone()
                    };
                    if self.kind == OptimizerKind::Lars && p.decays {
                        let (w_norm, g_norm) = (norm(w)?, norm(g)?);
                        if w_norm > 0.0 && g_norm > 0.0 {
                            let trust = self.lars_eta * w_norm / (g_norm + decay * w_norm + 1e-8);
                            let scale = if lr > 0.0 { (trust / lr).min(1.0) } else { 1.0 };
                            update = (update * scale)?;
                        }
                    }
                    let buf = ((&p.m * self.momentum)? + update)?;
                    p.var.set(&(w - (&buf * lr)?)?)?;
                    p.m = buf.detach();
                }
            }
        }
        Ok(())
    }

    /// Updates applied so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The optimiser's state as named tensors (`<prefix>m.<param>`, …).
    pub fn state(&self, prefix: &str) -> candle_core::Result<Vec<(String, Tensor)>> {
        let mut out = vec![(
            format!("{prefix}steps"),
            Tensor::new(&[self.steps as u32], &candle_core::Device::Cpu)?,
        )];
        for p in &self.params {
            out.push((format!("{prefix}m.{}", p.name), p.m.clone()));
            if self.kind == OptimizerKind::Adamw {
                out.push((format!("{prefix}v.{}", p.name), p.v.clone()));
            }
        }
        Ok(out)
    }

    /// Restores what [`Optimizer::state`] saved under `prefix`.
    pub fn load_state(
        &mut self,
        state: &HashMap<String, Tensor>,
        prefix: &str,
    ) -> Result<(), String> {
        let get = |name: &str| {
            let name = format!("{prefix}{name}");
            state
                .get(&name)
                .cloned()
                .ok_or_else(|| format!("the training state has no `{name}`"))
        };
        let steps = get("steps")?.to_vec1::<u32>().map_err(|e| e.to_string())?;
        self.steps = steps.first().copied().unwrap_or(0) as usize;
        let adam = self.kind == OptimizerKind::Adamw;
        let device = self.params.first().map(|p| p.var.device().clone());
        for p in &mut self.params {
            let to_device = |t: Tensor| match &device {
                Some(d) => t.to_device(d).map_err(|e| e.to_string()),
                None => Ok(t),
            };
            p.m = to_device(get(&format!("m.{}", p.name))?)?;
            if adam {
                p.v = to_device(get(&format!("v.{}", p.name))?)?;
            }
            if p.m.shape() != p.var.shape() {
                return Err(format!(
                    "the training state's `{prefix}m.{}` has shape {:?}, the model's {:?}",
                    p.name,
                    p.m.dims(),
                    p.var.dims()
                ));
            }
        }
        Ok(())
    }
}

fn norm(t: &Tensor) -> candle_core::Result<f64> {
    t.sqr()?
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()
        .map(f64::sqrt)
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

    fn one_param_varmap(values: &[f64], name: &str) -> (VarMap, Var) {
        let varmap = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F64, &Device::Cpu);
        let n = values.len();
        let shape: &[usize] = if name == "w" { &[1, n] } else { &[n] };
        let _ = vb
            .get_with_hints(shape, name, candle_nn::Init::Const(0.0))
            .unwrap();
        let var = varmap.data().lock().unwrap()[name].clone();
        var.set(&Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).unwrap())
            .unwrap();
        (varmap, var)
    }

    use candle_core::Device;

    #[test]
    #[allow(clippy::approx_constant)] // 0.6931 is worked by hand, not ln 2
    fn sgd_momentum_matches_hand_computation() {
        let spec = OptimizerSpec {
            kind: OptimizerKind::Sgd,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.1,
            ..OptimizerSpec::default()
        };
        for (name, want) in [("w", 0.6931), ("b", 0.21)] {
            let start = if name == "w" { 1.0 } else { 0.5 };
            let (varmap, var) = one_param_varmap(&[start], name);
            let mut sgd = Optimizer::new(&spec, &varmap).unwrap();
            for _ in 0..2 {
                // w: loss = w²/2, grad w; b: loss = b, grad 1.
                let loss = if name == "w" {
                    (var.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap()
                } else {
                    var.as_tensor().sum_all().unwrap()
                };
                sgd.step(&loss.backward().unwrap()).unwrap();
            }
            // w (decayed): g = 1.1w. Step 1: v = 1.1, w = 0.89. Step 2: g = 0.979,
            // v = 0.99 + 0.979, w = 0.89 − 0.1969. b (not decayed): 0.5 − 0.1 − 0.19.
            let got = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            assert!((got[0] - want).abs() < 1e-9, "{name}: {got:?}");
        }
    }

    /// Our AdamW takes the same steps as candle's (itself PyTorch's form).
    #[test]
    fn adamw_matches_candles() {
        let spec = OptimizerSpec {
            kind: OptimizerKind::Adamw,
            lr: 0.05,
            weight_decay: 0.1,
            ..OptimizerSpec::default()
        };
        let (varmap, ours) = one_param_varmap(&[0.5, -1.5, 2.0], "w");
        let theirs = Var::new(&[[0.5f64, -1.5, 2.0]], &Device::Cpu).unwrap();
        let mut a = Optimizer::new(&spec, &varmap).unwrap();
        let mut b = candle_nn::AdamW::new(
            vec![theirs.clone()],
            candle_nn::ParamsAdamW {
                lr: 0.05,
                weight_decay: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        use candle_nn::Optimizer as _;
        for _ in 0..5 {
            let loss = |v: &Var| v.as_tensor().powf(3.0).unwrap().sum_all().unwrap();
            a.step(&loss(&ours).backward().unwrap()).unwrap();
            b.step(&loss(&theirs).backward().unwrap()).unwrap();
        }
        let x: Vec<Vec<f64>> = ours.as_tensor().to_vec2().unwrap();
        let y: Vec<Vec<f64>> = theirs.as_tensor().to_vec2().unwrap();
        for (p, q) in x[0].iter().zip(&y[0]) {
            assert!((p - q).abs() < 1e-12, "{x:?} vs {y:?}");
        }
    }

    /// Saving and restoring the state mid-way gives the same weights as
    /// stepping straight through.
    /// f32 on the CPU takes the in-place kernel; it follows candle's AdamW too.
    #[test]
    fn fused_adamw_matches_candles() {
        let spec = OptimizerSpec {
            kind: OptimizerKind::Adamw,
            lr: 0.01,
            weight_decay: 0.1,
            ..OptimizerSpec::default()
        };
        let start = crate::ops::tests::random(&[20, 50], 3);
        let varmap = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &Device::Cpu);
        let ours = vb
            .get_with_hints((20, 50), "w", candle_nn::Init::Const(0.0))
            .unwrap();
        let ours = Var::from_tensor(&ours).unwrap();
        ours.set(&start).unwrap();
        let theirs = Var::from_tensor(&start.copy().unwrap()).unwrap();
        let mut a = Optimizer::new(&spec, &varmap).unwrap();
        let mut b = candle_nn::AdamW::new(
            vec![theirs.clone()],
            candle_nn::ParamsAdamW {
                lr: 0.01,
                weight_decay: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        use candle_nn::Optimizer as _;
        for _ in 0..5 {
            let loss = |v: &Var| v.as_tensor().powf(3.0).unwrap().sum_all().unwrap();
            a.step(&loss(&ours).backward().unwrap()).unwrap();
            b.step(&loss(&theirs).backward().unwrap()).unwrap();
        }
        crate::ops::tests::assert_close(&ours, &theirs, 1e-6, "weights after 5 steps");
        let moved = (ours.as_tensor() - &start)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(
            moved.to_scalar::<f32>().unwrap() > 0.01,
            "the weights did not move"
        );
    }

    #[test]
    fn state_round_trips() {
        for kind in [OptimizerKind::Adamw, OptimizerKind::Sgd] {
            let spec = OptimizerSpec {
                kind,
                lr: 0.05,
                ..OptimizerSpec::default()
            };
            let loss = |v: &Var| v.as_tensor().sqr().unwrap().sum_all().unwrap();
            let (vm1, w1) = one_param_varmap(&[1.0, -2.0], "w");
            let mut straight = Optimizer::new(&spec, &vm1).unwrap();
            for _ in 0..4 {
                straight.step(&loss(&w1).backward().unwrap()).unwrap();
            }
            let (vm2, w2) = one_param_varmap(&[1.0, -2.0], "w");
            let mut first = Optimizer::new(&spec, &vm2).unwrap();
            for _ in 0..2 {
                first.step(&loss(&w2).backward().unwrap()).unwrap();
            }
            let state: HashMap<String, Tensor> = first.state("opt.").unwrap().into_iter().collect();
            let mut second = Optimizer::new(&spec, &vm2).unwrap();
            second.load_state(&state, "opt.").unwrap();
            for _ in 0..2 {
                second.step(&loss(&w2).backward().unwrap()).unwrap();
            }
            assert_eq!(
                w1.as_tensor().to_vec2::<f64>().unwrap(),
                w2.as_tensor().to_vec2::<f64>().unwrap(),
                "{kind:?}"
            );
            let err = second.load_state(&HashMap::new(), "opt.").unwrap_err();
            assert!(err.contains("opt.steps"), "{err}");
        }
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
    named_params(varmap).into_iter().map(|(_, v)| v).collect()
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
