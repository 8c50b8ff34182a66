//! 2-D convolution as a custom op on the CPU: im2col + gemm a group of
//! images at a time, for the forward and both gradients. candle's own conv unfolds the
//! whole batch at once (hundreds of MiB at batch 256) and takes the input
//! gradient through a direct `conv_transpose2d` loop, about 4× its forward.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::{f32_slice, fused, matmul, output, split_flat, threads};

/// Convolution of `x` (N, Cin, H, W) with `w` (Cout, Cin, K, K), square
/// stride and zero padding, no dilation or groups. f32 on the CPU runs the
/// op below, and so do f32 and bf16 on CUDA with the `cudnn` feature (its
/// CUDA side is cuDNN's, backward included); otherwise candle's conv runs.
/// The kernel is used in the input's dtype (bf16 training keeps f32
/// weights). candle has no bf16 matmul on the CPU: there a bf16 input and
/// the kernel rounded to bf16 are convolved in f32 and the result rounded
/// back, which is what bf16 tensor cores do (f32 accumulation).
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let (_, cin, _, _) = x.dims4()?;
    let (_, wcin, kh, kw) = w.dims4()?;
    let dtype = x.dtype();
    if dtype != DType::F32 && x.device().is_cpu() {
        let w = w.to_dtype(dtype)?.to_dtype(DType::F32)?;
        return conv2d(&x.to_dtype(DType::F32)?, &w, stride, padding)?.to_dtype(dtype);
    }
    let cudnn = cfg!(feature = "cudnn")
        && x.device().is_cuda()
        && matches!(dtype, DType::F32 | DType::BF16);
    if !(fused(&[x, w]) || cudnn) || kh != kw {
        return x.conv2d(&w.to_dtype(dtype)?, padding, stride, 1, 1);
    }
    if wcin != cin {
        candle_core::bail!("conv2d: the input has {cin} channels, the kernel expects {wcin}");
    }
    let op = Conv2d {
        stride,
        padding,
        input_grad: x.track_op(),
    };
    x.contiguous()?
        .apply_op2(&w.to_dtype(dtype)?.contiguous()?, op)
}

#[derive(Clone, Copy)]
pub(super) struct Conv2d {
    pub(super) stride: usize,
    pub(super) padding: usize,
    /// Whether anything upstream wants the input's gradient (not the images).
    pub(super) input_grad: bool,
}

/// The sizes of one convolution.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Geometry {
    pub(super) n: usize,
    pub(super) cin: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) cout: usize,
    pub(super) k: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
}

impl Geometry {
    pub(super) fn new(
        x: &Layout,
        w: &Layout,
        stride: usize,
        pad: usize,
    ) -> candle_core::Result<Self> {
        let (n, cin, h, wd) = x.shape().dims4()?;
        let (cout, _, k, _) = w.shape().dims4()?;
        if h + 2 * pad < k || wd + 2 * pad < k || stride == 0 {
            candle_core::bail!(
                "conv2d: a {k}×{k} kernel does not fit a {h}×{wd} input padded by {pad}"
            );
        }
        Ok(Geometry {
            n,
            cin,
            h,
            w: wd,
            cout,
            k,
            stride,
            pad,
            ho: (h + 2 * pad - k) / stride + 1,
            wo: (wd + 2 * pad - k) / stride + 1,
        })
    }

    pub(super) fn in_len(&self) -> usize {
        self.cin * self.h * self.w
    }

    pub(super) fn out_len(&self) -> usize {
        self.cout * self.ho * self.wo
    }

    /// Rows of the unfolded image (one per kernel tap and channel).
    pub(super) fn taps(&self) -> usize {
        self.cin * self.k * self.k
    }

    fn positions(&self) -> usize {
        self.ho * self.wo
    }

    /// The output columns `ox` whose input column `ox·stride + kx − pad` lies
    /// inside the image.
    fn valid(&self, kx: usize, len: usize, out: usize) -> (usize, usize) {
        let lo = self.pad.saturating_sub(kx).div_ceil(self.stride);
        let hi = (len + self.pad)
            .saturating_sub(kx)
            .div_ceil(self.stride)
            .min(out);
        (lo.min(hi), hi)
    }

    /// A tap of a stride-1 convolution whose output is as large as its
    /// input: its unfolded row is the image shifted by whole rows and
    /// columns, one block copy but for the edges.
    fn shifted(&self, ky: usize, kx: usize) -> Option<Shifted> {
        if !self.keeps_size() {
            return None;
        }
        let (h, w, pad) = (self.h as isize, self.w as isize, self.pad as isize);
        let offset = (ky as isize - pad) * w + kx as isize - pad;
        // The output rows whose input row exists.
        let rows = (pad - ky as isize).clamp(0, h)..(h + pad - ky as isize).clamp(0, h);
        // Within them, the positions whose shifted index lies in the image;
        // the ones left out are edge columns.
        let start = (rows.start * w).max(-offset).min(rows.end * w);
        let end = (rows.end * w).min(h * w - offset).max(start);
        let (lo, hi) = self.valid(kx, self.w, self.wo);
        Some(Shifted {
            offset,
            rows: rows.start as usize..rows.end as usize,
            block: start as usize..end as usize,
            columns: lo..hi,
        })
    }

    /// A stride-1 convolution whose output is as large as its input.
    fn keeps_size(&self) -> bool {
        self.stride == 1 && self.ho == self.h && self.wo == self.w
    }

    /// Images per parallel task; images unfolded side by side for one gemm
    /// within a task, enough output positions that the kernel's packing is
    /// amortised (deep layers have few per image); and the gemm's own
    /// parallelism: whole images per thread when there are enough of them,
    /// else threads inside gemm.
    fn split(&self) -> (usize, usize, Parallelism) {
        let t = threads();
        let (per_task, par) = if self.n >= t || t == 1 {
            (self.n.div_ceil(t).max(1), Parallelism::None)
        } else {
            (1, Parallelism::Rayon(t))
        };
        let group = 1024usize.div_ceil(self.positions()).clamp(1, per_task);
        (per_task, group, par)
    }
}

/// See [`Geometry::shifted`]: output position `i` of the block reads input
/// position `i + offset`.
struct Shifted {
    offset: isize,
    rows: std::ops::Range<usize>,
    block: std::ops::Range<usize>,
    /// The output columns whose input column exists.
    columns: std::ops::Range<usize>,
}

impl Shifted {
    /// The input positions the block reads.
    fn source(&self) -> std::ops::Range<usize> {
        if self.block.is_empty() {
            return 0..0;
        }
        let at = |i: usize| (i as isize + self.offset) as usize;
        at(self.block.start)..at(self.block.end)
    }

    /// Zeroes the columns outside the image in the rows that exist, column
    /// by column: a `fill` per row would be a `memset` call for one value.
    fn zero_edges(&self, g: &Geometry, row: &mut [f32]) {
        let rows = &mut row[self.rows.start * g.w..self.rows.end * g.w];
        for ox in (0..self.columns.start).chain(self.columns.end..g.w) {
            for v in rows.iter_mut().skip(ox).step_by(g.w) {
                *v = 0.0;
            }
        }
    }
}

/// Where every output position of every kernel tap reads in the image
/// padded with zeros: strided convolutions and small planes unfold by this
/// table. Row by row their runs are a few values each, so the calls and
/// bounds of a row-wise copy cost more than the copy; the table is built
/// once per call. Stride-1 "same" convolutions of larger planes copy each
/// tap as one shifted block instead ([`Geometry::shifted`]).
struct Unfold {
    /// Tap-major, `K² × Ho·Wo` indices into the padded plane; empty when
    /// taps are shifted blocks.
    index: Vec<u32>,
    /// The padded plane's size (`H + 2·pad`) × (`W + 2·pad`).
    padded: (usize, usize),
}

impl Unfold {
    /// Below this many output positions per image a stride-1 convolution
    /// gathers too: its shifted blocks are a few rows long (4×4 planes
    /// unfold 1.4× faster by the table, 8×8 ones 1.5× slower).
    const SHIFTED_FROM: usize = 64;

    fn new(g: &Geometry) -> Self {
        let (hp, wp) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
        let shifted = g.keeps_size() && g.positions() >= Self::SHIFTED_FROM;
        let mut index = Vec::new();
        if !shifted {
            index.reserve(g.k * g.k * g.positions());
            for ky in 0..g.k {
                for kx in 0..g.k {
                    for oy in 0..g.ho {
                        let row = (oy * g.stride + ky) * wp + kx;
                        index.extend((0..g.wo).map(|ox| (row + ox * g.stride) as u32));
                    }
                }
            }
            // The gathers below index unchecked: every entry must lie in the plane.
            assert!(index.iter().all(|&i| (i as usize) < hp * wp));
        }
        Unfold {
            index,
            padded: (hp, wp),
        }
    }

    fn gathers(&self) -> bool {
        !self.index.is_empty()
    }

    /// Scratch for one padded plane (none when the plane needs no padding,
    /// or taps are shifted blocks); [`im2col`] needs its border zero.
    fn scratch(&self, g: &Geometry) -> Vec<f32> {
        let len = if self.gathers() && g.pad > 0 {
            self.padded.0 * self.padded.1
        } else {
            0
        };
        vec![0f32; len]
    }

    /// Copies a plane into the padded scratch's interior; the border stays
    /// as it is (zero). The result holds the whole padded plane, which the
    /// unchecked gathers rely on.
    fn pad<'a>(&self, g: &Geometry, plane: &'a [f32], scratch: &'a mut [f32]) -> &'a [f32] {
        let (hp, wp) = self.padded;
        let padded = if g.pad == 0 {
            plane
        } else {
            for (y, src) in plane.chunks(g.w).enumerate() {
                scratch[(y + g.pad) * wp + g.pad..][..g.w].copy_from_slice(src);
            }
            scratch
        };
        assert_eq!(padded.len(), hp * wp, "a padded plane");
        padded
    }

    /// One tap's table.
    fn tap(&self, g: &Geometry, t: usize) -> &[u32] {
        &self.index[t * g.positions()..][..g.positions()]
    }
}

/// Unfolds one image (Cin, H, W) into `cols`: row `(c·K + ky)·K + kx`
/// holds that tap's Ho·Wo values, rows `ld` apart. `scratch` comes from
/// [`Unfold::scratch`].
fn im2col(g: &Geometry, u: &Unfold, x: &[f32], cols: &mut [f32], ld: usize, scratch: &mut [f32]) {
    let p = g.positions();
    if u.gathers() {
        let taps = g.k * g.k;
        for (c, plane) in x.chunks(g.h * g.w).enumerate() {
            let plane = u.pad(g, plane, scratch);
            for t in 0..taps {
                let row = &mut cols[(c * taps + t) * ld..][..p];
                // Unchecked: a bounds check per value made this 2× slower.
                // SAFETY: `Unfold::new` asserts every index < Hp·Wp, and
                // `pad` that the plane holds Hp·Wp values.
                for (d, &i) in row.iter_mut().zip(u.tap(g, t)) {
                    *d = unsafe { *plane.get_unchecked(i as usize) };
                }
            }
        }
        return;
    }
    for c in 0..g.cin {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..g.k {
            for kx in 0..g.k {
                let row = &mut cols[((c * g.k + ky) * g.k + kx) * ld..][..p];
                if let Some(tap) = g.shifted(ky, kx) {
                    row[..tap.rows.start * g.w].fill(0.0);
                    row[tap.rows.end * g.w..].fill(0.0);
                    row[tap.block.clone()].copy_from_slice(&plane[tap.source()]);
                    tap.zero_edges(g, row);
                    continue;
                }
                let (lo, hi) = g.valid(kx, g.w, g.wo);
                for oy in 0..g.ho {
                    let dst = &mut row[oy * g.wo..(oy + 1) * g.wo];
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..][..g.w];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    if lo == hi {
                        continue;
                    }
                    let start = lo * g.stride + kx - g.pad;
                    if g.stride == 1 {
                        dst[lo..hi].copy_from_slice(&src[start..start + hi - lo]);
                    } else {
                        let taps = src[start..].iter().step_by(g.stride);
                        for (d, s) in dst[lo..hi].iter_mut().zip(taps) {
                            *d = *s;
                        }
                    }
                }
            }
        }
    }
}

/// Folds one image's `cols` (laid out as [`im2col`] writes them) back into
/// the image, adding where windows overlap.
/// The columns are scratch: a shifted tap's edge values are zeroed there.
/// So is `scratch`, from [`Unfold::scratch`] (not the one [`im2col`] uses:
/// this one leaves its border dirty).
fn col2im(
    g: &Geometry,
    u: &Unfold,
    cols: &mut [f32],
    ld: usize,
    x: &mut [f32],
    scratch: &mut [f32],
) {
    let p = g.positions();
    if u.gathers() {
        let taps = g.k * g.k;
        for (c, plane) in x.chunks_mut(g.h * g.w).enumerate() {
            let sum = if g.pad == 0 {
                &mut *plane
            } else {
                &mut *scratch
            };
            assert_eq!(sum.len(), u.padded.0 * u.padded.1, "a padded plane");
            sum.fill(0.0);
            for t in 0..taps {
                let row = &cols[(c * taps + t) * ld..][..p];
                // SAFETY: as in `im2col`, every index < Hp·Wp = sum.len().
                for (s, &i) in row.iter().zip(u.tap(g, t)) {
                    unsafe { *sum.get_unchecked_mut(i as usize) += *s };
                }
            }
            if g.pad > 0 {
                let wp = u.padded.1;
                for (y, dst) in plane.chunks_mut(g.w).enumerate() {
                    dst.copy_from_slice(&scratch[(y + g.pad) * wp + g.pad..][..g.w]);
                }
            }
        }
        return;
    }
    x.fill(0.0);
    for c in 0..g.cin {
        let plane = &mut x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..g.k {
            for kx in 0..g.k {
                let row = &mut cols[((c * g.k + ky) * g.k + kx) * ld..][..p];
                if let Some(tap) = g.shifted(ky, kx) {
                    tap.zero_edges(g, row);
                    let dst = &mut plane[tap.source()];
                    for (d, s) in dst.iter_mut().zip(&row[tap.block.clone()]) {
                        *d += *s;
                    }
                    continue;
                }
                let (lo, hi) = g.valid(kx, g.w, g.wo);
                for oy in 0..g.ho {
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize || lo == hi {
                        continue;
                    }
                    let src = &row[oy * g.wo + lo..oy * g.wo + hi];
                    let dst = &mut plane[iy as usize * g.w..][..g.w];
                    let start = lo * g.stride + kx - g.pad;
                    if g.stride == 1 {
                        for (d, s) in dst[start..start + src.len()].iter_mut().zip(src) {
                            *d += *s;
                        }
                    } else {
                        for (d, s) in dst[start..].iter_mut().step_by(g.stride).zip(src) {
                            *d += *s;
                        }
                    }
                }
            }
        }
    }
}

/// Copies `count` blocks of `rows × p` between an image-major layout
/// (block after block) and a matrix whose rows hold every block's `p`
/// values side by side (`rows × count·p`).
fn interleave(blocks: &[f32], matrix: &mut [f32], rows: usize, p: usize, count: usize) {
    for (b, block) in blocks.chunks(rows * p).take(count).enumerate() {
        for (r, src) in block.chunks(p).enumerate() {
            matrix[r * count * p + b * p..][..p].copy_from_slice(src);
        }
    }
}

/// The inverse of [`interleave`].
fn deinterleave(matrix: &[f32], blocks: &mut [f32], rows: usize, p: usize, count: usize) {
    for (b, block) in blocks.chunks_mut(rows * p).take(count).enumerate() {
        for (r, dst) in block.chunks_mut(p).enumerate() {
            dst.copy_from_slice(&matrix[r * count * p + b * p..][..p]);
        }
    }
}

/// The convolution of a batch `x` with the kernel `w`, (N, Cout, Ho, Wo).
pub(super) fn forward(g: &Geometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (taps, p) = (g.taps(), g.positions());
    // SAFETY: the kernel below writes every element before any is read.
    let mut out = unsafe { output(g.n * g.out_len()) };
    let (per_task, group, par) = g.split();
    let unfold = Unfold::new(g);
    out.par_chunks_mut(per_task * g.out_len())
        .zip(x.par_chunks(per_task * g.in_len()))
        .for_each(|(out, x)| {
            // Scratch that every group writes in full before reading.
            // SAFETY: the kernel below writes every element before any is read.
            let mut cols = unsafe { output(taps * group * p) };
            let mut scratch = unfold.scratch(g);
            // SAFETY: the kernel below writes every element before any is read.
            let mut res = unsafe { output(if group > 1 { g.cout * group * p } else { 0 }) };
            let images = out
                .chunks_mut(group * g.out_len())
                .zip(x.chunks(group * g.in_len()));
            for (out, x) in images {
                let count = x.len() / g.in_len();
                let ld = count * p;
                for (i, x) in x.chunks(g.in_len()).enumerate() {
                    im2col(g, &unfold, x, &mut cols[i * p..], ld, &mut scratch);
                }
                // (Cout × count·P) = W (Cout × taps) · cols (taps × count·P);
                // one image's result is already in the output's layout.
                let cols = &cols[..taps * ld];
                let product = |dst: &mut [f32]| {
                    matmul(
                        (g.cout, ld, taps),
                        dst,
                        (ld, 1),
                        false,
                        1.0,
                        w,
                        (taps, 1),
                        cols,
                        (ld, 1),
                        par,
                    )
                };
                if count == 1 {
                    product(out);
                } else {
                    product(&mut res[..g.cout * ld]);
                    deinterleave(&res[..g.cout * ld], out, g.cout, p, count);
                }
            }
        });
    out
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "sslab-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1, l2, self.stride, self.padding)?;
        let out = forward(&g, f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.cout, g.ho, g.wo))))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let g = Geometry::new(l1, l2, self.stride, self.padding)?;
        super::cudnn::run(&g, super::cudnn::Pass::Forward, (s1, l1), (s2, l2))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let flat = x.apply_op3_no_bwd(w, &grad.contiguous()?, &Conv2dBackward(*self))?;
        let mut parts = split_flat(&flat, &[x.shape(), w.shape()])?.into_iter();
        let (dx, dw) = (parts.next(), parts.next());
        Ok((dx.filter(|_| self.input_grad), dw))
    }
}

/// Both gradients of [`forward`] from the output's gradient `dy`, written
/// into `dw` and `dx` (zeros when the input's is not wanted).
pub(super) fn backward(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    (dx, input_grad): (&mut [f32], bool),
    dw: &mut [f32],
) {
    let dx = if input_grad {
        Some(dx)
    } else {
        dx.fill(0.0);
        None
    };
    let (taps, p) = (g.taps(), g.positions());
    let w_len = g.cout * taps;
    let (per_task, group, par) = g.split();
    let unfold = Unfold::new(g);
    let task = |x: &[f32], dy: &[f32], mut dx: Option<&mut [f32]>| -> Vec<f32> {
        // The kernel's gradient transposed, (taps × Cout): with dy as the
        // gemm's left operand it packs dy rather than the columns, which
        // are K² times larger.
        // Written in full before read: dWᵀ by the first group's gemm, the
        // others by every group.
        // SAFETY: the kernel below writes every element before any is read.
        let mut dwt = unsafe { output(w_len) };
        // SAFETY: the kernel below writes every element before any is read.
        let mut cols = unsafe { output(taps * group * p) };
        // SAFETY: the kernel below writes every element before any is read.
        let mut dys = unsafe { output(if group > 1 { g.cout * group * p } else { 0 }) };
        let (mut unfold_scratch, mut fold_scratch) = (unfold.scratch(g), unfold.scratch(g));
        let images = x
            .chunks(group * g.in_len())
            .zip(dy.chunks(group * g.out_len()));
        for (first, (x, dy)) in images.enumerate() {
            let count = x.len() / g.in_len();
            let ld = count * p;
            for (i, x) in x.chunks(g.in_len()).enumerate() {
                im2col(g, &unfold, x, &mut cols[i * p..], ld, &mut unfold_scratch);
            }
            let dys = if count == 1 {
                dy
            } else {
                interleave(dy, &mut dys, g.cout, p, count);
                &dys[..g.cout * ld]
            };
            let cols = &mut cols[..taps * ld];
            // dW += dy (Cout × count·P) · colsᵀ (count·P × taps), into dWᵀ.
            matmul(
                (g.cout, taps, ld),
                &mut dwt,
                (1, g.cout),
                first > 0,
                1.0,
                dys,
                (ld, 1),
                cols,
                (1, ld),
                par,
            );
            if let Some(dx) = dx.as_deref_mut() {
                // dcols (taps × count·P) = Wᵀ (taps × Cout) · dy, into the
                // columns' buffer, then folded back image by image.
                matmul(
                    (taps, ld, g.cout),
                    cols,
                    (ld, 1),
                    false,
                    1.0,
                    w,
                    (1, taps),
                    dys,
                    (ld, 1),
                    par,
                );
                let dx = &mut dx[first * group * g.in_len()..];
                for (i, dx) in dx.chunks_mut(g.in_len()).take(count).enumerate() {
                    col2im(g, &unfold, &mut cols[i * p..], ld, dx, &mut fold_scratch);
                }
            }
        }
        dwt
    };
    let partial: Vec<Vec<f32>> = if let Some(dx) = dx {
        dx.par_chunks_mut(per_task * g.in_len())
            .zip(x.par_chunks(per_task * g.in_len()))
            .zip(dy.par_chunks(per_task * g.out_len()))
            .map(|((dx, x), dy)| task(x, dy, Some(dx)))
            .collect()
    } else {
        x.par_chunks(per_task * g.in_len())
            .zip(dy.par_chunks(per_task * g.out_len()))
            .map(|(x, dy)| task(x, dy, None))
            .collect()
    };
    let mut parts = partial.into_iter();
    let mut sum = parts.next().expect("a batch has at least one task");
    for part in parts {
        for (a, b) in sum.iter_mut().zip(&part) {
            *a += b;
        }
    }
    transpose(&sum, (taps, g.cout), dw);
}

/// `dst` (cols × rows) = `src`ᵀ, `src` (rows × cols), both row-major: in
/// tiles, since element by element every write of one side would miss the
/// cache (a kernel's gradient has millions of values).
fn transpose(src: &[f32], (rows, cols): (usize, usize), dst: &mut [f32]) {
    const TILE: usize = 32;
    dst.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(block, dst)| {
            let c0 = block * TILE;
            for r0 in (0..rows).step_by(TILE) {
                for (c, row) in dst.chunks_mut(rows).enumerate() {
                    let r1 = (r0 + TILE).min(rows);
                    for (r, d) in (r0..r1).zip(&mut row[r0..r1]) {
                        *d = src[r * cols + c0 + c];
                    }
                }
            }
        });
}

/// Both gradients of [`Conv2d`] in one pass over the batch, returned as one
/// flat tensor: the input's (zeros when not wanted), then the kernel's.
pub(super) struct Conv2dBackward(pub(super) Conv2d);

impl CustomOp3 for Conv2dBackward {
    fn name(&self) -> &'static str {
        "sslab-conv2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1, l2, self.0.stride, self.0.padding)?;
        let (x, w, dy) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        if dy.len() != g.n * g.out_len() {
            candle_core::bail!(
                "conv2d backward: the gradient has {} values, not {}",
                dy.len(),
                g.n * g.out_len()
            );
        }
        let w_len = g.cout * g.taps();
        // SAFETY: the kernel below writes every element before any is read.
        let mut flat = unsafe { output(g.n * g.in_len() + w_len) };
        let (dx, dw) = flat.split_at_mut(g.n * g.in_len());
        backward(&g, x, w, dy, (dx, self.0.input_grad), dw);
        Ok((CpuStorage::F32(flat), Shape::from(g.n * g.in_len() + w_len)))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let g = Geometry::new(l1, l2, self.0.stride, self.0.padding)?;
        let pass = super::cudnn::Pass::Backward {
            input_grad: self.0.input_grad,
            dy: (s3, l3),
        };
        super::cudnn::run(&g, pass, (s1, l1), (s2, l2))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::ops::tests::{assert_close, random};

    /// A transposition over several tiles each way, with remainders.
    #[test]
    fn transposes_across_tiles_and_their_remainders() {
        let (rows, cols) = (70, 45);
        let src: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let mut dst = vec![0f32; rows * cols];
        transpose(&src, (rows, cols), &mut dst);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(dst[c * rows + r], src[r * cols + c], "({r}, {c})");
            }
        }
    }

    /// Both ways of unfolding write every value of the columns (the
    /// buffers are reused uninitialised) and agree with the definition,
    /// several images side by side; folding back adds what unfolding copied.
    #[test]
    fn unfolds_every_value_as_defined_and_folds_back() {
        let cases = [
            // (cin, h, w, k, stride, pad): shifted blocks, then tables.
            (2, 9, 8, 3, 1, 1),
            (3, 8, 8, 5, 1, 2),
            (2, 10, 7, 1, 1, 0),
            (2, 4, 4, 3, 1, 1),
            (2, 9, 7, 3, 2, 1),
            (3, 8, 8, 1, 2, 0),
            (1, 11, 11, 7, 2, 3),
            (2, 2, 2, 3, 1, 1),
        ];
        for (case, &(cin, h, w, k, stride, pad)) in cases.iter().enumerate() {
            let ho = (h + 2 * pad - k) / stride + 1;
            let wo = (w + 2 * pad - k) / stride + 1;
            let g = Geometry {
                n: 2,
                cin,
                h,
                w,
                cout: 1,
                k,
                stride,
                pad,
                ho,
                wo,
            };
            let u = Unfold::new(&g);
            assert_eq!(u.gathers(), case >= 3, "case {case}");
            let x: Vec<f32> = (0..g.n * g.in_len()).map(|i| 1.0 + i as f32).collect();
            let (p, ld) = (g.positions(), g.n * g.positions());
            let mut cols = vec![f32::NAN; g.taps() * ld];
            let mut scratch = u.scratch(&g);
            for (i, x) in x.chunks(g.in_len()).enumerate() {
                im2col(&g, &u, x, &mut cols[i * p..], ld, &mut scratch);
            }
            let mut folded = vec![f32::NAN; g.n * g.in_len()];
            let mut expected = vec![0f32; g.n * g.in_len()];
            for (i, (x, expected)) in x
                .chunks(g.in_len())
                .zip(expected.chunks_mut(g.in_len()))
                .enumerate()
            {
                for c in 0..cin {
                    for (ky, kx, oy, ox) in (0..k).flat_map(|ky| {
                        (0..k).flat_map(move |kx| {
                            (0..ho).flat_map(move |oy| (0..wo).map(move |ox| (ky, kx, oy, ox)))
                        })
                    }) {
                        let iy = (oy * stride + ky) as isize - pad as isize;
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        let inside = (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix);
                        let at = inside.then(|| c * h * w + iy as usize * w + ix as usize);
                        let want = at.map_or(0.0, |at| x[at]);
                        let got = cols[((c * k + ky) * k + kx) * ld + i * p + oy * wo + ox];
                        assert_eq!(
                            got, want,
                            "case {case} image {i} ({c}, {ky}, {kx}, {oy}, {ox})"
                        );
                        if let Some(at) = at {
                            expected[at] += want;
                        }
                    }
                }
            }
            let mut scratch = u.scratch(&g);
            for (i, dx) in folded.chunks_mut(g.in_len()).enumerate() {
                col2im(&g, &u, &mut cols[i * p..], ld, dx, &mut scratch);
            }
            assert_eq!(folded, expected, "case {case} folded");
        }
    }

    /// Values and both gradients against candle's conv, for the shapes the
    /// backbones use: 3×3 with and without stride, 1×1 strided shortcuts,
    /// 1×1 pointwise, a 7×7/2 stem, a patch embedding, a batch smaller
    /// than the thread count, images smaller than the kernel, and a kernel
    /// whose gradient spans several transposition tiles.
    #[test]
    fn matches_candles_conv_values_and_gradients() {
        let cases = [
            // (n, cin, hw, cout, k, stride, pad)
            (4, 3, 9, 5, 3, 1, 1),
            (3, 4, 8, 6, 3, 2, 1),
            (5, 4, 8, 7, 1, 2, 0),
            (2, 6, 5, 3, 1, 1, 0),
            (2, 3, 16, 4, 7, 2, 3),
            (2, 3, 8, 5, 4, 4, 0),
            (1, 2, 7, 3, 3, 1, 1),
            // Stride-1 planes large enough for shifted blocks, pointwise
            // and 5×5.
            (2, 5, 10, 4, 1, 1, 0),
            (2, 3, 8, 4, 5, 1, 2),
            // Images smaller than the kernel (deep layers of small inputs).
            (2, 3, 1, 4, 3, 1, 1),
            (2, 3, 2, 4, 3, 1, 1),
            (2, 2, 2, 3, 5, 1, 2),
            // A kernel's gradient over several transposition tiles each way.
            (2, 8, 6, 40, 3, 1, 1),
        ];
        for (i, &(n, cin, hw, cout, k, stride, pad)) in cases.iter().enumerate() {
            let x = Var::from_tensor(&random(&[n, cin, hw, hw], i as u64)).unwrap();
            let w = Var::from_tensor(&random(&[cout, cin, k, k], 100 + i as u64)).unwrap();
            let ours = conv2d(&x, &w, stride, pad).unwrap();
            let theirs = x.conv2d(&w, pad, stride, 1, 1).unwrap();
            assert_eq!(ours.dims(), theirs.dims(), "case {i}");
            assert_close(&ours, &theirs, 1e-5, &format!("case {i} values"));
            // A loss that weighs every output differently.
            let weights = random(ours.dims(), 200 + i as u64);
            let g_ours = (&ours * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g_theirs = (&theirs * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (name, v) in [("input", &x), ("kernel", &w)] {
                let a = g_ours.get(v).unwrap();
                let b = g_theirs.get(v).unwrap();
                assert_close(a, b, 1e-4, &format!("case {i} {name} gradient"));
            }
        }
    }

    /// The images need no gradient: only the kernel's is computed.
    #[test]
    fn a_constant_input_gets_no_gradient() {
        let x = random(&[2, 3, 6, 6], 1);
        let w = Var::from_tensor(&random(&[4, 3, 3, 3], 2)).unwrap();
        let grads = conv2d(&x, &w, 1, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(&x).is_none());
        let theirs = x
            .conv2d(&w, 1, 1, 1, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_close(
            grads.get(&w).unwrap(),
            theirs.get(&w).unwrap(),
            1e-4,
            "kernel gradient",
        );
        assert!(x.device().same_device(&Device::Cpu));
    }
}
