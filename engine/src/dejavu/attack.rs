//! The label-inference attack (the reference's `label_inference_attack.py`):
//! exact L2 nearest neighbours of a crop's embedding among the public
//! images, a label histogram of the k nearest, and its entropy.

use sslab_shared::audit::Guess;

use crate::eval::Features;

/// The public images' embeddings and labels.
pub struct PublicIndex<'a> {
    pub features: &'a Features,
    pub labels: &'a [u32],
    pub classes: usize,
}

impl PublicIndex<'_> {
    /// The guess for one embedded crop. Labels are ranked by votes, ties by
    /// which label's nearest neighbour is closer. `neighbours` are positions
    /// in the index, nearest first.
    pub fn guess(&self, query: &[f32], k: usize) -> Guess {
        self.vote(&self.nearest(query, k))
    }

    /// Positions of the `k` nearest public images (exact L2), nearest first;
    /// ties go to the lower position.
    pub fn nearest(&self, query: &[f32], k: usize) -> Vec<usize> {
        let n = self.labels.len();
        let k = k.min(n).max(1);
        let mut dist: Vec<(f32, usize)> = (0..n)
            .map(|j| {
                let d = query
                    .iter()
                    .zip(self.features.row(j))
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f32>();
                (d, j)
            })
            .collect();
        let by_distance =
            |a: &(f32, usize), b: &(f32, usize)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
        if k < n {
            dist.select_nth_unstable_by(k - 1, by_distance);
            dist.truncate(k);
        }
        dist.sort_unstable_by(by_distance);
        dist.into_iter().map(|(_, j)| j).collect()
    }

    /// The label histogram of `nearest` (nearest first) as a guess.
    pub fn vote(&self, nearest: &[usize]) -> Guess {
        let mut votes = vec![0usize; self.classes];
        let mut first_seen = vec![usize::MAX; self.classes];
        for (rank, &j) in nearest.iter().enumerate() {
            let label = self.labels[j] as usize;
            votes[label] += 1;
            first_seen[label] = first_seen[label].min(rank);
        }
        let mut ranked: Vec<usize> = (0..self.classes).filter(|&c| votes[c] > 0).collect();
        ranked.sort_by_key(|&c| (std::cmp::Reverse(votes[c]), first_seen[c]));
        let k = nearest.len();
        let confidence = votes
            .iter()
            .filter(|&&v| v > 0)
            .map(|&v| {
                let p = v as f64 / k as f64;
                p * p.ln()
            })
            .sum();
        Guess {
            top5: ranked.iter().take(5).map(|&c| c as u32).collect(),
            confidence,
            neighbours: nearest.iter().take(5).copied().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_ties_and_entropy_on_a_planted_index() {
        // Public points on a line at 0, 1, …, 9 with labels chosen so that
        // the 4 nearest to 0.1 are labels [2, 1, 1, 2].
        let features = Features {
            dim: 1,
            data: (0..10).map(|i| i as f32).collect(),
        };
        let labels = [2, 1, 1, 2, 0, 0, 0, 0, 0, 3];
        let index = PublicIndex {
            features: &features,
            labels: &labels,
            classes: 4,
        };
        let g = index.guess(&[0.1], 4);
        // Two votes each; label 2 owns the nearest neighbour.
        assert_eq!(g.top5, vec![2, 1]);
        assert_eq!(g.neighbours, vec![0, 1, 2, 3]);
        assert!((g.confidence - 2.0 * 0.5 * 0.5f64.ln()).abs() < 1e-12);
        // All ten: label 0 has five votes, then 2 and 1 (two each, 2 nearer), then 3.
        let g = index.guess(&[0.1], 100);
        assert_eq!(g.top5, vec![0, 2, 1, 3]);
        let h: f64 = [0.5f64, 0.2, 0.2, 0.1].iter().map(|p| p * p.ln()).sum();
        assert!((g.confidence - h).abs() < 1e-12);
        // A unanimous neighbourhood is the most confident possible: 0.
        let g = index.guess(&[6.0], 3);
        assert_eq!((g.top5.clone(), g.confidence), (vec![0], 0.0));
        assert_eq!(g.neighbours, vec![6, 5, 7]);
    }
}
