//! The target network's moving average in place on the CPU: one pass over
//! both weights, where the tensor form makes three temporaries per variable
//! and then copies the result in.

use candle_core::{CpuStorage, InplaceOp2, Layout, Tensor};
use rayon::prelude::*;

const CHUNK: usize = 1 << 16;

/// target ← τ·target + (1 − τ)·online in place; false (and nothing touched)
/// where the two are not contiguous f32 on the CPU of one shape.
pub fn ema_in_place(target: &Tensor, online: &Tensor, tau: f64) -> candle_core::Result<bool> {
    if !super::fused(&[target, online])
        || !target.is_contiguous()
        || !online.is_contiguous()
        || target.shape() != online.shape()
    {
        return Ok(false);
    }
    target.inplace_op2(online, &Ema { tau })?;
    Ok(true)
}

struct Ema {
    tau: f64,
}

impl InplaceOp2 for Ema {
    fn name(&self) -> &'static str {
        "sslab-ema"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        online: &CpuStorage,
        online_l: &Layout,
    ) -> candle_core::Result<()> {
        let online = super::f32_slice(online, online_l)?;
        let target = super::f32_mut(dst, dst_l)?;
        let (keep, take) = (self.tau as f32, (1.0 - self.tau) as f32);
        target
            .par_chunks_mut(CHUNK)
            .zip(online.par_chunks(CHUNK))
            .for_each(|(t, o)| {
                for (t, &o) in t.iter_mut().zip(o) {
                    *t = *t * keep + o * take;
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::{assert_close, random};

    /// The same values as the tensor form, over more than one chunk.
    #[test]
    fn matches_the_tensor_form() {
        let target = random(&[3, CHUNK / 2 + 7], 1);
        let online = random(&[3, CHUNK / 2 + 7], 2);
        let expected = ((&target * 0.99).unwrap() + (&online * 0.01).unwrap()).unwrap();
        let target = target.copy().unwrap();
        assert!(ema_in_place(&target, &online, 0.99).unwrap());
        assert_close(&target, &expected, 1e-6, "ema");
        // A shape mismatch is left to the tensor form.
        assert!(!ema_in_place(&target, &random(&[4], 3), 0.5).unwrap());
    }
}
