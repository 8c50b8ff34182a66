//! BatchNorm whose training forward and backward are two fused passes each on
//! the CPU, instead of the dozen broadcast ops (and their saved intermediates)
//! candle_nn's version records. Weights, running statistics and their names
//! are candle_nn's, so checkpoints are the same; evaluation and other devices
//! use candle_nn's code. Inputs in other dtypes (bf16 training) are
//! normalised in f32 and handed back in their dtype, as autocast does.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, ModuleT, Shape, Tensor, Var};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::{f32_slice, fused, split_flat, threads};

pub struct BatchNorm {
    inner: candle_nn::BatchNorm,
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm {
    /// Affine BatchNorm over `features` channels (momentum 0.1, like PyTorch).
    pub fn new(features: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        let inner = candle_nn::batch_norm(features, eps, vb)?;
        let (weight, bias) = inner
            .weight_and_bias()
            .map(|(w, b)| (w.clone(), b.clone()))
            .expect("affine batch norm");
        Ok(BatchNorm {
            running_mean: Var::from_tensor(inner.running_mean())?,
            running_var: Var::from_tensor(inner.running_var())?,
            momentum: inner.momentum(),
            eps,
            weight,
            bias,
            inner,
        })
    }

    /// BatchNorm, then ReLU: in training on the CPU one fused op.
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if train && fused(&[x]) {
            self.forward_train(x, true)
        } else {
            self.candle_nn(x, train)?.relu()
        }
    }

    /// candle_nn's BatchNorm, in f32 whatever `x`'s dtype.
    fn candle_nn(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        if dtype == candle_core::DType::F32 {
            return self.inner.forward_t(x, train);
        }
        self.inner
            .forward_t(&x.to_dtype(candle_core::DType::F32)?, train)?
            .to_dtype(dtype)
    }

    fn forward_train(&self, x: &Tensor, relu: bool) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        let channels = self.weight.dim(0)?;
        if dims.len() < 2 || dims[1] != channels {
            candle_core::bail!(
                "batch norm over {channels} channels got an input of shape {dims:?}"
            );
        }
        let stats = Arc::new(Mutex::new(Stats::default()));
        let op = Forward {
            eps: self.eps,
            relu,
            stats: stats.clone(),
        };
        let y = x.contiguous()?.apply_op3(&self.weight, &self.bias, op)?;
        let Stats { mean, var, .. } = stats.lock().expect("stats lock").clone();
        let values = x.elem_count() / channels;
        let unbiased = values as f64 / (values.max(2) - 1) as f64;
        let m = self.momentum;
        let device = x.device();
        let mean = Tensor::from_vec(mean, channels, device)?;
        let var = Tensor::from_vec(var, channels, device)?;
        self.running_mean
            .set(&((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?)?;
        self.running_var
            .set(&((self.running_var.as_tensor() * (1.0 - m))? + (var * (m * unbiased))?)?)?;
        Ok(y)
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if train && fused(&[x]) {
            self.forward_train(x, false)
        } else {
            self.candle_nn(x, train)
        }
    }
}

/// One batch's per-channel statistics, kept for the backward pass.
#[derive(Clone, Default)]
struct Stats {
    mean: Vec<f32>,
    /// Biased variance.
    var: Vec<f32>,
    inv_std: Vec<f32>,
}

/// (N, C, …) viewed as N rows of C channels of `inner` values each.
#[derive(Clone, Copy)]
struct Dims {
    n: usize,
    c: usize,
    inner: usize,
}

impl Dims {
    fn of(l: &Layout) -> Self {
        let d = l.dims();
        Dims {
            n: d[0],
            c: d[1],
            inner: d[2..].iter().product(),
        }
    }

    fn row(&self) -> usize {
        self.c * self.inner
    }

    /// Rows per parallel task.
    fn rows_per_task(&self) -> usize {
        self.n.div_ceil(threads()).max(1)
    }

    /// Values per channel over the batch.
    fn count(&self) -> f64 {
        (self.n * self.inner) as f64
    }
}

/// Per-channel sums of `f(channel, a, b, c)` over elements of three
/// same-shaped arrays, in f64, split over threads.
fn channel_sums(
    d: Dims,
    [a, b, c]: [&[f32]; 3],
    f: impl Fn(usize, f32, f32, f32) -> f64 + Sync,
) -> Vec<f64> {
    let chunk = d.rows_per_task() * d.row();
    a.par_chunks(chunk)
        .zip(b.par_chunks(chunk).zip(c.par_chunks(chunk)))
        .map(|(a, (b, c))| {
            let mut sums = vec![0f64; d.c];
            let rows = a
                .chunks(d.row())
                .zip(b.chunks(d.row()).zip(c.chunks(d.row())));
            for (ra, (rb, rc)) in rows {
                for (ch, sum) in sums.iter_mut().enumerate() {
                    let span = ch * d.inner..(ch + 1) * d.inner;
                    let mut s = 0f64;
                    let values = ra[span.clone()]
                        .iter()
                        .zip(&rb[span.clone()])
                        .zip(&rc[span]);
                    for ((&va, &vb), &vc) in values {
                        s += f(ch, va, vb, vc);
                    }
                    *sum += s;
                }
            }
            sums
        })
        .reduce(
            || vec![0f64; d.c],
            |mut x, y| {
                x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
                x
            },
        )
}

/// y = γ·(x − μ)/√(σ² + ε) + β with the batch's μ and σ², then ReLU when
/// `relu`.
struct Forward {
    eps: f64,
    relu: bool,
    stats: Arc<Mutex<Stats>>,
}

impl CustomOp3 for Forward {
    fn name(&self) -> &'static str {
        "sslab-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = Dims::of(l1);
        let (x, gamma, beta) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let count = d.count();
        let mean: Vec<f64> = channel_sums(d, [x, x, x], |_, v, _, _| v as f64)
            .into_iter()
            .map(|s| s / count)
            .collect();
        let var: Vec<f64> = channel_sums(d, [x, x, x], |c, v, _, _| (v as f64 - mean[c]).powi(2))
            .into_iter()
            .map(|s| s / count)
            .collect();
        let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        // y = a·x + b per channel.
        let a: Vec<f32> = (0..d.c)
            .map(|c| (gamma[c] as f64 * inv_std[c]) as f32)
            .collect();
        let b: Vec<f32> = (0..d.c)
            .map(|c| (beta[c] as f64 - mean[c] * gamma[c] as f64 * inv_std[c]) as f32)
            .collect();
        let relu = self.relu;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d.rows_per_task() * d.row())
            .zip(x.par_chunks(d.rows_per_task() * d.row()))
            .for_each(|(y, x)| {
                for (i, (y, x)) in y.chunks_mut(d.inner).zip(x.chunks(d.inner)).enumerate() {
                    let c = i % d.c;
                    for (o, &v) in y.iter_mut().zip(x) {
                        *o = a[c] * v + b[c];
                    }
                    if relu {
                        y.iter_mut().for_each(|o| *o = o.max(0.0));
                    }
                }
            });
        *self.stats.lock().expect("stats lock") = Stats {
            mean: mean.iter().map(|&v| v as f32).collect(),
            var: var.iter().map(|&v| v as f32).collect(),
            inv_std: inv_std.iter().map(|&v| v as f32).collect(),
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = Backward {
            stats: self.stats.lock().expect("stats lock").clone(),
            gamma: gamma.to_vec1()?,
            relu: self.relu,
        };
        let flat = x.apply_op3_no_bwd(&grad.contiguous()?, &res.contiguous()?, &op)?;
        let mut parts = split_flat(&flat, &[x.shape(), gamma.shape(), beta.shape()])?.into_iter();
        Ok((parts.next(), parts.next(), parts.next()))
    }
}

/// The three gradients of [`Forward`] as one flat tensor: x's, γ's, β's,
/// from x, the output's gradient dy and the output y. With x̂ = (x − μ)/σ
/// over M values per channel, and dy zeroed where ReLU cut y to 0:
/// dβ = Σ dy, dγ = Σ dy·x̂, dx = γ/σ · (dy − dβ/M − x̂·dγ/M).
struct Backward {
    stats: Stats,
    gamma: Vec<f32>,
    relu: bool,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "sslab-batch-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = Dims::of(l1);
        let (x, dy, y) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let Stats { mean, inv_std, .. } = &self.stats;
        let gamma = &self.gamma;
        if mean.len() != d.c || dy.len() != x.len() || y.len() != x.len() {
            candle_core::bail!("batch norm backward: shapes do not match the forward's");
        }
        let relu = self.relu;
        let cut = move |g: f32, y: f32| if relu && y <= 0.0 { 0.0 } else { g };
        let d_beta = channel_sums(d, [dy, y, y], |_, g, y, _| cut(g, y) as f64);
        let d_gamma: Vec<f64> = channel_sums(d, [dy, y, x], |c, g, y, v| {
            cut(g, y) as f64 * (v - mean[c]) as f64
        })
        .into_iter()
        .zip(inv_std)
        .map(|(s, &is)| s * is as f64)
        .collect();
        // dx = k1·dy + k2·x + k3 per channel.
        let m = d.count();
        let (mut k1, mut k2, mut k3) = (vec![0f32; d.c], vec![0f32; d.c], vec![0f32; d.c]);
        for c in 0..d.c {
            let scale = gamma[c] as f64 * inv_std[c] as f64;
            let slope = -scale * inv_std[c] as f64 * d_gamma[c] / m;
            k1[c] = scale as f32;
            k2[c] = slope as f32;
            k3[c] = (-scale * d_beta[c] / m - slope * mean[c] as f64) as f32;
        }
        let mut flat = vec![0f32; x.len() + 2 * d.c];
        let (dx, rest) = flat.split_at_mut(x.len());
        let chunk = d.rows_per_task() * d.row();
        dx.par_chunks_mut(chunk)
            .zip(
                x.par_chunks(chunk)
                    .zip(dy.par_chunks(chunk).zip(y.par_chunks(chunk))),
            )
            .for_each(|(dx, (x, (dy, y)))| {
                let spans = dx.chunks_mut(d.inner).zip(
                    x.chunks(d.inner)
                        .zip(dy.chunks(d.inner).zip(y.chunks(d.inner))),
                );
                for (i, (dx, (x, (dy, y)))) in spans.enumerate() {
                    let c = i % d.c;
                    for ((o, &v), (&g, &y)) in dx.iter_mut().zip(x).zip(dy.iter().zip(y)) {
                        *o = k1[c] * cut(g, y) + k2[c] * v + k3[c];
                    }
                }
            });
        for c in 0..d.c {
            rest[c] = d_gamma[c] as f32;
            rest[d.c + c] = d_beta[c] as f32;
        }
        Ok((CpuStorage::F32(flat), Shape::from(x.len() + 2 * d.c)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    use super::*;
    use crate::ops::tests::{assert_close, random};

    /// Output, running statistics and the gradients of input, γ and β equal
    /// candle_nn's BatchNorm (followed by ReLU, in two cases), for images
    /// (N, C, H, W) and vectors (N, C).
    #[test]
    fn matches_candle_nn_values_gradients_and_running_stats() {
        for (case, dims) in [vec![6, 4, 5, 5], vec![16, 7], vec![3, 2, 1, 9], vec![32, 5]]
            .into_iter()
            .enumerate()
        {
            let c = dims[1];
            let ours_map = VarMap::new();
            let theirs_map = VarMap::new();
            let ours = BatchNorm::new(
                c,
                1e-5,
                VarBuilder::from_varmap(&ours_map, DType::F32, &Device::Cpu),
            )
            .unwrap();
            let theirs = candle_nn::batch_norm(
                c,
                1e-5,
                VarBuilder::from_varmap(&theirs_map, DType::F32, &Device::Cpu),
            )
            .unwrap();
            // Non-trivial γ and β, the same in both.
            for map in [&ours_map, &theirs_map] {
                let data = map.data().lock().unwrap();
                data["weight"]
                    .set(&random(&[c], 7).affine(1.0, 1.5).unwrap())
                    .unwrap();
                data["bias"].set(&random(&[c], 8)).unwrap();
            }
            let x =
                Var::from_tensor(&random(&dims, case as u64).affine(3.0, 2.0).unwrap()).unwrap();
            let weights = random(&dims, 50 + case as u64);
            let mut grads = Vec::new();
            let mut outs = Vec::new();
            let relu = case % 2 == 0;
            let forwards: [&dyn Fn() -> Tensor; 2] = [
                &|| {
                    if relu {
                        ours.forward_relu(&x, true)
                    } else {
                        ours.forward_t(&x, true)
                    }
                    .unwrap()
                },
                &|| {
                    let y = theirs.forward_t(&x, true).unwrap();
                    if relu { y.relu().unwrap() } else { y }
                },
            ];
            for forward in forwards {
                // Twice, so the running statistics move from their start.
                forward();
                let y = forward();
                grads.push(
                    (&y * &weights)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap(),
                );
                outs.push(y);
            }
            assert_close(&outs[0], &outs[1], 1e-5, &format!("case {case} values"));
            assert_close(
                grads[0].get(&x).unwrap(),
                grads[1].get(&x).unwrap(),
                1e-4,
                &format!("case {case} input gradient"),
            );
            let (ours_data, theirs_data) = (
                ours_map.data().lock().unwrap(),
                theirs_map.data().lock().unwrap(),
            );
            for name in ["weight", "bias"] {
                assert_close(
                    grads[0].get(&ours_data[name]).unwrap(),
                    grads[1].get(&theirs_data[name]).unwrap(),
                    1e-4,
                    &format!("case {case} {name} gradient"),
                );
            }
            for name in ["running_mean", "running_var"] {
                assert_close(
                    &ours_data[name],
                    &theirs_data[name],
                    1e-5,
                    &format!("case {case} {name}"),
                );
            }
            // Evaluation uses the running statistics in both.
            assert_close(
                &ours.forward_t(&x, false).unwrap(),
                &theirs.forward_t(&x, false).unwrap(),
                1e-5,
                "eval",
            );
        }
    }
}
