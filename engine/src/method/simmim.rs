//! SimMIM (Xie et al. 2022, arXiv:2111.09886; microsoft/SimMIM): masked
//! patches are replaced by a learned mask token at the ViT's input; a
//! linear head maps every output token back to its patch's pixels; L1 loss
//! on the masked patches only.

use candle_core::{D, Device, IndexOp, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};
use sslab_shared::RunSpec;
use sslab_shared::spec::SimmimSpec;

use super::msn::kept_count;
use super::{Method, StepInfo, StepLoss};
use crate::model::Encoder;
use crate::model::dense::{Dense, dense};
use crate::model::vit::patchify;

pub struct SimMim {
    mask_token: Tensor,
    head: Dense,
    mask_ratio: f64,
}

impl SimMim {
    pub fn new(
        spec: &RunSpec,
        settings: &SimmimSpec,
        online: &VarMap,
        device: &Device,
    ) -> crate::Result<Self> {
        let SimmimSpec { mask_ratio } = *settings;
        let b = &spec.backbone;
        let vb = VarBuilder::from_varmap(online, candle_core::DType::F32, device).pp("mim");
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let m = SimMim {
            mask_token: vb.get_with_hints((1, 1, b.width), "mask_token", init)?,
            head: dense(b.width, 3 * b.patch_size * b.patch_size, vb.pp("head"))?,
            mask_ratio,
        };
        crate::model::seed_weights_under(online, "mim.", spec.seed ^ 0x5133)?;
        Ok(m)
    }
}

/// Σ |pred − target| over masked patches / (masked patches × pixels per patch).
/// `pred`, `target`: (B, L, P); `mask`: (B, L, 1), 1 where masked.
pub fn simmim_loss(pred: &Tensor, target: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let p = pred.dim(D::Minus1)? as f64;
    let err = (pred - target.detach())?
        .abs()?
        .broadcast_mul(mask)?
        .sum_all()?;
    let masked = mask
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    err / (masked * p + 1e-5)
}

impl Method for SimMim {
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
            .expect("validation admits SimMIM on a ViT only");
        let x = &views[0];
        let b = x.dim(0)?;
        let side = x.dim(3)? / vit.patch_size();
        let l = side * side;
        let hidden = l - kept_count(l, self.mask_ratio);
        let mut rng = at.rng(0x5133);
        let mut mask = vec![0f32; b * l];
        for row in mask.chunks_mut(l) {
            let mut order: Vec<usize> = (0..l).collect();
            rng.shuffle(&mut order);
            for &i in &order[..hidden] {
                row[i] = 1.0;
            }
        }
        let mask = Tensor::from_vec(mask, (b, l, 1), x.device())?;
        // The encoder in the run's precision; the head and loss in f32.
        let compute = encoder.compute();
        let tokens = vit.patch_tokens(&x.to_dtype(compute)?, true)?;
        let cast_mask = mask.to_dtype(compute)?;
        let tokens = (tokens.broadcast_mul(&(1.0 - &cast_mask)?)?
            + cast_mask.broadcast_mul(&self.mask_token.to_dtype(compute)?)?)?;
        let encoded = vit
            .encode(&vit.add_positions(&tokens, side)?)?
            .to_dtype(candle_core::DType::F32)?;
        let pred = encoded.i((.., 1.., ..))?.apply(&self.head)?;
        Ok(StepLoss {
            loss: simmim_loss(&pred, &patchify(x, vit.patch_size())?, &mask)?,
            features: vit.represent(&encoded)?,
        })
    }
}
