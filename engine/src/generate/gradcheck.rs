//! Gradient checks: candle's backprop gradient of a scalar function against
//! central finite differences, for the layers the RCDM UNet builds on.

use candle_core::{DType, Tensor, Var};
use candle_nn::VarMap;
use sslab_shared::rng::Rng;

/// The largest |backprop − finite difference| / (1 + |finite difference|)
/// over the entries of `x`, for the scalar-valued `f` and step `h`.
pub(crate) fn max_gradient_error(
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    x: &Tensor,
    h: f64,
) -> candle_core::Result<f64> {
    let var = Var::from_tensor(x)?;
    let grads = f(var.as_tensor())?.backward()?;
    let base: Vec<f64> = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let backprop: Vec<f64> = match grads.get(&var) {
        Some(g) => g.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?,
        None => vec![0.0; base.len()],
    };
    let eval = |values: Vec<f64>| -> candle_core::Result<f64> {
        let t = Tensor::from_vec(values, x.shape(), x.device())?.to_dtype(x.dtype())?;
        f(&t)?.to_dtype(DType::F64)?.to_scalar::<f64>()
    };
    let mut worst = 0f64;
    for i in 0..base.len() {
        let mut p = base.clone();
        p[i] += h;
        let up = eval(p.clone())?;
        p[i] -= 2.0 * h;
        let down = eval(p)?;
        let fd = (up - down) / (2.0 * h);
        worst = worst.max((backprop[i] - fd).abs() / (1.0 + fd.abs()));
    }
    Ok(worst)
}

/// A tensor of seeded standard normals in f64.
pub(crate) fn normal(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu).expect("shape matches")
}

/// Every variable redrawn as `scale`·N(0, 1) in its own dtype, so that no
/// layer starts at zero or at the identity.
pub(crate) fn randomise(varmap: &VarMap, seed: u64, scale: f64) {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (k, name) in names.into_iter().enumerate() {
        let var = &data[name];
        let t = (normal(var.dims(), seed.wrapping_add(k as u64)) * scale)
            .and_then(|t| t.to_dtype(var.dtype()))
            .expect("random values");
        var.set(&t).expect("same shape");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::unet::{AttentionBlock, ResBlock, attention};
    use candle_core::{Device, Module};
    use candle_nn::VarBuilder;

    const H: f64 = 1e-5;
    const TOL: f64 = 1e-6;

    /// A scalar that weighs every output differently (a plain sum of a
    /// normalised output would have a zero gradient).
    fn weighted_sum(y: &Tensor, seed: u64) -> candle_core::Result<Tensor> {
        (y * normal(y.dims(), seed))?.sum_all()
    }

    #[test]
    fn the_checker_catches_a_wrong_gradient() {
        let x = normal(&[5], 1);
        let right = max_gradient_error(|x| x.sqr()?.sum_all(), &x, H).unwrap();
        assert!(right < TOL, "{right}");
        // Cutting one factor from the graph halves the backprop gradient.
        let wrong = max_gradient_error(|x| (x.detach() * x)?.sum_all(), &x, H).unwrap();
        assert!(wrong > 0.1, "{wrong}");
    }

    #[test]
    fn group_norm_gradients_match_finite_differences() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
        let norm = candle_nn::group_norm(2, 4, 1e-5, vb.pp("norm")).unwrap();
        randomise(&varmap, 3, 1.0);
        let x = normal(&[2, 4, 3, 3], 4);
        let err = max_gradient_error(|x| weighted_sum(&norm.forward(x)?, 5), &x, H).unwrap();
        assert!(err < TOL, "input: {err}");
        // And through its scale, as the FiLM'd norm of a residual block uses it.
        let bias = normal(&[4], 6);
        let weight = normal(&[4], 7);
        let err = max_gradient_error(
            |w| {
                let norm = candle_nn::GroupNorm::new(w.clone(), bias.clone(), 4, 2, 1e-5)?;
                weighted_sum(&norm.forward(&x)?, 5)
            },
            &weight,
            H,
        )
        .unwrap();
        assert!(err < TOL, "weight: {err}");
    }

    #[test]
    fn attention_gradients_match_finite_differences() {
        let (q, k, v) = (
            normal(&[2, 4, 5], 1),
            normal(&[2, 4, 5], 2),
            normal(&[2, 4, 5], 3),
        );
        let checks = [
            max_gradient_error(|q| weighted_sum(&attention(q, &k, &v)?, 4), &q, H),
            max_gradient_error(|k| weighted_sum(&attention(&q, k, &v)?, 4), &k, H),
            max_gradient_error(|v| weighted_sum(&attention(&q, &k, v)?, 4), &v, H),
        ];
        for (what, err) in ["q", "k", "v"].iter().zip(checks) {
            let err = err.unwrap();
            assert!(err < TOL, "{what}: {err}");
        }
        // The whole block: norm, qkv, attention, projection, residual.
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
        let block = AttentionBlock::new(4, 2, vb).unwrap();
        randomise(&varmap, 8, 0.5);
        let x = normal(&[2, 4, 2, 3], 9);
        let err = max_gradient_error(|x| weighted_sum(&block.forward(x)?, 10), &x, H).unwrap();
        assert!(err < TOL, "block: {err}");
    }

    /// Norm, SiLU, convs, FiLM and the 1×1 skip of a residual block.
    #[test]
    fn residual_block_gradients_match_finite_differences() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
        let block = ResBlock::new(2, 4, 3, 2, vb).unwrap();
        randomise(&varmap, 11, 0.5);
        let emb = normal(&[2, 3], 12);
        let x = normal(&[2, 2, 3, 3], 13);
        let err =
            max_gradient_error(|x| weighted_sum(&block.forward(x, &emb)?, 14), &x, H).unwrap();
        assert!(err < TOL, "input: {err}");
        let err =
            max_gradient_error(|e| weighted_sum(&block.forward(&x, e)?, 14), &emb, H).unwrap();
        assert!(err < TOL, "embedding: {err}");
    }
}
