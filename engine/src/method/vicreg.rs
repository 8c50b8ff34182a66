//! VICReg (Bardes, Ponce & LeCun 2022, arXiv:2105.04906; authors' code
//! facebookresearch/vicreg): variance-invariance-covariance regularisation.

use candle_core::Tensor;

use super::{Method, StepInfo, StepLoss, two_view_forward};
use crate::model::Encoder;

pub struct Vicreg {
    pub invariance: f64,
    pub variance: f64,
    pub covariance: f64,
}

/// Mean of relu(1 − sqrt(Var(z_j) + 1e-4)) over the dimensions j; the
/// variance is unbiased, as `torch.var`. `z`: (N, d).
pub fn variance_term(z: &Tensor) -> candle_core::Result<Tensor> {
    let n = z.dim(0)? as f64;
    let centred = z.broadcast_sub(&z.mean_keepdim(0)?)?;
    let var = (centred.sqr()?.sum(0)? / (n - 1.0))?;
    let std = (var + 1e-4)?.sqrt()?;
    (1.0 - std)?.relu()?.mean_all()
}

/// Σ_{i≠j} C_ij² / d with C the unbiased covariance of `z` (N, d).
pub fn covariance_term(z: &Tensor) -> candle_core::Result<Tensor> {
    let (n, d) = z.dims2()?;
    let centred = z.broadcast_sub(&z.mean_keepdim(0)?)?;
    let cov = (centred.t()?.matmul(&centred)? / (n as f64 - 1.0))?;
    let all = cov.sqr()?.sum_all()?;
    let diag = centred
        .sqr()?
        .sum(0)?
        .affine(1.0 / (n as f64 - 1.0), 0.0)?
        .sqr()?
        .sum_all()?;
    (all - diag)? / d as f64
}

/// λ·MSE(z1, z2) + μ·(v(z1) + v(z2))/2 + ν·(c(z1) + c(z2)), as the authors'
/// code weighs the terms (variance averaged over the branches, covariance summed).
pub fn vicreg_loss(
    z1: &Tensor,
    z2: &Tensor,
    lambda: f64,
    mu: f64,
    nu: f64,
) -> candle_core::Result<Tensor> {
    let invariance = (z1 - z2)?.sqr()?.mean_all()?;
    let variance = ((variance_term(z1)? + variance_term(z2)?)? / 2.0)?;
    let covariance = (covariance_term(z1)? + covariance_term(z2)?)?;
    (invariance.affine(lambda, 0.0)? + variance.affine(mu, 0.0)?)? + covariance.affine(nu, 0.0)?
}

impl Method for Vicreg {
    fn loss(
        &mut self,
        encoder: &Encoder,
        views: &[Tensor],
        _at: &StepInfo,
    ) -> candle_core::Result<StepLoss> {
        let (z1, z2, features) = two_view_forward(encoder, views)?;
        let loss = vicreg_loss(&z1, &z2, self.invariance, self.variance, self.covariance)?;
        Ok(StepLoss { loss, features })
    }
}
