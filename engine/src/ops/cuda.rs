//! The fused ops on CUDA (feature `cuda`): BatchNorm (+ReLU) in training,
//! the residual add + ReLU and AdamW's update, with the kernels of
//! `kernels.cu`. candle would run each as a chain of broadcast ops, a
//! kernel launch and a pass over the activation each, with every
//! intermediate's gradient zero-filled and accumulated in the backward.
//! What the CPU ops keep on the host (BatchNorm's batch statistics) stays on
//! the GPU here, so a step never waits for the device.
//! CI has no GPU: `ops::gpu_agreement` checks these against the CPU ops on a
//! GPU machine (the train-step bench runs it before timing).

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr, LaunchArgs,
    LaunchConfig, PushKernelArg,
};
use candle_core::cuda::{CudaDType, CudaDevice, WrapErr};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor,
};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));
const THREADS: u32 = 256;
/// Enough blocks to fill a large GPU; grid-stride loops do the rest.
const MAX_BLOCKS: usize = 4096;

/// Whether these kernels take the tensors: one dtype, f32 or bf16, on CUDA.
pub(super) fn takes(tensors: &[&Tensor]) -> bool {
    let Some(first) = tensors.first() else {
        return false;
    };
    matches!(first.dtype(), DType::F32 | DType::BF16)
        && tensors
            .iter()
            .all(|t| t.device().is_cuda() && t.dtype() == first.dtype())
}

/// A kernel of `kernels.cu`, launched on the device's stream.
struct Kernel {
    func: CudaFunction,
    stream: Arc<CudaStream>,
}

impl Kernel {
    fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }
}

fn func(dev: &CudaDevice, name: &str) -> candle_core::Result<Kernel> {
    Ok(Kernel {
        func: dev
            .get_or_load_custom_func(name, "sslab_kernels", PTX)?
            .into_cuda_function(),
        stream: dev.cuda_stream(),
    })
}

/// The kernel's name for the dtype: `name_f32` or `name_bf16`.
fn typed(name: &str, dtype: DType) -> candle_core::Result<String> {
    match dtype {
        DType::F32 => Ok(format!("{name}_f32")),
        DType::BF16 => Ok(format!("{name}_bf16")),
        other => candle_core::bail!("{name}: the CUDA kernels take f32 or bf16, not {other:?}"),
    }
}

/// The values of a contiguous tensor in `storage`.
pub(super) fn view<'a, T: CudaDType>(
    s: &'a CudaStorage,
    l: &Layout,
) -> candle_core::Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(s.as_cuda_slice::<T>()?.slice(start..end)),
        None => candle_core::bail!("sslab ops take contiguous tensors"),
    }
}

fn view_mut<'a, T: CudaDType>(
    s: &'a mut CudaStorage,
    l: &Layout,
) -> candle_core::Result<CudaViewMut<'a, T>> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(s.as_cuda_slice_mut::<T>()?.slice_mut(start..end)),
        None => candle_core::bail!("sslab ops take contiguous tensors"),
    }
}

/// A buffer that the next kernel writes in full before anything reads it.
fn uninit<T: DeviceRepr>(dev: &CudaDevice, len: usize) -> candle_core::Result<CudaSlice<T>> {
    // SAFETY: every caller launches a kernel that writes each element.
    unsafe { dev.alloc::<T>(len) }
}

/// A 1-D launch of `work` threads' worth, grid-stride beyond `MAX_BLOCKS`.
fn spread(work: usize) -> LaunchConfig {
    let blocks = work.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// (N, C, …) as N images of C channels of `inner` values.
#[derive(Clone, Copy)]
struct Dims {
    n: usize,
    c: usize,
    inner: usize,
}

impl Dims {
    fn of(l: &Layout) -> candle_core::Result<Self> {
        let d = l.dims();
        if d.len() < 2 {
            candle_core::bail!("batch norm takes (N, C, …), not {d:?}");
        }
        Ok(Dims {
            n: d[0],
            c: d[1],
            inner: d[2..].iter().product(),
        })
    }

    fn total(&self) -> usize {
        self.n * self.c * self.inner
    }

    /// Blocks per channel for the per-channel sums: about a thousand blocks
    /// in all, each of a few thousand values.
    fn splits(&self) -> usize {
        (1024 / self.c)
            .min(self.n * self.inner / 4096)
            .clamp(1, self.n.max(1))
    }

    fn launch_sums(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.c as u32, self.splits() as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    fn launch_per_channel(&self) -> LaunchConfig {
        spread(self.c)
    }

    /// (n, c, inner) as the kernels take them.
    fn ints(&self) -> candle_core::Result<(i32, i32, i32)> {
        Ok((
            i32_of(self.n, "batch")?,
            i32_of(self.c, "channels")?,
            i32_of(self.inner, "size")?,
        ))
    }

    /// One thread per four values.
    fn launch_quads(&self) -> LaunchConfig {
        spread(self.total().div_ceil(4))
    }
}

fn i32_of(v: usize, what: &str) -> candle_core::Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what} {v} is too large")))
}

/// The batch's per-channel mean and biased variance of x (N, C, …), as a
/// (2, C) f32 tensor; no gradient flows through it ([`BatchNorm`]'s
/// backward differentiates through the statistics itself).
pub(super) struct BatchStats;

impl CustomOp1 for BatchStats {
    fn name(&self) -> &'static str {
        "sslab-batch-stats"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("sslab-batch-stats runs on CUDA only")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let d = Dims::of(l)?;
        let dev = s.device().clone();
        let partial = match s.dtype() {
            DType::F32 => stats_partial(&view::<f32>(s, l)?, &dev, d, DType::F32)?,
            _ => stats_partial(&view::<half::bf16>(s, l)?, &dev, d, DType::BF16)?,
        };
        let stats = uninit::<f32>(&dev, 2 * d.c)?;
        let (splits, c, count) = (
            i32_of(d.splits(), "splits")?,
            d.ints()?.1,
            (d.n * d.inner) as f64,
        );
        let f = func(&dev, "bn_stats_finish")?;
        let mut b = f.builder();
        b.arg(&partial).arg(&splits).arg(&c).arg(&count).arg(&stats);
        // SAFETY: the arguments match the kernel's signature and sizes.
        unsafe { b.launch(d.launch_per_channel()) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(stats, dev),
            Shape::from((2, d.c)),
        ))
    }
}

/// Each split's Σx and Σx² per channel.
fn stats_partial<T: DeviceRepr>(
    x: &CudaView<T>,
    dev: &CudaDevice,
    d: Dims,
    dtype: DType,
) -> candle_core::Result<CudaSlice<f64>> {
    let sums = Partial::new(dev, d)?;
    let f = func(dev, &typed("bn_stats_partial", dtype)?)?;
    let mut b = f.builder();
    b.arg(x);
    sums.launch(b, d)?;
    Ok(sums.partial)
}

/// The buffer of each split's two sums per channel, and the tail of the
/// partial-sum kernels' arguments: (n, c, inner, partial).
struct Partial {
    partial: CudaSlice<f64>,
    ints: (i32, i32, i32),
}

impl Partial {
    fn new(dev: &CudaDevice, d: Dims) -> candle_core::Result<Self> {
        Ok(Partial {
            partial: uninit::<f64>(dev, d.splits() * d.c * 2)?,
            ints: d.ints()?,
        })
    }

    /// Pushes the tail and launches one block per channel and split.
    fn launch<'a>(&'a self, mut b: LaunchArgs<'a>, d: Dims) -> candle_core::Result<()> {
        let (n, c, inner) = &self.ints;
        b.arg(n).arg(c).arg(inner).arg(&self.partial);
        // SAFETY: the kernels take their own arguments, then these.
        unsafe { b.launch(d.launch_sums()) }.w()?;
        Ok(())
    }
}

/// BatchNorm of x (N, C, …) with `params` (4, C): the batch's mean and
/// biased variance, then γ and β (the gradient reaches γ and β through
/// rows 2 and 3). ReLU after when `relu`.
#[derive(Clone, Copy)]
pub(super) struct BatchNorm {
    pub eps: f32,
    pub relu: bool,
}

impl CustomOp2 for BatchNorm {
    fn name(&self) -> &'static str {
        "sslab-batch-norm-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("sslab-batch-norm-cuda runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let d = Dims::of(l1)?;
        let params = view::<f32>(s2, l2)?;
        let (_, c, inner) = d.ints()?;
        let (total, relu) = (d.total(), self.relu as i32);
        match s1.dtype() {
            DType::F32 => self.forward::<f32>(s1, l1, &params, (total, c, inner, relu)),
            _ => self.forward::<half::bf16>(s1, l1, &params, (total, c, inner, relu)),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let sums = Backward {
            bn: *self,
            part: Part::Sums,
        };
        let ext = x.apply_op3_no_bwd(&grad, params, &sums)?;
        let input_grad = Backward {
            bn: *self,
            part: Part::InputGrad,
        };
        let dx = x.apply_op3_no_bwd(&grad, &ext, &input_grad)?;
        // Rows 4–7 of ext: zeros for the statistics, then dγ and dβ.
        Ok((Some(dx), Some(ext.narrow(0, 4, 4)?)))
    }
}

impl BatchNorm {
    fn forward<T: CudaDType + DeviceRepr>(
        &self,
        s: &CudaStorage,
        l: &Layout,
        params: &CudaView<f32>,
        (total, c, inner, relu): (usize, i32, i32, i32),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let x = view::<T>(s, l)?;
        let y = uninit::<T>(&dev, total)?;
        let f = func(&dev, &typed("bn_forward", s.dtype())?)?;
        let mut b = f.builder();
        b.arg(&x)
            .arg(params)
            .arg(&self.eps)
            .arg(&relu)
            .arg(&total)
            .arg(&c)
            .arg(&inner)
            .arg(&y);
        let launch = Dims::of(l)?.launch_quads();
        // SAFETY: the arguments match the kernel's signature and sizes.
        unsafe { b.launch(launch) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev), l.shape().clone()))
    }
}

/// The two passes of [`BatchNorm`]'s backward, each from x and the output's
/// gradient: `Sums` takes the parameters and gives the (11, C) table of
/// `bn_grad_finish` (parameters, zeros, dγ, dβ and dx's coefficients);
/// `InputGrad` takes that table and gives dx.
struct Backward {
    bn: BatchNorm,
    part: Part,
}

#[derive(Clone, Copy)]
enum Part {
    Sums,
    InputGrad,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        match self.part {
            Part::Sums => "sslab-batch-norm-grad-sums",
            Part::InputGrad => "sslab-batch-norm-input-grad",
        }
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
        candle_core::bail!("{} runs on CUDA only", self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        if l2.dims() != l1.dims() || s2.dtype() != s1.dtype() {
            candle_core::bail!("batch norm backward: the gradient does not match the input");
        }
        match (self.part, s1.dtype()) {
            (Part::Sums, _) => self.sums((s1, l1), (s2, l2), (s3, l3)),
            (Part::InputGrad, DType::F32) => self.input_grad::<f32>((s1, l1), (s2, l2), (s3, l3)),
            (Part::InputGrad, _) => self.input_grad::<half::bf16>((s1, l1), (s2, l2), (s3, l3)),
        }
    }
}

impl Backward {
    fn sums(
        &self,
        (s1, l1): (&CudaStorage, &Layout),
        (s2, l2): (&CudaStorage, &Layout),
        (s3, l3): (&CudaStorage, &Layout),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let d = Dims::of(l1)?;
        let dev = s1.device().clone();
        let params = view::<f32>(s3, l3)?;
        let (eps, relu) = (self.bn.eps, self.bn.relu as i32);
        let partial = match s1.dtype() {
            DType::F32 => {
                let (x, dy) = (view::<f32>(s1, l1)?, view::<f32>(s2, l2)?);
                grad_partial([&x, &dy], &params, (eps, relu), &dev, d, DType::F32)?
            }
            _ => {
                let (x, dy) = (view::<half::bf16>(s1, l1)?, view::<half::bf16>(s2, l2)?);
                grad_partial([&x, &dy], &params, (eps, relu), &dev, d, DType::BF16)?
            }
        };
        let (_, c, _) = d.ints()?;
        let ext = uninit::<f32>(&dev, 11 * d.c)?;
        let (splits, count) = (i32_of(d.splits(), "splits")?, (d.n * d.inner) as f64);
        let f = func(&dev, "bn_grad_finish")?;
        let mut b = f.builder();
        b.arg(&partial)
            .arg(&splits)
            .arg(&params)
            .arg(&eps)
            .arg(&c)
            .arg(&count)
            .arg(&ext);
        // SAFETY: as above.
        unsafe { b.launch(d.launch_per_channel()) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(ext, dev),
            Shape::from((11, d.c)),
        ))
    }

    fn input_grad<T: CudaDType + DeviceRepr>(
        &self,
        (s1, l1): (&CudaStorage, &Layout),
        (s2, l2): (&CudaStorage, &Layout),
        (s3, l3): (&CudaStorage, &Layout),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let d = Dims::of(l1)?;
        let dev = s1.device().clone();
        let (x, dy, ext) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?, view::<f32>(s3, l3)?);
        let dx = uninit::<T>(&dev, d.total())?;
        let (_, c, inner) = d.ints()?;
        let (eps, relu, total) = (self.bn.eps, self.bn.relu as i32, d.total());
        let f = func(&dev, &typed("bn_backward_dx", s1.dtype())?)?;
        let mut b = f.builder();
        b.arg(&x)
            .arg(&dy)
            .arg(&ext)
            .arg(&eps)
            .arg(&relu)
            .arg(&total)
            .arg(&c)
            .arg(&inner)
            .arg(&dx);
        // SAFETY: the arguments match the kernel's signature and sizes.
        unsafe { b.launch(d.launch_quads()) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(dx, dev), l1.shape().clone()))
    }
}

/// Each split's Σg and Σg·(x − mean) per channel, g the output's gradient
/// (where the ReLU passed it).
fn grad_partial<T: DeviceRepr>(
    [x, dy]: [&CudaView<T>; 2],
    params: &CudaView<f32>,
    (eps, relu): (f32, i32),
    dev: &CudaDevice,
    d: Dims,
    dtype: DType,
) -> candle_core::Result<CudaSlice<f64>> {
    let sums = Partial::new(dev, d)?;
    let f = func(dev, &typed("bn_grad_partial", dtype)?)?;
    let mut b = f.builder();
    b.arg(x).arg(dy).arg(params).arg(&eps).arg(&relu);
    sums.launch(b, d)?;
    Ok(sums.partial)
}

/// `name(a, b, total, out)` over two same-shaped tensors: the residual's
/// add + ReLU (a, b) and its backward's mask (g, y).
pub(super) fn zip(
    name: &str,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    if l1.dims() != l2.dims() || s1.dtype() != s2.dtype() {
        candle_core::bail!("{name}: the two tensors differ in shape or dtype");
    }
    match s1.dtype() {
        DType::F32 => zip_as::<f32>(name, (s1, l1), (s2, l2)),
        DType::BF16 => zip_as::<half::bf16>(name, (s1, l1), (s2, l2)),
        other => candle_core::bail!("{name}: the CUDA kernels take f32 or bf16, not {other:?}"),
    }
}

fn zip_as<T: CudaDType + DeviceRepr>(
    name: &str,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = s1.device().clone();
    let (a, b) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?);
    let total = l1.shape().elem_count();
    let out = uninit::<T>(&dev, total)?;
    let f = func(&dev, &typed(name, s1.dtype())?)?;
    let mut builder = f.builder();
    builder.arg(&a).arg(&b).arg(&total).arg(&out);
    // SAFETY: the arguments match the kernel's signature and sizes.
    unsafe { builder.launch(spread(total)) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev), l1.shape().clone()))
}

/// AdamW's moment in place: m ← b·m + a·g (g² when `square`).
pub(super) fn adamw_moment(
    (m, ml): (&mut CudaStorage, &Layout),
    (g, gl): (&CudaStorage, &Layout),
    (b, a, square): (f32, f32, bool),
) -> candle_core::Result<()> {
    let dev = g.device().clone();
    let g = view::<f32>(g, gl)?;
    let mut m = view_mut::<f32>(m, ml)?;
    let (total, square) = (g.len(), square as i32);
    let f = func(&dev, "adamw_moment_f32")?;
    let mut builder = f.builder();
    builder
        .arg(&mut m)
        .arg(&g)
        .arg(&total)
        .arg(&b)
        .arg(&a)
        .arg(&square);
    // SAFETY: the arguments match the kernel's signature and sizes.
    unsafe { builder.launch(spread(total)) }.w()?;
    Ok(())
}

/// AdamW's update in place: w ← w·keep − lr·(m·c1)/(√(v·c2) + ε).
pub(super) fn adamw_update(
    (w, wl): (&mut CudaStorage, &Layout),
    (m, ml): (&CudaStorage, &Layout),
    (v, vl): (&CudaStorage, &Layout),
    [keep, lr, c1, c2, eps]: [f32; 5],
) -> candle_core::Result<()> {
    let dev = m.device().clone();
    let (m, v) = (view::<f32>(m, ml)?, view::<f32>(v, vl)?);
    let mut w = view_mut::<f32>(w, wl)?;
    let total = m.len();
    let f = func(&dev, "adamw_update_f32")?;
    let mut builder = f.builder();
    builder
        .arg(&mut w)
        .arg(&m)
        .arg(&v)
        .arg(&total)
        .arg(&keep)
        .arg(&lr)
        .arg(&c1)
        .arg(&c2)
        .arg(&eps);
    // SAFETY: the arguments match the kernel's signature and sizes.
    unsafe { builder.launch(spread(total)) }.w()?;
    Ok(())
}
