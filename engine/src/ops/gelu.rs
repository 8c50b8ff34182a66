//! GELU with the exact (erf) form, one pass each way on the CPU. candle's
//! backward for it is nine tensor ops over the MLP's widest activations; here
//! it is one.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{exp, f32_slice, fused, output, wide};

const CHUNK: usize = 1 << 14;

/// x · Φ(x), Φ the standard normal CDF.
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    if !fused(&[x]) {
        return x.gelu_erf();
    }
    x.contiguous()?.apply_op1(Gelu)
}

/// erfc(z), with a fractional error below 1.2e-7 everywhere (the Chebyshev
/// fit of Numerical Recipes' `erfcc`): relative accuracy holds in the tail,
/// where 1 + erf(z) would cancel.
#[inline(always)]
fn erfc(z: f32) -> f32 {
    let a = z.abs();
    let t = 1.0 / (1.0 + 0.5 * a);
    let poly = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * exp(-a * a + poly);
    if z >= 0.0 { r } else { 2.0 - r }
}

/// Φ(x) and the normal density φ(x).
#[inline(always)]
fn cdf_pdf(x: f32) -> (f32, f32) {
    const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = 0.5 * erfc(-x * std::f32::consts::FRAC_1_SQRT_2);
    (cdf, FRAC_1_SQRT_2PI * exp(-0.5 * x * x))
}

fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    // SAFETY: every element is written below before anything reads it.
    let mut out = unsafe { output(a.len()) };
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            wide(
                #[inline(always)]
                || {
                    for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                        *o = f(a, b);
                    }
                },
            )
        });
    out
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "sslab-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(values(f32_slice(s, l)?)), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(input_grad(grad, x)?))
    }
}

/// GELU of every value.
pub(super) fn values(x: &[f32]) -> Vec<f32> {
    map2(x, x, |x, _| x * cdf_pdf(x).0)
}

/// The gradient at GELU's input `x` (contiguous, f32, on the CPU) from the
/// gradient at its output.
pub(super) fn input_grad(grad: &Tensor, x: &Tensor) -> candle_core::Result<Tensor> {
    grad.contiguous()?.apply_op2_no_bwd(x, &GeluGrad)
}

/// GELU's derivative, Φ(x) + x·φ(x).
#[inline(always)]
fn slope(x: f32) -> f32 {
    let (cdf, pdf) = cdf_pdf(x);
    cdf + x * pdf
}

/// grad · (Φ(x) + x·φ(x)) for GELU's input `x`, over `grad` in place.
pub(super) fn grad_in_place(grad: &mut [f32], x: &[f32]) {
    grad.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(g, x)| {
            wide(
                #[inline(always)]
                || {
                    for (g, &x) in g.iter_mut().zip(x) {
                        *g *= slope(x);
                    }
                },
            )
        });
}

/// The gradient at GELU's input from the one at its output.
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "sslab-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, x) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let out = map2(g, x, |g, x| g * slope(x));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::ops::tests::{assert_close, random, weighted_grads};

    /// Values and gradient against candle's erf GELU, tails included.
    #[test]
    fn matches_candle_values_and_gradient() {
        let x = Var::from_tensor(&random(&[5, 9, 64], 1).affine(3.0, 0.0).unwrap()).unwrap();
        let weights = random(&[5, 9, 64], 2);
        let ours = gelu(&x).unwrap();
        let theirs = x.as_tensor().gelu_erf().unwrap();
        assert_close(&ours, &theirs, 2e-6, "values");
        let backward = |y: &Tensor| weighted_grads(y, &weights);
        let (g1, g2) = (backward(&ours), backward(&theirs));
        assert_close(g1.get(&x).unwrap(), g2.get(&x).unwrap(), 2e-6, "gradient");
    }

    #[test]
    fn erfc_against_known_values() {
        for (z, want) in [
            (0.0f32, 1.0f32),
            (0.5, 0.479_500_1),
            (1.0, 0.157_299_2),
            (2.0, 4.677_735e-3),
            (4.0, 1.541_726e-8),
            (-1.0, 1.842_700_8),
        ] {
            let got = erfc(z);
            assert!(
                (got - want).abs() <= 3e-7 * want,
                "erfc({z}) = {got}, want {want}"
            );
        }
    }
}
