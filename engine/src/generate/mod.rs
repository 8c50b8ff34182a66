//! Conditional generators that show what a representation holds (RCDM and
//! infusion training); see `sslab_shared::decoder`.

pub mod decode;
pub mod infusion;
pub mod rcdm;
pub mod schedule;
pub mod unet;

#[cfg(test)]
pub(crate) mod gradcheck;

use std::collections::HashMap;

use candle_core::{DType, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder, VarMap};

/// Every variable of `vars` as named tensors, under `prefix`.
pub(crate) fn vars_state(vars: &VarMap, prefix: &str) -> Vec<(String, Tensor)> {
    let data = vars.data().lock().expect("the variables' lock");
    data.iter()
        .map(|(name, var)| (format!("{prefix}{name}"), var.as_tensor().clone()))
        .collect()
}

/// Sets every variable of `vars` from what [`vars_state`] saved.
pub(crate) fn load_vars(
    vars: &VarMap,
    state: &HashMap<String, Tensor>,
    prefix: &str,
) -> crate::Result<()> {
    let data = vars.data().lock().expect("the variables' lock");
    for (name, var) in data.iter() {
        let saved = state.get(&format!("{prefix}{name}")).ok_or_else(|| {
            crate::EngineError::Data(format!("the saved state has no `{prefix}{name}`"))
        })?;
        if saved.dims() != var.dims() {
            return Err(crate::EngineError::Data(format!(
                "the saved `{prefix}{name}` has shape {:?}, the decoder's {:?}",
                saved.dims(),
                var.dims()
            )));
        }
        var.set(&saved.to_device(var.device())?)?;
    }
    Ok(())
}

/// A square convolution with bias. f32 goes through the engine's own op
/// (im2col + gemm with its own backward on the CPU, cuDNN on CUDA):
/// candle's backward for the input is a direct loop several times slower.
pub struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv {
    /// `k × k`, padded to keep the size (at stride 1); candle_nn's names
    /// and initialisation (`weight`, `bias`).
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let cfg = Conv2dConfig {
            padding: k / 2,
            stride,
            ..Default::default()
        };
        let conv = candle_nn::conv2d(cin, cout, k, cfg, vb)?;
        let bias = conv.bias().expect("conv2d has a bias").clone();
        Ok(Conv {
            weight: conv.weight().clone(),
            bias,
            stride,
            padding: k / 2,
        })
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = if x.dtype() == DType::F32 {
            crate::ops::conv2d(x, &self.weight, self.stride, self.padding)?
        } else {
            x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?
        };
        y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)
    }
}
