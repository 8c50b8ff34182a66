//! SimCLR (Chen et al. 2020, arXiv:2002.05709; authors' code
//! google-research/simclr): the NT-Xent loss over two augmented views.

use candle_core::{D, DType, Tensor};
use sslab_shared::spec::Negatives;

use super::{Method, StepInfo, StepLoss};
use crate::model::Encoder;

pub struct SimClr {
    temperature: f64,
    negatives: Negatives,
}

impl SimClr {
    pub fn new(temperature: f64, negatives: Negatives) -> Self {
        SimClr {
            temperature,
            negatives,
        }
    }
}

/// SimCLR with one negative per positive pair (arXiv:2303.01986): view 1 of
/// image i against view 2 of image i and view 2 of the next image in the
/// batch, −log(e^{p/τ} / (e^{p/τ} + e^{n/τ})), symmetrised over the views.
pub fn single_negative(z1: &Tensor, z2: &Tensor, temperature: f64) -> candle_core::Result<Tensor> {
    let (a, b) = (super::l2_normalize(z1)?, super::l2_normalize(z2)?);
    let one_way = |a: &Tensor, b: &Tensor| -> candle_core::Result<Tensor> {
        let pos = (a * b)?.sum(D::Minus1)?;
        let neg = (a * b.roll(-1, 0)?)?.sum(D::Minus1)?;
        // softplus((n − p)/τ), written stably as max(x, 0) + ln(1 + e^{−|x|}).
        let x = ((neg - pos)? / temperature)?;
        (x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?.mean_all()
    };
    (one_way(&a, &b)? + one_way(&b, &a)?)? / 2.0
}

/// NT-Xent: L2-normalise, cosine logits / τ over the 2N views with each view's
/// own logit masked out, cross-entropy against its positive.
/// `z1`, `z2`: (N, d) embeddings of the two views.
pub fn nt_xent(z1: &Tensor, z2: &Tensor, temperature: f64) -> candle_core::Result<Tensor> {
    let n = z1.dim(0)?;
    let z = Tensor::cat(&[z1, z2], 0)?; // (2N, d)
    let z = super::l2_normalize(&z)?;
    let logits = (z.matmul(&z.t()?)? / temperature)?; // (2N, 2N)
    // Push each view's similarity with itself far below every other logit.
    let eye = Tensor::eye(2 * n, DType::F32, z.device())?.to_dtype(z.dtype())?;
    let logits = (logits - (eye * 1e9)?)?;
    let targets: Vec<u32> = (0..2 * n as u32)
        .map(|i| (i + n as u32) % (2 * n as u32))
        .collect();
    let targets = Tensor::new(targets.as_slice(), z.device())?;
    candle_nn::loss::cross_entropy(&logits, &targets)
}

impl Method for SimClr {
    fn loss(
        &mut self,
        encoder: &Encoder,
        views: &[Tensor],
        _at: &StepInfo,
    ) -> candle_core::Result<StepLoss> {
        let n = views[0].dim(0)?;
        // One pass over both views: BatchNorm sees the 2N images together.
        let layers = encoder.forward_layers(&Tensor::cat(&[&views[0], &views[1]], 0)?, true)?;
        let z = layers.last().expect("the backbone is always a layer");
        let (z1, z2) = (z.narrow(0, 0, n)?, z.narrow(0, n, n)?);
        let loss = match self.negatives {
            Negatives::All => nt_xent(&z1, &z2, self.temperature)?,
            Negatives::Single => single_negative(&z1, &z2, self.temperature)?,
        };
        Ok(StepLoss {
            loss,
            features: layers[0].narrow(0, 0, n)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Independent computation of NT-Xent in plain f64 loops.
    fn reference(z1: &[[f64; 3]], z2: &[[f64; 3]], t: f64) -> f64 {
        let z: Vec<Vec<f64>> = z1
            .iter()
            .chain(z2)
            .map(|v| {
                let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.iter().map(|x| x / n).collect()
            })
            .collect();
        let m = z.len();
        let half = m / 2;
        let mut total = 0.0;
        for i in 0..m {
            let sims: Vec<f64> = (0..m)
                .map(|j| z[i].iter().zip(&z[j]).map(|(a, b)| a * b).sum::<f64>() / t)
                .collect();
            let pos = (i + half) % m;
            let denom: f64 = (0..m).filter(|&j| j != i).map(|j| sims[j].exp()).sum();
            total += -(sims[pos].exp() / denom).ln();
        }
        total / m as f64
    }

    #[test]
    fn matches_an_independent_computation() {
        let z1 = [[1.0, 0.5, -0.2], [0.3, -1.0, 0.8], [-0.7, 0.2, 0.1]];
        let z2 = [[0.9, 0.4, 0.0], [0.1, -0.8, 1.0], [0.5, 0.5, 0.5]];
        let dev = Device::Cpu;
        let t1 = Tensor::new(&z1.map(|r| r.map(|x| x as f32)), &dev).unwrap();
        let t2 = Tensor::new(&z2.map(|r| r.map(|x| x as f32)), &dev).unwrap();
        for tau in [0.1, 0.5, 1.0] {
            let got = nt_xent(&t1, &t2, tau).unwrap().to_scalar::<f32>().unwrap() as f64;
            let want = reference(&z1, &z2, tau);
            assert!((got - want).abs() < 1e-4, "tau {tau}: {got} vs {want}");
        }
    }

    #[test]
    fn perfect_alignment_gives_the_closed_form_floor() {
        // Identical, mutually orthogonal pairs: the positive has cos 1, the 2N-2
        // negatives cos 0, so L = -ln(e^{1/t} / (e^{1/t} + 2N - 2)).
        let dev = Device::Cpu;
        let z = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &dev).unwrap();
        let t = 0.5;
        let got = nt_xent(&z, &z, t).unwrap().to_scalar::<f32>().unwrap() as f64;
        let e = (1.0f64 / t).exp();
        let want = -(e / (e + 2.0)).ln();
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
}
