//! From two models' guesses to the paper's numbers: accuracy over the most
//! confident fraction (target vs reference), the four-way split and the
//! per-class gaps.

use sslab_shared::audit::{
    ClassGap, CurvePoint, Example, FRACTIONS, FourWay, Guess, SnapshotReport,
};

use super::crop::Rect;

/// The attacked images: unique to A, unique to B, with their crops.
#[derive(Debug, Clone, Default)]
pub struct Attacked {
    pub a: Vec<(usize, Rect)>,
    pub b: Vec<(usize, Rect)>,
}

/// One model's guesses on the A-only and the B-only crops, in `Attacked`'s order.
#[derive(Debug, Clone, Default)]
pub struct Guesses {
    pub on_a: Vec<Guess>,
    pub on_b: Vec<Guess>,
}

/// Top-1 and top-5 accuracy over the `fraction` of `guesses` the model is
/// most confident about (at least one; ties in confidence keep image order).
pub fn accuracy_at(guesses: &[Guess], labels: &[u32], fraction: f64) -> (f64, f64) {
    if guesses.is_empty() {
        return (0.0, 0.0);
    }
    let mut order: Vec<usize> = (0..guesses.len()).collect();
    order.sort_by(|&i, &j| {
        guesses[j]
            .confidence
            .total_cmp(&guesses[i].confidence)
            .then(i.cmp(&j))
    });
    let n = ((fraction * guesses.len() as f64).ceil() as usize).clamp(1, guesses.len());
    let (mut top1, mut top5) = (0usize, 0usize);
    for &i in &order[..n] {
        let g = &guesses[i];
        top1 += usize::from(g.top5.first() == Some(&labels[i]));
        top5 += usize::from(g.top5.contains(&labels[i]));
    }
    (top1 as f64 / n as f64, top5 as f64 / n as f64)
}

/// Every attacked image with the guess of the model that trained on it
/// (target) and of the one that did not (reference). Neighbours stay
/// positions in the public set.
pub fn examples(attacked: &Attacked, labels: &[u32], a: &Guesses, b: &Guesses) -> Vec<Example> {
    let side = |set: &str, images: &[(usize, Rect)], target: &[Guess], reference: &[Guess]| {
        images
            .iter()
            .enumerate()
            .map(|(j, &(image, crop))| Example {
                image,
                set: set.into(),
                label: labels[image],
                crop,
                target: target[j].clone(),
                reference: reference[j].clone(),
            })
            .collect::<Vec<_>>()
    };
    let mut out = side("A", &attacked.a, &a.on_a, &b.on_a);
    out.extend(side("B", &attacked.b, &b.on_b, &a.on_b));
    out
}

/// The snapshot's numbers. `a` trained on A (the target for A-only images),
/// `b` on B; `knn` is their full-image kNN top-1.
pub fn snapshot(
    epoch: usize,
    knn: (f64, f64),
    attacked: &Attacked,
    labels: &[u32],
    class_names: &[String],
    a: &Guesses,
    b: &Guesses,
) -> SnapshotReport {
    let la: Vec<u32> = attacked.a.iter().map(|&(i, _)| labels[i]).collect();
    let lb: Vec<u32> = attacked.b.iter().map(|&(i, _)| labels[i]).collect();
    let mean = |x: (f64, f64), y: (f64, f64)| ((x.0 + y.0) / 2.0, (x.1 + y.1) / 2.0);
    let curve = FRACTIONS
        .iter()
        .map(|&f| {
            let t = mean(accuracy_at(&a.on_a, &la, f), accuracy_at(&b.on_b, &lb, f));
            let r = mean(accuracy_at(&a.on_b, &lb, f), accuracy_at(&b.on_a, &la, f));
            CurvePoint {
                fraction: f,
                target_top1: t.0,
                target_top5: t.1,
                reference_top1: r.0,
                reference_top5: r.1,
            }
        })
        .collect();
    let rows = examples(attacked, labels, a, b);
    let mut four_way = FourWay::default();
    let classes = class_names.len();
    let (mut count, mut t_right, mut r_right) =
        (vec![0; classes], vec![0; classes], vec![0; classes]);
    for e in &rows {
        match e.outcome() {
            "correlated" => four_way.correlated += 1,
            "memorized" => four_way.memorized += 1,
            "forgotten" => four_way.forgotten += 1,
            _ => four_way.unassociated += 1,
        }
        let c = e.label as usize;
        count[c] += 1;
        t_right[c] += usize::from(e.target.top5.first() == Some(&e.label));
        r_right[c] += usize::from(e.reference.top5.first() == Some(&e.label));
    }
    let per_class = (0..classes)
        .filter(|&c| count[c] > 0)
        .map(|c| ClassGap {
            class: c as u32,
            name: class_names[c].clone(),
            images: count[c],
            target_top1: t_right[c] as f64 / count[c] as f64,
            reference_top1: r_right[c] as f64 / count[c] as f64,
        })
        .collect();
    SnapshotReport {
        epoch,
        knn_target: knn.0,
        knn_reference: knn.1,
        curve,
        four_way,
        per_class,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(label: u32, confidence: f64) -> Guess {
        Guess {
            top5: vec![label, (label + 1) % 3],
            confidence,
            neighbours: vec![],
        }
    }

    #[test]
    fn planted_guesses_give_the_expected_curve_split_and_gaps() {
        // Images 0..4 are A-only, 4..8 B-only; labels alternate 0, 1, …
        let labels = [0, 1, 0, 1, 2, 2, 0, 1];
        let attacked = Attacked {
            a: (0..4).map(|i| (i, [0, 0, 8, 8])).collect(),
            b: (4..8).map(|i| (i, [0, 0, 8, 8])).collect(),
        };
        // Model A on its own images: right on the two most confident.
        // Model B on A's images: right only on image 3 (least confident).
        let a = Guesses {
            on_a: vec![g(0, -0.1), g(1, -0.2), g(2, -0.9), g(2, -1.0)],
            on_b: vec![g(2, -0.5), g(0, -0.5), g(0, -0.5), g(0, -0.5)],
        };
        let b = Guesses {
            on_a: vec![g(1, -0.3), g(2, -0.3), g(1, -0.3), g(1, -0.3)],
            on_b: vec![g(2, -0.1), g(2, -0.2), g(0, -0.3), g(0, -0.4)],
        };
        // A on A: 2/4 (top-5 3/4), top-50% 2/2. B on B: 3/4, top-50% 2/2.
        assert_eq!(accuracy_at(&a.on_a, &[0, 1, 0, 1], 1.0), (0.5, 0.75));
        assert_eq!(accuracy_at(&a.on_a, &[0, 1, 0, 1], 0.5).0, 1.0);
        let s = snapshot(
            7,
            (0.6, 0.5),
            &attacked,
            &labels,
            &["x".into(), "y".into(), "z".into()],
            &a,
            &b,
        );
        let at = |f: f64| s.curve.iter().find(|p| p.fraction == f).unwrap().clone();
        assert_eq!(at(1.0).target_top1, (0.5 + 0.75) / 2.0);
        assert_eq!(at(0.5).target_top1, 1.0);
        // Reference: A on B-only right on images 4 (label 2) and 6 (label 0)
        // = 2/4; B on A-only right on image 3 only = 1/4.
        assert_eq!(at(1.0).reference_top1, (0.5 + 0.25) / 2.0);
        // A-only: 0 memorized, 1 memorized, 2 unassociated, 3 forgotten.
        // B-only: 4 correlated, 5 memorized, 6 correlated, 7 unassociated.
        assert_eq!(
            s.four_way,
            FourWay {
                correlated: 2,
                memorized: 3,
                forgotten: 1,
                unassociated: 2
            }
        );
        let z = s.per_class.iter().find(|c| c.name == "z").unwrap();
        assert_eq!((z.images, z.target_top1, z.reference_top1), (2, 1.0, 0.5));
        assert_eq!((s.epoch, s.knn_target), (7, 0.6));
    }
}
