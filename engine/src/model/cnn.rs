//! A three-block CNN for tests and quick looks: conv-BN-ReLU at full, half
//! and quarter resolution, then global average pooling.

use candle_core::{ModuleT, Tensor};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, VarBuilder, batch_norm, conv2d_no_bias};

use super::global_avg_pool;

pub struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBn {
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
        Ok(ConvBn {
            conv: conv2d_no_bias(cin, cout, k, cfg, vb.pp("conv"))?,
            bn: batch_norm(cout, 1e-5, vb.pp("bn"))?,
        })
    }
}

impl ModuleT for ConvBn {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        x.apply(&self.conv)?.apply_t(&self.bn, train)
    }
}

pub struct TinyCnn {
    blocks: Vec<ConvBn>,
}

impl TinyCnn {
    /// `width` channels in the first block, `2·width` in the second and
    /// `out_dim` (the representation) in the last.
    pub fn new(width: usize, out_dim: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(TinyCnn {
            blocks: vec![
                ConvBn::new(3, width, 3, 1, vb.pp("block0"))?,
                ConvBn::new(width, 2 * width, 3, 2, vb.pp("block1"))?,
                ConvBn::new(2 * width, out_dim, 3, 2, vb.pp("block2"))?,
            ],
        })
    }
}

impl ModuleT for TinyCnn {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for b in &self.blocks {
            h = b.forward_t(&h, train)?.relu()?;
        }
        global_avg_pool(&h)
    }
}
