//! LayerNorm through the engine's op, which has a backward: candle's
//! `LayerNorm` runs a fused kernel without one, so neither its weights nor
//! anything upstream would train.

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};

pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(LayerNorm {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
            eps: 1e-6,
        })
    }
}

impl LayerNorm {
    /// The weight, the bias and ε.
    pub fn parts(&self) -> ([&Tensor; 2], f64) {
        ([&self.weight, &self.bias], self.eps)
    }
}

impl Module for LayerNorm {
    /// In the input's dtype: in bf16 training the f32 weights are cast.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.dtype() == self.weight.dtype() {
            return crate::ops::layer_norm(x, &self.weight, &self.bias, self.eps);
        }
        let (w, b) = (
            self.weight.to_dtype(x.dtype())?,
            self.bias.to_dtype(x.dtype())?,
        );
        crate::ops::layer_norm(x, &w, &b, self.eps)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    use super::*;

    /// Values against a hand computation, and a gradient for the weights,
    /// the bias and the input.
    #[test]
    fn normalises_and_passes_gradients_everywhere() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
        let ln = LayerNorm::new(4, vb).unwrap();
        let x = Var::new(&[[1.0f64, 2.0, 3.0, 6.0]], &Device::Cpu).unwrap();
        let y = ln.forward(x.as_tensor()).unwrap();
        // mean 3, variance (4 + 1 + 0 + 9) / 4 = 3.5.
        let want: Vec<f64> = [1.0, 2.0, 3.0, 6.0]
            .iter()
            .map(|v| (v - 3.0) / (3.5f64 + 1e-6).sqrt())
            .collect();
        let got: Vec<Vec<f64>> = y.to_vec2().unwrap();
        for (g, w) in got[0].iter().zip(&want) {
            assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
        }
        let weights = Tensor::new(&[[1.0f64, -2.0, 0.5, 3.0]], &Device::Cpu).unwrap();
        let grads = (y * weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(&x).is_some(), "no gradient reaches the input");
        for var in varmap.all_vars() {
            let g: Vec<f64> = grads.get(&var).unwrap().to_vec1().unwrap();
            assert!(g.iter().any(|v| v.abs() > 1e-9), "{g:?}");
        }
    }
}
