//! The convolution on CUDA through cuDNN (feature `cudnn`): the forward and
//! both gradients, f32 or bf16 data with f32 accumulation. candle's CUDA
//! conv uses cuDNN for the forward only and takes the gradients with direct
//! kernels.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::cudnn::sys::{cudnnConvolutionMode_t, cudnnTensorFormat_t};
use candle_core::cuda::cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnDataType,
    FilterDescriptor, TensorDescriptor,
};
use candle_core::cuda::cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use candle_core::cuda::{CudaDType, CudaDevice, DeviceId};
use candle_core::{CudaStorage, Layout, Shape, WithDType};

use super::conv::Geometry;
use super::cuda::view;

thread_local! {
    // cuDNN handles are neither Send nor Sync: one per thread and device.
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
}

fn handle(dev: &CudaDevice) -> candle_core::Result<Arc<Cudnn>> {
    HANDLES.with(|handles| {
        if let Some(h) = handles.borrow().get(&dev.id()) {
            return Ok(h.clone());
        }
        let h = Cudnn::new(dev.cuda_stream())?;
        handles.borrow_mut().insert(dev.id(), h.clone());
        Ok(h)
    })
}

/// What cuDNN needs to know of one convolution.
struct Descriptors<T: CudnnDataType> {
    dev: CudaDevice,
    conv: ConvDescriptor<f32>,
    x: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    y: TensorDescriptor<T>,
}

impl<T: CudnnDataType> Descriptors<T> {
    fn new(g: &Geometry, dev: &CudaDevice) -> candle_core::Result<Self> {
        let cudnn = handle(dev)?;
        let i = |v: usize| v as i32;
        let nchw = cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        Ok(Descriptors {
            conv: cudnn.create_conv2d::<f32>(
                [i(g.pad), i(g.pad)],
                [i(g.stride), i(g.stride)],
                [1, 1],
                cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )?,
            x: cudnn.create_4d_tensor::<T>(nchw, [i(g.n), i(g.cin), i(g.h), i(g.w)])?,
            w: cudnn.create_4d_filter::<T>(nchw, [i(g.cout), i(g.cin), i(g.k), i(g.k)])?,
            y: cudnn.create_4d_tensor::<T>(nchw, [i(g.n), i(g.cout), i(g.ho), i(g.wo)])?,
            dev: dev.clone(),
        })
    }

    fn workspace(&self, bytes: usize) -> candle_core::Result<CudaSlice<u8>> {
        self.dev.alloc_zeros::<u8>(bytes.max(1))
    }
}

trait Data: CudaDType + CudnnDataType + DeviceRepr + ValidAsZeroBits + WithDType {}
impl Data for f32 {}
impl Data for half::bf16 {}

/// What one call computes.
pub(super) enum Pass<'a> {
    /// `y = conv(x, w)`.
    Forward,
    /// Both gradients as one flat tensor, the input's (zeros unless
    /// `input_grad`) then the kernel's, as the CPU op returns them.
    Backward {
        input_grad: bool,
        dy: (&'a CudaStorage, &'a Layout),
    },
}

pub(super) fn run(
    g: &Geometry,
    pass: Pass,
    x: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    match x.0.dtype() {
        candle_core::DType::F32 => run_as::<f32>(g, pass, x, w),
        candle_core::DType::BF16 => run_as::<half::bf16>(g, pass, x, w),
        other => candle_core::bail!("the cuDNN conv takes f32 or bf16, not {other:?}"),
    }
}

fn run_as<T: Data>(
    g: &Geometry,
    pass: Pass,
    (x, xl): (&CudaStorage, &Layout),
    (w, wl): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    let d = Descriptors::<T>::new(g, &x.device)?;
    let (x, w) = (view::<T>(x, xl)?, view::<T>(w, wl)?);
    // α = 1, β = 0: the outputs are written, not accumulated into.
    let scale = (T::from_f64(1.0), T::from_f64(0.0));
    match pass {
        Pass::Forward => {
            let op = ConvForward {
                conv: &d.conv,
                x: &d.x,
                w: &d.w,
                y: &d.y,
            };
            let algo = op.pick_algorithm()?;
            let mut workspace = d.workspace(op.get_workspace_size(algo)?)?;
            let mut y = d.dev.alloc_zeros::<T>(g.n * g.out_len())?;
            // SAFETY: the buffers have the sizes and dtype the descriptors state.
            unsafe { op.launch(algo, Some(&mut workspace), scale, &x, &w, &mut y)? };
            Ok((
                CudaStorage::wrap_cuda_slice(y, d.dev.clone()),
                Shape::from((g.n, g.cout, g.ho, g.wo)),
            ))
        }
        Pass::Backward {
            input_grad,
            dy: (dy, dyl),
        } => {
            let dy = view::<T>(dy, dyl)?;
            let x_len = g.n * g.in_len();
            let mut flat = d.dev.alloc_zeros::<T>(x_len + g.cout * g.taps())?;
            let (mut dx, mut dw) = flat.split_at_mut(x_len);
            if input_grad {
                let op = ConvBackwardData {
                    conv: &d.conv,
                    dx: &d.x,
                    w: &d.w,
                    dy: &d.y,
                };
                let algo = op.pick_algorithm()?;
                let mut workspace = d.workspace(op.get_workspace_size(algo)?)?;
                // SAFETY: as above.
                unsafe { op.launch(algo, Some(&mut workspace), scale, &mut dx, &w, &dy)? };
            }
            let op = ConvBackwardFilter {
                conv: &d.conv,
                x: &d.x,
                dw: &d.w,
                dy: &d.y,
            };
            let algo = op.pick_algorithm()?;
            let mut workspace = d.workspace(op.get_workspace_size(algo)?)?;
            // SAFETY: as above.
            unsafe { op.launch(algo, Some(&mut workspace), scale, &x, &mut dw, &dy)? };
            let len = flat.len();
            Ok((
                CudaStorage::wrap_cuda_slice(flat, d.dev.clone()),
                Shape::from(len),
            ))
        }
    }
}
