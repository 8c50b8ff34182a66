//! Vision Transformer (Dosovitskiy et al. 2021, arXiv:2010.11929): square
//! patches, a CLS token, learned position embeddings and pre-norm blocks. The
//! representation is the CLS token after the last norm, optionally mapped to
//! `last_block_width` by a linear layer. Patch dropping (MSN, MAE) and mask
//! tokens (SimMIM) enter between the patch embedding and the blocks. The
//! patches are embedded by one linear map of their pixels, or by a conv stem
//! (Xiao et al. 2021, arXiv:2106.14881): 3×3 stride-2 conv-BN-ReLU layers
//! down to one position per patch, then a linear map.

use candle_core::{IndexOp, Module, ModuleT, Tensor};
use candle_nn::{Init, VarBuilder};

use super::cnn::ConvBn;
use super::dense::{Dense, dense};
use super::norm::LayerNorm;
use crate::ops;

fn linear(i: usize, o: usize, vb: VarBuilder) -> candle_core::Result<Dense> {
    dense(i, o, vb)
}

/// `t` in `like`'s dtype.
fn as_dtype_of(t: &Tensor, like: &Tensor) -> candle_core::Result<Tensor> {
    t.to_dtype(like.dtype())
}

struct Attention {
    qkv: Dense,
    proj: Dense,
    heads: usize,
}

impl Attention {
    fn attend(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::attention(&x.apply(&self.qkv)?, self.heads)?.apply(&self.proj)
    }

    /// The output and the attention probabilities (B, heads, N, N).
    fn attend_with_probabilities(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (out, probs) = ops::attention_with_probabilities(&x.apply(&self.qkv)?, self.heads)?;
        Ok((out.apply(&self.proj)?, probs))
    }
}

/// A pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)).
pub struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Dense,
    fc2: Dense,
}

impl Block {
    pub fn new(width: usize, heads: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Block {
            norm1: LayerNorm::new(width, vb.pp("norm1"))?,
            attn: Attention {
                qkv: linear(width, 3 * width, vb.pp("attn.qkv"))?,
                proj: linear(width, width, vb.pp("attn.proj"))?,
                heads,
            },
            norm2: LayerNorm::new(width, vb.pp("norm2"))?,
            fc1: linear(width, 4 * width, vb.pp("mlp.fc1"))?,
            fc2: linear(4 * width, width, vb.pp("mlp.fc2"))?,
        })
    }
}

impl Block {
    /// The tokens after the attention's residual add and after the MLP's.
    fn forward_both(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let x = (x + self.attn.attend(&x.apply(&self.norm1)?)?)?;
        let out = self.mlp(&x)?;
        Ok((x, out))
    }

    /// `forward_both` and the attention probabilities.
    fn forward_all(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (a, probs) = self
            .attn
            .attend_with_probabilities(&x.apply(&self.norm1)?)?;
        let x = (x + a)?;
        let out = self.mlp(&x)?;
        Ok((x, out, probs))
    }

    /// x + mlp(norm(x)).
    fn mlp(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self
            .fc1
            .forward_gelu(&x.apply(&self.norm2)?)?
            .apply(&self.fc2)?;
        x + h
    }
}

impl Module for Block {
    /// As one op where the engine's block op takes the tensors.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (norm1, eps) = self.norm1.parts();
        let parts = (
            self.attn.qkv.parts(),
            self.attn.proj.parts(),
            self.fc1.parts(),
            self.fc2.parts(),
        );
        if let (Some(qkv), Some(proj), Some(fc1), Some(fc2)) = parts {
            let weights = ops::BlockWeights {
                norm1,
                qkv,
                proj,
                norm2: self.norm2.parts().0,
                fc1,
                fc2,
            };
            if let Some(out) = ops::transformer_block(x, &weights, self.attn.heads, eps)? {
                return Ok(out);
            }
        }
        Ok(self.forward_both(x)?.1)
    }
}

pub struct Vit {
    patch: usize,
    /// Patches per side at the full image size.
    grid: usize,
    /// The conv stem's layers; empty for the linear patch embedding.
    stem: Vec<ConvBn>,
    /// Pixels of a patch (or the stem's last channels) → width.
    patch_embed: Dense,
    cls: Tensor,
    /// (1, 1 + grid², width): the CLS token's, then the patches' row by row.
    pos: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: Option<Dense>,
}

/// (B, 3, H, W) → (B, (H/p)·(W/p), p·p·3), patches row by row, each patch's
/// pixels row by row with the channels last (MAE's order).
pub fn patchify(x: &Tensor, p: usize) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h / p, p, w / p, p))?
        .permute((0, 2, 4, 3, 5, 1))?
        .contiguous()?
        .reshape((b, (h / p) * (w / p), p * p * c))
}

/// Rows `keep[b]` of each sequence of `x` (B, L, D) → (B, K, D); every
/// `keep[b]` has the same length K. Differentiable (an index-select).
pub fn select_tokens(x: &Tensor, keep: &[Vec<usize>]) -> candle_core::Result<Tensor> {
    let (b, l, d) = x.dims3()?;
    let k = keep[0].len();
    let flat: Vec<u32> = keep
        .iter()
        .enumerate()
        .flat_map(|(i, rows)| rows.iter().map(move |&r| (i * l + r) as u32))
        .collect();
    let idx = Tensor::from_vec(flat, b * k, x.device())?;
    x.reshape((b * l, d))?
        .index_select(&idx, 0)?
        .reshape((b, k, d))
}

/// The sizes of a ViT.
pub struct VitShape {
    pub image_size: usize,
    pub patch: usize,
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    pub conv_stem: bool,
    /// A linear head to this dimension after the CLS token.
    pub out_dim: Option<usize>,
}

impl Vit {
    pub fn new(shape: &VitShape, vb: VarBuilder) -> candle_core::Result<Self> {
        let &VitShape {
            image_size,
            patch,
            width,
            depth,
            heads,
            conv_stem,
            out_dim,
        } = shape;
        let grid = image_size / patch;
        let blocks = (0..depth)
            .map(|i| Block::new(width, heads, vb.pp(format!("blocks.{i}"))))
            .collect::<candle_core::Result<_>>()?;
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        // log2(patch) layers whose channels double up to the width
        // (ViT-S/16: 48, 96, 192, 384, as in the paper).
        let layers = if conv_stem {
            patch.trailing_zeros() as usize
        } else {
            0
        };
        let channels = |i: usize| (width >> (layers - 1 - i)).max(1);
        let stem = (0..layers)
            .map(|i| {
                let cin = if i == 0 { 3 } else { channels(i - 1) };
                ConvBn::new(cin, channels(i), 3, 2, vb.pp(format!("stem.{i}")))
            })
            .collect::<candle_core::Result<_>>()?;
        let embed_in = if conv_stem { width } else { 3 * patch * patch };
        Ok(Vit {
            patch,
            grid,
            stem,
            patch_embed: linear(embed_in, width, vb.pp("patch_embed"))?,
            cls: vb.get_with_hints((1, 1, width), "cls_token", init)?,
            pos: vb.get_with_hints((1, 1 + grid * grid, width), "pos_embed", init)?,
            blocks,
            norm: LayerNorm::new(width, vb.pp("norm"))?,
            head: match out_dim {
                Some(d) => Some(linear(width, d, vb.pp("head"))?),
                None => None,
            },
        })
    }

    pub fn patch_size(&self) -> usize {
        self.patch
    }

    pub fn heads(&self) -> usize {
        self.blocks.first().map_or(1, |b| b.attn.heads)
    }

    /// Patch embeddings without positions: (B, 3, H, W) → (B, L, width).
    pub fn patch_tokens(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if self.stem.is_empty() {
            return patchify(x, self.patch)?.apply(&self.patch_embed);
        }
        let mut h = x.clone();
        for c in &self.stem {
            h = c.forward_relu(&h, train)?;
        }
        let (b, c, _, _) = h.dims4()?;
        // contiguous: candle 0.11's CPU matmul folds the broadcast weight's
        // batch into one gemm as if the input's rows were adjacent, which a
        // transposed view's are not, and returns wrong values
        // (huggingface/candle#3758).
        h.reshape((b, c, ()))?
            .transpose(1, 2)?
            .contiguous()?
            .apply(&self.patch_embed)
    }

    /// Adds the position embeddings of a `side`×`side` patch grid, resized
    /// bilinearly from the full-size grid when the view is smaller (local crops).
    pub fn add_positions(&self, tokens: &Tensor, side: usize) -> candle_core::Result<Tensor> {
        let (_, _, width) = tokens.dims3()?;
        let patches = self.pos.i((.., 1.., ..))?;
        let pos = if side == self.grid {
            patches
        } else {
            let m = resize_matrix(self.grid, side, tokens.device())?;
            m.matmul(&patches.reshape((self.grid * self.grid, width))?)?
                .reshape((1, side * side, width))?
        };
        tokens.broadcast_add(&as_dtype_of(&pos, tokens)?)
    }

    /// Patch tokens with their positions: (B, 3, H, W) → (B, L, width).
    pub fn embed(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let side = x.dim(3)? / self.patch;
        self.add_positions(&self.patch_tokens(x, train)?, side)
    }

    /// Prepends the CLS token and runs the blocks and the last norm:
    /// (B, L, width) → (B, 1 + L, width).
    pub fn encode(&self, tokens: &Tensor) -> candle_core::Result<Tensor> {
        let (b, _, width) = tokens.dims3()?;
        let cls = (&self.cls + self.pos.i((.., ..1, ..))?)?;
        let cls = as_dtype_of(&cls, tokens)?.broadcast_as((b, 1, width))?;
        let mut h = Tensor::cat(&[&cls, tokens], 1)?;
        for block in &self.blocks {
            h = block.forward(&h)?;
        }
        h.apply(&self.norm)
    }

    /// The representation read from encoded tokens: the CLS token (and the head).
    pub fn represent(&self, encoded: &Tensor) -> candle_core::Result<Tensor> {
        let cls = encoded.i((.., 0, ..))?;
        match &self.head {
            Some(h) => cls.apply(h),
            None => Ok(cls),
        }
    }

    /// The representation of images with only the patches `keep[b]` of image
    /// `b` fed to the blocks (MSN's anchor, MAE's encoder).
    pub fn forward_kept(
        &self,
        x: &Tensor,
        keep: &[Vec<usize>],
        train: bool,
    ) -> candle_core::Result<Tensor> {
        self.represent(&self.encode(&select_tokens(&self.embed(x, train)?, keep)?)?)
    }
}

impl Vit {
    /// The CLS token and the patch tokens of full images, before the blocks.
    fn tokens(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let tokens = self.embed(x, false)?;
        let (b, _, width) = tokens.dims3()?;
        let cls = (&self.cls + self.pos.i((.., ..1, ..))?)?;
        let cls = as_dtype_of(&cls, &tokens)?.broadcast_as((b, 1, width))?;
        Tensor::cat(&[&cls, &tokens], 1)
    }

    /// After every block's attention and MLP, the patch tokens' mean (the
    /// CLS token is left out): `blocks.I.attn`, `blocks.I.mlp` (inference).
    pub fn taps(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let mut h = self.tokens(x)?;
        let pool = |t: &Tensor| t.i((.., 1.., ..))?.mean(1);
        let mut out = Vec::new();
        for block in &self.blocks {
            let (attn, mlp) = block.forward_both(&h)?;
            out.push(pool(&attn)?);
            out.push(pool(&mlp)?);
            h = mlp;
        }
        Ok(out)
    }

    /// Every block's attention probabilities on full images, (B, heads,
    /// 1 + L, 1 + L) with the CLS token first (inference).
    pub fn attention_maps(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let mut h = self.tokens(x)?;
        let mut out = Vec::new();
        for block in &self.blocks {
            let (_, mlp, probs) = block.forward_all(&h)?;
            out.push(probs);
            h = mlp;
        }
        Ok(out)
    }
}

impl ModuleT for Vit {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.represent(&self.encode(&self.embed(x, train)?)?)
    }
}

/// The (to², from²) matrix of a bilinear resize of a from×from grid to
/// to×to, half-pixel centres, edges clamped (PyTorch's `align_corners=False`).
fn resize_matrix(
    from: usize,
    to: usize,
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let axis = |o: usize| -> [(usize, f32); 2] {
        let f = ((o as f64 + 0.5) * from as f64 / to as f64 - 0.5).clamp(0.0, (from - 1) as f64);
        let lo = f.floor() as usize;
        let hi = (lo + 1).min(from - 1);
        let t = (f - lo as f64) as f32;
        [(lo, 1.0 - t), (hi, t)]
    };
    let mut m = vec![0f32; to * to * from * from];
    for oy in 0..to {
        for ox in 0..to {
            let row = oy * to + ox;
            for (y, wy) in axis(oy) {
                for (x, wx) in axis(ox) {
                    m[row * from * from + y * from + x] += wy * wx;
                }
            }
        }
    }
    Tensor::from_vec(m, (to * to, from * from), device)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    use super::*;

    fn vit(varmap: &VarMap, out_dim: Option<usize>, conv_stem: bool) -> Vit {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu);
        let shape = VitShape {
            image_size: 16,
            patch: 4,
            width: 24,
            depth: 2,
            heads: 3,
            conv_stem,
            out_dim,
        };
        Vit::new(&shape, vb).unwrap()
    }

    fn images(n: usize, side: usize) -> Tensor {
        let v: Vec<f32> = (0..n * 3 * side * side)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        Tensor::from_vec(v, (n, 3, side, side), &Device::Cpu).unwrap()
    }

    #[test]
    fn patchify_lays_patches_out_row_by_row() {
        // One 4×4 single-value-per-pixel image in 2×2 patches.
        let x: Vec<f32> = (0..3 * 16).map(|i| i as f32).collect();
        let x = Tensor::from_vec(x, (1, 3, 4, 4), &Device::Cpu).unwrap();
        let p: Vec<Vec<Vec<f32>>> = patchify(&x, 2).unwrap().to_vec3().unwrap();
        assert_eq!(p[0].len(), 4);
        // Patch 1 (top right): pixels (0,2), (0,3), (1,2), (1,3), channels last.
        assert_eq!(&p[0][1][..6], &[2.0, 18.0, 34.0, 3.0, 19.0, 35.0]);
        assert_eq!(p[0][1][6], 6.0);
    }

    /// The LayerNorm gap: with candle's fused norm nothing upstream trains.
    #[test]
    fn every_parameter_gets_a_gradient() {
        for conv_stem in [false, true] {
            let varmap = VarMap::new();
            let m = vit(&varmap, Some(10), conv_stem);
            let out = m.forward_t(&images(2, 16), true).unwrap();
            assert_eq!(out.dims(), [2, 10]);
            let grads = ops::backward(&out.sqr().unwrap().sum_all().unwrap()).unwrap();
            let data = varmap.data().lock().unwrap();
            // Patch 4: two conv-BN layers of a weight, BN's two and its two
            // running statistics.
            let stem = if conv_stem { 2 * 5 } else { 0 };
            assert_eq!(
                data.len(),
                8 + 2 * 12 + stem,
                "patch embed, cls, pos, norm, head, 12 per block, the stem"
            );
            assert_gradients(&data, &grads);
        }
    }

    fn assert_gradients(
        data: &std::collections::HashMap<String, candle_core::Var>,
        grads: &candle_core::backprop::GradStore,
    ) {
        for (name, var) in data.iter() {
            if name.contains("running_") {
                continue;
            }
            let g = grads
                .get(var)
                .unwrap_or_else(|| panic!("no gradient reaches {name}"));
            let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            assert!(
                g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0),
                "{name}: {g:?}"
            );
        }
    }

    #[test]
    fn kept_patches_and_smaller_views_go_through() {
        for conv_stem in [false, true] {
            let varmap = VarMap::new();
            let m = vit(&varmap, None, conv_stem);
            let x = images(2, 16);
            // Keeping every patch is the plain forward.
            let all: Vec<Vec<usize>> = vec![(0..16).collect(), (0..16).collect()];
            let a: Vec<Vec<f32>> = m.forward_kept(&x, &all, false).unwrap().to_vec2().unwrap();
            let b: Vec<Vec<f32>> = m.forward_t(&x, false).unwrap().to_vec2().unwrap();
            for (r, s) in a.iter().flatten().zip(b.iter().flatten()) {
                assert!((r - s).abs() < 1e-5);
            }
            let some = vec![vec![0, 5, 9], vec![2, 3, 15]];
            assert_eq!(m.forward_kept(&x, &some, false).unwrap().dims(), [2, 24]);
            // An 8 px local view: a 2×2 grid with resized positions.
            assert_eq!(m.forward_t(&images(3, 8), false).unwrap().dims(), [3, 24]);
        }
    }

    #[test]
    fn resize_matrix_rows_sum_to_one_and_identity_when_equal() {
        let m: Vec<Vec<f32>> = resize_matrix(4, 2, &Device::Cpu)
            .unwrap()
            .to_vec2()
            .unwrap();
        for row in &m {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        // Output (0,0) of 2×2 sits at input (0.5, 0.5): four equal weights.
        assert_eq!(m[0][0], 0.25);
        assert_eq!(m[0][5], 0.25);
        let id: Vec<Vec<f32>> = resize_matrix(3, 3, &Device::Cpu)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (i, row) in id.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                assert_eq!(*v, if i == j { 1.0 } else { 0.0 });
            }
        }
    }
}
