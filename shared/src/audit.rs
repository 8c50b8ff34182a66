//! The déjà vu memorization audit (Meehan et al. 2023, arXiv:2304.13850):
//! the spec of an audit and the report it produces.
//!
//! One `RunSpec` trains two models: the target on set A, the reference on a
//! disjoint set B. Each model then sees only a background crop of the images
//! unique to A and to B and guesses the object's label from its k nearest
//! neighbours in a labelled public set. The target guessing its own training
//! images better than the reference does is memorization of those images.

use serde::{Deserialize, Serialize};

use crate::RunSpec;
use crate::decoder::{DecoderKind, DecoderSpec, InfusionSettings, LossPoint, RcdmSettings};
use crate::error::SpecError;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSpec {
    pub name: String,
    /// How both models train. Its data's training split is the pool that
    /// A, B and the public set are drawn from; it must carry object boxes
    /// (the scenes, or an image folder with `boxes.csv`).
    pub run: RunSpec,
    pub split: SplitSpec,
    pub attack: AttackSpec,
    /// Epochs after which both models are attacked, to follow memorization
    /// over training; the last epoch always is.
    pub snapshots: Vec<usize>,
    /// Two finished runs to attack instead of training: the target trained
    /// on part A of a partition (`subset.kind = "dejavu"`, `part = "a"`)
    /// and the reference on part B of the same one. The server fills `run`
    /// and `split` from them; they are attacked at their last epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs: Option<AuditRuns>,
    /// Pictures of what each model recalls from a crop: a decoder per model
    /// trained on the public set, asked to draw each attacked image from its
    /// background crop alone. None: no pictures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconstruct: Option<ReconstructSpec>,
}

/// The decoders of an audit's reconstructions (the déjà vu paper's RCDM
/// figures): one per model, trained on the public set (which neither model
/// trained on), conditioned on the attacked layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconstructSpec {
    pub kind: DecoderKind,
    /// Side of the drawn images; none: the data's. A smaller side must
    /// divide it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_size: Option<usize>,
    /// Optimiser steps of each model's decoder, batch and learning rate.
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
    /// Drawings per crop and model in the grid.
    pub samples: usize,
    /// Rows of the grid: memorized images first (the target's most
    /// confident first), then the other attacked images.
    pub images: usize,
    pub rcdm: RcdmSettings,
    pub infusion: InfusionSettings,
}

impl Default for ReconstructSpec {
    fn default() -> Self {
        let d = DecoderSpec::default();
        ReconstructSpec {
            kind: d.kind,
            image_size: None,
            steps: d.steps,
            batch: d.batch,
            lr: d.lr,
            seed: 0,
            samples: 3,
            images: 8,
            rcdm: d.rcdm,
            infusion: d.infusion,
        }
    }
}

impl ReconstructSpec {
    /// The settings as one decoder job's.
    pub fn decoder(&self) -> DecoderSpec {
        DecoderSpec {
            name: "reconstruct".into(),
            kind: self.kind,
            image_size: self.image_size,
            steps: self.steps,
            batch: self.batch,
            lr: self.lr,
            seed: self.seed,
            samples: self.samples,
            grid_images: self.images,
            rcdm: self.rcdm.clone(),
            infusion: self.infusion.clone(),
            ..DecoderSpec::default()
        }
    }

    fn validate(&self) -> Result<(), SpecError> {
        let field = |f: &str| {
            let f = if f == "grid_images" { "images" } else { f };
            format!("reconstruct.{f}")
        };
        self.decoder()
            .validate()
            .map_err(|e| SpecError::new(field(&e.field), e.message))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRuns {
    pub target: String,
    pub reference: String,
}

/// The A / B / shared / public partition of the reference code, per class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitSpec {
    /// Training images per class in each of A and B (the paper's `npc`).
    /// Boxed images are split between A and B; unboxed ones fill both
    /// equally as the shared part.
    pub per_class: usize,
    /// Public images per class (labelled, seen by neither model); 0 takes
    /// every image left.
    pub public_per_class: usize,
    /// Orders each class's images before they are dealt out.
    pub seed: u64,
}

impl Default for SplitSpec {
    fn default() -> Self {
        SplitSpec {
            per_class: 50,
            public_per_class: 0,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackEmbedding {
    /// The projector's output (the paper's default).
    Projector,
    /// The backbone's representation (guillotine; memorizes less).
    Backbone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CropKind {
    /// The largest rectangle that touches no box (largest shorter side).
    Largest,
    /// The top-left corner, `corner_fraction` of the width and height; it
    /// may show part of the object (the reference's ablation).
    Corner,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttackSpec {
    /// Public neighbours that vote (exact L2).
    pub k: usize,
    pub embedding: AttackEmbedding,
    pub crop: CropKind,
    /// Images whose best crop has a shorter side below this fraction of the
    /// image side are left out (the paper asks 100 px of ImageNet images).
    pub min_crop: f64,
    pub corner_fraction: f64,
}

impl Default for AttackSpec {
    fn default() -> Self {
        AttackSpec {
            k: 100,
            embedding: AttackEmbedding::Projector,
            crop: CropKind::Largest,
            min_crop: 0.25,
            corner_fraction: 0.3,
        }
    }
}

impl AuditSpec {
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let spec: AuditSpec = crate::error::from_toml(text)?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        let spec: AuditSpec = crate::error::from_json(text)?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |field: &str, msg: String| Err(SpecError::new(field, msg));
        self.run.validate().map_err(|e| {
            SpecError::new(
                if e.field.is_empty() {
                    "run".to_string()
                } else {
                    format!("run.{}", e.field)
                },
                e.message,
            )
        })?;
        // A registered data set is checked once it is looked up (its files
        // may be an image folder with boxes).
        if !self.run.data.may_have_boxes() {
            return bad(
                "run.data.source",
                format!(
                    "the audit needs object boxes: the built-in scenes, or an image folder with boxes.csv or boxes.json; {} has none",
                    self.run.data.resolved().source()
                ),
            );
        }
        if self.runs.is_some() && !self.snapshots.is_empty() {
            return bad(
                "snapshots",
                "two finished runs are attacked at their last epoch only; leave snapshots out"
                    .into(),
            );
        }
        if self.run.subset.is_some() {
            return bad(
                "run.subset",
                "the audit deals A and B out of the data itself; leave the run's subset out".into(),
            );
        }
        if self.split.per_class < 1 {
            return bad("split.per_class", "must be at least 1".into());
        }
        if self.attack.k < 1 || self.attack.k > 1000 {
            return bad(
                "attack.k",
                format!("must be between 1 and 1000, got {}", self.attack.k),
            );
        }
        if !(self.attack.min_crop > 0.0 && self.attack.min_crop <= 1.0) {
            return bad(
                "attack.min_crop",
                format!(
                    "a fraction of the image side in (0, 1], got {}",
                    self.attack.min_crop
                ),
            );
        }
        if !(self.attack.corner_fraction > 0.0 && self.attack.corner_fraction <= 1.0) {
            return bad(
                "attack.corner_fraction",
                format!("must be in (0, 1], got {}", self.attack.corner_fraction),
            );
        }
        if let Some(r) = &self.reconstruct {
            r.validate()?;
        }
        let epochs = self.run.schedule.epochs;
        if let Some(e) = self.snapshots.iter().find(|&&e| e < 1 || e > epochs) {
            return bad(
                "snapshots",
                format!("epoch {e} is outside the run's 1…{epochs}"),
            );
        }
        Ok(())
    }

    /// The epochs attacked, ascending, the last one included.
    pub fn snapshot_epochs(&self) -> Vec<usize> {
        let mut out = self.snapshots.clone();
        out.push(self.run.schedule.epochs);
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Fractions of the most confident examples at which accuracy is reported.
pub const FRACTIONS: [f64; 11] = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// Everything an audit found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditReport {
    pub spec: AuditSpec,
    pub split: SplitSummary,
    /// The pool's class names, by label.
    pub class_names: Vec<String>,
    /// One entry per snapshot epoch, ascending.
    pub snapshots: Vec<SnapshotReport>,
    /// Every attacked image at the last snapshot.
    pub examples: Vec<Example>,
    /// When the spec asked for them; the grid is `reconstruction.png`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconstruction: Option<Reconstruction>,
}

/// What the models drew from the attacked images' background crops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reconstruction {
    pub kind: DecoderKind,
    /// The layer conditioned on: the attacked one (`projector` or `backbone`).
    pub layer: String,
    pub dim: usize,
    pub image_size: usize,
    /// Images each decoder learnt from (the public set).
    pub public_images: usize,
    /// Training loss of the target-A and the reference-B model's decoders.
    pub loss_a: Vec<LossPoint>,
    pub loss_b: Vec<LossPoint>,
    /// How often a drawing from the crop shows the image's true class, over
    /// every attacked image: drawn by the model that trained on the image
    /// (target) and by the one that did not (reference). The judges are both
    /// models' full-image kNN classifiers on the public set, averaged.
    pub target_top1: f64,
    pub reference_top1: f64,
    /// The same over the memorized images only (none: there were none).
    pub memorized_target_top1: Option<f64>,
    pub memorized_reference_top1: Option<f64>,
    /// The control: drawn by the target from the whole image instead of
    /// the crop; how much of the class its decoder can show at all.
    pub whole_image_top1: f64,
    /// 1 / classes.
    pub chance: f64,
    /// The grid's rows, top down: crop, image, the target's drawings, the
    /// reference's.
    pub rows: Vec<ReconstructedImage>,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReconstructedImage {
    /// Index in the pool, as `Example::image`.
    pub image: usize,
    pub set: String,
    pub label: u32,
    /// correlated / memorized / forgotten / unassociated (`Example::outcome`).
    pub outcome: String,
}

impl AuditReport {
    /// Up to `n` attacked images only the target guessed, its most
    /// confident first: the gallery of the audit page.
    pub fn memorized(&self, n: usize) -> Vec<&Example> {
        let mut out: Vec<&Example> = self
            .examples
            .iter()
            .filter(|e| e.outcome() == "memorized")
            .collect();
        out.sort_by(|a, b| b.target.confidence.total_cmp(&a.target.confidence));
        out.truncate(n);
        out
    }
}

/// Sizes of the partition, and every image left out and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitSummary {
    pub a_only: usize,
    pub b_only: usize,
    pub shared: usize,
    pub public: usize,
    /// A-only and B-only images whose crop is attacked.
    pub attacked_a: usize,
    pub attacked_b: usize,
    /// (reason, count): images of A or B not attacked, and why.
    pub skipped: Vec<(String, usize)>,
    /// Classes that got fewer than `per_class` training images, said plainly.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotReport {
    pub epoch: usize,
    /// Full-image kNN top-1 (public set as memory, held-out test images as
    /// queries) of the target and the reference model.
    pub knn_target: f64,
    pub knn_reference: f64,
    /// Accuracy over the most confident fraction, for each of [`FRACTIONS`].
    pub curve: Vec<CurvePoint>,
    pub four_way: FourWay,
    pub per_class: Vec<ClassGap>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub fraction: f64,
    /// (A on A-only + B on B-only) / 2.
    pub target_top1: f64,
    pub target_top5: f64,
    /// (A on B-only + B on A-only) / 2: the correlation baseline.
    pub reference_top1: f64,
    pub reference_top5: f64,
}

/// Each attacked image by whether the model that trained on it (target) and
/// the one that did not (reference) guess its label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FourWay {
    /// Both right: the background alone says the label.
    pub correlated: usize,
    /// Only the target right.
    pub memorized: usize,
    /// Only the reference right.
    pub forgotten: usize,
    /// Both wrong.
    pub unassociated: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassGap {
    pub class: u32,
    pub name: String,
    pub images: usize,
    pub target_top1: f64,
    pub reference_top1: f64,
}

/// One attacked image at the last snapshot (a row of `examples.csv`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// Index in the pool (the data's training split).
    pub image: usize,
    /// "A" or "B": the set it is unique to.
    pub set: String,
    pub label: u32,
    /// `[x0, y0, x1, y1)` of the crop in pixels.
    pub crop: [u32; 4],
    pub target: Guess,
    pub reference: Guess,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Guess {
    /// Labels by neighbour votes, most first (up to five).
    pub top5: Vec<u32>,
    /// Minus the entropy of the neighbours' label histogram.
    pub confidence: f64,
    /// The nearest public images, nearest first (up to five).
    pub neighbours: Vec<usize>,
}

impl Example {
    /// correlated / memorized / forgotten / unassociated.
    pub fn outcome(&self) -> &'static str {
        let t = self.target.top5.first() == Some(&self.label);
        let r = self.reference.top5.first() == Some(&self.label);
        match (t, r) {
            (true, true) => "correlated",
            (true, false) => "memorized",
            (false, true) => "forgotten",
            (false, false) => "unassociated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DataSpec;

    fn recipe() -> AuditSpec {
        AuditSpec::from_toml(include_str!("../../recipes/dejavu-tiny.toml")).unwrap()
    }

    #[test]
    fn the_recipe_parses_and_snapshots_end_at_the_last_epoch() {
        let spec = recipe();
        assert_eq!(
            spec.snapshot_epochs().last(),
            Some(&spec.run.schedule.epochs)
        );
        assert_eq!(spec.attack.embedding, AttackEmbedding::Projector);
    }

    #[test]
    fn bad_audits_name_their_field() {
        let field = |edit: fn(&mut AuditSpec)| {
            let mut spec = recipe();
            edit(&mut spec);
            spec.validate().unwrap_err().field
        };
        assert_eq!(field(|s| s.snapshots = vec![0]), "snapshots");
        assert_eq!(field(|s| s.snapshots = vec![100_000]), "snapshots");
        assert_eq!(field(|s| s.split.per_class = 0), "split.per_class");
        assert_eq!(field(|s| s.attack.k = 0), "attack.k");
        assert_eq!(field(|s| s.attack.min_crop = 0.0), "attack.min_crop");
        assert_eq!(field(|s| s.run.optimizer.lr = -1.0), "run.optimizer.lr");
        assert_eq!(
            field(|s| {
                s.run.data = DataSpec::Cifar10 {
                    path: "/data/cifar".into(),
                }
            }),
            "run.data.source"
        );
        assert_eq!(
            field(|s| {
                s.run.subset = Some(crate::spec::SubsetSpec::PerClass {
                    per_class: 5,
                    seed: 0,
                })
            }),
            "run.subset"
        );
        assert_eq!(
            field(|s| {
                s.runs = Some(AuditRuns {
                    target: "a".into(),
                    reference: "b".into(),
                });
                s.snapshots = vec![1];
            }),
            "snapshots"
        );
        let err = AuditSpec::from_toml("[attack]\nk = 5\ncrop = \"middle\"\n").unwrap_err();
        assert!(err.field.contains("attack"), "{err:?}");
    }
}
