//! AdamW's update in place on the CPU and (feature `cuda`) on CUDA: three
//! passes over the parameter's memory and no allocation, where the tensor
//! form allocates a dozen temporaries per parameter per step.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Tensor};
use rayon::prelude::*;

/// The step's constants: learning rate, decoupled decay, betas, ε and the
/// bias corrections `1 − βᵗ`.
#[derive(Clone, Copy)]
pub struct AdamwStep {
    pub lr: f64,
    pub decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub correction1: f64,
    pub correction2: f64,
}

impl AdamwStep {
    /// Updates `m`, `v` and then `w` in place with gradient `g`; false (and
    /// nothing touched) where the tensors are not contiguous f32 on the CPU
    /// or, with the `cuda` feature, on CUDA.
    pub fn apply(
        &self,
        w: &Tensor,
        g: &Tensor,
        m: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<bool> {
        let all = [w, g, m, v];
        let gpu = super::on_gpu(&all) && w.dtype() == candle_core::DType::F32;
        if !(super::fused(&all) || gpu)
            || all
                .iter()
                .any(|t| !t.is_contiguous() || t.shape() != w.shape())
        {
            return Ok(false);
        }
        m.inplace_op2(
            g,
            &Moment {
                beta: self.beta1,
                square: false,
            },
        )?;
        v.inplace_op2(
            g,
            &Moment {
                beta: self.beta2,
                square: true,
            },
        )?;
        w.inplace_op3(m, v, &Update(*self))?;
        Ok(true)
    }
}

const CHUNK: usize = 1 << 16;

/// m ← β·m + (1 − β)·g, or with g² for the second moment.
struct Moment {
    beta: f64,
    square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "sslab-adamw-moment"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        let g = super::f32_slice(g, gl)?;
        let m = super::f32_mut(dst, dst_l)?;
        let (b, a) = (self.beta as f32, (1.0 - self.beta) as f32);
        let square = self.square;
        m.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(m, g)| {
                for (m, &g) in m.iter_mut().zip(g) {
                    *m = b * *m + a * if square { g * g } else { g };
                }
            });
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dst_l: &Layout,
        g: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        let (b, a) = (self.beta as f32, (1.0 - self.beta) as f32);
        super::cuda::adamw_moment((dst, dst_l), (g, gl), (b, a, self.square))
    }
}

/// w ← w·(1 − lr·λ) − lr·m̂ / (√v̂ + ε).
struct Update(AdamwStep);

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "sslab-adamw-update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        ml: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<()> {
        let (m, v) = (super::f32_slice(m, ml)?, super::f32_slice(v, vl)?);
        let w = super::f32_mut(dst, dst_l)?;
        let [keep, lr, c1, c2, eps] = self.constants();
        w.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(w, (m, v))| {
                for ((w, &m), &v) in w.iter_mut().zip(m).zip(v) {
                    *w = *w * keep - lr * (m * c1) / ((v * c2).sqrt() + eps);
                }
            });
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dst_l: &Layout,
        m: &candle_core::CudaStorage,
        ml: &Layout,
        v: &candle_core::CudaStorage,
        vl: &Layout,
    ) -> candle_core::Result<()> {
        super::cuda::adamw_update((dst, dst_l), (m, ml), (v, vl), self.constants())
    }
}

impl Update {
    /// keep = 1 − lr·λ, lr, the reciprocal bias corrections and ε, in f32.
    fn constants(&self) -> [f32; 5] {
        let s = &self.0;
        [
            (1.0 - s.lr * s.decay) as f32,
            s.lr as f32,
            (1.0 / s.correction1) as f32,
            (1.0 / s.correction2) as f32,
            s.eps as f32,
        ]
    }
}
