//! ResNet-18 and -50 (He et al. 2016, arXiv:1512.03385) with the CIFAR stem
//! (3×3 conv, no max-pool) or the ImageNet stem (7×7/2 conv, 3×3/2 max-pool),
//! and the width of the last block as a parameter (arXiv:2304.05369).
//! Written with `forward_t` so BatchNorm trains.

use candle_core::{ModuleT, Tensor};
use candle_nn::VarBuilder;

use super::cnn::ConvBn;
use super::global_avg_pool;

struct BasicBlock {
    conv1: ConvBn,
    conv2: ConvBn,
    shortcut: Option<ConvBn>,
}

/// ResNet-50's block: 1×1 down to `mid`, 3×3 (with the stride), 1×1 up to `cout`.
struct Bottleneck {
    reduce: ConvBn,
    conv: ConvBn,
    expand: ConvBn,
    shortcut: Option<ConvBn>,
}

impl Bottleneck {
    fn new(
        cin: usize,
        mid: usize,
        cout: usize,
        stride: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let shortcut = if stride != 1 || cin != cout {
            Some(ConvBn::new(cin, cout, 1, stride, vb.pp("shortcut"))?)
        } else {
            None
        };
        Ok(Bottleneck {
            reduce: ConvBn::new(cin, mid, 1, 1, vb.pp("conv1"))?,
            conv: ConvBn::new(mid, mid, 3, stride, vb.pp("conv2"))?,
            expand: ConvBn::new(mid, cout, 1, 1, vb.pp("conv3"))?,
            shortcut,
        })
    }
}

impl ModuleT for Bottleneck {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let h = self.reduce.forward_relu(x, train)?;
        let h = self.conv.forward_relu(&h, train)?;
        let skip = match &self.shortcut {
            Some(s) => s.forward_t(x, train)?,
            None => x.clone(),
        };
        self.expand.forward_add_relu(&h, &skip, train)
    }
}

/// 3×3 max-pool with stride 2 and padding 1, from slices and `maximum` so
/// that it has a backward (candle's pool has none with padding). Edges are
/// padded by repetition, which leaves every window's maximum unchanged.
pub fn max_pool_3x3_s2(x: &Tensor) -> candle_core::Result<Tensor> {
    let pool = |x: &Tensor, dim: usize| -> candle_core::Result<Tensor> {
        let len = x.dim(dim)?;
        let out = (len - 1) / 2 + 1;
        let padded = x.pad_with_same(dim, 1, 2 * out + 1 - len)?;
        // Pairs (2j, 2j + 1) along `dim`: windows are 2j, 2j + 1 and 2(j + 1).
        let mut shape = padded.dims().to_vec();
        shape[dim] = out + 1;
        shape.insert(dim + 1, 2);
        let pairs = padded.reshape(shape)?;
        let even = pairs.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)?;
        let odd = pairs.narrow(dim + 1, 1, 1)?.squeeze(dim + 1)?;
        even.narrow(dim, 0, out)?
            .maximum(&odd.narrow(dim, 0, out)?)?
            .maximum(&even.narrow(dim, 1, out)?)
    };
    pool(&pool(x, 2)?, 3)
}

enum Block {
    Basic(BasicBlock),
    Bottleneck(Bottleneck),
}

impl ModuleT for Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        match self {
            Block::Basic(b) => b.forward_t(x, train),
            Block::Bottleneck(b) => b.forward_t(x, train),
        }
    }
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
        let h = self.conv1.forward_relu(x, train)?;
        let skip = match &self.shortcut {
            Some(s) => s.forward_t(x, train)?,
            None => x.clone(),
        };
        self.conv2.forward_add_relu(&h, &skip, train)
    }
}

pub struct ResNet {
    stem: ConvBn,
    /// The ImageNet stem: a 7×7/2 conv followed by a 3×3/2 max-pool.
    imagenet_stem: bool,
    blocks: Vec<Block>,
    /// Blocks per stage.
    depths: [usize; 4],
}

impl ResNet {
    /// ResNet-18: stages of 2 basic blocks at widths w, 2w, 4w, 8w; the very
    /// last block is `last_width` wide.
    pub fn resnet18(
        width: usize,
        last_width: usize,
        imagenet_stem: bool,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        Self::build(width, last_width, imagenet_stem, false, [2, 2, 2, 2], vb)
    }

    /// ResNet-50: stages of 3, 4, 6, 3 bottleneck blocks, inner widths w … 8w
    /// expanded 4×; the very last block is `last_width` wide (2048 by default).
    pub fn resnet50(
        width: usize,
        last_width: usize,
        imagenet_stem: bool,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        Self::build(width, last_width, imagenet_stem, true, [3, 4, 6, 3], vb)
    }

    fn build(
        width: usize,
        last_width: usize,
        imagenet_stem: bool,
        bottleneck: bool,
        depths: [usize; 4],
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let (k, stride) = if imagenet_stem { (7, 2) } else { (3, 1) };
        let stem = ConvBn::new(3, width, k, stride, vb.pp("stem"))?;
        let mut blocks = Vec::new();
        let mut cin = width;
        for (s, &depth) in depths.iter().enumerate() {
            let mid = width << s;
            for b in 0..depth {
                let last = s == 3 && b + 1 == depth;
                let natural = if bottleneck { 4 * mid } else { mid };
                let cout = if last { last_width } else { natural };
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let vb = vb.pp(format!("layer{}.{b}", s + 1));
                blocks.push(if bottleneck {
                    Block::Bottleneck(Bottleneck::new(cin, mid, cout, stride, vb)?)
                } else {
                    Block::Basic(BasicBlock::new(cin, cout, stride, vb)?)
                });
                cin = cout;
            }
        }
        Ok(ResNet {
            stem,
            imagenet_stem,
            blocks,
            depths,
        })
    }
}

impl ResNet {
    /// The stem's and each stage's output, pooled: `stem`, `layer1`…`layer4`
    /// (inference).
    pub fn taps(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let mut h = self.stem.forward_relu(x, false)?;
        if self.imagenet_stem {
            h = max_pool_3x3_s2(&h)?;
        }
        let mut out = vec![global_avg_pool(&h)?];
        let mut blocks = self.blocks.iter();
        for &depth in &self.depths {
            for b in blocks.by_ref().take(depth) {
                h = b.forward_t(&h, false)?;
            }
            out.push(global_avg_pool(&h)?);
        }
        Ok(out)
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut h = self.stem.forward_relu(x, train)?;
        if self.imagenet_stem {
            h = max_pool_3x3_s2(&h)?;
        }
        for b in &self.blocks {
            h = b.forward_t(&h, train)?;
        }
        global_avg_pool(&h)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    use super::*;

    #[test]
    fn max_pool_matches_a_loop_and_has_a_gradient() {
        for side in [5usize, 6] {
            let v: Vec<f32> = (0..2 * side * side)
                .map(|i| ((i * 7919) % 23) as f32)
                .collect();
            let x = Var::from_tensor(
                &Tensor::from_vec(v.clone(), (1, 2, side, side), &Device::Cpu).unwrap(),
            )
            .unwrap();
            let y = max_pool_3x3_s2(x.as_tensor()).unwrap();
            let out = (side - 1) / 2 + 1;
            assert_eq!(y.dims(), [1, 2, out, out]);
            let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            for c in 0..2 {
                for i in 0..out {
                    for j in 0..out {
                        let mut m = f32::MIN;
                        for dy in 0..3 {
                            for dx in 0..3 {
                                let (r, q) = (2 * i + dy, 2 * j + dx);
                                if (1..=side).contains(&r) && (1..=side).contains(&q) {
                                    m = m.max(v[c * side * side + (r - 1) * side + q - 1]);
                                }
                            }
                        }
                        assert_eq!(got[c * out * out + i * out + j], m, "side {side} ({i},{j})");
                    }
                }
            }
            let grads = crate::ops::backward(&y.sum_all().unwrap()).unwrap();
            let g: Vec<f32> = grads
                .get(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(g.iter().sum::<f32>() >= (2 * out * out) as f32 - 1e-3);
        }
    }

    #[test]
    fn resnet50_shapes_with_both_stems_and_a_wider_last_block() {
        for imagenet in [false, true] {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let net = ResNet::resnet50(4, 24, imagenet, vb).unwrap();
            let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
            assert_eq!(net.forward_t(&x, true).unwrap().dims(), [2, 24]);
            // 16 blocks: stem, 3 convs per block, a shortcut per stage and one
            // more where the last block changes the width.
            let convs = varmap
                .data()
                .lock()
                .unwrap()
                .keys()
                .filter(|k| k.ends_with("conv.weight"))
                .count();
            assert_eq!(convs, 1 + 16 * 3 + 4 + 1);
        }
    }
}
