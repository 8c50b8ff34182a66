//! A linear layer through the engine's own op (`ops::linear`), run in its
//! input's dtype: in bf16 training the f32 weights are cast on the way in,
//! and their gradients flow back through the cast.

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::ops;

pub struct Dense(Linear);

/// A linear layer from `i` to `o` features with a bias, initialised as
/// candle's `linear`.
pub fn dense(i: usize, o: usize, vb: VarBuilder) -> candle_core::Result<Dense> {
    Ok(Dense(candle_nn::linear(i, o, vb)?))
}

impl Dense {
    /// The weight and the bias.
    pub fn parts(&self) -> Option<[&Tensor; 2]> {
        Some([self.0.weight(), self.0.bias()?])
    }

    /// GELU of the layer's output, as one op where the layer's own op runs.
    pub fn forward_gelu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.0.bias() {
            Some(b) if x.dtype() == self.0.weight().dtype() => {
                ops::linear_gelu(x, self.0.weight(), b)
            }
            _ => ops::gelu(&self.forward(x)?),
        }
    }
}

impl Module for Dense {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let w = self.0.weight();
        if x.dtype() == w.dtype() {
            return ops::linear(x, w, self.0.bias());
        }
        let bias = self.0.bias().map(|b| b.to_dtype(x.dtype())).transpose()?;
        Linear::new(w.to_dtype(x.dtype())?, bias).forward(x)
    }
}
