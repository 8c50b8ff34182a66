//! The convolution on CUDA through cuDNN (feature `cudnn`): the forward and
//! both gradients, f32 or bf16 data with f32 accumulation. candle's CUDA
//! conv uses cuDNN for the forward only and takes the gradients with direct
//! kernels.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::cudnn::sys::{
    cudnnConvolutionBwdDataAlgo_t, cudnnConvolutionBwdFilterAlgo_t, cudnnConvolutionFwdAlgo_t,
    cudnnConvolutionMode_t, cudnnMathType_t, cudnnTensorFormat_t,
};
use candle_core::cuda::cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnDataType,
    FilterDescriptor, TensorDescriptor,
};
use candle_core::cuda::cudarc::driver::{CudaSlice, DeviceRepr};
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

/// What cuDNN needs to know of one convolution, and the algorithms its
/// heuristics chose for each pass with their workspace sizes, found on
/// first use: a training step runs the same few geometries every time.
struct Plan<T: CudnnDataType> {
    dev: CudaDevice,
    conv: ConvDescriptor<f32>,
    x: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    y: TensorDescriptor<T>,
    forward: Cell<Option<(cudnnConvolutionFwdAlgo_t, usize)>>,
    backward_data: Cell<Option<(cudnnConvolutionBwdDataAlgo_t, usize)>>,
    backward_filter: Cell<Option<(cudnnConvolutionBwdFilterAlgo_t, usize)>>,
}

impl<T: Data> Plan<T> {
    fn new(g: &Geometry, dev: &CudaDevice) -> candle_core::Result<Self> {
        let cudnn = handle(dev)?;
        let i = |v: usize| v as i32;
        let nchw = cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let mut conv = cudnn.create_conv2d::<f32>(
            [i(g.pad), i(g.pad)],
            [i(g.stride), i(g.stride)],
            [1, 1],
            cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )?;
        conv.set_math_type(T::MATH)?;
        Ok(Plan {
            conv,
            x: cudnn.create_4d_tensor::<T>(nchw, [i(g.n), i(g.cin), i(g.h), i(g.w)])?,
            w: cudnn.create_4d_filter::<T>(nchw, [i(g.cout), i(g.cin), i(g.k), i(g.k)])?,
            y: cudnn.create_4d_tensor::<T>(nchw, [i(g.n), i(g.cout), i(g.ho), i(g.wo)])?,
            dev: dev.clone(),
            forward: Cell::new(None),
            backward_data: Cell::new(None),
            backward_filter: Cell::new(None),
        })
    }

    /// This thread's plan for `g` on `dev`, made on first use.
    fn cached(g: &Geometry, dev: &CudaDevice) -> candle_core::Result<Rc<Self>> {
        T::with_plans(|plans| {
            let key = (dev.id(), *g);
            if let Some(plan) = plans.borrow().get(&key) {
                return Ok(plan.clone());
            }
            let plan = Rc::new(Plan::new(g, dev)?);
            plans.borrow_mut().insert(key, plan.clone());
            Ok(plan)
        })
    }

    /// A workspace for an algorithm; cuDNN writes before it reads.
    fn workspace(&self, bytes: usize) -> candle_core::Result<CudaSlice<u8>> {
        // SAFETY: a workspace holds no input.
        unsafe { self.dev.alloc::<u8>(bytes.max(1)) }
    }

    /// A buffer that the cuDNN call writes in full (β = 0).
    fn output(&self, len: usize) -> candle_core::Result<CudaSlice<T>> {
        // SAFETY: every caller hands it to cuDNN as an output with β = 0.
        unsafe { self.dev.alloc::<T>(len) }
    }
}

/// The algorithm in `cell`, or the one `pick` returns, kept there.
fn chosen<A: Copy>(
    cell: &Cell<Option<(A, usize)>>,
    pick: impl FnOnce() -> candle_core::Result<(A, usize)>,
) -> candle_core::Result<(A, usize)> {
    if let Some(chosen) = cell.get() {
        return Ok(chosen);
    }
    let chosen = pick()?;
    cell.set(Some(chosen));
    Ok(chosen)
}

/// A (device, geometry) → plan map per thread (cuDNN's descriptors hold its
/// handle, which is not Send).
type Plans<T> = RefCell<HashMap<(DeviceId, Geometry), Rc<Plan<T>>>>;

thread_local! {
    static PLANS_F32: Plans<f32> = RefCell::new(HashMap::new());
    static PLANS_BF16: Plans<half::bf16> = RefCell::new(HashMap::new());
}

trait Data: CudaDType + CudnnDataType + DeviceRepr + WithDType + Sized {
    /// The tensor-core use cuDNN may choose: TF32 for f32 data (PyTorch's
    /// default for convolutions too), bf16 tensor cores for bf16.
    const MATH: cudnnMathType_t;
    fn with_plans<R>(f: impl FnOnce(&Plans<Self>) -> R) -> R;
}

impl Data for f32 {
    const MATH: cudnnMathType_t = cudnnMathType_t::CUDNN_DEFAULT_MATH;
    fn with_plans<R>(f: impl FnOnce(&Plans<Self>) -> R) -> R {
        PLANS_F32.with(f)
    }
}

impl Data for half::bf16 {
    const MATH: cudnnMathType_t = cudnnMathType_t::CUDNN_TENSOR_OP_MATH;
    fn with_plans<R>(f: impl FnOnce(&Plans<Self>) -> R) -> R {
        PLANS_BF16.with(f)
    }
}

/// What one call computes.
pub(super) enum Pass<'a> {
    /// `y = conv(x, w)`.
    Forward,
    /// Both gradients as one flat tensor, the input's (left unwritten unless
    /// `input_grad`: the op then drops it) then the kernel's.
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
    let d = Plan::<T>::cached(g, &x.device)?;
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
            let (algo, bytes) = chosen(&d.forward, || {
                let algo = op.pick_algorithm()?;
                Ok((algo, op.get_workspace_size(algo)?))
            })?;
            let mut workspace = d.workspace(bytes)?;
            let mut y = d.output(g.n * g.out_len())?;
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
            let mut flat = d.output(x_len + g.cout * g.taps())?;
            let (mut dx, mut dw) = flat.split_at_mut(x_len);
            if input_grad {
                let op = ConvBackwardData {
                    conv: &d.conv,
                    dx: &d.x,
                    w: &d.w,
                    dy: &d.y,
                };
                let (algo, bytes) = chosen(&d.backward_data, || {
                    let algo = op.pick_algorithm()?;
                    Ok((algo, op.get_workspace_size(algo)?))
                })?;
                let mut workspace = d.workspace(bytes)?;
                // SAFETY: as above.
                unsafe { op.launch(algo, Some(&mut workspace), scale, &mut dx, &w, &dy)? };
            }
            let op = ConvBackwardFilter {
                conv: &d.conv,
                x: &d.x,
                dw: &d.w,
                dy: &d.y,
            };
            let (algo, bytes) = chosen(&d.backward_filter, || {
                let algo = op.pick_algorithm()?;
                Ok((algo, op.get_workspace_size(algo)?))
            })?;
            let mut workspace = d.workspace(bytes)?;
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
