//! [`super::conv_bn`] and [`super::conv_bn_add_relu`] on CUDA (feature
//! `cudnn`): cuDNN's convolution and the BatchNorm kernels of `cuda.rs`
//! behind one node of candle's graph. The convolution's output (and before
//! a residual add the BatchNorm's) is computed outside the graph, so the
//! backward does not zero-fill a tensor for its gradient and add into it.

use candle_core::{CpuStorage, CudaStorage, CustomOp2, CustomOp3, Layout, Shape, Storage, Tensor};

use super::batch_norm::BatchNorm;
use super::conv::{Conv2d, Conv2dBackward};
use super::cuda::{self, BatchStats};
use super::residual::Mask;
use super::split_flat;

/// `bn(conv2d(x, w))` in training, then ReLU when `relu`, or with `skip`
/// relu(· + skip). x (and the skip) in f32 or bf16 on CUDA; the kernel is
/// used in x's dtype, its gradient returned in its own.
pub(super) fn conv_bn(
    x: &Tensor,
    w: &Tensor,
    (stride, padding): (usize, usize),
    bn: &BatchNorm,
    relu: bool,
    skip: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let conv = Conv2d {
        stride,
        padding,
        input_grad: x.track_op(),
    };
    let x = x.contiguous()?;
    let kernel = w.to_dtype(x.dtype())?.contiguous()?.detach();
    let z = x.apply_op2_no_bwd(&kernel, &conv)?;
    let stats = z.apply_op1_no_bwd(&BatchStats)?;
    let (gamma, beta) = bn.affine();
    let params = Tensor::cat(
        &[
            &stats,
            &gamma.detach().unsqueeze(0)?,
            &beta.detach().unsqueeze(0)?,
        ],
        0,
    )?;
    let op = ConvBn {
        conv,
        bn: cuda::BatchNorm {
            eps: bn.eps() as f32,
            relu: relu && skip.is_none(),
        },
        z,
        params,
        kernel,
    };
    // The gradients reach the kernel, γ and β through one input: an op
    // takes three, and the skip is the third.
    let packed = Tensor::cat(&[&w.flatten_all()?, gamma, beta], 0)?;
    let channels = stats.dim(1)?;
    let values = op.z.elem_count() / channels;
    let y = match skip {
        Some(skip) => x.apply_op3(&packed, &skip.contiguous()?, op)?,
        None => x.apply_op2(&packed, op)?,
    };
    bn.update_running_with(&stats.get(0)?, &stats.get(1)?, values)?;
    Ok(y)
}

/// The op on x, the packed kernel, γ and β, and (as a [`CustomOp3`]) the
/// skip. What it needs is computed before it runs and kept here.
struct ConvBn {
    conv: Conv2d,
    /// With ReLU only when there is no skip: the add comes first.
    bn: cuda::BatchNorm,
    /// The convolution's output.
    z: Tensor,
    /// The batch's mean and variance, γ and β: (4, C) as the kernels take
    /// them.
    params: Tensor,
    /// The kernel in the activations' dtype.
    kernel: Tensor,
}

impl ConvBn {
    fn forward(
        &self,
        skip: Option<(&CudaStorage, &Layout)>,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (z, zl) = self.z.storage_and_layout();
        let (params, pl) = self.params.storage_and_layout();
        let (Storage::Cuda(z), Storage::Cuda(params)) = (&*z, &*params) else {
            candle_core::bail!("conv + batch norm: CUDA's op got tensors on another device");
        };
        let (y, shape) = self.bn.cuda_fwd(z, zl, params, pl)?;
        let Some((skip, sl)) = skip else {
            return Ok((y, shape));
        };
        if sl.dims() != shape.dims() {
            candle_core::bail!(
                "conv + batch norm + skip: the skip is {:?}, the output {:?}",
                sl.dims(),
                shape.dims()
            );
        }
        cuda::zip("add_relu", (&y, &Layout::contiguous(&shape)), (skip, sl))
    }

    /// x's gradient (when wanted), the packed input's and, with a skip,
    /// the skip's.
    fn backward(
        &self,
        x: &Tensor,
        packed: &Tensor,
        res: &Tensor,
        grad: &Tensor,
        skip: bool,
    ) -> candle_core::Result<[Option<Tensor>; 3]> {
        let mut grad = grad.contiguous()?;
        let mut d_skip = None;
        if skip {
            grad = grad.apply_op2_no_bwd(res, &Mask)?;
            d_skip = Some(grad.clone());
        }
        let (Some(dz), Some(d_params)) =
            CustomOp2::bwd(&self.bn, &self.z, &self.params, res, &grad)?
        else {
            candle_core::bail!("conv + batch norm: the batch norm's backward gave no gradient");
        };
        let flat = x.apply_op3_no_bwd(&self.kernel, &dz, &Conv2dBackward(self.conv))?;
        let [dx, dw] = split_flat(&flat, &[x.shape(), self.kernel.shape()])?
            .try_into()
            .expect("two pieces");
        let dw = dw.flatten_all()?;
        // Rows 2 and 3 of the parameters' gradient: γ's and β's.
        let d_affine = d_params.narrow(0, 2, 2)?.flatten_all()?;
        let dtype = packed.dtype();
        let d_packed = Tensor::cat(&[&dw.to_dtype(dtype)?, &d_affine.to_dtype(dtype)?], 0)?;
        Ok([
            Some(dx).filter(|_| self.conv.input_grad),
            Some(d_packed),
            d_skip,
        ])
    }
}

impl CustomOp2 for ConvBn {
    fn name(&self) -> &'static str {
        "sslab-conv-batch-norm-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("sslab-conv-batch-norm-cuda runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.forward(None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let [dx, d_packed, _] = self.backward(x, packed, res, grad, false)?;
        Ok((dx, d_packed))
    }
}

impl CustomOp3 for ConvBn {
    fn name(&self) -> &'static str {
        "sslab-conv-batch-norm-add-relu-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("sslab-conv-batch-norm-add-relu-cuda runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.forward(Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        _skip: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dx, d_packed, d_skip] = self.backward(x, packed, res, grad, true)?;
        Ok((dx, d_packed, d_skip))
    }
}
