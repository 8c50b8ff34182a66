//! Evaluations of a trained encoder at every layer.
//!
//! Weighted kNN (Wu et al. 2018, arXiv:1805.01978): cosine similarity to the
//! training split's embeddings, the k nearest vote for their class with weight
//! exp(s / T).

use candle_core::{Device, Tensor};
use sslab_shared::api::Evaluation;
use sslab_shared::spec::EvalSpec;

use crate::augment;
use crate::data::{ImageSet, Splits};
use crate::model::Encoder;

/// Row-major `len × dim` embeddings.
#[derive(Debug, Clone)]
pub struct Features {
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Features {
    pub fn len(&self) -> usize {
        self.data.len() / self.dim.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Scales every row to unit L2 norm (zero rows stay zero).
    pub fn normalized(&self) -> Features {
        let mut data = self.data.clone();
        for row in data.chunks_mut(self.dim) {
            let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            if n > 0.0 {
                row.iter_mut().for_each(|x| *x /= n);
            }
        }
        Features {
            dim: self.dim,
            data,
        }
    }
}

/// Embeds every image of `set` (un-augmented) at every layer of the encoder.
pub fn embed_layers(
    encoder: &Encoder,
    set: &ImageSet,
    device: &Device,
) -> candle_core::Result<Vec<Features>> {
    let s = set.size;
    let per = 3 * s * s;
    let batch = 256;
    let mut layers: Vec<Features> = Vec::new();
    for start in (0..set.len()).step_by(batch) {
        let end = (start + batch).min(set.len());
        let mut buf = vec![0.0f32; (end - start) * per];
        for (k, i) in (start..end).enumerate() {
            augment::plain(set, i, &mut buf[k * per..(k + 1) * per]);
        }
        let x = Tensor::from_vec(buf, (end - start, 3, s, s), device)?;
        let outs = encoder.forward_layers(&x, false)?;
        if layers.is_empty() {
            layers = outs
                .iter()
                .map(|o| {
                    Ok(Features {
                        dim: o.dim(1)?,
                        data: Vec::new(),
                    })
                })
                .collect::<candle_core::Result<_>>()?;
        }
        for (f, o) in layers.iter_mut().zip(outs) {
            f.data.extend(o.flatten_all()?.to_vec1::<f32>()?);
        }
    }
    Ok(layers)
}

/// Weighted-kNN top-1 accuracy of `test` against the memory bank `train`.
pub fn knn_accuracy(
    train: &Features,
    train_labels: &[u32],
    test: &Features,
    test_labels: &[u32],
    classes: usize,
    k: usize,
    temperature: f64,
) -> f64 {
    let bank = train.normalized();
    let queries = test.normalized();
    let k = k.min(bank.len()).max(1);
    let mut correct = 0usize;
    let mut sims: Vec<(f32, u32)> = Vec::with_capacity(bank.len());
    for q in 0..queries.len() {
        let query = queries.row(q);
        sims.clear();
        sims.extend((0..bank.len()).map(|j| {
            let s: f32 = query.iter().zip(bank.row(j)).map(|(a, b)| a * b).sum();
            (s, train_labels[j])
        }));
        sims.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        let mut votes = vec![0.0f64; classes];
        for &(s, label) in &sims[..k] {
            votes[label as usize] += (s as f64 / temperature).exp();
        }
        let predicted = votes
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(c, _)| c)
            .unwrap_or(0);
        correct += (predicted as u32 == test_labels[q]) as usize;
    }
    correct as f64 / queries.len().max(1) as f64
}

/// The evaluation plan: weighted kNN at every layer, scored on the test split.
pub fn evaluate(
    encoder: &Encoder,
    splits: &Splits,
    spec: &EvalSpec,
    device: &Device,
) -> candle_core::Result<Vec<Evaluation>> {
    let train = embed_layers(encoder, &splits.train, device)?;
    let test = embed_layers(encoder, &splits.test, device)?;
    let classes = splits.train.classes();
    let settings = serde_json::json!({
        "k": spec.knn_k,
        "temperature": spec.knn_temperature,
        "metric": "cosine",
        "bank": "train",
        "queries": "test",
    });
    Ok(encoder
        .layer_names()
        .iter()
        .zip(train.iter().zip(&test))
        .map(|(layer, (tr, te))| Evaluation {
            layer: layer.clone(),
            probe: "knn".into(),
            metric: "top1".into(),
            value: knn_accuracy(
                tr,
                &splits.train.labels,
                te,
                &splits.test.labels,
                classes,
                spec.knn_k,
                spec.knn_temperature,
            ),
            settings: settings.clone(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feats(rows: &[[f32; 2]]) -> Features {
        Features {
            dim: 2,
            data: rows.iter().flatten().copied().collect(),
        }
    }

    #[test]
    fn knn_on_hand_made_embeddings() {
        // Class 0 points east, class 1 north; lengths differ to check cosine.
        let bank = feats(&[[1.0, 0.1], [5.0, -0.2], [0.1, 1.0], [-0.3, 4.0]]);
        let labels = [0, 0, 1, 1];
        let queries = feats(&[[2.0, 0.0], [0.0, 0.5], [1.0, 0.9]]);
        assert_eq!(
            knn_accuracy(&bank, &labels, &queries, &[0, 1, 0], 2, 1, 0.07),
            1.0
        );
        // With k = 4 every neighbour votes, but the closer ones weigh more.
        assert_eq!(
            knn_accuracy(&bank, &labels, &queries, &[0, 1, 0], 2, 4, 0.07),
            1.0
        );
        // Wrong labels score zero.
        assert_eq!(
            knn_accuracy(&bank, &labels, &queries, &[1, 0, 1], 2, 1, 0.07),
            0.0
        );
    }

    #[test]
    fn temperature_decides_between_many_far_and_one_near() {
        // One very close class-1 neighbour against two mediocre class-0 ones.
        let bank = feats(&[[1.0, 0.0], [0.6, 0.8], [0.6, 0.8]]);
        let labels = [1, 0, 0];
        let q = feats(&[[1.0, 0.05]]);
        assert_eq!(knn_accuracy(&bank, &labels, &q, &[1], 2, 3, 0.07), 1.0);
        assert_eq!(knn_accuracy(&bank, &labels, &q, &[0], 2, 3, 100.0), 1.0);
    }
}
