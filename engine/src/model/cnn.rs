//! A three-block CNN for tests and quick looks: conv-BN-ReLU at full, half
//! and quarter resolution, then global average pooling.

use candle_core::{ModuleT, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder, conv2d_no_bias};

use super::global_avg_pool;
use crate::ops::{self, BatchNorm};

/// Convolution without bias, then BatchNorm; both through [`ops`].
pub struct ConvBn {
    weight: Tensor,
    stride: usize,
    padding: usize,
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
            weight: conv2d_no_bias(cin, cout, k, cfg, vb.pp("conv"))?
                .weight()
                .clone(),
            stride,
            padding: cfg.padding,
            bn: BatchNorm::new(cout, 1e-5, vb.pp("bn"))?,
        })
    }
}

impl ConvBn {
    fn conv(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::conv2d(x, &self.weight, self.stride, self.padding)
    }

    /// The block followed by ReLU, fused with the BatchNorm where it can be.
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if train {
            return self.train(x, true);
        }
        self.bn.forward_relu(&self.conv(x)?, train)
    }

    /// relu(block(x) + skip), the end of a residual block: in training one
    /// op with the convolution and BatchNorm.
    pub fn forward_add_relu(
        &self,
        x: &Tensor,
        skip: &Tensor,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        if train {
            let geometry = (self.stride, self.padding);
            return ops::conv_bn_add_relu(x, &self.weight, geometry, &self.bn, skip);
        }
        ops::add_relu(&self.forward_t(x, false)?, skip)
    }

    /// In training the convolution and BatchNorm are one op.
    fn train(&self, x: &Tensor, relu: bool) -> candle_core::Result<Tensor> {
        ops::conv_bn(x, &self.weight, (self.stride, self.padding), &self.bn, relu)
    }
}

impl ModuleT for ConvBn {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if train {
            return self.train(x, false);
        }
        self.conv(x)?.apply_t(&self.bn, train)
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

impl TinyCnn {
    /// Each block's output, pooled: `block0`…`block2` (inference).
    pub fn taps(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let mut h = x.clone();
        let mut out = Vec::new();
        for b in &self.blocks {
            h = b.forward_relu(&h, false)?;
            out.push(global_avg_pool(&h)?);
        }
        Ok(out)
    }
}

impl ModuleT for TinyCnn {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for b in &self.blocks {
            h = b.forward_relu(&h, train)?;
        }
        global_avg_pool(&h)
    }
}
