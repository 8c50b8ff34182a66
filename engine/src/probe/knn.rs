//! Weighted kNN (Wu et al. 2018, arXiv:1805.01978): the k nearest training
//! embeddings vote for their class with weight exp(sim / T).

use sslab_shared::spec::KnnMetric;

use crate::eval::Features;

/// Weighted-kNN top-1 accuracy of `test` against the memory bank `train`.
pub fn knn_accuracy(
    train: &Features,
    train_labels: &[u32],
    test: &Features,
    test_labels: &[u32],
    classes: usize,
    k: usize,
    temperature: f64,
    metric: KnnMetric,
) -> f64 {
    let predicted = knn_predict(train, train_labels, test, classes, k, temperature, metric);
    let correct = predicted
        .iter()
        .zip(test_labels)
        .filter(|(p, t)| p == t)
        .count();
    correct as f64 / predicted.len().max(1) as f64
}

/// The weighted-kNN class of every row of `test`.
pub fn knn_predict(
    train: &Features,
    train_labels: &[u32],
    test: &Features,
    classes: usize,
    k: usize,
    temperature: f64,
    metric: KnnMetric,
) -> Vec<u32> {
    let (bank, queries) = match metric {
        KnnMetric::Cosine => (train.normalized(), test.normalized()),
        KnnMetric::L2 => (train.clone(), test.clone()),
    };
    let k = k.min(bank.len()).max(1);
    let mut out = Vec::with_capacity(queries.len());
    let mut sims: Vec<(f32, u32)> = Vec::with_capacity(bank.len());
    for q in 0..queries.len() {
        let query = queries.row(q);
        sims.clear();
        sims.extend((0..bank.len()).map(|j| {
            let s: f32 = match metric {
                KnnMetric::Cosine => query.iter().zip(bank.row(j)).map(|(a, b)| a * b).sum(),
                KnnMetric::L2 => -query
                    .iter()
                    .zip(bank.row(j))
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f32>()
                    .sqrt(),
            };
            (s, train_labels[j])
        }));
        sims.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        // Relative to the nearest neighbour, so L2 distances cannot underflow.
        let best = sims[..k]
            .iter()
            .map(|s| s.0)
            .fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut votes = vec![0.0f64; classes];
        for &(s, label) in &sims[..k] {
            votes[label as usize] += ((s as f64 - best) / temperature).exp();
        }
        let predicted = votes
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(c, _)| c)
            .unwrap_or(0);
        out.push(predicted as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::Features;

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
        let queries = feats(&[[2.0, 0.0], [0.0, 0.5], [1.0, 0.9]]);
        let acc = |truth: &[u32], k| {
            knn_accuracy(
                &bank,
                &[0, 0, 1, 1],
                &queries,
                truth,
                2,
                k,
                0.07,
                KnnMetric::Cosine,
            )
        };
        assert_eq!(acc(&[0, 1, 0], 1), 1.0);
        // With k = 4 every neighbour votes, but the closer ones weigh more.
        assert_eq!(acc(&[0, 1, 0], 4), 1.0);
        // Wrong labels score zero.
        assert_eq!(acc(&[1, 0, 1], 1), 0.0);
    }

    #[test]
    fn l2_metric_uses_distance_not_angle() {
        // Same direction as class 0's point but at class 1's distance.
        let bank = feats(&[[1.0, 0.0], [9.0, 1.0]]);
        let q = feats(&[[8.0, 0.0]]);
        assert_eq!(
            knn_accuracy(&bank, &[0, 1], &q, &[1], 2, 1, 0.07, KnnMetric::L2),
            1.0
        );
        assert_eq!(
            knn_accuracy(&bank, &[0, 1], &q, &[0], 2, 1, 0.07, KnnMetric::Cosine),
            1.0
        );
    }

    #[test]
    fn temperature_decides_between_many_far_and_one_near() {
        // One very close class-1 neighbour against two mediocre class-0 ones.
        let bank = feats(&[[1.0, 0.0], [0.6, 0.8], [0.6, 0.8]]);
        let labels = [1, 0, 0];
        let q = feats(&[[1.0, 0.05]]);
        assert_eq!(
            knn_accuracy(&bank, &labels, &q, &[1], 2, 3, 0.07, KnnMetric::Cosine),
            1.0
        );
        assert_eq!(
            knn_accuracy(&bank, &labels, &q, &[0], 2, 3, 100.0, KnnMetric::Cosine),
            1.0
        );
    }
}
