//! Convolution then training-mode BatchNorm (then ReLU, or the residual
//! add + ReLU) as one op on the CPU. The convolution's output stays inside
//! the op, and so does the BatchNorm's before a residual add: candle's
//! backward adds every node's gradient into a fresh zero-filled tensor,
//! which for such activations cost four passes over the largest tensors of
//! the step.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, ModuleT, Shape, Tensor};

use super::batch_norm::{self, BatchNorm, Dims, Stats, Tail};
use super::conv::{self, Geometry, conv2d};
use super::residual::Mask;
use super::{add_relu, f32_slice, fused, grads, output, with_values};

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
    if !takes(&[x, w], w, bn) || kh != kw || cin != wcin {
        let z = conv2d(x, w, stride, padding)?;
        return if relu {
            bn.forward_relu(&z, true)
        } else {
            bn.forward_t(&z, true)
        };
    }
    let saved = Arc::new(Mutex::new(None));
    let op = ConvBn {
        params: Params {
            stride,
            padding,
            eps: bn.eps(),
            relu,
            input_grad: x.track_op(),
        },
        affine: affine(bn),
        saved: saved.clone(),
    };
    let y = x.contiguous()?.apply_op2(w, op)?;
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
    if !takes(&[x, w, skip], w, bn) || kh != kw || cin != wcin {
        return add_relu(&conv_bn(x, w, (stride, padding), bn, false)?, skip);
    }
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
        affine: affine(bn),
        saved: saved.clone(),
    };
    let y = x.contiguous()?.apply_op3(w, &skip.contiguous()?, op)?;
    update_running(bn, &saved, &y)
}

/// Whether the CPU ops take these tensors (the op's inputs, the kernel among
/// them): f32 on the CPU, the kernel, γ and β contiguous, and their
/// gradients such as can be handed over ([`grads::can_hand_over`]).
fn takes(inputs: &[&Tensor], w: &Tensor, bn: &BatchNorm) -> bool {
    let (gamma, beta) = bn.affine();
    let handed = [w, gamma, beta];
    fused(inputs)
        && fused(&[gamma, beta])
        && handed.iter().all(|t| t.is_contiguous())
        && grads::can_hand_over(inputs, &handed)
}

/// γ and β of `bn`.
fn affine(bn: &BatchNorm) -> [Tensor; 2] {
    let (gamma, beta) = bn.affine();
    [gamma.clone(), beta.clone()]
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

/// [`conv_bn`]'s op on x and the kernel, with γ and β.
struct ConvBn {
    params: Params,
    affine: [Tensor; 2],
    saved: Arc<Mutex<Option<Saved>>>,
}

impl CustomOp2 for ConvBn {
    fn name(&self) -> &'static str {
        "sslab-conv-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.params.geometry(l1, l2)?;
        let (x, w) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let tail = if self.params.relu {
            Tail::Relu
        } else {
            Tail::None
        };
        run(&g, x, w, &self.affine, tail, self.params.eps, &self.saved)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = backward(&self.params, &self.saved, x, w, &self.affine, grad)?;
        Ok((dx, None))
    }
}

/// The convolution, then the BatchNorm with `affine`'s γ and β and `tail`;
/// keeps what the backward needs in `saved`.
fn run(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    affine: &[Tensor; 2],
    tail: Tail,
    eps: f64,
    saved: &Mutex<Option<Saved>>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let [gamma, beta] = affine;
    if gamma.elem_count() != g.cout || beta.elem_count() != g.cout {
        candle_core::bail!(
            "conv + batch norm: γ and β of {} and {} values for {} channels",
            gamma.elem_count(),
            beta.elem_count(),
            g.cout
        );
    }
    let z = conv::forward(g, x, w);
    let (y, stats) = with_values(&[gamma, beta], |a| {
        Ok(batch_norm::forward(dims(g), &z, [a[0], a[1]], tail, eps))
    })?;
    *saved.lock().expect("saved lock") = Some(Saved {
        z: Arc::new(z),
        stats,
    });
    Ok((CpuStorage::F32(y), Shape::from((g.n, g.cout, g.ho, g.wo))))
}

/// [`conv_bn_add_relu`]'s op on x, the kernel and the skip, with γ and β.
struct ConvBnAdd {
    params: Params,
    affine: [Tensor; 2],
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
        let g = self.params.geometry(l1, l2)?;
        if l3.dims() != [g.n, g.cout, g.ho, g.wo] {
            candle_core::bail!(
                "conv + batch norm + skip: the skip is {:?}, the output {:?}",
                l3.dims(),
                [g.n, g.cout, g.ho, g.wo]
            );
        }
        let (x, w, skip) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let tail = Tail::AddRelu(skip);
        run(&g, x, w, &self.affine, tail, self.params.eps, &self.saved)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _skip: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The gradient past the ReLU: the skip's, and the BatchNorm's output's.
        let g = grad.contiguous()?.apply_op2_no_bwd(res, &Mask)?;
        let dx = backward(&self.params, &self.saved, x, w, &self.affine, &g)?;
        Ok((dx, None, Some(g)))
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

/// The gradients of conv + BatchNorm from the gradient `dy` at the
/// BatchNorm's output (past any skip's ReLU): x's, when anything upstream
/// wants it, is returned; the kernel's, γ's and β's are handed over to the
/// engine's backward (as inputs of the op, each would get a zero-filled
/// gradient and an add).
fn backward(
    p: &Params,
    saved: &Mutex<Option<Saved>>,
    x: &Tensor,
    w: &Tensor,
    affine: &[Tensor; 2],
    dy: &Tensor,
) -> candle_core::Result<Option<Tensor>> {
    let Some(saved) = saved.lock().expect("saved lock").clone() else {
        candle_core::bail!("conv + batch norm: backward before forward");
    };
    let g = p.geometry(x.layout(), w.layout())?;
    let dy = dy.contiguous()?;
    let [gamma, beta] = affine;
    let (dx, dw, d_gamma, d_beta) = with_values(&[x, w, &dy, gamma], |t| {
        let (x, w, dy, gamma) = (t[0], t[1], t[2], t[3]);
        let z = saved.z.as_slice();
        if dy.len() != z.len() || z.len() != g.n * g.out_len() {
            candle_core::bail!("conv + batch norm backward: shapes do not match the forward's");
        }
        // SAFETY: the kernels below write every element before any is read.
        let (mut dz, mut dx, mut dw, mut d_gamma, mut d_beta) = unsafe {
            (
                output(z.len()),
                output(if p.input_grad { x.len() } else { 0 }),
                output(w.len()),
                output(g.cout),
                output(g.cout),
            )
        };
        batch_norm::backward(
            dims(&g),
            &saved.stats,
            gamma,
            [z, dy],
            p.relu,
            [&mut dz, &mut d_gamma, &mut d_beta],
        );
        conv::backward(&g, x, w, &dz, (&mut dx, p.input_grad), &mut dw);
        Ok((dx, dw, d_gamma, d_beta))
    })?;
    for (t, grad) in [(w, dw), (gamma, d_gamma), (beta, d_beta)] {
        if t.track_op() {
            grads::hand_over(t, Tensor::from_vec(grad, t.shape(), t.device())?)?;
        }
    }
    if !p.input_grad {
        return Ok(None);
    }
    Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
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
                let loss = (&y * &weights).unwrap().sum_all().unwrap();
                grads.push(crate::ops::backward(&loss).unwrap());
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
                let loss = (&y * &weights).unwrap().sum_all().unwrap();
                grads.push(crate::ops::backward(&loss).unwrap());
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

    /// A kernel computed from a variable, and a constant kernel under a
    /// constant input with a trained γ and β: the gradients reach the
    /// variables as with the two ops one after the other.
    #[test]
    fn weights_that_cannot_take_a_handed_gradient_still_train() {
        let x = random(&[2, 3, 6, 6], 1);
        let v = Var::from_tensor(&random(&[4, 3, 3, 3], 2)).unwrap();
        let computed = (v.as_tensor() * 0.5).unwrap();
        let (bn, map) = batch_norm(4);
        let y = conv_bn(&x, &computed, (1, 1), &bn, true).unwrap();
        let grads = crate::ops::backward(&y.sum_all().unwrap()).unwrap();
        assert!(grads.get(&v).is_some(), "the kernel's variable");
        let (bn, map2) = batch_norm(4);
        let y = conv_bn(&x, &random(&[4, 3, 3, 3], 3), (1, 1), &bn, false).unwrap();
        let weights = random(y.dims(), 4);
        let grads = crate::ops::backward(&(&y * &weights).unwrap().sum_all().unwrap()).unwrap();
        assert!(
            grads.get(&map2.data().lock().unwrap()["weight"]).is_some(),
            "γ"
        );
        assert!(
            grads.get(&map2.data().lock().unwrap()["bias"]).is_some(),
            "β"
        );
        drop(map);
    }

    /// The images need no gradient: only the kernel's and the affine's are
    /// computed.
    #[test]
    fn a_constant_input_gets_no_gradient() {
        let x = random(&[2, 3, 6, 6], 1);
        let w = Var::from_tensor(&random(&[4, 3, 3, 3], 2)).unwrap();
        let (bn, map) = batch_norm(4);
        let y = conv_bn(&x, &w, (1, 1), &bn, true).unwrap();
        let grads = crate::ops::backward(&y.sum_all().unwrap()).unwrap();
        assert!(grads.get(&x).is_none());
        assert!(grads.get(&w).is_some());
        assert!(grads.get(&map.data().lock().unwrap()["weight"]).is_some());
    }
}
