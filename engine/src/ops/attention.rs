//! Multi-head self-attention's core, softmax(QKᵀ/√d)·V for every head, as
//! one op each way on the CPU. It reads Q, K and V where the qkv linear
//! wrote them, (B, N, 3·D), and writes the heads side by side, (B, N, D), so
//! the permutes and copies around candle's batched matmuls go; the backward
//! recomputes each head's probabilities instead of keeping B·H·N² values
//! per block.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, IndexOp, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::{exp, f32_slice, fused, matmul, output, span_sums, wide};

/// The heads' outputs side by side, (B, N, D), from `qkv` (B, N, 3·D) laid
/// out as the qkv linear writes it: Q, K, V, each head by head.
pub fn attention(qkv: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (_, _, d) = shape(qkv, heads)?;
    if !fused(&[qkv]) {
        return Ok(with_probabilities(qkv, heads)?.0);
    }
    qkv.contiguous()?.apply_op1(Attention { heads, d })
}

/// [`attention`] from candle's tensor ops, with the probabilities
/// (B, H, N, N): other devices and dtypes, and the attention probes.
pub fn with_probabilities(qkv: &Tensor, heads: usize) -> candle_core::Result<(Tensor, Tensor)> {
    let (b, n, d) = shape(qkv, heads)?;
    let hd = d / heads;
    // (B, N, 3, H, hd) → (3, B, H, N, hd)
    let qkv = qkv
        .reshape((b, n, 3, heads, hd))?
        .permute((2, 0, 3, 1, 4))?;
    let q = (qkv.i(0)?.contiguous()? * (1.0 / (hd as f64).sqrt()))?;
    let k = qkv.i(1)?.contiguous()?;
    let v = qkv.i(2)?.contiguous()?;
    let probs = candle_nn::ops::softmax(&q.matmul(&k.t()?.contiguous()?)?, D::Minus1)?;
    let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))?;
    Ok((out, probs))
}

/// (B, N, D) of a qkv tensor whose width splits into three times `heads`.
fn shape(qkv: &Tensor, heads: usize) -> candle_core::Result<(usize, usize, usize)> {
    let (b, n, w) = qkv.dims3()?;
    if heads == 0 || w % (3 * heads) != 0 {
        candle_core::bail!("attention over {heads} heads got qkv of width {w}");
    }
    Ok((b, n, w / 3))
}

/// Softmax of each row of an n × n block, in place.
#[inline(always)]
fn softmax_rows(s: &mut [f32], n: usize) {
    for row in s.chunks_exact_mut(n) {
        let max = row_max(row);
        for v in row.iter_mut() {
            *v = exp(*v - max);
        }
        let inv = (1.0 / span_sums(row, row, |v, _| [v])[0]) as f32;
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// A row's largest value, in 16 lanes so that the loop vectorises.
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    lanes.iter().fold(tail, |m, &v| m.max(v))
}

/// Where one head's Q, K and V start in an image's (N, 3·D) block, and the
/// row stride they share.
struct Head {
    q: usize,
    k: usize,
    v: usize,
    /// The head's columns in the (N, D) output.
    out: usize,
}

impl Head {
    fn new(h: usize, hd: usize, d: usize) -> Self {
        Head {
            q: h * hd,
            k: d + h * hd,
            v: 2 * d + h * hd,
            out: h * hd,
        }
    }
}

/// P = softmax(scale · Q Kᵀ) of one head into `p` (n × n).
#[inline(always)]
fn probabilities(x: &[f32], head: &Head, (n, hd, d): (usize, usize, usize), p: &mut [f32]) {
    let scale = 1.0 / (hd as f32).sqrt();
    let row = 3 * d;
    matmul(
        (n, n, hd),
        p,
        (n, 1),
        false,
        scale,
        &x[head.q..],
        (row, 1),
        &x[head.k..],
        (1, row),
        Parallelism::None,
    );
    softmax_rows(p, n);
}

struct Attention {
    heads: usize,
    d: usize,
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "sslab-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, n, _) = l.shape().dims3()?;
        let out = values(f32_slice(s, l)?, (b, n), self.heads, self.d);
        Ok((CpuStorage::F32(out), Shape::from((b, n, self.d))))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let backward = Backward {
            heads: self.heads,
            d: self.d,
        };
        Ok(Some(qkv.apply_op2_no_bwd(&grad.contiguous()?, &backward)?))
    }
}

/// d qkv (B, N, 3·D) from qkv and the output's gradient (B, N, D).
struct Backward {
    heads: usize,
    d: usize,
}

impl CustomOp2 for Backward {
    fn name(&self) -> &'static str {
        "sslab-attention-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (qkv, dout) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let dims = l1.shape().dims();
        let dqkv = gradients(qkv, dout, (dims[0], dims[1]), self.heads, self.d);
        Ok((CpuStorage::F32(dqkv), l1.shape().clone()))
    }
}

/// The heads' outputs side by side, (B, N, D), from qkv (B, N, 3·D).
pub(super) fn values(qkv: &[f32], (b, n): (usize, usize), heads: usize, d: usize) -> Vec<f32> {
    let hd = d / heads;
    // SAFETY: every head writes its columns of every row below.
    let mut out = unsafe { output(b * n * d) };
    out.par_chunks_mut(n * d)
        .zip(qkv.par_chunks(n * 3 * d))
        .for_each_init(
            || vec![0f32; n * n],
            |p, (o, x)| {
                wide(
                    #[inline(always)]
                    || {
                        for h in 0..heads {
                            let head = Head::new(h, hd, d);
                            probabilities(x, &head, (n, hd, d), p);
                            // O = P V, into the head's columns.
                            matmul(
                                (n, hd, n),
                                &mut o[head.out..],
                                (d, 1),
                                false,
                                1.0,
                                p,
                                (n, 1),
                                &x[head.v..],
                                (3 * d, 1),
                                Parallelism::None,
                            );
                        }
                    },
                )
            },
        );
    out
}

/// d qkv (B, N, 3·D) from qkv and the output's gradient (B, N, D).
pub(super) fn gradients(
    qkv: &[f32],
    dout: &[f32],
    (b, n): (usize, usize),
    heads: usize,
    d: usize,
) -> Vec<f32> {
    let hd = d / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let row = 3 * d;
    // SAFETY: every head writes its Q, K and V columns of every row.
    let mut dqkv = unsafe { output(b * n * row) };
    dqkv.par_chunks_mut(n * row)
        .zip(qkv.par_chunks(n * row).zip(dout.par_chunks(n * d)))
        .for_each_init(
            || (vec![0f32; n * n], vec![0f32; n * n]),
            |(p, dp), (dx, (x, dout))| {
                wide(
                    #[inline(always)]
                    || {
                        for h in 0..heads {
                            let head = Head::new(h, hd, d);
                            let dout = &dout[head.out..];
                            probabilities(x, &head, (n, hd, d), p);
                            // dV = Pᵀ dO.
                            matmul(
                                (n, hd, n),
                                &mut dx[head.v..],
                                (row, 1),
                                false,
                                1.0,
                                p,
                                (1, n),
                                dout,
                                (d, 1),
                                Parallelism::None,
                            );
                            // dP = dO Vᵀ.
                            matmul(
                                (n, n, hd),
                                dp,
                                (n, 1),
                                false,
                                1.0,
                                dout,
                                (d, 1),
                                &x[head.v..],
                                (1, row),
                                Parallelism::None,
                            );
                            // dS = P ∘ (dP − Σⱼ P dP), in dP's place.
                            for (dp, p) in dp.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
                                let dot = span_sums(dp, p, |a, b| [a * b])[0] as f32;
                                for (dp, &p) in dp.iter_mut().zip(p) {
                                    *dp = p * (*dp - dot);
                                }
                            }
                            // dQ = scale · dS K, dK = scale · dSᵀ Q.
                            matmul(
                                (n, hd, n),
                                &mut dx[head.q..],
                                (row, 1),
                                false,
                                scale,
                                dp,
                                (n, 1),
                                &x[head.k..],
                                (row, 1),
                                Parallelism::None,
                            );
                            matmul(
                                (n, hd, n),
                                &mut dx[head.k..],
                                (row, 1),
                                false,
                                scale,
                                dp,
                                (1, n),
                                &x[head.q..],
                                (row, 1),
                                Parallelism::None,
                            );
                        }
                    },
                )
            },
        );
    dqkv
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::ops::tests::{assert_close, random, weighted_grads};

    /// Values and the qkv gradient against the composed form, with a token
    /// count that fills no vector evenly.
    #[test]
    fn matches_the_composed_form_values_and_gradient() {
        let (b, n, d, heads) = (3, 17, 24, 3);
        let qkv = Var::from_tensor(&random(&[b, n, 3 * d], 1).affine(1.5, 0.0).unwrap()).unwrap();
        let weights = random(&[b, n, d], 2);
        let ours = attention(&qkv, heads).unwrap();
        let theirs = with_probabilities(&qkv, heads).unwrap().0;
        assert_close(&ours, &theirs, 1e-5, "values");
        let backward = |y: &Tensor| weighted_grads(y, &weights);
        let (g1, g2) = (backward(&ours), backward(&theirs));
        assert_close(
            g1.get(&qkv).unwrap(),
            g2.get(&qkv).unwrap(),
            1e-5,
            "gradient",
        );
    }

    #[test]
    fn names_a_width_the_heads_do_not_split() {
        let err = attention(&random(&[1, 4, 30], 1), 4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("4 heads") && err.contains("width 30"), "{err}");
    }
}
