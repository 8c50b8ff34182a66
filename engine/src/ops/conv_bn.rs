//! Convolution then training-mode BatchNorm (then ReLU, or the residual
//! add + ReLU) as one op on the CPU. The convolution's output stays inside
//! the op, and so does the BatchNorm's before a residual add: candle's
//! backward adds every node's gradient into a fresh zero-filled tensor,
//! which for such activations cost four passes over the largest tensors of
//! the step.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, ModuleT, Shape, Tensor};

use super::batch_norm::{self, BatchNorm, Dims, Stats, Tail};
use super::conv::{self, Geometry, conv2d};
use super::residual::Mask;
use super::{add_relu, f32_slice, fused, output, split_flat};

/// `bn(conv2d(x, w))` in training, then ReLU when `relu`; the running
/// statistics move as [`BatchNorm`]'s do. With `cudnn`, f32 and bf16 on
/// CUDA run as one op too; other devices and dtypes run the two ops one
/// after the other.
pub fn conv_bn(
    x: &Tensor,
    w: &Tensor,
    (stride, padding): (usize, usize),
    bn: &BatchNorm,
    relu: bool,
) -> candle_core::Result<Tensor> {
    let (_, cin, _, _) = x.dims4()?;
    let (_, wcin, kh, kw) = w.dims4()?;
    #[cfg(feature = "cudnn")]
    if super::on_gpu(&[x]) && kh == kw && cin == wcin {
        return super::conv_bn_gpu::conv_bn(x, w, (stride, padding), bn, relu, None);
    }
    if !fused(&[x, w]) || kh != kw || cin != wcin {
        let z = conv2d(x, w, stride, padding)?;
        return if relu {
            bn.forward_relu(&z, true)
        } else {
            bn.forward_t(&z, true)
        };
    }
    let (gamma, beta) = bn.affine();
    let saved = Arc::new(Mutex::new(None));
    let op = ConvBn {
        params: Params {
            stride,
            padding,
            eps: bn.eps(),
            relu,
            input_grad: x.track_op(),
        },
        saved: saved.clone(),
    };
    let affine = Tensor::cat(&[gamma, beta], 0)?;
    let y = x.contiguous()?.apply_op3(&w.contiguous()?, &affine, op)?;
    update_running(bn, &saved, &y)
}

/// `relu(bn(conv2d(x, w)) + skip)` in training, the end of a residual
/// block; the running statistics move as [`BatchNorm`]'s do. As with
/// [`conv_bn`], f32 and bf16 on CUDA (with `cudnn`) are one op too; other
/// devices and dtypes run [`conv_bn`], then [`add_relu`].
pub fn conv_bn_add_relu(
    x: &Tensor,
    w: &Tensor,
    (stride, padding): (usize, usize),
    bn: &BatchNorm,
    skip: &Tensor,
) -> candle_core::Result<Tensor> {
    let (_, cin, _, _) = x.dims4()?;
    let (_, wcin, kh, kw) = w.dims4()?;
    #[cfg(feature = "cudnn")]
    if super::on_gpu(&[x, skip]) && kh == kw && cin == wcin {
        return super::conv_bn_gpu::conv_bn(x, w, (stride, padding), bn, true, Some(skip));
    }
    if !fused(&[x, w, skip]) || kh != kw || cin != wcin {
        return add_relu(&conv_bn(x, w, (stride, padding), bn, false)?, skip);
    }
    let (gamma, beta) = bn.affine();
    let saved = Arc::new(Mutex::new(None));
    let op = ConvBnAdd {
        params: Params {
            stride,
            padding,
            eps: bn.eps(),
            // The backward masks the gradient by the output's sign before
            // the BatchNorm's gradient, which then sees no ReLU.
            relu: false,
            input_grad: x.track_op(),
        },
        kernel: w.shape().clone(),
        saved: saved.clone(),
    };
    // The kernel, γ and β as one input: an op takes three.
    let packed = Tensor::cat(&[&w.flatten_all()?, gamma, beta], 0)?;
    let y = x
        .contiguous()?
        .apply_op3(&packed, &skip.contiguous()?, op)?;
    update_running(bn, &saved, &y)
}

/// Moves `bn`'s running statistics by the batch statistics the forward of
/// `y` saved; returns `y`.
fn update_running(
    bn: &BatchNorm,
    saved: &Mutex<Option<Saved>>,
    y: &Tensor,
) -> candle_core::Result<Tensor> {
    let saved = saved.lock().expect("saved lock");
    let stats = &saved.as_ref().expect("the forward ran").stats;
    bn.update_running(stats, y.elem_count() / bn.affine().0.elem_count())?;
    Ok(y.clone())
}

/// What the forward keeps for the backward: the convolution's output and
/// its batch statistics.
#[derive(Clone)]
struct Saved {
    z: Arc<Vec<f32>>,
    stats: Stats,
}

#[derive(Clone, Copy)]
struct Params {
    stride: usize,
    padding: usize,
    eps: f64,
    relu: bool,
    /// Whether anything upstream wants the input's gradient (not the images).
    input_grad: bool,
}

impl Params {
    fn geometry(&self, x: &Layout, w: &Layout) -> candle_core::Result<Geometry> {
        Geometry::new(x, w, self.stride, self.padding)
    }
}

struct ConvBn {
    params: Params,
    saved: Arc<Mutex<Option<Saved>>>,
}

impl CustomOp3 for ConvBn {
    fn name(&self) -> &'static str {
        "sslab-conv-batch-norm"
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
        let g = self.params.geometry(l1, l2)?;
        let (x, w, affine) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let tail = if self.params.relu {
            Tail::Relu
        } else {
            Tail::None
        };
        run(&g, x, w, affine, tail, self.params.eps, &self.saved)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        affine: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(saved) = self.saved.lock().expect("saved lock").clone() else {
            candle_core::bail!("conv + batch norm: backward before forward");
        };
        let cout = w.dim(0)?;
        let op = Backward {
            params: self.params,
            gamma: affine.narrow(0, 0, cout)?.to_vec1()?,
            saved,
        };
        let flat = x.apply_op3_no_bwd(w, &grad.contiguous()?, &op)?;
        let mut parts = split_flat(&flat, &[x.shape(), w.shape(), affine.shape()])?.into_iter();
        let (dx, dw, d_affine) = (parts.next(), parts.next(), parts.next());
        Ok((dx.filter(|_| self.params.input_grad), dw, d_affine))
    }
}

/// The convolution, then the BatchNorm with γ and β from `affine` and
/// `tail`; keeps what the backward needs in `saved`.
fn run(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    affine: &[f32],
    tail: Tail,
    eps: f64,
    saved: &Mutex<Option<Saved>>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    if affine.len() != 2 * g.cout {
        candle_core::bail!(
            "conv + batch norm: {} affine values for {} channels",
            affine.len(),
            g.cout
        );
    }
    let z = conv::forward(g, x, w);
    let (y, stats) = batch_norm::forward(
        dims(g),
        &z,
        [&affine[..g.cout], &affine[g.cout..]],
        tail,
        eps,
    );
    *saved.lock().expect("saved lock") = Some(Saved {
        z: Arc::new(z),
        stats,
    });
    Ok((CpuStorage::F32(y), Shape::from((g.n, g.cout, g.ho, g.wo))))
}

/// [`conv_bn_add_relu`]'s op on x, the kernel followed by γ and β (one
/// flat tensor), and the skip.
struct ConvBnAdd {
    params: Params,
    kernel: Shape,
    saved: Arc<Mutex<Option<Saved>>>,
}

impl CustomOp3 for ConvBnAdd {
    fn name(&self) -> &'static str {
        "sslab-conv-batch-norm-add-relu"
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
        let g = self
            .params
            .geometry(l1, &Layout::contiguous(&self.kernel))?;
        if l3.dims() != [g.n, g.cout, g.ho, g.wo] {
            candle_core::bail!(
                "conv + batch norm + skip: the skip is {:?}, the output {:?}",
                l3.dims(),
                [g.n, g.cout, g.ho, g.wo]
            );
        }
        let (x, packed, skip) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let w_len = self.kernel.elem_count();
        if packed.len() != w_len + 2 * g.cout {
            candle_core::bail!(
                "conv + batch norm + skip: {} packed values for a {:?} kernel and {} channels",
                packed.len(),
                self.kernel.dims(),
                g.cout
            );
        }
        let (w, affine) = packed.split_at(w_len);
        let tail = Tail::AddRelu(skip);
        run(&g, x, w, affine, tail, self.params.eps, &self.saved)
    }

    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        _skip: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(saved) = self.saved.lock().expect("saved lock").clone() else {
            candle_core::bail!("conv + batch norm + skip: backward before forward");
        };
        // The gradient past the ReLU: the skip's, and the BatchNorm's output's.
        let g = grad.contiguous()?.apply_op2_no_bwd(res, &Mask)?;
        let (w_len, cout) = (self.kernel.elem_count(), self.kernel.dims()[0]);
        let w = packed.narrow(0, 0, w_len)?.reshape(&self.kernel)?;
        let op = Backward {
            params: self.params,
            gamma: packed.narrow(0, w_len, cout)?.to_vec1()?,
            saved,
        };
        let flat = x.apply_op3_no_bwd(&w, &g, &op)?;
        // Laid out as x's gradient, then the kernel's, γ's and β's: the
        // packed input's in one piece.
        let mut parts = split_flat(&flat, &[x.shape(), packed.shape()])?.into_iter();
        let (dx, d_packed) = (parts.next(), parts.next());
        Ok((dx.filter(|_| self.params.input_grad), d_packed, Some(g)))
    }
}

/// The convolution's output as BatchNorm sees it.
fn dims(g: &Geometry) -> Dims {
    Dims {
        n: g.n,
        c: g.cout,
        inner: g.ho * g.wo,
    }
}

/// The gradients of [`ConvBn`] as one flat tensor: x's (zeros when not
/// wanted), the kernel's, then γ's and β's; from x, the kernel and the
/// output's gradient.
struct Backward {
    params: Params,
    gamma: Vec<f32>,
    saved: Saved,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "sslab-conv-batch-norm-backward"
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
        let p = self.params;
        let g = p.geometry(l1, l2)?;
        let (x, w, dy) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let z = self.saved.z.as_slice();
        if dy.len() != z.len() || z.len() != g.n * g.out_len() {
            candle_core::bail!("conv + batch norm backward: shapes do not match the forward's");
        }
        let (x_len, w_len) = (x.len(), w.len());
        // SAFETY: the kernel below writes every element before any is read.
        let mut flat = unsafe { output(x_len + w_len + 2 * g.cout) };
        let (dx, rest) = flat.split_at_mut(x_len);
        let (dw, rest) = rest.split_at_mut(w_len);
        let (d_gamma, d_beta) = rest.split_at_mut(g.cout);
        // SAFETY: the kernel below writes every element before any is read.
        let mut dz = unsafe { output(z.len()) };
        batch_norm::backward(
            dims(&g),
            &self.saved.stats,
            &self.gamma,
            [z, dy],
            p.relu,
            [&mut dz, d_gamma, d_beta],
        );
        conv::backward(&g, x, w, &dz, (dx, p.input_grad), dw);
        Ok((
            CpuStorage::F32(flat),
            Shape::from(x_len + w_len + 2 * g.cout),
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::ops::tests::{assert_close, assert_same_batch_norms, random, set_affine};

    /// A BatchNorm over `c` channels with γ and β away from 1 and 0.
    fn batch_norm(c: usize) -> (BatchNorm, VarMap) {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let bn = BatchNorm::new(c, 1e-5, vb).unwrap();
        set_affine(&map, c);
        (bn, map)
    }

    /// Values, running statistics and the gradients of the input, kernel, γ
    /// and β equal the two ops one after the other, with and without ReLU,
    /// for 3×3 convolutions with and without stride and a 1×1 strided one.
    #[test]
    fn matches_conv_then_batch_norm() {
        let cases = [
            // (n, cin, hw, cout, k, stride, pad, relu)
            (4, 3, 9, 5, 3, 1, 1, true),
            (3, 4, 8, 6, 3, 2, 1, false),
            (5, 4, 8, 7, 1, 2, 0, false),
            (1, 2, 7, 3, 3, 1, 1, true),
        ];
        for (i, &(n, cin, hw, cout, k, stride, pad, relu)) in cases.iter().enumerate() {
            let x = Var::from_tensor(&random(&[n, cin, hw, hw], i as u64)).unwrap();
            let w = Var::from_tensor(&random(&[cout, cin, k, k], 100 + i as u64)).unwrap();
            let (ours, ours_map) = batch_norm(cout);
            let (theirs, theirs_map) = batch_norm(cout);
            let mut outs = Vec::new();
            let mut grads = Vec::new();
            let forwards: [&dyn Fn() -> Tensor; 2] = [
                &|| conv_bn(&x, &w, (stride, pad), &ours, relu).unwrap(),
                &|| {
                    let z = conv2d(&x, &w, stride, pad).unwrap();
                    if relu {
                        theirs.forward_relu(&z, true)
                    } else {
                        theirs.forward_t(&z, true)
                    }
                    .unwrap()
                },
            ];
            for forward in forwards {
                // Twice, so the running statistics move from their start.
                forward();
                let y = forward();
                let weights = random(y.dims(), 200 + i as u64);
                grads.push(
                    (&y * &weights)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap(),
                );
                outs.push(y);
            }
            assert_close(&outs[0], &outs[1], 1e-5, &format!("case {i} values"));
            for (name, v) in [("input", &x), ("kernel", &w)] {
                assert_close(
                    grads[0].get(v).unwrap(),
                    grads[1].get(v).unwrap(),
                    1e-4,
                    &format!("case {i} {name} gradient"),
                );
            }
            assert_same_batch_norms(&grads, &ours_map, &theirs_map, &format!("case {i}"));
        }
    }

    /// With a residual add: values, running statistics and the gradients of
    /// the input, kernel, skip, γ and β equal [`conv_bn`] then
    /// [`add_relu`], with and without stride.
    #[test]
    fn with_a_skip_matches_conv_batch_norm_then_add_relu() {
        let cases = [
            // (n, cin, hw, cout, k, stride, pad)
            (4, 3, 9, 5, 3, 1, 1),
            (3, 4, 8, 6, 3, 2, 1),
            (5, 4, 8, 7, 1, 2, 0),
        ];
        for (i, &(n, cin, hw, cout, k, stride, pad)) in cases.iter().enumerate() {
            let seed = 10 * i as u64;
            let x = Var::from_tensor(&random(&[n, cin, hw, hw], seed)).unwrap();
            let w = Var::from_tensor(&random(&[cout, cin, k, k], seed + 1)).unwrap();
            let side = (hw + 2 * pad - k) / stride + 1;
            let skip = Var::from_tensor(&random(&[n, cout, side, side], seed + 2)).unwrap();
            let (ours, ours_map) = batch_norm(cout);
            let (theirs, theirs_map) = batch_norm(cout);
            let mut outs = Vec::new();
            let mut grads = Vec::new();
            let forwards: [&dyn Fn() -> Tensor; 2] = [
                &|| conv_bn_add_relu(&x, &w, (stride, pad), &ours, &skip).unwrap(),
                &|| {
                    let y = conv_bn(&x, &w, (stride, pad), &theirs, false).unwrap();
                    add_relu(&y, &skip).unwrap()
                },
            ];
            for forward in forwards {
                forward();
                let y = forward();
                let weights = random(y.dims(), seed + 3);
                grads.push(
                    (&y * &weights)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap(),
                );
                outs.push(y);
            }
            let cut = outs[1].eq(0f32).unwrap().to_dtype(DType::F32).unwrap();
            let cut = cut.sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(cut > 0.0, "case {i}: the ReLU cuts nothing");
            assert_close(&outs[0], &outs[1], 1e-5, &format!("case {i} values"));
            for (name, v) in [("input", &x), ("kernel", &w), ("skip", &skip)] {
                assert_close(
                    grads[0].get(v).unwrap(),
                    grads[1].get(v).unwrap(),
                    1e-4,
                    &format!("case {i} {name} gradient"),
                );
            }
            assert_same_batch_norms(&grads, &ours_map, &theirs_map, &format!("case {i}"));
        }
    }

    /// A skip of another shape than the output is refused by name.
    #[test]
    fn a_skip_of_the_wrong_shape_is_refused() {
        let x = random(&[2, 3, 6, 6], 1);
        let w = Var::from_tensor(&random(&[4, 3, 3, 3], 2)).unwrap();
        let (bn, _map) = batch_norm(4);
        let skip = random(&[2, 4, 3, 3], 3);
        let err = conv_bn_add_relu(&x, &w, (1, 1), &bn, &skip).unwrap_err();
        assert!(
            err.to_string().contains("the skip is [2, 4, 3, 3]"),
            "{err}"
        );
    }

    /// The images need no gradient: only the kernel's and the affine's are
    /// computed.
    #[test]
    fn a_constant_input_gets_no_gradient() {
        let x = random(&[2, 3, 6, 6], 1);
        let w = Var::from_tensor(&random(&[4, 3, 3, 3], 2)).unwrap();
        let (bn, map) = batch_norm(4);
        let grads = conv_bn(&x, &w, (1, 1), &bn, true)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(&x).is_none());
        assert!(grads.get(&w).is_some());
        assert!(grads.get(&map.data().lock().unwrap()["weight"]).is_some());
    }
}
