//! How closely a device's ops (cuDNN's convolution and the CUDA kernels on
//! a GPU) agree with the CPU ops, outputs and gradients: run by the
//! train-step bench on a GPU before it times anything, since CI has no GPU
//! to test that side.

use candle_core::backprop::GradStore;
use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{ModuleT, VarBuilder, VarMap};

use super::{
    AdamwStep, BatchNorm, add_relu, attention, conv_bn, conv_bn_add_relu, gelu, layer_norm,
    random_normal,
};

/// The largest difference, relative to the reference's largest value,
/// between [`super::conv2d`] on `device` in `dtype` and the f32 CPU op on
/// the same (rounded) values, over three geometries, the output and the
/// input's and kernel's gradients of Σ y·r.
pub fn conv_agreement(device: &Device, dtype: DType) -> candle_core::Result<f32> {
    let mut worst = 0f32;
    for (seed, (k, stride, pad)) in [(3, 1, 1), (3, 2, 1), (1, 2, 0)].into_iter().enumerate() {
        let seed = seed as u64;
        let x = random_normal(&[4, 8, 12, 12], seed)?;
        let w = random_normal(&[16, 8, k, k], seed + 10)?;
        let side = (12 + 2 * pad - k) / stride + 1;
        let r = random_normal(&[4, 16, side, side], seed + 20)?;
        // The values the device computes on.
        let (xc, wc) = (
            Var::from_tensor(&rounded(&x, dtype)?)?,
            Var::from_tensor(&rounded(&w, dtype)?)?,
        );
        let yc = super::conv2d(&xc, &wc, stride, pad)?;
        let gc = super::backward(&(&yc * &r)?.sum_all()?)?;
        let xd = Var::from_tensor(&x.to_device(device)?.to_dtype(dtype)?)?;
        let wd = Var::from_tensor(&w.to_device(device)?)?;
        let yd = super::conv2d(&xd, &wd, stride, pad)?.to_dtype(DType::F32)?;
        let gd = super::backward(&(&yd * r.to_device(device)?)?.sum_all()?)?;
        for (reference, got) in [
            (yc.clone(), yd),
            (gradient(&gc, &xc)?, gradient(&gd, &xd)?),
            (gradient(&gc, &wc)?, gradient(&gd, &wd)?),
        ] {
            worst = worst.max(relative_error(&reference, &got)?);
        }
    }
    Ok(worst)
}

/// The largest difference between `got` and `reference`, relative to the
/// reference's largest value.
fn relative_error(reference: &Tensor, got: &Tensor) -> candle_core::Result<f32> {
    let got = got.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let reference = reference.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let scale = reference.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-12);
    let diff = (reference - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
    Ok(diff / scale)
}

/// The gradient of `t` in `grads`, or an error naming it missing.
fn gradient(grads: &GradStore, t: &Tensor) -> candle_core::Result<Tensor> {
    grads
        .get(t)
        .cloned()
        .ok_or_else(|| candle_core::Error::Msg("a gradient is missing".into()))
}

/// The values `x` takes in `dtype`, as f32.
fn rounded(x: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
    x.to_dtype(dtype)?.to_dtype(DType::F32)
}

/// How closely training-mode BatchNorm (with and without ReLU), the
/// residual add + ReLU, AdamW's update, the convolution with its
/// BatchNorm (and ReLU, or the residual add + ReLU), and a ViT's
/// LayerNorm, attention and GELU on `device` agree with
/// the f32 CPU ops on the same (rounded) values: per op, the largest
/// relative difference over its outputs, gradients and, with a BatchNorm,
/// the running statistics. AdamW runs in f32 whatever `dtype` (the
/// weights' master copies are f32).
pub fn gpu_agreement(
    device: &Device,
    dtype: DType,
) -> candle_core::Result<Vec<(&'static str, f32)>> {
    let mut worst = vec![
        ("batch_norm", 0f32),
        ("batch_norm_relu", 0f32),
        ("add_relu", 0f32),
        ("adamw", 0f32),
        ("conv_bn", 0f32),
        ("conv_bn_relu", 0f32),
        ("conv_bn_add_relu", 0f32),
        ("layer_norm", 0f32),
        ("attention", 0f32),
        ("gelu", 0f32),
    ];
    // Several blocks per channel; a spatial size that is not a multiple of
    // four; a projector's (N, C).
    let shapes: [&[usize]; 3] = [&[64, 4, 16, 16], &[6, 8, 5, 5], &[16, 32]];
    for (seed, dims) in shapes.into_iter().enumerate() {
        let seed = 100 * seed as u64;
        let x = rounded(&random_normal(dims, seed)?.affine(1.5, 0.3)?, dtype)?;
        let r = random_normal(dims, seed + 1)?;
        for (slot, relu) in [(0, false), (1, true)] {
            let want = batch_norm_step(&x, &r, relu, &Device::Cpu, DType::F32)?;
            let got = batch_norm_step(&x, &r, relu, device, dtype)?;
            for (w, g) in want.iter().zip(&got) {
                worst[slot].1 = worst[slot].1.max(relative_error(w, g)?);
            }
        }
        let b = rounded(&random_normal(dims, seed + 2)?, dtype)?;
        let want = add_relu_step(&x, &b, &r, &Device::Cpu, DType::F32)?;
        let got = add_relu_step(&x, &b, &r, device, dtype)?;
        for (w, g) in want.iter().zip(&got) {
            worst[2].1 = worst[2].1.max(relative_error(w, g)?);
        }
        let want = adamw_steps(&x, &r, &Device::Cpu)?;
        let got = adamw_steps(&x, &r, device)?;
        for (w, g) in want.iter().zip(&got) {
            worst[3].1 = worst[3].1.max(relative_error(w, g)?);
        }
    }
    let x = rounded(&random_normal(&[8, 8, 10, 10], 1)?, dtype)?;
    // A 1×1 strided shortcut on images (no input gradient); 3×3 with ReLU;
    // 3×3 strided with a skip.
    let cases = [
        (
            4,
            ConvCase {
                k: 1,
                stride: 2,
                pad: 0,
                relu: false,
                skip: false,
                x_grad: false,
            },
        ),
        (
            5,
            ConvCase {
                k: 3,
                stride: 1,
                pad: 1,
                relu: true,
                skip: false,
                x_grad: true,
            },
        ),
        (
            6,
            ConvCase {
                k: 3,
                stride: 2,
                pad: 1,
                relu: true,
                skip: true,
                x_grad: true,
            },
        ),
    ];
    for (slot, case) in cases {
        let k = case.k;
        let w = rounded(&random_normal(&[16, 8, k, k], 2)?.affine(0.2, 0.0)?, dtype)?;
        let side = (10 + 2 * case.pad - k) / case.stride + 1;
        let r = random_normal(&[8, 16, side, side], 3)?;
        let skip = rounded(&random_normal(&[8, 16, side, side], 4)?, dtype)?;
        let inputs = [&x, &w, &skip];
        let want = conv_bn_step(inputs, case, &r, &Device::Cpu, DType::F32)?;
        let got = conv_bn_step(inputs, case, &r, device, dtype)?;
        for (reference, value) in want.iter().zip(&got) {
            worst[slot].1 = worst[slot].1.max(relative_error(reference, value)?);
        }
    }
    // Tokens far from zero mean and unit spread; 17 of them, which fill no
    // vector evenly.
    for (slot, op) in [
        (7, VitOp::LayerNorm),
        (8, VitOp::Attention),
        (9, VitOp::Gelu),
    ] {
        let width = if op == VitOp::Attention { 144 } else { 48 };
        let x = rounded(&random_normal(&[4, 17, width], 5)?.affine(1.5, 0.5)?, dtype)?;
        let r = random_normal(&[4, 17, 48], 6)?;
        let want = vit_op_step(op, &x, &r, &Device::Cpu, DType::F32)?;
        let got = vit_op_step(op, &x, &r, device, dtype)?;
        for (reference, value) in want.iter().zip(&got) {
            worst[slot].1 = worst[slot].1.max(relative_error(reference, value)?);
        }
    }
    Ok(worst)
}

#[derive(Clone, Copy, PartialEq)]
enum VitOp {
    LayerNorm,
    /// Three heads over (4, 17, 3·48) qkv.
    Attention,
    Gelu,
}

/// One of a ViT's ops on x on `device` in `dtype`: the output and the
/// gradients of x (and of LayerNorm's weight and bias) of Σ y·r.
fn vit_op_step(
    op: VitOp,
    x: &Tensor,
    r: &Tensor,
    device: &Device,
    dtype: DType,
) -> candle_core::Result<Vec<Tensor>> {
    let on = |t: &Tensor| Var::from_tensor(&t.to_device(device)?.to_dtype(dtype)?);
    let xv = on(x)?;
    let (w, b) = (
        on(&random_normal(&[48], 7)?.affine(0.5, 1.0)?)?,
        on(&random_normal(&[48], 8)?)?,
    );
    let y = match op {
        VitOp::LayerNorm => layer_norm(&xv, &w, &b, 1e-6)?,
        VitOp::Attention => attention(&xv, 3)?,
        VitOp::Gelu => gelu(&xv)?,
    }
    .to_dtype(DType::F32)?;
    let grads = super::backward(&(&y * r.to_device(device)?)?.sum_all()?)?;
    let mut out = vec![y.clone(), gradient(&grads, &xv)?];
    if op == VitOp::LayerNorm {
        out.push(gradient(&grads, &w)?);
        out.push(gradient(&grads, &b)?);
    }
    Ok(out)
}

/// A BatchNorm over `c` channels on `device` with γ and β away from 1
/// and 0, and the map holding its weights.
fn batch_norm_on(c: usize, device: &Device) -> candle_core::Result<(BatchNorm, VarMap)> {
    let map = VarMap::new();
    let bn = BatchNorm::new(c, 1e-5, VarBuilder::from_varmap(&map, DType::F32, device))?;
    {
        let data = map.data().lock().expect("varmap lock");
        data["weight"].set(
            &random_normal(&[c], 7)?
                .affine(0.5, 1.0)?
                .to_device(device)?,
        )?;
        data["bias"].set(&random_normal(&[c], 8)?.to_device(device)?)?;
    }
    Ok((bn, map))
}

/// The gradients of γ and β in `grads`, and the running mean and variance.
fn batch_norm_state(grads: &GradStore, map: &VarMap) -> candle_core::Result<Vec<Tensor>> {
    let data = map.data().lock().expect("varmap lock");
    Ok(vec![
        gradient(grads, &data["weight"])?,
        gradient(grads, &data["bias"])?,
        data["running_mean"].as_tensor().clone(),
        data["running_var"].as_tensor().clone(),
    ])
}

/// One convolution with its BatchNorm in [`gpu_agreement`].
#[derive(Clone, Copy)]
struct ConvCase {
    k: usize,
    stride: usize,
    pad: usize,
    relu: bool,
    /// relu(· + skip) after the BatchNorm (`relu` is then implied).
    skip: bool,
    /// Whether x wants a gradient (not for images).
    x_grad: bool,
}

/// The convolution of x with w, then a training-mode BatchNorm and the
/// case's tail, on `device` in `dtype` (the kernel kept in f32, as the
/// weights are): the output, the gradients of the kernel, x and the skip
/// (where the case has them) of Σ y·r, then [`batch_norm_state`].
fn conv_bn_step(
    [x, w, skip]: [&Tensor; 3],
    case: ConvCase,
    r: &Tensor,
    device: &Device,
    dtype: DType,
) -> candle_core::Result<Vec<Tensor>> {
    let (bn, map) = batch_norm_on(w.dim(0)?, device)?;
    let x = x.to_device(device)?.to_dtype(dtype)?;
    let xv = Var::from_tensor(&x)?;
    let x = if case.x_grad { xv.as_tensor() } else { &x };
    let wv = Var::from_tensor(&w.to_device(device)?)?;
    let sv = Var::from_tensor(&skip.to_device(device)?.to_dtype(dtype)?)?;
    let geometry = (case.stride, case.pad);
    let y = if case.skip {
        conv_bn_add_relu(x, &wv, geometry, &bn, &sv)?
    } else {
        conv_bn(x, &wv, geometry, &bn, case.relu)?
    };
    let y = y.to_dtype(DType::F32)?;
    let grads = super::backward(&(&y * r.to_device(device)?)?.sum_all()?)?;
    let mut out = vec![y.clone(), gradient(&grads, &wv)?];
    if case.x_grad {
        out.push(gradient(&grads, &xv)?);
    }
    if case.skip {
        out.push(gradient(&grads, &sv)?);
    }
    out.extend(batch_norm_state(&grads, &map)?);
    Ok(out)
}

/// One training-mode BatchNorm (γ, β away from 1, 0) of x on `device` in
/// `dtype`: the output, the gradients of x, γ and β of Σ y·r, and the
/// running mean and variance after the step.
fn batch_norm_step(
    x: &Tensor,
    r: &Tensor,
    relu: bool,
    device: &Device,
    dtype: DType,
) -> candle_core::Result<Vec<Tensor>> {
    let (bn, map) = batch_norm_on(x.dim(1)?, device)?;
    let xv = Var::from_tensor(&x.to_device(device)?.to_dtype(dtype)?)?;
    let y = if relu {
        bn.forward_relu(&xv, true)?
    } else {
        bn.forward_t(&xv, true)?
    };
    let y = y.to_dtype(DType::F32)?;
    let grads = super::backward(&(&y * r.to_device(device)?)?.sum_all()?)?;
    let mut out = vec![y.clone(), gradient(&grads, &xv)?];
    out.extend(batch_norm_state(&grads, &map)?);
    Ok(out)
}

/// relu(a + b) on `device` in `dtype`, and the gradients of a and b of
/// Σ y·r (the sum over the last dimension first, so that the gradient is
/// not r itself).
fn add_relu_step(
    a: &Tensor,
    b: &Tensor,
    r: &Tensor,
    device: &Device,
    dtype: DType,
) -> candle_core::Result<Vec<Tensor>> {
    let av = Var::from_tensor(&a.to_device(device)?.to_dtype(dtype)?)?;
    let bv = Var::from_tensor(&b.to_device(device)?.to_dtype(dtype)?)?;
    let y = add_relu(&av, &bv)?.to_dtype(DType::F32)?;
    let grads = (&y * r.to_device(device)?)?
        .sum(D::Minus1)?
        .sqr()?
        .sum_all()?
        .backward()?;
    Ok(vec![
        y.clone(),
        gradient(&grads, &av)?,
        gradient(&grads, &bv)?,
    ])
}

/// Two AdamW steps on w = x with gradients r and r/2 on `device`: the
/// weights and both moments after.
fn adamw_steps(x: &Tensor, r: &Tensor, device: &Device) -> candle_core::Result<Vec<Tensor>> {
    // Copies: the update is in place, and on the CPU `to_device` would
    // share x's storage.
    let on = |t: &Tensor| t.to_dtype(DType::F32)?.to_device(device)?.copy();
    let (w, m, v) = (on(x)?, on(&x.zeros_like()?)?, on(&x.zeros_like()?)?);
    for t in 1..=2 {
        let g = on(&(r / t as f64)?)?;
        let step = AdamwStep {
            lr: 1e-2,
            decay: 0.05,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            correction1: 1.0 - 0.9f64.powi(t),
            correction2: 1.0 - 0.999f64.powi(t),
        };
        if !step.apply(&w, &g, &m, &v)? {
            candle_core::bail!("AdamW has no fused update on {device:?}");
        }
    }
    Ok(vec![w, m, v])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the CPU the check compares the op with itself (f32) and with its
    /// bf16 emulation, whose output rounds to bf16 (8 bits of mantissa).
    #[test]
    fn the_cpu_agrees_with_itself_and_bf16_within_its_rounding() {
        assert_eq!(conv_agreement(&Device::Cpu, DType::F32).unwrap(), 0.0);
        let bf16 = conv_agreement(&Device::Cpu, DType::BF16).unwrap();
        assert!(bf16 > 0.0 && bf16 < 1e-2, "{bf16}");
    }

    /// On the CPU the kernels' check compares each op with itself: exactly
    /// equal, every op present.
    #[test]
    fn the_gpu_check_runs_every_op_and_finds_the_cpu_equal_to_itself() {
        let errors = gpu_agreement(&Device::Cpu, DType::F32).unwrap();
        let names: Vec<_> = errors.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "batch_norm",
                "batch_norm_relu",
                "add_relu",
                "adamw",
                "conv_bn",
                "conv_bn_relu",
                "conv_bn_add_relu",
                "layer_norm",
                "attention",
                "gelu"
            ]
        );
        for (name, err) in errors {
            assert_eq!(err, 0.0, "{name}");
        }
    }
}
