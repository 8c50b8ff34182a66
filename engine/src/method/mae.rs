//! MAE (He et al. 2022, arXiv:2111.06377; facebookresearch/mae): the ViT
//! encodes the visible patches only; a light decoder sees them with mask
//! tokens at the masked positions and regresses the masked patches' pixels
//! (each patch normalised by its own mean and variance by default), MSE on
//! masked patches only.

use candle_core::{D, Device, IndexOp, Module, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};
use sslab_shared::RunSpec;
use sslab_shared::spec::MaeSpec;

use super::msn::{kept_count, random_keep};
use super::{Method, StepInfo, StepLoss};
use crate::model::Encoder;
use crate::model::dense::{Dense, dense};
use crate::model::norm::LayerNorm;
use crate::model::vit::{Block, patchify, select_tokens};

pub struct Mae {
    embed: Dense,
    mask_token: Tensor,
    /// (1, L, decoder width): decoder positions of the full grid.
    pos: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    pred: Dense,
    mask_ratio: f64,
    norm_pix_loss: bool,
}

impl Mae {
    pub fn new(
        spec: &RunSpec,
        settings: &MaeSpec,
        online: &VarMap,
        device: &Device,
    ) -> crate::Result<Self> {
        let MaeSpec {
            mask_ratio,
            decoder_width: w,
            decoder_depth,
            decoder_heads,
            norm_pix_loss,
        } = *settings;
        let b = &spec.backbone;
        let patches = (spec.data.image_size() / b.patch_size).pow(2);
        let vb = VarBuilder::from_varmap(online, candle_core::DType::F32, device).pp("decoder");
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let mae = Mae {
            embed: dense(b.width, w, vb.pp("embed"))?,
            mask_token: vb.get_with_hints((1, 1, w), "mask_token", init)?,
            pos: vb.get_with_hints((1, patches, w), "pos_embed", init)?,
            blocks: (0..decoder_depth)
                .map(|i| Block::new(w, decoder_heads, vb.pp(format!("blocks.{i}"))))
                .collect::<candle_core::Result<_>>()?,
            norm: LayerNorm::new(w, vb.pp("norm"))?,
            pred: dense(w, 3 * b.patch_size * b.patch_size, vb.pp("pred"))?,
            mask_ratio,
            norm_pix_loss,
        };
        crate::model::seed_weights_under(online, "decoder.", spec.seed ^ 0x3AE)?;
        Ok(mae)
    }
}

/// Mean over masked patches of the mean squared error per pixel.
/// `pred`, `target`: (B, M, P) for the M masked patches of each image. With
/// `norm_pix`, each target patch is first standardised by its own mean and
/// unbiased variance (+1e-6), as in the authors' code.
pub fn mae_loss(pred: &Tensor, target: &Tensor, norm_pix: bool) -> candle_core::Result<Tensor> {
    let target = if norm_pix {
        let p = target.dim(D::Minus1)?;
        let centred = target.broadcast_sub(&target.mean_keepdim(D::Minus1)?)?;
        let var = (centred.sqr()?.sum_keepdim(D::Minus1)? / (p as f64 - 1.0))?;
        centred.broadcast_div(&(var + 1e-6)?.sqrt()?)?
    } else {
        target.clone()
    };
    (pred - target.detach())?.sqr()?.mean_all()
}

impl Method for Mae {
    fn global_views(&self) -> usize {
        1
    }

    fn loss(
        &mut self,
        encoder: &Encoder,
        views: &[Tensor],
        at: &StepInfo,
    ) -> candle_core::Result<StepLoss> {
        let vit = encoder
            .backbone
            .vit()
            .expect("validation admits MAE on a ViT only");
        let x = &views[0];
        let b = x.dim(0)?;
        let side = x.dim(3)? / vit.patch_size();
        let l = side * side;
        let keep_n = kept_count(l, self.mask_ratio);
        let keep = random_keep(b, l, keep_n, &mut at.rng(0x3AE));
        let masked: Vec<Vec<usize>> = keep
            .iter()
            .map(|k| (0..l).filter(|i| k.binary_search(i).is_err()).collect())
            .collect();
        // The encoder in the run's precision; the decoder and loss in f32.
        let encoded = vit
            .encode(&select_tokens(
                &vit.embed(&x.to_dtype(encoder.compute())?, true)?,
                &keep,
            )?)?
            .to_dtype(candle_core::DType::F32)?;
        let width = self.pos.dim(2)?;
        let pos = self.pos.broadcast_as((b, l, width))?.contiguous()?;
        let h = encoded.apply(&self.embed)?;
        let visible = (h.i((.., 1.., ..))? + select_tokens(&pos, &keep)?)?;
        let hidden = select_tokens(&pos, &masked)?.broadcast_add(&self.mask_token)?;
        // Attention has no order: the decoder takes [CLS, visible, masked]
        // with each token's position added, and no un-shuffling is needed.
        let mut d = Tensor::cat(&[&h.i((.., ..1, ..))?, &visible, &hidden], 1)?;
        for block in &self.blocks {
            d = block.forward(&d)?;
        }
        let pred = d
            .apply(&self.norm)?
            .i((.., 1 + keep_n.., ..))?
            .apply(&self.pred)?;
        let target = select_tokens(&patchify(x, vit.patch_size())?, &masked)?;
        Ok(StepLoss {
            loss: mae_loss(&pred, &target, self.norm_pix_loss)?,
            features: vit.represent(&encoded)?,
        })
    }
}
