//! The memorization monitor: déjà vu on the one model being trained. A fixed
//! set of canary training images and as many images of the same classes
//! kept out of training are attacked from their background crops every few
//! epochs, by k-NN over the remaining training images; the canaries' top-1
//! minus the held-out top-1 is the `dejavu_gap`. Without a reference model
//! the held-out images play its part: the same distribution, never seen.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::Device;
use sslab_shared::api::MemorizationPoint;
use sslab_shared::audit::{AttackEmbedding, AttackSpec};
use sslab_shared::rng::Rng;
use sslab_shared::spec::MemorizationMonitor;

use super::attack::PublicIndex;
use super::crop::{self, Rect};
use super::report::accuracy_at;
use crate::data::{ImageSet, UNLABELED};
use crate::model::Encoder;
use crate::{EngineError, Result, eval};

pub struct Monitor {
    spec: MemorizationMonitor,
    /// The training images other than the canaries, whole.
    public: ImageSet,
    canaries: ImageSet,
    heldout: ImageSet,
}

/// The monitor's images dealt out of `data`, and the indices of `data` to
/// train on: every image but the held-out ones.
pub struct Dealt {
    pub monitor: Monitor,
    pub train: Vec<usize>,
    /// Indices into `data`.
    pub canaries: Vec<usize>,
    pub heldout: Vec<usize>,
}

/// Per class, in an order seeded by `seed`, the first `canaries_per_class`
/// images with a usable background crop are canaries and the next as many
/// are held out (fewer, equally for both, where a class has too few).
pub fn deal(data: &ImageSet, spec: &MemorizationMonitor, seed: u64) -> Result<Dealt> {
    let attack = AttackSpec {
        k: spec.k,
        embedding: spec.embedding,
        ..AttackSpec::default()
    };
    let mut by_class: Vec<Vec<(usize, Rect)>> = vec![Vec::new(); data.classes()];
    let mut skipped: BTreeMap<crop::Skip, usize> = BTreeMap::new();
    for i in 0..data.len() {
        let label = data.labels[i];
        if label == UNLABELED {
            continue;
        }
        match crop::background_crop(data, i, &attack) {
            Ok(r) => by_class[label as usize].push((i, r)),
            Err(why) => *skipped.entry(why).or_default() += 1,
        }
    }
    let (mut canaries, mut heldout) = (Vec::new(), Vec::new());
    for (class, images) in by_class.iter_mut().enumerate() {
        Rng::derive(seed, &[0xCA4A, class as u64]).shuffle(images);
        let n = spec.canaries_per_class.min(images.len() / 2);
        canaries.extend_from_slice(&images[..n]);
        heldout.extend_from_slice(&images[n..2 * n]);
    }
    if canaries.is_empty() {
        let reasons: Vec<String> = skipped
            .iter()
            .map(|(why, n)| format!("{n} × {}", why.reason()))
            .collect();
        return Err(EngineError::Data(format!(
            "the memorization monitor needs two images of a class with a usable background crop; none has (left out: {})",
            if reasons.is_empty() {
                "none".to_string()
            } else {
                reasons.join(", ")
            }
        )));
    }
    let held: BTreeSet<usize> = heldout.iter().map(|&(i, _)| i).collect();
    let marked: BTreeSet<usize> = canaries.iter().map(|&(i, _)| i).collect();
    let train: Vec<usize> = (0..data.len()).filter(|i| !held.contains(i)).collect();
    // Unlabelled images (STL-10's extra split) train but cannot vote.
    let public: Vec<usize> = train
        .iter()
        .copied()
        .filter(|&i| !marked.contains(&i) && data.labels[i] != UNLABELED)
        .collect();
    let public_size = public.len();
    if public_size < 2 * spec.k {
        return Err(EngineError::Data(format!(
            "the memorization monitor votes with eval.memorization.k = {} neighbours but only {public_size} training images are left to vote (at least 2·k are needed): lower k or the canaries",
            spec.k
        )));
    }
    Ok(Dealt {
        monitor: Monitor {
            spec: spec.clone(),
            // A canary's own full image would be its crop's nearest neighbour.
            public: data.subset(&public),
            canaries: crop::crop_set(data, &canaries),
            heldout: crop::crop_set(data, &heldout),
        },
        train,
        canaries: canaries.iter().map(|&(i, _)| i).collect(),
        heldout: heldout.iter().map(|&(i, _)| i).collect(),
    })
}

impl Monitor {
    /// Whether the attack runs after `epochs_done` of `epochs`.
    pub fn due(&self, epochs_done: usize, epochs: usize) -> bool {
        epochs_done.is_multiple_of(self.spec.every) || epochs_done == epochs
    }

    /// Attacks the canaries' and the held-out images' crops with `encoder`.
    pub fn measure(
        &self,
        encoder: &Encoder,
        epoch: usize,
        step: usize,
        device: &Device,
    ) -> Result<MemorizationPoint> {
        let embed = |set: &ImageSet| -> Result<eval::Features> {
            let layers = eval::embed_layers(encoder, set, device)?;
            Ok(match self.spec.embedding {
                AttackEmbedding::Projector => layers.into_iter().last(),
                AttackEmbedding::Backbone => layers.into_iter().next(),
            }
            .expect("an encoder has at least its backbone layer"))
        };
        let features = embed(&self.public)?;
        let index = PublicIndex {
            features: &features,
            labels: &self.public.labels,
            classes: self.public.classes(),
        };
        let accuracy = |set: &ImageSet| -> Result<(f64, f64)> {
            let f = embed(set)?;
            let guesses: Vec<_> = (0..f.len())
                .map(|i| index.guess(f.row(i), self.spec.k))
                .collect();
            Ok((
                accuracy_at(&guesses, &set.labels, 1.0).0,
                accuracy_at(&guesses, &set.labels, 0.2).0,
            ))
        };
        let (canary, canary_confident) = accuracy(&self.canaries)?;
        let (heldout, heldout_confident) = accuracy(&self.heldout)?;
        Ok(MemorizationPoint {
            epoch: epoch as i64,
            step: step as i64,
            canary_top1: canary,
            heldout_top1: heldout,
            dejavu_gap: canary - heldout,
            dejavu_gap_confident: canary_confident - heldout_confident,
            canaries: self.canaries.len() as i64,
            heldout: self.heldout.len() as i64,
        })
    }
}

#[cfg(test)]
mod tests {
    use sslab_shared::spec::{DataSpec, ScenesSpec};

    use super::*;

    fn scenes() -> ImageSet {
        crate::data::load(&DataSpec::Scenes(ScenesSpec {
            classes: 4,
            train_images: 200,
            test_images: 8,
            ..ScenesSpec::default()
        }))
        .unwrap()
        .train
    }

    #[test]
    fn canaries_and_heldout_are_disjoint_balanced_and_seeded() {
        let data = scenes();
        let spec = MemorizationMonitor {
            canaries_per_class: 5,
            ..MemorizationMonitor::default()
        };
        let dealt = deal(&data, &spec, 3).unwrap();
        assert_eq!((dealt.canaries.len(), dealt.heldout.len()), (20, 20));
        for c in 0..4 {
            let count = |set: &[usize]| set.iter().filter(|&&i| data.labels[i] == c).count();
            assert_eq!((count(&dealt.canaries), count(&dealt.heldout)), (5, 5));
        }
        // Held-out images leave training; canaries stay in it but not in
        // the public set.
        assert_eq!(dealt.train.len(), 180);
        assert!(dealt.heldout.iter().all(|i| !dealt.train.contains(i)));
        assert!(dealt.canaries.iter().all(|i| dealt.train.contains(i)));
        assert_eq!(dealt.monitor.public.len(), 160);
        // Unlabelled images train but do not vote.
        let mut extra = data.clone();
        extra.labels = vec![UNLABELED; extra.len()];
        let with_extra = deal(&data.concat(&extra), &spec, 3).unwrap();
        assert_eq!(with_extra.train.len(), 380);
        assert_eq!(with_extra.monitor.public.len(), 160);
        assert_eq!(dealt.monitor.canaries.len(), 20);
        let again = deal(&data, &spec, 3).unwrap();
        assert_eq!(
            (again.canaries, again.heldout),
            (dealt.canaries.clone(), dealt.heldout)
        );
        assert_ne!(deal(&data, &spec, 4).unwrap().canaries, dealt.canaries);
        // A class short of images gives what it has, equally to both sides.
        let mut keep: Vec<usize> = (0..data.len()).filter(|&i| data.labels[i] != 0).collect();
        keep.extend((0..data.len()).filter(|&i| data.labels[i] == 0).take(4));
        let short = data.subset(&keep);
        let dealt = deal(&short, &spec, 3).unwrap();
        let zeros = |set: &[usize]| set.iter().filter(|&&i| short.labels[i] == 0).count();
        assert_eq!((zeros(&dealt.canaries), zeros(&dealt.heldout)), (2, 2));
        assert_eq!((dealt.canaries.len(), dealt.heldout.len()), (17, 17));
    }

    #[test]
    fn images_without_boxes_are_refused_with_the_reason() {
        let mut data = scenes();
        data.boxes = vec![crate::data::NO_BOX; data.len()];
        let err = deal(&data, &MemorizationMonitor::default(), 0)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("200 × no object box"), "{err}");
    }

    #[test]
    fn a_public_set_too_small_for_k_is_refused() {
        let spec = MemorizationMonitor {
            canaries_per_class: 20,
            k: 40,
            ..MemorizationMonitor::default()
        };
        // 200 images less 80 canaries and 80 held out leave 40 to vote.
        let err = deal(&scenes(), &spec, 0).err().unwrap().to_string();
        assert!(err.contains("only 40 training images are left"), "{err}");
    }
}
