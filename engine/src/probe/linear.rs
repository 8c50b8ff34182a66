//! Linear probes: multinomial logistic regression on frozen, standardised
//! features, trained full-batch with Adam; the L2 strength is chosen on a
//! validation split carved from the training features.

use candle_core::{D, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use crate::eval::Features;
use sslab_shared::rng::Rng;

/// Per-dimension mean and std of `train`, applied to both sets, so that one
/// learning rate and one L2 grid suit every layer.
pub fn standardize(train: &Features, others: &[&Features]) -> (Features, Vec<Features>) {
    let d = train.dim;
    let n = train.len().max(1) as f64;
    let mut mean = vec![0f64; d];
    let mut var = vec![0f64; d];
    for i in 0..train.len() {
        for (m, &x) in mean.iter_mut().zip(train.row(i)) {
            *m += x as f64 / n;
        }
    }
    for i in 0..train.len() {
        for ((v, &x), m) in var.iter_mut().zip(train.row(i)).zip(&mean) {
            *v += (x as f64 - m).powi(2) / n;
        }
    }
    let std: Vec<f64> = var.iter().map(|v| v.sqrt().max(1e-6)).collect();
    let apply = |f: &Features| Features {
        dim: d,
        data: f
            .data
            .chunks(d)
            .flat_map(|row| {
                row.iter()
                    .zip(&mean)
                    .zip(&std)
                    .map(|((&x, m), s)| ((x as f64 - m) / s) as f32)
            })
            .collect(),
    };
    (apply(train), others.iter().map(|f| apply(f)).collect())
}

/// A trained classifier: `logits = x W + b`.
pub struct Classifier {
    w: Tensor,
    b: Tensor,
}

impl Classifier {
    /// Fits on `x` (standardised) with cross-entropy + `l2`·‖W‖².
    pub fn fit(
        x: &Features,
        labels: &[u32],
        classes: usize,
        l2: f64,
        steps: usize,
    ) -> candle_core::Result<Self> {
        let dev = Device::Cpu;
        let xs = Tensor::from_slice(&x.data, (x.len(), x.dim), &dev)?;
        let ys = Tensor::from_slice(labels, labels.len(), &dev)?;
        let w = Var::zeros((x.dim, classes), candle_core::DType::F32, &dev)?;
        let b = Var::zeros(classes, candle_core::DType::F32, &dev)?;
        let params = ParamsAdamW {
            lr: 0.05,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![w.clone(), b.clone()], params)?;
        for _ in 0..steps {
            let logits = xs.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
            let loss = candle_nn::loss::cross_entropy(&logits, &ys)?;
            let loss = (loss + (w.as_tensor().sqr()?.sum_all()? * l2)?)?;
            opt.backward_step(&loss)?;
        }
        Ok(Classifier {
            w: w.as_tensor().clone(),
            b: b.as_tensor().clone(),
        })
    }

    pub fn accuracy(&self, x: &Features, labels: &[u32]) -> candle_core::Result<f64> {
        if labels.is_empty() {
            return Ok(0.0);
        }
        let xs = Tensor::from_slice(&x.data, (x.len(), x.dim), &Device::Cpu)?;
        let pred = xs
            .matmul(&self.w)?
            .broadcast_add(&self.b)?
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?;
        Ok(pred.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / labels.len() as f64)
    }
}

/// Rows of `f` at `idx`.
pub fn select(f: &Features, idx: &[usize]) -> Features {
    Features {
        dim: f.dim,
        data: idx.iter().flat_map(|&i| f.row(i).iter().copied()).collect(),
    }
}

/// Result of the linear probe.
pub struct LinearResult {
    pub test_accuracy: f64,
    pub l2: f64,
    pub val_accuracy: f64,
}

/// Chooses the L2 strength on a seeded validation split of the training
/// features, refits on all of them, and scores the test features.
#[allow(clippy::too_many_arguments)]
pub fn linear_probe(
    train: &Features,
    train_labels: &[u32],
    test: &Features,
    test_labels: &[u32],
    classes: usize,
    l2_grid: &[f64],
    val_fraction: f64,
    steps: usize,
    seed: u64,
) -> candle_core::Result<LinearResult> {
    let (train, others) = standardize(train, &[test]);
    let test = &others[0];
    let mut order: Vec<usize> = (0..train.len()).collect();
    Rng::derive(seed, &[0x11AE]).shuffle(&mut order);
    let n_val = ((train.len() as f64 * val_fraction).round() as usize)
        .clamp(1, train.len().saturating_sub(1).max(1));
    let (val_idx, fit_idx) = order.split_at(n_val);
    let pick = |idx: &[usize]| idx.iter().map(|&i| train_labels[i]).collect::<Vec<_>>();
    let (fit_x, fit_y) = (select(&train, fit_idx), pick(fit_idx));
    let (val_x, val_y) = (select(&train, val_idx), pick(val_idx));
    let mut best = (f64::NEG_INFINITY, l2_grid.first().copied().unwrap_or(0.0));
    for &l2 in l2_grid {
        let acc = Classifier::fit(&fit_x, &fit_y, classes, l2, steps)?.accuracy(&val_x, &val_y)?;
        if acc > best.0 {
            best = (acc, l2);
        }
    }
    let model = Classifier::fit(&train, train_labels, classes, best.1, steps)?;
    Ok(LinearResult {
        test_accuracy: model.accuracy(test, test_labels)?,
        l2: best.1,
        val_accuracy: best.0,
    })
}

/// Class-balanced label subsets for low-shot probes (MSN's protocol):
/// `per_class` images of every class, or `fraction` of each class (at least
/// one), drawn from `seed`.
pub fn lowshot_subset(
    labels: &[u32],
    classes: usize,
    per_class: Option<usize>,
    fraction: Option<f64>,
    seed: u64,
) -> Vec<usize> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for members in &mut by_class {
        rng.shuffle(members);
        let k = match (per_class, fraction) {
            (Some(k), _) => k,
            (None, Some(f)) => ((members.len() as f64 * f).round() as usize).max(1),
            (None, None) => members.len(),
        };
        out.extend(members.iter().take(k));
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three Gaussian blobs in 5-d, far apart: linearly separable.
    fn blobs(n: usize, seed: u64, shuffle_labels: bool) -> (Features, Vec<u32>) {
        let mut rng = Rng::new(seed);
        let mut data = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let c = (i % 3) as u32;
            for d in 0..5 {
                let centre = if d == c as usize { 6.0 } else { 0.0 };
                data.push((centre + rng.normal()) as f32);
            }
            labels.push(c);
        }
        if shuffle_labels {
            rng.shuffle(&mut labels);
        }
        (Features { dim: 5, data }, labels)
    }

    #[test]
    fn separable_data_is_learned_perfectly() {
        let (tr, ytr) = blobs(150, 1, false);
        let (te, yte) = blobs(60, 2, false);
        let r = linear_probe(&tr, &ytr, &te, &yte, 3, &[0.0, 1e-3], 0.2, 200, 0).unwrap();
        assert_eq!(r.test_accuracy, 1.0);
    }

    #[test]
    fn shuffled_labels_give_chance() {
        let (tr, ytr) = blobs(300, 3, true);
        let (te, yte) = blobs(300, 4, true);
        let r = linear_probe(&tr, &ytr, &te, &yte, 3, &[1e-2], 0.2, 200, 0).unwrap();
        assert!(
            (r.test_accuracy - 1.0 / 3.0).abs() < 0.1,
            "{}",
            r.test_accuracy
        );
    }

    #[test]
    fn lowshot_subsets_are_balanced_and_reproducible() {
        let labels: Vec<u32> = (0..100).map(|i| (i % 4) as u32).collect();
        let a = lowshot_subset(&labels, 4, Some(2), None, 7);
        assert_eq!(a, lowshot_subset(&labels, 4, Some(2), None, 7));
        assert_ne!(a, lowshot_subset(&labels, 4, Some(2), None, 8));
        for c in 0..4 {
            assert_eq!(a.iter().filter(|&&i| labels[i] == c).count(), 2);
        }
        let p = lowshot_subset(&labels, 4, None, Some(0.01), 1);
        assert_eq!(p.len(), 4, "at least one per class");
    }
}
