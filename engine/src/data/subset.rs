//! Subsets of a training split, drawn per class in a seeded order: a fixed
//! number per class, a power-law class imbalance (PMSN, arXiv:2210.07277),
//! or one side of a déjà vu partition.

use sslab_shared::audit::SplitSpec;
use sslab_shared::rng::Rng;
use sslab_shared::spec::{DejavuPart, SubsetSpec};

use super::ImageSet;
use crate::{EngineError, Result};

/// The indices `spec` keeps, ascending. A power-law subset that asks a
/// class for more images than it has is refused, naming the class, rather
/// than quietly flattened.
pub fn indices(set: &ImageSet, spec: &SubsetSpec) -> Result<Vec<usize>> {
    if let SubsetSpec::Dejavu {
        part,
        per_class,
        public_per_class,
        seed,
    } = *spec
    {
        let split = SplitSpec {
            per_class,
            public_per_class,
            seed,
        };
        let p = crate::dejavu::split::partition(set, &split);
        return Ok(match part {
            DejavuPart::A => p.train_a(),
            DejavuPart::B => p.train_b(),
        });
    }
    let classes = set.classes();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in set.labels.iter().enumerate() {
        members[l as usize].push(i);
    }
    let mut kept = Vec::new();
    for (c, mut m) in members.into_iter().enumerate() {
        let wanted = spec.wanted(c, classes);
        if matches!(spec, SubsetSpec::PowerLaw { .. }) && wanted > m.len() {
            return Err(EngineError::Data(format!(
                "subset: class {} ({}) has {} images, the power law asks {wanted}; lower subset.images",
                c,
                set.class_names.get(c).map_or("", String::as_str),
                m.len()
            )));
        }
        Rng::derive(spec.seed(), &[0x5B5E7, c as u64]).shuffle(&mut m);
        m.truncate(wanted);
        kept.extend(m);
    }
    kept.sort_unstable();
    Ok(kept)
}

pub fn apply(set: &ImageSet, spec: &SubsetSpec) -> Result<ImageSet> {
    Ok(set.subset(&indices(set, spec)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(per_class: &[usize]) -> ImageSet {
        let labels: Vec<u32> = per_class
            .iter()
            .enumerate()
            .flat_map(|(c, &n)| std::iter::repeat_n(c as u32, n))
            .collect();
        ImageSet {
            size: 2,
            pixels: (0..labels.len() * 12).map(|i| (i % 251) as u8).collect(),
            labels,
            boxes: Vec::new(),
            class_names: (0..per_class.len()).map(|c| format!("c{c}")).collect(),
        }
    }

    fn counts(s: &ImageSet) -> Vec<usize> {
        let mut out = vec![0; s.classes()];
        for &l in &s.labels {
            out[l as usize] += 1;
        }
        out
    }

    #[test]
    fn per_class_subsets_are_exact_seeded_and_keep_their_pixels() {
        let full = set(&[30, 30, 7]);
        let spec = |seed| SubsetSpec::PerClass {
            per_class: 10,
            seed,
        };
        let a = indices(&full, &spec(1)).unwrap();
        assert_eq!(a, indices(&full, &spec(1)).unwrap());
        assert_ne!(a, indices(&full, &spec(2)).unwrap());
        let sub = apply(&full, &spec(1)).unwrap();
        assert_eq!(counts(&sub), [10, 10, 7]);
        for (k, &i) in a.iter().enumerate() {
            assert_eq!(sub.image(k), full.image(i));
        }
    }

    #[test]
    fn power_law_subsets_follow_the_law_and_refuse_too_much() {
        let full = set(&[100; 10]);
        let spec = SubsetSpec::PowerLaw {
            images: 200,
            power: 1.0,
            seed: 0,
        };
        let n = counts(&apply(&full, &spec).unwrap());
        // p_c ∝ 1/(1+c): H_10 = 2.929, so class 0 keeps round(200/2.929) = 68.
        assert_eq!(n[0], 68);
        assert_eq!(n[9], (200.0 / 2.929 / 10.0f64).round() as usize);
        assert!(n.windows(2).all(|w| w[0] >= w[1]), "{n:?}");
        let flat = SubsetSpec::PowerLaw {
            images: 200,
            power: 0.0,
            seed: 0,
        };
        assert_eq!(counts(&apply(&full, &flat).unwrap()), [20; 10]);
        let greedy = SubsetSpec::PowerLaw {
            images: 900,
            power: 1.0,
            seed: 0,
        };
        let err = apply(&full, &greedy).unwrap_err().to_string();
        assert!(err.contains("class 0 (c0) has 100 images"), "{err}");
    }
}
