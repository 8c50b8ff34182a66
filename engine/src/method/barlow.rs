//! Barlow Twins (Zbontar et al. 2021, arXiv:2103.03230; authors' code
//! facebookresearch/barlowtwins): the cross-correlation matrix of the two
//! views' batch-standardised embeddings is pushed to the identity.

use candle_core::{DType, Tensor};

use super::{Method, StepInfo, StepLoss, two_view_forward};
use crate::model::Encoder;

pub struct Barlow {
    pub lambda_offdiag: f64,
}

/// Standardises each dimension over the batch as BatchNorm without affine
/// parameters does (biased variance, ε = 1e-5).
fn standardize(z: &Tensor) -> candle_core::Result<Tensor> {
    let centred = z.broadcast_sub(&z.mean_keepdim(0)?)?;
    let var = centred.sqr()?.mean_keepdim(0)?;
    centred.broadcast_div(&(var + 1e-5)?.sqrt()?)
}

/// Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij², C = bn(z1)ᵀ bn(z2) / N.
pub fn barlow_loss(z1: &Tensor, z2: &Tensor, lambda: f64) -> candle_core::Result<Tensor> {
    let (n, d) = z1.dims2()?;
    let c = (standardize(z1)?.t()?.matmul(&standardize(z2)?)? / n as f64)?;
    let eye = Tensor::eye(d, DType::F32, z1.device())?.to_dtype(z1.dtype())?;
    let diag = (&c * &eye)?.sum(1)?; // (d,)
    let on = (1.0 - diag)?.sqr()?.sum_all()?;
    let off = (c.sqr()? * (1.0 - eye)?)?.sum_all()?;
    on + off.affine(lambda, 0.0)?
}

impl Method for Barlow {
    fn loss(
        &mut self,
        encoder: &Encoder,
        views: &[Tensor],
        _at: &StepInfo,
    ) -> candle_core::Result<StepLoss> {
        let (z1, z2, features) = two_view_forward(encoder, views)?;
        Ok(StepLoss {
            loss: barlow_loss(&z1, &z2, self.lambda_offdiag)?,
            features,
        })
    }
}
