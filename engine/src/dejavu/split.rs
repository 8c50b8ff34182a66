//! The A / B / shared / public partition of the reference code
//! (`imagenet_partition.py`), made deterministic: each class's images are
//! put in a seeded order before they are dealt out.

use sslab_shared::audit::SplitSpec;
use sslab_shared::rng::Rng;

use crate::data::ImageSet;

/// Indices into the pool, each list ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Boxed images only the target trains on (attacked).
    pub a_only: Vec<usize>,
    /// Boxed images only the reference trains on (attacked).
    pub b_only: Vec<usize>,
    /// Unboxed images both train on.
    pub shared: Vec<usize>,
    /// Labelled images neither trains on: the attacker's index.
    pub public: Vec<usize>,
    /// Images whose box lies outside the image (dealt out as unboxed).
    pub bad_boxes: usize,
    pub warnings: Vec<String>,
}

impl Partition {
    /// The target's training set: A-only and shared.
    pub fn train_a(&self) -> Vec<usize> {
        union(&self.a_only, &self.shared)
    }

    /// The reference's training set: B-only and shared.
    pub fn train_b(&self) -> Vec<usize> {
        union(&self.b_only, &self.shared)
    }
}

fn union(a: &[usize], b: &[usize]) -> Vec<usize> {
    let mut out = [a, b].concat();
    out.sort_unstable();
    out
}

/// Whether image `i` has a usable box: inside the image and not empty.
pub fn box_of(set: &ImageSet, i: usize) -> BoxState {
    match set.boxes.get(i) {
        None | Some(&crate::data::NO_BOX) => BoxState::Missing,
        Some(&[x0, y0, x1, y1]) => {
            let s = set.size as u32;
            if x0 < x1 && y0 < y1 && x1 <= s && y1 <= s {
                BoxState::Valid([x0, y0, x1, y1])
            } else {
                BoxState::Outside
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoxState {
    Valid([u32; 4]),
    Missing,
    Outside,
}

/// Per class: the first min(boxed/2, per_class) boxed images go to A, as
/// many more to B; unboxed images fill both up to `per_class` as the shared
/// part; the rest is public (capped at `public_per_class` when set).
pub fn partition(set: &ImageSet, spec: &SplitSpec) -> Partition {
    let mut p = Partition {
        a_only: vec![],
        b_only: vec![],
        shared: vec![],
        public: vec![],
        bad_boxes: 0,
        warnings: vec![],
    };
    for class in 0..set.classes() {
        let mut members: Vec<usize> = (0..set.len())
            .filter(|&i| set.labels[i] as usize == class)
            .collect();
        Rng::derive(spec.seed, &[class as u64]).shuffle(&mut members);
        let (mut boxed, mut unboxed) = (Vec::new(), Vec::new());
        for i in members {
            match box_of(set, i) {
                BoxState::Valid(_) => boxed.push(i),
                BoxState::Outside => {
                    p.bad_boxes += 1;
                    unboxed.push(i);
                }
                BoxState::Missing => unboxed.push(i),
            }
        }
        let n = (boxed.len() / 2).min(spec.per_class);
        let shared = (spec.per_class - n).min(unboxed.len());
        p.a_only.extend(&boxed[..n]);
        p.b_only.extend(&boxed[n..2 * n]);
        p.shared.extend(&unboxed[..shared]);
        let mut rest: Vec<usize> = boxed[2 * n..]
            .iter()
            .chain(&unboxed[shared..])
            .copied()
            .collect();
        if spec.public_per_class > 0 {
            rest.truncate(spec.public_per_class);
        }
        p.public.extend(rest);
        let name = set
            .class_names
            .get(class)
            .cloned()
            .unwrap_or_else(|| class.to_string());
        if n + shared < spec.per_class {
            p.warnings.push(format!(
                "class {name}: {} training images per model instead of {} ({} boxed, {} unboxed)",
                n + shared,
                spec.per_class,
                boxed.len(),
                unboxed.len()
            ));
        }
        if n == 0 {
            p.warnings.push(format!(
                "class {name}: fewer than 2 boxed images, none of it is attacked"
            ));
        }
    }
    for list in [&mut p.a_only, &mut p.b_only, &mut p.shared, &mut p.public] {
        list.sort_unstable();
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` images of `classes` classes; every `unboxed_every`-th has no box.
    pub(crate) fn pool(n: usize, classes: usize, unboxed_every: usize) -> ImageSet {
        ImageSet {
            size: 32,
            pixels: vec![0; n * 32 * 32 * 3],
            labels: (0..n).map(|i| (i % classes) as u32).collect(),
            boxes: (0..n)
                .map(|i| {
                    if unboxed_every > 0 && i % unboxed_every == 0 {
                        [0, 0, 0, 0]
                    } else {
                        [8, 8, 20, 20]
                    }
                })
                .collect(),
            class_names: (0..classes).map(|c| format!("c{c}")).collect(),
        }
    }

    #[test]
    fn sets_are_disjoint_sized_and_reproducible() {
        for seed in 0..20u64 {
            let set = pool(300, 5, 7);
            let spec = SplitSpec {
                per_class: 12,
                public_per_class: 0,
                seed,
            };
            let p = partition(&set, &spec);
            assert_eq!(p, partition(&set, &spec));
            let mut all = [
                p.a_only.clone(),
                p.b_only.clone(),
                p.shared.clone(),
                p.public.clone(),
            ]
            .concat();
            let total = all.len();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), total, "overlap at seed {seed}");
            assert_eq!(total, 300, "every image is dealt out");
            assert_eq!(p.train_a().len(), p.train_b().len());
            assert_eq!(p.train_a().len(), 5 * 12);
            for &i in p.a_only.iter().chain(&p.b_only) {
                assert!(matches!(box_of(&set, i), BoxState::Valid(_)));
            }
            assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        }
    }

    #[test]
    fn seeds_change_the_deal_and_public_is_capped() {
        let set = pool(300, 5, 0);
        let spec = |seed| SplitSpec {
            per_class: 10,
            public_per_class: 20,
            seed,
        };
        let (a, b) = (partition(&set, &spec(1)), partition(&set, &spec(2)));
        assert_ne!(a.a_only, b.a_only);
        assert_eq!(a.public.len(), 5 * 20);
        assert!(a.shared.is_empty());
        // A split is fixed by its seed, on every machine: these must never change.
        assert_eq!(&a.a_only[..6], &[15, 17, 19, 42, 43, 50]);
        assert_eq!(&a.public[..6], &[1, 2, 3, 5, 7, 8]);
    }

    #[test]
    fn short_classes_and_bad_boxes_are_reported() {
        let mut set = pool(40, 2, 0);
        set.boxes[0] = [10, 10, 40, 20];
        let p = partition(
            &set,
            &SplitSpec {
                per_class: 15,
                public_per_class: 0,
                seed: 0,
            },
        );
        assert_eq!(p.bad_boxes, 1);
        assert_eq!(p.a_only.len(), 9 + 10);
        assert!(
            p.warnings.iter().any(|w| w.contains("class c0")),
            "{:?}",
            p.warnings
        );
    }
}
