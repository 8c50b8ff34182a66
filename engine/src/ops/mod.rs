//! Fused CPU kernels for the training step's heavy parts, as candle custom
//! ops: convolution, BatchNorm (+ReLU), the two in one (also with a
//! residual block's add + ReLU), and the residual add + ReLU with their
//! backward, AdamW's update, the EMA target's update, and a ViT's linear
//! layers (one with its GELU), LayerNorm and attention, and its whole
//! transformer block as one op, whose weights' gradients reach the store
//! through the engine's [`backward`]. With the `cuda`
//! feature BatchNorm, the
//! residual add + ReLU and AdamW have CUDA kernels too (f32 and bf16), and
//! with `cudnn` the convolution runs through cuDNN, gradients included, and
//! with its BatchNorm as one op. Other devices and dtypes fall back to
//! candle's own ops, so results agree everywhere.

mod adamw;
mod attention;
mod batch_norm;
mod block;
mod check;
mod conv;
mod conv_bn;
#[cfg(feature = "cudnn")]
mod conv_bn_gpu;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cudnn")]
mod cudnn;
mod ema;
mod gelu;
mod grads;
mod layer_norm;
mod linear;
mod residual;

pub use adamw::AdamwStep;
pub use attention::{attention, with_probabilities as attention_with_probabilities};
pub use batch_norm::BatchNorm;
pub use block::{BlockWeights, transformer_block};
pub use check::{conv_agreement, gpu_agreement};
pub use conv::conv2d;
pub use conv_bn::{conv_bn, conv_bn_add_relu};
pub use ema::ema_in_place;
pub use gelu::gelu;
pub use grads::backward;
pub use layer_norm::layer_norm;
pub use linear::{linear, linear_gelu};
pub use residual::add_relu;

use candle_core::{CpuStorage, Layout, Shape, Storage, Tensor};
use gemm::Parallelism;

/// Threads the kernels split their work over (candle's own count).
fn threads() -> usize {
    candle_core::utils::get_num_threads().max(1)
}

/// Whether the kernels here take these tensors: f32 on the CPU.
fn fused(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
}

/// Whether the CUDA kernels take these tensors: one dtype, f32 or bf16, on
/// a CUDA device (never without the `cuda` feature).
fn on_gpu(tensors: &[&Tensor]) -> bool {
    #[cfg(feature = "cuda")]
    return cuda::takes(tensors);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = tensors;
        false
    }
}

/// The f32 values of a contiguous tensor's storage.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("sslab ops take contiguous tensors"),
    }
}

/// The f32 values of a contiguous tensor's storage, to write in place.
fn f32_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("sslab ops update contiguous tensors in place");
    };
    match s {
        CpuStorage::F32(v) => Ok(&mut v[start..end]),
        _ => candle_core::bail!("sslab ops update f32 tensors in place"),
    }
}

/// The f32 values of CPU tensors, handed to `f` while their storage is
/// locked for reading.
fn with_values<R>(
    tensors: &[&Tensor],
    f: impl FnOnce(&[&[f32]]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let locked: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let values = locked
        .iter()
        .map(|(storage, layout)| match &**storage {
            Storage::Cpu(s) => f32_slice(s, layout),
            _ => candle_core::bail!("sslab's CPU ops read CPU tensors"),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    f(&values)
}

/// Runs `f` inside a function compiled for AVX-512 or AVX2 when the CPU
/// has them, so that the loops inlined into it vectorise at that width: the
/// engine is built for baseline x86-64, whose vectors hold four f32. Mark
/// the closure `#[inline(always)]`: left to itself, LLVM keeps a large one
/// out of line, compiled for the baseline (GELU's ran one float at a time).
#[inline(always)]
fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// e^x in plain arithmetic, so that a loop over it vectorises where libm's
/// `expf` is a call per element: e^x = 2^n · e^r with |r| ≤ ln2/2 and a
/// degree-7 polynomial for e^r (Cephes' `expf`), within 2 ulp. Below
/// -87.3 it is the smallest normal number, not 0; above 88.4, 2^127·e^r.
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.336_55, 88.376_26);
    // Adding 1.5·2^23 rounds to an integer, left in the sum's low bits
    // (`round` would be a libm call).
    let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = t - 12_582_912.0;
    // ln 2 in two parts, so that n·ln2 is exact in the first.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23)
}

const LANES: usize = 16;

/// The sums of `f(a, b)` over two equal-length spans: in 16 f32 lanes,
/// which the compiler vectorises (one running sum is a chain of dependent
/// adds, bound by their latency: floats are never reassociated), then in
/// f64. Meant for spans of at most a few thousand values (a channel of one
/// image, a row of a LayerNorm or a softmax).
#[inline(always)]
fn span_sums<const K: usize>(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> [f32; K]) -> [f64; K] {
    let whole = a.len() / LANES * LANES;
    let mut lanes = [[0f32; LANES]; K];
    for (a, b) in a[..whole]
        .chunks_exact(LANES)
        .zip(b[..whole].chunks_exact(LANES))
    {
        for l in 0..LANES {
            let v = f(a[l], b[l]);
            for k in 0..K {
                lanes[k][l] += v[k];
            }
        }
    }
    let mut sums = [0f64; K];
    for k in 0..K {
        sums[k] = lanes[k].iter().map(|&v| v as f64).sum();
    }
    for (&a, &b) in a[whole..].iter().zip(&b[whole..]) {
        let v = f(a, b);
        for k in 0..K {
            sums[k] += v[k] as f64;
        }
    }
    sums
}

/// A buffer of `len` uninitialised values. `vec![0.0; len]` would zero it
/// first: the allocator hands back used memory, so that is a memset over
/// the step's largest buffers.
///
/// # Safety
/// The caller writes every element before anything reads it (as candle's
/// own CPU kernels do with their outputs).
#[allow(clippy::uninit_vec)] // deliberate: see above
unsafe fn output(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: the capacity is `len`; initialising is the caller's promise.
    unsafe { v.set_len(len) };
    v
}

/// `dst (m×n) = scale · lhs (m×k) · rhs (k×n)`, or `dst += …` when
/// `accumulate`; each matrix given by its row and column strides.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    scale: f32,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    par: Parallelism,
) {
    debug_assert!(dst.len() > (m - 1) * dst_rs + (n - 1) * dst_cs);
    debug_assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    debug_assert!(rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the slices cover every element the strides reach (checked above
    // in debug builds; the callers size them from one Geometry).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        )
    }
}

/// Splits a flat tensor into consecutive pieces of the given shapes.
fn split_flat(flat: &Tensor, shapes: &[&Shape]) -> candle_core::Result<Vec<Tensor>> {
    let mut start = 0;
    shapes
        .iter()
        .map(|shape| {
            let piece = flat.narrow(0, start, shape.elem_count())?.reshape(*shape)?;
            start += shape.elem_count();
            Ok(piece)
        })
        .collect()
}

/// A CPU tensor of standard normal values, reproducible from `seed`.
fn random_normal(dims: &[usize], seed: u64) -> candle_core::Result<Tensor> {
    let mut rng = sslab_shared::rng::Rng::new(seed);
    let n: usize = dims.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    Tensor::from_vec(values, dims, &candle_core::Device::Cpu)
}

#[cfg(test)]
pub(crate) mod tests {
    use candle_core::Tensor;
    use candle_core::backprop::GradStore;
    use candle_nn::VarMap;

    /// [`super::random_normal`], unwrapped.
    pub fn random(dims: &[usize], seed: u64) -> Tensor {
        super::random_normal(dims, seed).unwrap()
    }

    /// The polynomial exp within 2 ulp of f64's over the range softmax and
    /// GELU feed it, and at its ends.
    #[test]
    fn exp_is_within_two_ulp() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, exact) = (super::exp(x), (x as f64).exp());
            let ulp = f32::from_bits((exact as f32).to_bits() + 1) as f64 - exact as f32 as f64;
            assert!(
                (ours as f64 - exact).abs() <= 2.0 * ulp,
                "exp({x}) = {ours}, exactly {exact}"
            );
            x += 0.0137;
        }
        assert_eq!(super::exp(0.0), 1.0);
        assert!(super::exp(-1000.0) < 1.2e-38 && super::exp(-1000.0) >= 0.0);
        assert!(super::exp(1000.0).is_finite());
    }

    /// The gradients of Σ y ∘ weights: every output element weighted
    /// differently, so that a gradient routed to the wrong place shows.
    pub fn weighted_grads(y: &Tensor, weights: &Tensor) -> GradStore {
        (y * weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    }

    /// Every element within `tol` of the reference, relative to its scale.
    pub fn assert_close(got: &Tensor, want: &Tensor, tol: f32, what: &str) {
        assert_eq!(got.dims(), want.dims(), "{what}: shapes");
        let g: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
        let w: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            assert!(
                (a - b).abs() <= tol * scale,
                "{what}: element {i} is {a}, the reference {b} (scale {scale})"
            );
        }
    }

    /// Sets a BatchNorm's γ and β (in `map`, over `c` channels) away from 1
    /// and 0, the same values every time.
    pub fn set_affine(map: &VarMap, c: usize) {
        let data = map.data().lock().unwrap();
        data["weight"]
            .set(&random(&[c], 7).affine(1.0, 1.5).unwrap())
            .unwrap();
        data["bias"].set(&random(&[c], 8)).unwrap();
    }

    /// Two BatchNorms' γ and β gradients (`grads[0]` with `ours`, `grads[1]`
    /// with `theirs`) and running statistics agree.
    pub fn assert_same_batch_norms(
        grads: &[GradStore],
        ours: &VarMap,
        theirs: &VarMap,
        what: &str,
    ) {
        let (ours, theirs) = (ours.data().lock().unwrap(), theirs.data().lock().unwrap());
        for name in ["weight", "bias"] {
            assert_close(
                grads[0].get(&ours[name]).unwrap(),
                grads[1].get(&theirs[name]).unwrap(),
                1e-4,
                &format!("{what} {name} gradient"),
            );
        }
        for name in ["running_mean", "running_var"] {
            assert_close(&ours[name], &theirs[name], 1e-5, &format!("{what} {name}"));
        }
    }
}
