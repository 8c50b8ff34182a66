//! How closely a device's convolution (cuDNN on a GPU) agrees with the CPU
//! op, output and both gradients: run by the train-step bench on a GPU
//! before it times anything, since CI has no GPU to test that side.

use candle_core::{DType, Device, Tensor, Var};

/// The largest difference, relative to the reference's largest value,
/// between [`super::conv2d`] on `device` in `dtype` and the f32 CPU op on
/// the same (rounded) values, over three geometries, the output and the
/// input's and kernel's gradients of Σ y·r.
pub fn conv_agreement(device: &Device, dtype: DType) -> candle_core::Result<f32> {
    let cpu = Device::Cpu;
    let mut worst = 0f32;
    for (seed, (k, stride, pad)) in [(3, 1, 1), (3, 2, 1), (1, 2, 0)].into_iter().enumerate() {
        let seed = seed as u64;
        let x = super::random_normal(&[4, 8, 12, 12], seed)?;
        let w = super::random_normal(&[16, 8, k, k], seed + 10)?;
        let side = (12 + 2 * pad - k) / stride + 1;
        let r = super::random_normal(&[4, 16, side, side], seed + 20)?;
        // The values the device computes on.
        let rounded = |t: &Tensor| t.to_dtype(dtype)?.to_dtype(DType::F32);
        let (xc, wc) = (
            Var::from_tensor(&rounded(&x)?)?,
            Var::from_tensor(&rounded(&w)?)?,
        );
        let yc = super::conv2d(&xc, &wc, stride, pad)?;
        let gc = (&yc * &r)?.sum_all()?.backward()?;
        let xd = Var::from_tensor(&x.to_device(device)?.to_dtype(dtype)?)?;
        let wd = Var::from_tensor(&w.to_device(device)?)?;
        let yd = super::conv2d(&xd, &wd, stride, pad)?.to_dtype(DType::F32)?;
        let gd = (&yd * r.to_device(device)?)?.sum_all()?.backward()?;
        let back = |t: Option<&Tensor>| -> candle_core::Result<Tensor> {
            match t {
                Some(t) => t.to_dtype(DType::F32)?.to_device(&cpu),
                None => candle_core::bail!("a gradient is missing"),
            }
        };
        for (reference, got) in [
            (yc.clone(), yd.to_device(&cpu)?),
            (back(gc.get(&xc))?, back(gd.get(&xd))?),
            (back(gc.get(&wc))?, back(gd.get(&wd))?),
        ] {
            let scale = reference.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-12);
            let diff = (reference - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
            worst = worst.max(diff / scale);
        }
    }
    Ok(worst)
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
}
