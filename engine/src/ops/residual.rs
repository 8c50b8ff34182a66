//! relu(a + b), the end of every residual block, as one pass each way, on
//! the CPU and (feature `cuda`) on CUDA: the candle form takes two passes
//! forward and five backward (ReLU's gradient builds a mask, converts it and
//! multiplies).

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, fused, on_gpu, output};

const CHUNK: usize = 1 << 15;

/// relu(a + b) for tensors of the same shape.
pub fn add_relu(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if !(fused(&[a, b]) || on_gpu(&[a, b])) || a.shape() != b.shape() {
        return (a + b)?.relu();
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
}

/// `f` of each pair of elements, split over threads.
fn zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    // SAFETY: the kernel below writes every element before any is read.
    let mut out = unsafe { output(a.len()) };
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = f(a, b);
            }
        });
    out
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "sslab-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let out = zip_map(a, b, |a, b| (a + b).max(0.0));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::zip("add_relu", (s1, l1), (s2, l2))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad
            .contiguous()?
            .apply_op2_no_bwd(&res.contiguous()?, &Mask)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// The gradient where the output is positive, else 0.
pub(super) struct Mask;

impl CustomOp2 for Mask {
    fn name(&self) -> &'static str {
        "sslab-relu-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, y) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let out = zip_map(g, y, |g, y| if y > 0.0 { g } else { 0.0 });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::zip("relu_mask", (s1, l1), (s2, l2))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::ops::tests::{assert_close, random};

    #[test]
    fn matches_add_then_relu_values_and_gradients() {
        let a = Var::from_tensor(&random(&[4, 3, 5, 5], 1)).unwrap();
        let b = Var::from_tensor(&random(&[4, 3, 5, 5], 2)).unwrap();
        let weights = random(&[4, 3, 5, 5], 3);
        let ours = add_relu(&a, &b).unwrap();
        let theirs = (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap();
        assert_close(&ours, &theirs, 1e-6, "values");
        let g1 = (&ours * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (&theirs * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&a, &b] {
            assert_close(g1.get(v).unwrap(), g2.get(v).unwrap(), 1e-6, "gradient");
        }
    }
}
