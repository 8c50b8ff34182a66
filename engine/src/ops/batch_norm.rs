//! BatchNorm whose training forward and backward are two fused passes each on
//! the CPU, instead of the dozen broadcast ops (and their saved intermediates)
//! candle_nn's version records. Weights, running statistics and their names
//! are candle_nn's, so checkpoints are the same. On CUDA (feature `cuda`)
//! training runs the kernels of `cuda.rs`, f32 or bf16 with f32 statistics;
//! evaluation and other devices use candle_nn's code. Inputs in other dtypes
//! (bf16 training) are normalised in f32 and handed back in their dtype, as
//! autocast does.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, ModuleT, Shape, Tensor, Var};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::{f32_slice, fused, on_gpu, output, span_sums, split_flat, threads, wide};

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

    /// BatchNorm, then ReLU: in training on the CPU (and on CUDA) one fused
    /// op.
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if train && (fused(&[x]) || on_gpu(&[x])) {
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
        #[cfg(feature = "cuda")]
        if on_gpu(&[x]) {
            return self.forward_cuda(x, relu);
        }
        let stats = Arc::new(Mutex::new(Stats::default()));
        let op = Forward {
            eps: self.eps,
            relu,
            stats: stats.clone(),
        };
        let y = x.contiguous()?.apply_op3(&self.weight, &self.bias, op)?;
        let stats = stats.lock().expect("stats lock").clone();
        self.update_running(&stats, x.elem_count() / channels)?;
        Ok(y)
    }

    /// [`Self::forward_train`] on CUDA: the statistics are computed by one
    /// op and stay on the GPU; the normalisation takes them with γ and β as
    /// one (4, C) tensor, whose rows 2 and 3 carry γ's and β's gradients.
    #[cfg(feature = "cuda")]
    fn forward_cuda(&self, x: &Tensor, relu: bool) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?;
        let stats = x.apply_op1_no_bwd(&super::cuda::BatchStats)?;
        let params = Tensor::cat(
            &[&stats, &self.weight.unsqueeze(0)?, &self.bias.unsqueeze(0)?],
            0,
        )?;
        let op = super::cuda::BatchNorm {
            eps: self.eps as f32,
            relu,
        };
        let y = x.apply_op2(&params, op)?;
        let channels = stats.dim(1)?;
        self.update_running_with(&stats.get(0)?, &stats.get(1)?, x.elem_count() / channels)?;
        Ok(y)
    }

    /// Moves the running statistics towards a training batch's, of
    /// `values` values per channel.
    pub(super) fn update_running(&self, stats: &Stats, values: usize) -> candle_core::Result<()> {
        let channels = stats.mean.len();
        let device = self.running_mean.device();
        let mean = Tensor::from_vec(stats.mean.clone(), channels, device)?;
        let var = Tensor::from_vec(stats.var.clone(), channels, device)?;
        self.update_running_with(&mean, &var, values)
    }

    /// [`Self::update_running`] with the batch's mean and biased variance
    /// as tensors on the statistics' device.
    pub(super) fn update_running_with(
        &self,
        mean: &Tensor,
        var: &Tensor,
        values: usize,
    ) -> candle_core::Result<()> {
        let unbiased = values as f64 / (values.max(2) - 1) as f64;
        let m = self.momentum;
        self.running_mean
            .set(&((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?)?;
        self.running_var
            .set(&((self.running_var.as_tensor() * (1.0 - m))? + (var * (m * unbiased))?)?)?;
        Ok(())
    }

    /// γ and β.
    pub(super) fn affine(&self) -> (&Tensor, &Tensor) {
        (&self.weight, &self.bias)
    }

    pub(super) fn eps(&self) -> f64 {
        self.eps
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if train && (fused(&[x]) || on_gpu(&[x])) {
            self.forward_train(x, false)
        } else {
            self.candle_nn(x, train)
        }
    }
}

/// One batch's per-channel statistics, kept for the backward pass.
#[derive(Clone, Default)]
pub(super) struct Stats {
    mean: Vec<f32>,
    /// Biased variance.
    var: Vec<f32>,
    inv_std: Vec<f32>,
    /// The output before ReLU is `scale·x + shift`.
    pub(super) scale: Vec<f32>,
    pub(super) shift: Vec<f32>,
}

/// (N, C, …) viewed as N rows of C channels of `inner` values each.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) inner: usize,
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

/// Per-channel sums of `K` values over the batch: `span(channel, a, b)`
/// sums one row's values of one channel in two same-shaped arrays; the
/// rows are split over threads and their sums added in f64.
fn channel_sums<const K: usize>(
    d: Dims,
    [a, b]: [&[f32]; 2],
    span: impl Fn(usize, &[f32], &[f32]) -> [f64; K] + Sync,
) -> Vec<[f64; K]> {
    let chunk = d.rows_per_task() * d.row();
    a.par_chunks(chunk)
        .zip(b.par_chunks(chunk))
        .map(|(a, b)| {
            let mut sums = vec![[0f64; K]; d.c];
            let spans = a.chunks(d.inner).zip(b.chunks(d.inner));
            for (i, (a, b)) in spans.enumerate() {
                let s = wide(
                    #[inline(always)]
                    || span(i % d.c, a, b),
                );
                let sum = &mut sums[i % d.c];
                for k in 0..K {
                    sum[k] += s[k];
                }
            }
            sums
        })
        .reduce(
            || vec![[0f64; K]; d.c],
            |mut x, y| {
                for (a, b) in x.iter_mut().zip(y) {
                    for k in 0..K {
                        a[k] += b[k];
                    }
                }
                x
            },
        )
}

/// `f(channel, out, a, b)` for every row's span of every channel, the rows
/// split over threads.
fn for_each_span(
    d: Dims,
    out: &mut [f32],
    [a, b]: [&[f32]; 2],
    f: impl Fn(usize, &mut [f32], &[f32], &[f32]) + Sync,
) {
    let chunk = d.rows_per_task() * d.row();
    out.par_chunks_mut(chunk)
        .zip(a.par_chunks(chunk).zip(b.par_chunks(chunk)))
        .for_each(|(out, (a, b))| {
            let spans = out
                .chunks_mut(d.inner)
                .zip(a.chunks(d.inner).zip(b.chunks(d.inner)));
            for (i, (out, (a, b))) in spans.enumerate() {
                wide(
                    #[inline(always)]
                    || f(i % d.c, out, a, b),
                );
            }
        });
}

/// What follows the normalisation.
#[derive(Clone, Copy)]
pub(super) enum Tail<'a> {
    None,
    Relu,
    /// relu(y + skip): the end of a residual block.
    AddRelu(&'a [f32]),
}

/// BatchNorm of `x` with the batch's statistics, then `tail`.
pub(super) fn forward(
    d: Dims,
    x: &[f32],
    [gamma, beta]: [&[f32]; 2],
    tail: Tail,
    eps: f64,
) -> (Vec<f32>, Stats) {
    let count = d.count();
    let mean: Vec<f64> = channel_sums(
        d,
        [x, x],
        #[inline(always)]
        |_, x, _| span_sums(x, x, |v, _| [v]),
    )
    .into_iter()
    .map(|[s]| s / count)
    .collect();
    let var: Vec<f64> = channel_sums(
        d,
        [x, x],
        #[inline(always)]
        |c, x, _| {
            let m = mean[c] as f32;
            span_sums(x, x, |v, _| [(v - m) * (v - m)])
        },
    )
    .into_iter()
    .map(|[s]| s / count)
    .collect();
    let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    // y = scale·x + shift per channel.
    let scale: Vec<f32> = (0..d.c)
        .map(|c| (gamma[c] as f64 * inv_std[c]) as f32)
        .collect();
    let shift: Vec<f32> = (0..d.c)
        .map(|c| (beta[c] as f64 - mean[c] * gamma[c] as f64 * inv_std[c]) as f32)
        .collect();
    let skip = match tail {
        Tail::AddRelu(skip) => skip,
        _ => x,
    };
    // SAFETY: the kernel below writes every element before any is read.
    let mut y = unsafe { output(x.len()) };
    for_each_span(
        d,
        &mut y,
        [x, skip],
        #[inline(always)]
        |c, y, x, skip| {
            let (a, b) = (scale[c], shift[c]);
            match tail {
                Tail::None => {
                    for (o, &v) in y.iter_mut().zip(x) {
                        *o = a * v + b;
                    }
                }
                Tail::Relu => {
                    for (o, &v) in y.iter_mut().zip(x) {
                        *o = (a * v + b).max(0.0);
                    }
                }
                Tail::AddRelu(_) => {
                    for ((o, &v), &s) in y.iter_mut().zip(x).zip(skip) {
                        *o = (a * v + b + s).max(0.0);
                    }
                }
            }
        },
    );
    let stats = Stats {
        mean: mean.iter().map(|&v| v as f32).collect(),
        var: var.iter().map(|&v| v as f32).collect(),
        inv_std: inv_std.iter().map(|&v| v as f32).collect(),
        scale,
        shift,
    };
    (y, stats)
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
        let (x, gamma, beta) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let tail = if self.relu { Tail::Relu } else { Tail::None };
        let (y, stats) = forward(Dims::of(l1), x, [gamma, beta], tail, self.eps);
        *self.stats.lock().expect("stats lock") = stats;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = Backward {
            stats: self.stats.lock().expect("stats lock").clone(),
            gamma: gamma.to_vec1()?,
            relu: self.relu,
        };
        let flat = x.apply_op2_no_bwd(&grad.contiguous()?, &op)?;
        let mut parts = split_flat(&flat, &[x.shape(), gamma.shape(), beta.shape()])?.into_iter();
        Ok((parts.next(), parts.next(), parts.next()))
    }
}

/// The gradients of [`forward`] from x and the output's gradient dy,
/// written into `[dx, dγ, dβ]`; with `relu`, dy counts only where the
/// forward's `scale·x + shift` was positive. With x̂ = (x − μ)/σ over M
/// values per channel: dβ = Σ dy, dγ = Σ dy·x̂,
/// dx = γ/σ · (dy − dβ/M − x̂·dγ/M).
pub(super) fn backward(
    d: Dims,
    stats: &Stats,
    gamma: &[f32],
    [x, dy]: [&[f32]; 2],
    relu: bool,
    [dx, dgamma, dbeta]: [&mut [f32]; 3],
) {
    let Stats {
        mean,
        inv_std,
        scale,
        shift,
        ..
    } = stats;
    // The ReLU's cut as a select the compiler vectorises: with `relu` off
    // the threshold is −∞ and nothing is cut.
    let cut = |c: usize| {
        if relu {
            (scale[c], shift[c], 0.0)
        } else {
            (0.0, 0.0, f32::NEG_INFINITY)
        }
    };
    let sums = channel_sums(
        d,
        [x, dy],
        #[inline(always)]
        |c, x, dy| {
            let (a, b, floor) = cut(c);
            let m = mean[c];
            span_sums(x, dy, |v, g| {
                let g = if a * v + b > floor { g } else { 0.0 };
                [g, g * (v - m)]
            })
        },
    );
    // dx = k1·dy + k2·x + k3 per channel.
    let count = d.count();
    let (mut k1, mut k2, mut k3) = (vec![0f32; d.c], vec![0f32; d.c], vec![0f32; d.c]);
    for (c, [d_beta, d_gamma]) in sums.into_iter().enumerate() {
        let d_gamma = d_gamma * inv_std[c] as f64;
        let scale = gamma[c] as f64 * inv_std[c] as f64;
        let slope = -scale * inv_std[c] as f64 * d_gamma / count;
        k1[c] = scale as f32;
        k2[c] = slope as f32;
        k3[c] = (-scale * d_beta / count - slope * mean[c] as f64) as f32;
        dgamma[c] = d_gamma as f32;
        dbeta[c] = d_beta as f32;
    }
    for_each_span(
        d,
        dx,
        [x, dy],
        #[inline(always)]
        |c, dx, x, dy| {
            let (a, b, floor) = cut(c);
            let (k1, k2, k3) = (k1[c], k2[c], k3[c]);
            for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
                let g = if a * v + b > floor { g } else { 0.0 };
                *o = k1 * g + k2 * v + k3;
            }
        },
    );
}

/// The three gradients of [`Forward`] as one flat tensor: x's, γ's, β's,
/// from x and the output's gradient dy.
struct Backward {
    stats: Stats,
    gamma: Vec<f32>,
    relu: bool,
}

impl CustomOp2 for Backward {
    fn name(&self) -> &'static str {
        "sslab-batch-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = Dims::of(l1);
        let (x, dy) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        if self.stats.mean.len() != d.c || dy.len() != x.len() {
            candle_core::bail!("batch norm backward: shapes do not match the forward's");
        }
        // SAFETY: the kernel below writes every element before any is read.
        let mut flat = unsafe { output(x.len() + 2 * d.c) };
        let (dx, rest) = flat.split_at_mut(x.len());
        let (d_gamma, d_beta) = rest.split_at_mut(d.c);
        backward(
            d,
            &self.stats,
            &self.gamma,
            [x, dy],
            self.relu,
            [dx, d_gamma, d_beta],
        );
        Ok((CpuStorage::F32(flat), Shape::from(x.len() + 2 * d.c)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    use super::*;
    use crate::ops::tests::{assert_close, assert_same_batch_norms, random, set_affine};

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
            set_affine(&ours_map, c);
            set_affine(&theirs_map, c);
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
            assert_same_batch_norms(&grads, &ours_map, &theirs_map, &format!("case {case}"));
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
