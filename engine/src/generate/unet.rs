//! The denoiser of RCDM: guided diffusion's ADM UNet, scaled down, that
//! predicts the noise ε of x_t from x_t, the timestep and a representation.
//! The representation goes through a linear layer and is added to the
//! timestep embedding; every residual block applies that sum as FiLM after
//! its second GroupNorm (ADM's `use_scale_shift_norm`).

use candle_core::{D, Module, Tensor};
use candle_nn::{GroupNorm, Linear, VarBuilder, VarMap};

use super::Conv;
use sslab_shared::decoder::RcdmSettings;

/// Channels per attention head (ADM's `num_head_channels`); narrower
/// layers get one head.
const HEAD_CHANNELS: usize = 64;
const NORM_EPS: f64 = 1e-5;

fn conv3x3(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> candle_core::Result<Conv> {
    Conv::new(cin, cout, 3, stride, vb)
}

fn conv1x1(cin: usize, cout: usize, vb: VarBuilder) -> candle_core::Result<Conv> {
    Conv::new(cin, cout, 1, 1, vb)
}

/// Residual block: GroupNorm → SiLU → conv3x3, then GroupNorm with FiLM
/// from the embedding (h·(1 + scale) + shift) → SiLU → conv3x3, plus a 1×1
/// skip where the channels change.
pub struct ResBlock {
    in_norm: GroupNorm,
    in_conv: Conv,
    emb: Linear,
    out_norm: GroupNorm,
    out_conv: Conv,
    skip: Option<Conv>,
}

impl ResBlock {
    pub fn new(
        cin: usize,
        cout: usize,
        emb_dim: usize,
        groups: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        Ok(ResBlock {
            in_norm: candle_nn::group_norm(groups, cin, NORM_EPS, vb.pp("in_norm"))?,
            in_conv: conv3x3(cin, cout, 1, vb.pp("in_conv"))?,
            emb: candle_nn::linear(emb_dim, 2 * cout, vb.pp("emb"))?,
            out_norm: candle_nn::group_norm(groups, cout, NORM_EPS, vb.pp("out_norm"))?,
            out_conv: conv3x3(cout, cout, 1, vb.pp("out_conv"))?,
            skip: if cin == cout {
                None
            } else {
                Some(conv1x1(cin, cout, vb.pp("skip"))?)
            },
        })
    }

    /// `emb` is B×emb_dim (timestep plus representation).
    pub fn forward(&self, x: &Tensor, emb: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.in_conv.forward(&self.in_norm.forward(x)?.silu()?)?;
        let film = self.emb.forward(&emb.silu()?)?.unsqueeze(2)?.unsqueeze(3)?;
        let c = h.dim(1)?;
        let (scale, shift) = (film.narrow(1, 0, c)?, film.narrow(1, c, c)?);
        let h = self.out_norm.forward(&h)?;
        let h = h.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(&shift)?;
        let h = self.out_conv.forward(&h.silu()?)?;
        match &self.skip {
            Some(skip) => skip.forward(x)? + h,
            None => x + h,
        }
    }
}

/// softmax(QᵀK/√d)·V for N×d×T queries, keys and values (one head per
/// row of N); N×d×T out.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    let d = q.dim(1)?;
    let scores = (q.transpose(1, 2)?.contiguous()?.matmul(&k.contiguous()?)? / (d as f64).sqrt())?;
    let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
    v.contiguous()?
        .matmul(&weights.transpose(1, 2)?.contiguous()?)
}

/// Self-attention over the pixels: GroupNorm, a 1×1 conv to q, k, v,
/// attention per head, an output projection and the residual.
pub struct AttentionBlock {
    norm: GroupNorm,
    qkv: Conv,
    proj_out: Conv,
    heads: usize,
}

impl AttentionBlock {
    pub fn new(channels: usize, groups: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let heads = if channels.is_multiple_of(HEAD_CHANNELS) {
            channels / HEAD_CHANNELS
        } else {
            1
        };
        Ok(AttentionBlock {
            norm: candle_nn::group_norm(groups, channels, NORM_EPS, vb.pp("norm"))?,
            qkv: conv1x1(channels, 3 * channels, vb.pp("qkv"))?,
            proj_out: conv1x1(channels, channels, vb.pp("proj_out"))?,
            heads,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let d = c / self.heads;
        let qkv =
            self.qkv
                .forward(&self.norm.forward(x)?)?
                .reshape((b * self.heads, 3 * d, h * w))?;
        let q = qkv.narrow(1, 0, d)?;
        let k = qkv.narrow(1, d, d)?;
        let v = qkv.narrow(1, 2 * d, d)?;
        let a = attention(&q, &k, &v)?.reshape((b, c, h, w))?;
        x + self.proj_out.forward(&a)?
    }
}

enum DownBlock {
    Res(ResBlock, Option<AttentionBlock>),
    /// Strided conv3x3: halves the image.
    Downsample(Conv),
}

struct UpBlock {
    res: ResBlock,
    attention: Option<AttentionBlock>,
    /// Nearest ×2 then conv3x3, at the end of every level but the first.
    upsample: Option<Conv>,
}

/// The ADM UNet at the sizes of [`RcdmSettings`].
pub struct UNet {
    channels: usize,
    time_in: Linear,
    time_out: Linear,
    cond: Linear,
    input: Conv,
    down: Vec<DownBlock>,
    middle: (ResBlock, AttentionBlock, ResBlock),
    up: Vec<UpBlock>,
    out_norm: GroupNorm,
    out_conv: Conv,
}

impl UNet {
    /// Builds the layers under `vb`; call [`init_weights`] on the VarMap
    /// afterwards for seeded weights and ADM's zero-initialised outputs.
    /// `settings.groups` must divide `settings.channels`.
    pub fn new(
        settings: &RcdmSettings,
        image_size: usize,
        cond_dim: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let base = settings.channels;
        let groups = settings.groups;
        let emb_dim = 4 * base;
        let levels = settings.multipliers.len();
        let attends = |res: usize| settings.attention.contains(&res);

        let mut down = Vec::new();
        let mut skips = vec![base];
        let (mut ch, mut res) = (base, image_size);
        for (level, mult) in settings.multipliers.iter().enumerate() {
            for _ in 0..settings.res_blocks {
                let vb = vb.pp(format!("down.{}", down.len()));
                let block = ResBlock::new(ch, mult * base, emb_dim, groups, vb.pp("res"))?;
                ch = mult * base;
                let attention = if attends(res) {
                    Some(AttentionBlock::new(ch, groups, vb.pp("attention"))?)
                } else {
                    None
                };
                down.push(DownBlock::Res(block, attention));
                skips.push(ch);
            }
            if level + 1 < levels {
                let vb = vb.pp(format!("down.{}", down.len()));
                down.push(DownBlock::Downsample(conv3x3(ch, ch, 2, vb.pp("conv"))?));
                skips.push(ch);
                res /= 2;
            }
        }

        let middle = (
            ResBlock::new(ch, ch, emb_dim, groups, vb.pp("middle.0"))?,
            AttentionBlock::new(ch, groups, vb.pp("middle.1"))?,
            ResBlock::new(ch, ch, emb_dim, groups, vb.pp("middle.2"))?,
        );

        let mut up = Vec::new();
        for (level, mult) in settings.multipliers.iter().enumerate().rev() {
            for i in 0..=settings.res_blocks {
                let vb = vb.pp(format!("up.{}", up.len()));
                let skip = skips.pop().expect("one skip per down block");
                let res_block =
                    ResBlock::new(ch + skip, mult * base, emb_dim, groups, vb.pp("res"))?;
                ch = mult * base;
                let attention = if attends(res) {
                    Some(AttentionBlock::new(ch, groups, vb.pp("attention"))?)
                } else {
                    None
                };
                let upsample = if level > 0 && i == settings.res_blocks {
                    res *= 2;
                    Some(conv3x3(ch, ch, 1, vb.pp("upsample"))?)
                } else {
                    None
                };
                up.push(UpBlock {
                    res: res_block,
                    attention,
                    upsample,
                });
            }
        }

        Ok(UNet {
            channels: base,
            time_in: candle_nn::linear(base, emb_dim, vb.pp("time.0"))?,
            time_out: candle_nn::linear(emb_dim, emb_dim, vb.pp("time.1"))?,
            cond: candle_nn::linear(cond_dim, emb_dim, vb.pp("cond"))?,
            input: conv3x3(3, base, 1, vb.pp("input"))?,
            down,
            middle,
            up,
            out_norm: candle_nn::group_norm(groups, ch, NORM_EPS, vb.pp("out_norm"))?,
            out_conv: conv3x3(ch, 3, 1, vb.pp("out_conv"))?,
        })
    }

    /// ε̂ for `x` (B×3×s×s), one training timestep per row and the B×dim
    /// representations `cond`.
    pub fn forward(&self, x: &Tensor, t: &[usize], cond: &Tensor) -> candle_core::Result<Tensor> {
        let sinusoid = timestep_embedding(t, self.channels, x)?;
        let emb = self
            .time_out
            .forward(&self.time_in.forward(&sinusoid)?.silu()?)?;
        let emb = (emb + self.cond.forward(cond)?)?;

        let mut h = self.input.forward(x)?;
        let mut skips = vec![h.clone()];
        for block in &self.down {
            h = match block {
                DownBlock::Res(res, attention) => {
                    let h = res.forward(&h, &emb)?;
                    match attention {
                        Some(a) => a.forward(&h)?,
                        None => h,
                    }
                }
                DownBlock::Downsample(conv) => conv.forward(&h)?,
            };
            skips.push(h.clone());
        }
        h = self.middle.0.forward(&h, &emb)?;
        h = self.middle.1.forward(&h)?;
        h = self.middle.2.forward(&h, &emb)?;
        for block in &self.up {
            let skip = skips.pop().expect("one skip per up block");
            h = block.res.forward(&Tensor::cat(&[&h, &skip], 1)?, &emb)?;
            if let Some(a) = &block.attention {
                h = a.forward(&h)?;
            }
            if let Some(conv) = &block.upsample {
                let (_, _, hh, ww) = h.dims4()?;
                h = conv.forward(&h.upsample_nearest2d(2 * hh, 2 * ww)?)?;
            }
        }
        self.out_conv.forward(&self.out_norm.forward(&h)?.silu()?)
    }
}

/// Guided diffusion's sinusoidal embedding: [cos(t·f_j), sin(t·f_j)] with
/// f_j = 10000^(−j/half), zero-padded to `dim`; B×dim in `like`'s dtype and
/// device.
pub fn timestep_embedding(t: &[usize], dim: usize, like: &Tensor) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let mut values = Vec::with_capacity(t.len() * dim);
    for &step in t {
        let freqs = (0..half).map(|j| (-(10_000f64.ln()) * j as f64 / half as f64).exp());
        let args: Vec<f64> = freqs.map(|f| step as f64 * f).collect();
        values.extend(args.iter().map(|a| a.cos()));
        values.extend(args.iter().map(|a| a.sin()));
        if dim % 2 == 1 {
            values.push(0.0);
        }
    }
    Tensor::from_vec(values, (t.len(), dim), like.device())?.to_dtype(like.dtype())
}

/// Seeded weights (uniform ±1/√fan_in, biases 0, norms 1) with ADM's
/// zero-initialised last convolutions of every residual block, attention
/// projection and the output, so that each block starts as the identity.
pub fn init_weights(varmap: &VarMap, seed: u64) -> crate::Result<()> {
    crate::model::seed_weights_under(varmap, "", seed)?;
    let data = varmap.data().lock().expect("varmap lock");
    for (name, var) in data.iter() {
        let layer = name.rsplit('.').nth(1).unwrap_or("");
        if layer == "out_conv" || layer == "proj_out" {
            var.set(&var.zeros_like()?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn toy() -> RcdmSettings {
        RcdmSettings {
            channels: 8,
            multipliers: vec![1, 2],
            res_blocks: 1,
            attention: vec![4],
            groups: 4,
            ..Default::default()
        }
    }

    fn names(varmap: &VarMap) -> Vec<String> {
        let mut n: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        n.sort();
        n
    }

    #[test]
    fn shapes_layers_and_zero_outputs() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let unet = UNet::new(&toy(), 8, 5, vb).unwrap();
        init_weights(&varmap, 1).unwrap();
        let names = names(&varmap);
        // Attention at 4 px only: the second level's blocks and the middle.
        let attn: Vec<&String> = names.iter().filter(|n| n.ends_with("qkv.weight")).collect();
        assert_eq!(
            attn,
            [
                "down.2.attention.qkv.weight",
                "middle.1.qkv.weight",
                "up.0.attention.qkv.weight",
                "up.1.attention.qkv.weight"
            ],
        );
        // Down: res, downsample, res; up: 2 per level.
        assert!(names.iter().any(|n| n.starts_with("down.1.conv")));
        assert!(names.iter().any(|n| n.starts_with("up.3.res")));
        assert!(!names.iter().any(|n| n.starts_with("up.4")));
        assert!(names.iter().any(|n| n.starts_with("up.1.upsample")));

        let x = Tensor::ones((2, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
        let cond = Tensor::ones((2, 5), DType::F32, &Device::Cpu).unwrap();
        let out = unet.forward(&x, &[3, 90], &cond).unwrap();
        assert_eq!(out.dims(), &[2, 3, 8, 8]);
        // The zero-initialised output conv makes the first prediction 0.
        let max = out
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(max, 0.0);
        // Seeded: the same seed gives the same weights.
        let again = VarMap::new();
        let vb = VarBuilder::from_varmap(&again, DType::F32, &Device::Cpu);
        UNet::new(&toy(), 8, 5, vb).unwrap();
        init_weights(&again, 1).unwrap();
        let w = |m: &VarMap| {
            m.data().lock().unwrap()["down.0.res.in_conv.weight"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(w(&varmap), w(&again));
        assert!(w(&varmap).iter().any(|v| *v != 0.0));
    }

    #[test]
    fn timestep_embedding_is_cos_then_sin() {
        let like = Tensor::zeros(1, DType::F64, &Device::Cpu).unwrap();
        let e = timestep_embedding(&[0, 7], 5, &like).unwrap();
        let v: Vec<Vec<f64>> = e.to_vec2().unwrap();
        assert_eq!(v[0], vec![1.0, 1.0, 0.0, 0.0, 0.0]);
        let f1 = (-(10_000f64.ln()) / 2.0).exp();
        let want = [
            7f64.cos(),
            (7.0 * f1).cos(),
            7f64.sin(),
            (7.0 * f1).sin(),
            0.0,
        ];
        for (a, b) in v[1].iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{:?}", v[1]);
        }
    }

    /// Several heads split the channels: the block runs at 128 channels.
    #[test]
    fn attention_with_two_heads_keeps_the_shape() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let block = AttentionBlock::new(128, 8, vb).unwrap();
        assert_eq!(block.heads, 2);
        let x = Tensor::randn(0f32, 1.0, (2, 128, 2, 2), &Device::Cpu).unwrap();
        let y = block.forward(&x).unwrap();
        assert_eq!(y.dims(), x.dims());
    }
}
