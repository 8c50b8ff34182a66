//! A linear layer, x Wᵀ + b over the last dimension, as one op each way on
//! the CPU. Candle's form records a reshape, a transpose, a matmul and a
//! broadcast add, each a gradient node that zero-fills and adds a gradient
//! of its own; and the bias's gradient is a sum over every row that candle
//! takes on one thread, strided. Here the forward is one gemm into rows
//! that start as the bias, and the backward two gemms and a parallel
//! column sum.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, D, Layout, Module, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::{f32_slice, fused, matmul, output, split_flat, threads, wide};

/// x (…, I) · weightᵀ (I, O) + bias (O) → (…, O).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let Some(bias) = bias.filter(|b| fused(&[x, weight, b])) else {
        return candle_nn::Linear::new(weight.clone(), bias.cloned()).forward(x);
    };
    check(x, weight, bias)?;
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, Linear)
}

/// GELU(x · weightᵀ + bias): a ViT MLP's first layer and its activation as
/// one op, so that the activation is not a graph node of its own (candle
/// zero-fills and adds a gradient for every node's input).
pub fn linear_gelu(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    if !fused(&[x, weight, bias]) {
        return super::gelu(&linear(x, weight, Some(bias))?);
    }
    check(x, weight, bias)?;
    let op = LinearGelu {
        pre: Mutex::new(None),
    };
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

/// That a weight (O, I) and a bias (O) fit an input of I features.
fn check(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<()> {
    let i = x.dim(D::Minus1)?;
    let (o, wi) = weight.dims2()?;
    if wi != i || bias.dims() != [o] {
        candle_core::bail!(
            "a linear layer on {i} features got weight {:?} and bias {:?}",
            weight.dims(),
            bias.dims()
        );
    }
    Ok(())
}

/// x · wᵀ + b for rows of x, and the output's shape.
fn affine(
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
) -> candle_core::Result<(Vec<f32>, Shape)> {
    let out = affine_values(f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
    let mut dims = l1.shape().dims().to_vec();
    *dims
        .last_mut()
        .expect("a linear layer's input has a last dimension") = l3.shape().elem_count();
    Ok((out, Shape::from(dims)))
}

/// x (m×i) · wᵀ (i×o) + b (o), row by row.
pub(super) fn affine_values(x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
    let (o, i) = (b.len(), w.len() / b.len());
    let m = x.len() / i;
    // SAFETY: every row gets the bias before the gemm adds to it.
    let mut out = unsafe { output(m * o) };
    // out += x (m×i) · wᵀ (i×o), the rows split over the threads, each
    // part one single-threaded gemm: gemm's own split meets at a barrier
    // in every block of the inner dimension, a quarter of a ViT-Tiny
    // layer's time.
    let rows = match parallelism(m, o, i) {
        Parallelism::Rayon(t) => m.div_ceil(t),
        _ => m,
    };
    out.par_chunks_mut(rows * o)
        .zip(x.par_chunks(rows * i))
        .for_each(|(out, x)| {
            for row in out.chunks_exact_mut(o) {
                row.copy_from_slice(b);
            }
            let m = out.len() / o;
            matmul(
                (m, o, i),
                out,
                (o, 1),
                true,
                1.0,
                x,
                (i, 1),
                w,
                (1, i),
                Parallelism::None,
            );
        });
    out
}

/// The three gradients of a linear layer from its output's.
fn backward(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    grad: &Tensor,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    // The patch embedding's input is the image: no gradient to take.
    let input = x.track_op();
    let flat = x.apply_op3_no_bwd(w, &grad.contiguous()?, &Backward { input })?;
    if !input {
        let mut parts = split_flat(&flat, &[w.shape(), b.shape()])?.into_iter();
        return Ok((None, parts.next(), parts.next()));
    }
    let mut parts = split_flat(&flat, &[x.shape(), w.shape(), b.shape()])?.into_iter();
    Ok((parts.next(), parts.next(), parts.next()))
}

/// Threads for a gemm of this many multiply-adds: below about a million,
/// handing work to other threads costs more than it saves.
fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    let t = threads();
    if t > 1 && m * n * k >= 1 << 20 {
        Parallelism::Rayon(t)
    } else {
        Parallelism::None
    }
}

struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "sslab-linear"
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
        let (out, shape) = affine((s1, l1), (s2, l2), (s3, l3))?;
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        backward(x, w, b, grad)
    }
}

/// [`linear_gelu`]: keeps the layer's output before the activation, which
/// the backward needs.
struct LinearGelu {
    pre: Mutex<Option<Tensor>>,
}

impl CustomOp3 for LinearGelu {
    fn name(&self) -> &'static str {
        "sslab-linear-gelu"
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
        let (pre, shape) = affine((s1, l1), (s2, l2), (s3, l3))?;
        let out = super::gelu::values(&pre);
        let pre = Tensor::from_vec(pre, shape.clone(), &candle_core::Device::Cpu)?;
        *self.pre.lock().expect("linear-gelu lock") = Some(pre);
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let pre = self.pre.lock().expect("linear-gelu lock").clone();
        let Some(pre) = pre else {
            candle_core::bail!("linear-gelu: a backward without its forward on the CPU");
        };
        backward(x, w, b, &super::gelu::input_grad(grad, &pre)?)
    }
}

/// dx (when `input`), dweight and dbias, flat and in that order, from x,
/// the weight and the output's gradient.
struct Backward {
    input: bool,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "sslab-linear-backward"
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
        let (x, w, g) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let (o, i) = l2.shape().dims2()?;
        let m = x.len() / i;
        // SAFETY: the two gemms and the column sums write every element.
        let dx_len = if self.input { m * i } else { 0 };
        let mut out = unsafe { output(dx_len + o * i + o) };
        let (dx, rest) = out.split_at_mut(dx_len);
        let (dw, db) = rest.split_at_mut(o * i);
        gradients(x, w, g, self.input.then_some(dx), dw, db);
        Ok((CpuStorage::F32(out), Shape::from(dx_len + o * i + o)))
    }
}

/// A linear layer's gradients from its input x (m×i), its weight w (o×i)
/// and its output's gradient g (m×o): dx (m×i, when asked for), dw (o×i)
/// and db (o), each overwritten.
pub(super) fn gradients(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    db: &mut [f32],
) {
    let (o, i) = (db.len(), dw.len() / db.len());
    let m = x.len() / i;
    // With two threads the two gemms run side by side, each on one:
    // no sync inside either, and neither waits for the other's tail.
    let (par, side_by_side) = match parallelism(m, i, o) {
        Parallelism::Rayon(t) if t == 2 && dx.is_some() => (Parallelism::None, true),
        p => (p, false),
    };
    // dx (m×i) = g (m×o) · w (o×i).
    let input_grad =
        |dx: &mut [f32]| matmul((m, i, o), dx, (i, 1), false, 1.0, g, (o, 1), w, (i, 1), par);
    // dw (o×i) = gᵀ (o×m) · x (m×i).
    let weight_grad =
        |dw: &mut [f32]| matmul((o, i, m), dw, (i, 1), false, 1.0, g, (1, o), x, (i, 1), par);
    match dx {
        Some(dx) if side_by_side => {
            rayon::join(|| input_grad(dx), || weight_grad(dw));
        }
        Some(dx) => {
            input_grad(dx);
            weight_grad(dw);
        }
        None => weight_grad(dw),
    }
    column_sums(g, o, db);
}

/// `sums[j]` = Σ over the rows of `g` (rows of `width`) of column j: each
/// thread sums a band of columns down every row, in row order.
fn column_sums(g: &[f32], width: usize, sums: &mut [f32]) {
    let band = width.div_ceil(threads()).next_multiple_of(16).max(16);
    sums.par_chunks_mut(band).enumerate().for_each(|(t, sums)| {
        let columns = t * band..t * band + sums.len();
        sums.fill(0.0);
        wide(
            #[inline(always)]
            || {
                for row in g.chunks_exact(width) {
                    for (s, &v) in sums.iter_mut().zip(&row[columns.clone()]) {
                        *s += v;
                    }
                }
            },
        )
    });
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::ops::tests::{assert_close, random, weighted_grads};

    /// Values and all three gradients against candle's layer, on a
    /// three-dimensional input whose sizes fill no vector evenly.
    #[test]
    fn matches_candles_linear_values_and_gradients() {
        let x = Var::from_tensor(&random(&[3, 7, 37], 1)).unwrap();
        let w = Var::from_tensor(&random(&[53, 37], 2)).unwrap();
        let b = Var::from_tensor(&random(&[53], 3)).unwrap();
        let weights = random(&[3, 7, 53], 4);
        let ours = linear(&x, &w, Some(&b)).unwrap();
        let theirs = candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()))
            .forward(&x)
            .unwrap();
        assert_close(&ours, &theirs, 1e-5, "values");
        let backward = |y: &Tensor| weighted_grads(y, &weights);
        let (g1, g2) = (backward(&ours), backward(&theirs));
        for (v, what) in [(&x, "dx"), (&w, "dweight"), (&b, "dbias")] {
            assert_close(g1.get(v).unwrap(), g2.get(v).unwrap(), 1e-5, what);
        }
    }

    /// Big enough for the threaded gemms and several column bands.
    #[test]
    fn threaded_sizes_agree_too() {
        let x = Var::from_tensor(&random(&[300, 96], 5)).unwrap();
        let w = Var::from_tensor(&random(&[130, 96], 6)).unwrap();
        let b = Var::from_tensor(&random(&[130], 7)).unwrap();
        let ours = linear(&x, &w, Some(&b)).unwrap();
        let theirs = x
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        assert_close(&ours, &theirs, 1e-5, "values");
        let (g1, g2) = (
            ours.sqr().unwrap().sum_all().unwrap().backward().unwrap(),
            theirs.sqr().unwrap().sum_all().unwrap().backward().unwrap(),
        );
        for (v, what) in [(&x, "dx"), (&w, "dweight"), (&b, "dbias")] {
            assert_close(g1.get(v).unwrap(), g2.get(v).unwrap(), 1e-4, what);
        }
    }

    /// An input that is not trained (an image) gets no gradient; the
    /// weight's and bias's are the same as with one.
    #[test]
    fn a_constant_input_gets_no_gradient() {
        let x = random(&[5, 12], 8);
        let w = Var::from_tensor(&random(&[7, 12], 9)).unwrap();
        let b = Var::from_tensor(&random(&[7], 10)).unwrap();
        let grads = linear(&x, &w, Some(&b))
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(&x).is_none());
        let theirs = x
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        let want = theirs.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for (v, what) in [(&w, "dweight"), (&b, "dbias")] {
            assert_close(grads.get(v).unwrap(), want.get(v).unwrap(), 1e-5, what);
        }
    }

    /// GELU after the layer as one op: values and the three gradients
    /// against the two ops, unthreaded and threaded.
    #[test]
    fn with_gelu_matches_the_layer_then_gelu() {
        for (m, i, o, seed) in [(21, 37, 53, 11), (300, 96, 130, 15)] {
            let x = Var::from_tensor(&random(&[m, i], seed)).unwrap();
            let w = Var::from_tensor(&random(&[o, i], seed + 1)).unwrap();
            let b = Var::from_tensor(&random(&[o], seed + 2)).unwrap();
            let weights = random(&[m, o], seed + 3);
            let ours = linear_gelu(&x, &w, &b).unwrap();
            let theirs = crate::ops::gelu(&linear(&x, &w, Some(&b)).unwrap()).unwrap();
            assert_close(&ours, &theirs, 1e-6, "values");
            let backward = |y: &Tensor| weighted_grads(y, &weights);
            let (g1, g2) = (backward(&ours), backward(&theirs));
            for (v, what) in [(&x, "dx"), (&w, "dweight"), (&b, "dbias")] {
                assert_close(g1.get(v).unwrap(), g2.get(v).unwrap(), 1e-6, what);
            }
        }
        assert!(
            linear_gelu(&random(&[2, 8], 1), &random(&[4, 6], 2), &random(&[4], 3))
                .unwrap_err()
                .to_string()
                .contains("8 features")
        );
    }

    #[test]
    fn names_a_weight_of_the_wrong_size() {
        let err = linear(
            &random(&[2, 8], 1),
            &random(&[4, 6], 2),
            Some(&random(&[4], 3)),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("8 features") && err.contains("[4, 6]"),
            "{err}"
        );
    }
}
