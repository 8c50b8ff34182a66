//! ResNet (He et al. 2016, arXiv:1512.03385) with the CIFAR stem (3×3 conv,
//! no max-pool) and the width of the last block as a parameter
//! (arXiv:2304.05369). Written with `forward_t` so BatchNorm trains.

use candle_core::{ModuleT, Tensor};
use candle_nn::VarBuilder;

use super::cnn::ConvBn;
use super::global_avg_pool;

struct BasicBlock {
    conv1: ConvBn,
    conv2: ConvBn,
    shortcut: Option<ConvBn>,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let shortcut = if stride != 1 || cin != cout {
            Some(ConvBn::new(cin, cout, 1, stride, vb.pp("shortcut"))?)
        } else {
            None
        };
        Ok(BasicBlock {
            conv1: ConvBn::new(cin, cout, 3, stride, vb.pp("conv1"))?,
            conv2: ConvBn::new(cout, cout, 3, 1, vb.pp("conv2"))?,
            shortcut,
        })
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let h = self.conv1.forward_t(x, train)?.relu()?;
        let h = self.conv2.forward_t(&h, train)?;
        let skip = match &self.shortcut {
            Some(s) => s.forward_t(x, train)?,
            None => x.clone(),
        };
        (h + skip)?.relu()
    }
}

pub struct ResNet {
    stem: ConvBn,
    blocks: Vec<BasicBlock>,
}

impl ResNet {
    /// ResNet-18: stages of 2 blocks at widths w, 2w, 4w, 8w; the very last
    /// block is `last_width` wide.
    pub fn resnet18(width: usize, last_width: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let stem = ConvBn::new(3, width, 3, 1, vb.pp("stem"))?;
        let mut blocks = Vec::new();
        let mut cin = width;
        let stages = [width, 2 * width, 4 * width, 8 * width];
        for (s, &w) in stages.iter().enumerate() {
            for b in 0..2 {
                let last = s == 3 && b == 1;
                let cout = if last { last_width } else { w };
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(
                    cin,
                    cout,
                    stride,
                    vb.pp(format!("layer{}.{b}", s + 1)),
                )?);
                cin = cout;
            }
        }
        Ok(ResNet { stem, blocks })
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut h = self.stem.forward_t(x, train)?.relu()?;
        for b in &self.blocks {
            h = b.forward_t(&h, train)?;
        }
        global_avg_pool(&h)
    }
}
