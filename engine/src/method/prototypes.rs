//! Pieces shared by the prototype methods (DINO, SwAV, MSN, PMSN): a set of
//! learnable unit-norm prototypes and the swapped cross-entropy between views.

use candle_core::{D, Tensor};
use candle_nn::{Init, VarBuilder};

use super::l2_normalize;

/// K prototypes of dimension d; scores are cosine similarities, i.e. a
/// weight-normalised linear layer on L2-normalised inputs (DINO's last layer
/// with its norm fixed to 1, SwAV's normalised prototypes, MSN's cosine).
pub struct Prototypes {
    weight: Tensor,
}

impl Prototypes {
    pub fn new(k: usize, d: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let init = Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        };
        Ok(Prototypes {
            weight: vb.get_with_hints((k, d), "weight", init)?,
        })
    }

    /// The prototype matrix, as the optimiser and the gradients know it.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// (N, d) → (N, K) cosine similarities.
    pub fn cosine(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        cosine_scores(z, &self.weight)
    }

    /// The same, with the prototypes cut from the graph (MSN's targets).
    pub fn cosine_detached(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        cosine_scores(z, &self.weight.detach())
    }
}

/// Prototype scores of every view: the two global views in one pass (so
/// BatchNorm sees them together), the local ones in another. Returns one
/// (N, K) score matrix per view, the first view's backbone features and the
/// global views' embeddings (2N, d), the second view's after the first's.
pub fn scores_per_view(
    encoder: &crate::model::Encoder,
    prototypes: &Prototypes,
    views: &[Tensor],
) -> candle_core::Result<(Vec<Tensor>, Tensor, Tensor)> {
    use candle_core::ModuleT;
    let n = views[0].dim(0)?;
    let globals = Tensor::cat(&[&views[0], &views[1]], 0)?;
    let layers = encoder.forward_layers(&globals, true)?;
    let z = layers.last().expect("the backbone is always a layer");
    let s = prototypes.cosine(z)?;
    let mut scores = vec![s.narrow(0, 0, n)?, s.narrow(0, n, n)?];
    if views.len() > 2 {
        let locals = Tensor::cat(&views[2..], 0)?;
        let s = prototypes.cosine(&encoder.forward_t(&locals, true)?)?;
        for v in 0..views.len() - 2 {
            scores.push(s.narrow(0, v * n, n)?);
        }
    }
    Ok((scores, layers[0].narrow(0, 0, n)?, z.clone()))
}

/// Cosine similarity of every row of `z` (N, d) with every row of `w` (K, d).
pub fn cosine_scores(z: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    l2_normalize(z)?.matmul(&l2_normalize(w)?.t()?)
}

/// Mean over (target view t, student view v ≠ t) of the cross-entropy
/// −Σ_k q_t log softmax(s_v) averaged over the batch: DINO's loss and
/// SwAV's swapped prediction. `targets[t]` are probabilities of view t
/// (no gradient); `logits[v]` already divided by the temperature.
pub fn cross_view_loss(logits: &[Tensor], targets: &[Tensor]) -> candle_core::Result<Tensor> {
    let log_probs = logits
        .iter()
        .map(|s| candle_nn::ops::log_softmax(s, D::Minus1))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let mut terms = Vec::new();
    for (t, q) in targets.iter().enumerate() {
        for (v, lp) in log_probs.iter().enumerate() {
            if v != t {
                terms.push((q.detach() * lp)?.sum(D::Minus1)?.mean_all()?.neg()?);
            }
        }
    }
    let n = terms.len() as f64;
    Tensor::stack(&terms, 0)?.sum_all()? / n
}
