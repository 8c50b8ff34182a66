//! LayerNorm over the last dimension as one pass each way on the CPU. The
//! composed form records seven broadcast ops, each with a gradient node and
//! a saved output the size of the tokens; this one keeps nothing and
//! recomputes each row's mean and spread in its backward.

use candle_core::{CpuStorage, CustomOp3, D, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, fused, output, span_sums, split_flat, wide};

/// Values per parallel task.
const CHUNK: usize = 1 << 14;

/// (x − mean) / √(var + eps) · weight + bias over the last dimension.
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    if !fused(&[x, weight, bias]) {
        return composed(x, weight, bias, eps);
    }
    let d = x.dim(D::Minus1)?;
    if weight.dims() != [d] || bias.dims() != [d] {
        candle_core::bail!(
            "layer norm over {d} features got weight {:?} and bias {:?}",
            weight.dims(),
            bias.dims()
        );
    }
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )
}

/// The same from candle's tensor ops: other devices and dtypes.
pub(crate) fn composed(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// A row's mean and 1 / √(var + eps).
#[inline(always)]
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f64;
    let mean = (span_sums(row, row, |v, _| [v])[0] / n) as f32;
    let var = (span_sums(row, row, |v, _| [(v - mean) * (v - mean)])[0] / n) as f32;
    (mean, 1.0 / (var + eps).sqrt())
}

fn rows_per_task(d: usize) -> usize {
    (CHUNK / d.max(1)).max(1)
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "sslab-layer-norm"
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
        let (x, w, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let out = values(x, w, b, self.eps);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let flat = x.apply_op3_no_bwd(w, &grad.contiguous()?, &Backward { eps: self.eps })?;
        let mut parts = split_flat(&flat, &[x.shape(), w.shape(), w.shape()])?.into_iter();
        Ok((parts.next(), parts.next(), parts.next()))
    }
}

/// dx, dweight and dbias, flat and in that order.
struct Backward {
    eps: f32,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "sslab-layer-norm-backward"
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
        let d = w.len();
        // SAFETY: `gradients` writes every element.
        let mut out = unsafe { output(x.len() + 2 * d) };
        let (dx, rest) = out.split_at_mut(x.len());
        let (dw, db) = rest.split_at_mut(d);
        gradients(x, w, g, self.eps, None, dx, dw, db);
        Ok((CpuStorage::F32(out), Shape::from(x.len() + 2 * d)))
    }
}

/// LayerNorm of each row of x (rows as wide as w).
pub(super) fn values(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    // SAFETY: every row is written below before anything reads it.
    let mut out = unsafe { output(x.len()) };
    let per = rows_per_task(d) * d;
    out.par_chunks_mut(per)
        .zip(x.par_chunks(per))
        .for_each(|(out, x)| {
            wide(
                #[inline(always)]
                || {
                    for (o, x) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                        let (mean, rstd) = moments(x, eps);
                        for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(w).zip(b) {
                            *o = (x - mean) * rstd * w + b;
                        }
                    }
                },
            )
        });
    out
}

/// LayerNorm's gradients from its input x, its weight w and its output's
/// gradient g: dx (plus `residual`, a gradient that reaches x another way,
/// when given), dweight and dbias, each overwritten.
#[allow(clippy::too_many_arguments)]
pub(super) fn gradients(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    eps: f32,
    residual: Option<&[f32]>,
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
) {
    let d = w.len();
    let inv_d = 1.0 / d as f64;
    let per = rows_per_task(d) * d;
    let partial: Vec<Vec<f32>> = dx
        .par_chunks_mut(per)
        .zip(x.par_chunks(per).zip(g.par_chunks(per)))
        .enumerate()
        .map(|(t, (dx, (x, g)))| {
            let residual = residual.map(|r| &r[t * per..t * per + dx.len()]);
            // dweight, then dbias, over this task's rows; then a row's
            // x̂ and g·w, so that its two sums run in vector lanes.
            let mut sums = vec![0f32; 4 * d];
            wide(
                #[inline(always)]
                || {
                    let (dw, rest) = sums.split_at_mut(d);
                    let (db, rest) = rest.split_at_mut(d);
                    let (xhat, gw) = rest.split_at_mut(d);
                    let rows = dx.chunks_exact_mut(d).zip(x.chunks_exact(d));
                    for (r, ((dx, x), g)) in rows.zip(g.chunks_exact(d)).enumerate() {
                        let (mean, rstd) = moments(x, eps);
                        for i in 0..d {
                            xhat[i] = (x[i] - mean) * rstd;
                            gw[i] = g[i] * w[i];
                        }
                        // dx = rstd · (g·w − mean(g·w) − x̂ · mean(g·w·x̂)).
                        let [a, c] = span_sums(gw, xhat, |gw, xhat| [gw, gw * xhat]);
                        let (a, c) = ((a * inv_d) as f32, (c * inv_d) as f32);
                        for i in 0..d {
                            dx[i] = rstd * (gw[i] - a - xhat[i] * c);
                            dw[i] += g[i] * xhat[i];
                            db[i] += g[i];
                        }
                        if let Some(res) = residual {
                            for (dx, &v) in dx.iter_mut().zip(&res[r * d..(r + 1) * d]) {
                                *dx += v;
                            }
                        }
                    }
                },
            );
            sums.truncate(2 * d);
            sums
        })
        .collect();
    dw.fill(0.0);
    db.fill(0.0);
    for sums in &partial {
        for i in 0..d {
            dw[i] += sums[i];
            db[i] += sums[d + i];
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::ops::tests::{assert_close, random, weighted_grads};

    /// Values and all three gradients against the composed form, on rows
    /// far from zero mean and unit spread.
    #[test]
    fn matches_the_composed_form_values_and_gradients() {
        let x = Var::from_tensor(&random(&[3, 7, 40], 1).affine(2.5, 1.5).unwrap()).unwrap();
        let w = Var::from_tensor(&random(&[40], 2)).unwrap();
        let b = Var::from_tensor(&random(&[40], 3)).unwrap();
        let weights = random(&[3, 7, 40], 4);
        let ours = layer_norm(&x, &w, &b, 1e-6).unwrap();
        let theirs = composed(&x, &w, &b, 1e-6).unwrap();
        assert_close(&ours, &theirs, 1e-5, "values");
        let backward = |y: &Tensor| weighted_grads(y, &weights);
        let (g1, g2) = (backward(&ours), backward(&theirs));
        for (v, what) in [(&x, "dx"), (&w, "dweight"), (&b, "dbias")] {
            assert_close(g1.get(v).unwrap(), g2.get(v).unwrap(), 1e-4, what);
        }
    }

    #[test]
    fn names_a_weight_of_the_wrong_size() {
        let err = layer_norm(
            &random(&[2, 8], 1),
            &random(&[6], 2),
            &random(&[8], 3),
            1e-6,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("8 features") && err.contains("[6]"), "{err}");
    }
}
