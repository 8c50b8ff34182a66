//! Conditional generators that show what a representation holds: RCDM
//! (a diffusion model conditioned on a frozen representation,
//! arXiv:2112.09164) and infusion training (a short learned chain from noise
//! to data, arXiv:1703.06975). A decoder trains on images the run did not
//! train on, conditioned on the run's representation at one layer.

use serde::{Deserialize, Serialize};

use crate::error::SpecError;
use crate::spec::DataSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DecoderKind {
    Rcdm,
    Infusion,
}

impl DecoderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DecoderKind::Rcdm => "rcdm",
            DecoderKind::Infusion => "infusion",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecoderSpec {
    pub name: String,
    pub kind: DecoderKind,
    /// The layers conditioned on, one decoder each: `backbone` or
    /// `proj.N` (the run's layer names). Two side by side show what
    /// the projector drops.
    pub layers: Vec<String>,
    /// Images the decoder learns from; none: the run's held-out (test)
    /// split. Part of it (`held_out_per_class`) is kept aside to measure
    /// conditioning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<DataSpec>,
    /// Images per class kept out of the decoder's training: the images
    /// whose representations condition the reported samples.
    pub held_out_per_class: usize,
    /// Side of the generated images; none: the run's. A smaller side must
    /// divide the run's: training images are averaged down to it and
    /// samples scaled back up to be embedded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_size: Option<usize>,
    /// Optimiser steps, batch and learning rate (AdamW).
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
    /// Samples drawn per conditioning image.
    pub samples: usize,
    /// Conditioning images shown in the grid (at most one per class first).
    pub grid_images: usize,
    pub rcdm: RcdmSettings,
    pub infusion: InfusionSettings,
}

impl Default for DecoderSpec {
    fn default() -> Self {
        DecoderSpec {
            name: String::new(),
            kind: DecoderKind::Infusion,
            layers: vec!["backbone".into()],
            data: None,
            held_out_per_class: 4,
            image_size: None,
            steps: 300,
            batch: 32,
            lr: 1e-3,
            seed: 0,
            samples: 4,
            grid_images: 8,
            rcdm: RcdmSettings::default(),
            infusion: InfusionSettings::default(),
        }
    }
}

/// The ADM UNet of RCDM, scaled down; every size is a parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RcdmSettings {
    /// Channels of the first level.
    pub channels: usize,
    /// Channel multiplier per level; the image halves between levels.
    pub multipliers: Vec<usize>,
    pub res_blocks: usize,
    /// Resolutions (pixels per side) with a self-attention block.
    pub attention: Vec<usize>,
    /// GroupNorm groups (32 in the paper; must divide every level's channels).
    pub groups: usize,
    /// Training timesteps of the linear β schedule.
    pub diffusion_steps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    /// Respaced steps used to sample.
    pub sample_steps: usize,
    pub sampler: Sampler,
    /// Decay of the weights' moving average that samples.
    pub ema: f64,
}

impl Default for RcdmSettings {
    fn default() -> Self {
        RcdmSettings {
            channels: 32,
            multipliers: vec![1, 2, 2],
            res_blocks: 1,
            attention: vec![8],
            groups: 8,
            diffusion_steps: 1000,
            beta_start: 1e-4,
            beta_end: 0.02,
            sample_steps: 50,
            sampler: Sampler::Ddim,
            ema: 0.999,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    /// Ancestral sampling on the respaced schedule.
    Ddpm,
    /// Deterministic DDIM (η = 0).
    Ddim,
}

/// The infusion chain of arXiv:1703.06975.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InfusionSettings {
    /// Steps of the chain, in training and in generation.
    pub steps: usize,
    /// The infusion rate α_t = alpha0 + omega·t.
    pub alpha0: f64,
    pub omega: f64,
    /// Channels of the operator's convolutions.
    pub channels: usize,
    /// Residual blocks of the operator.
    pub blocks: usize,
}

impl Default for InfusionSettings {
    fn default() -> Self {
        InfusionSettings {
            steps: 10,
            alpha0: 0.02,
            omega: 0.02,
            channels: 32,
            blocks: 2,
        }
    }
}

impl InfusionSettings {
    /// α_t, the chance a pixel is drawn from the target at step `t`
    /// (0 for `z⁰`'s mix of prior and target), clamped to 1.
    pub fn rate(&self, t: usize) -> f64 {
        (self.alpha0 + self.omega * t as f64).clamp(0.0, 1.0)
    }
}

impl DecoderSpec {
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let spec: DecoderSpec = crate::error::from_toml(text)?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        let spec: DecoderSpec = crate::error::from_json(text)?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |field: &str, msg: &str| Err(SpecError::new(field, msg));
        if self.layers.is_empty() {
            return bad("layers", "name at least one layer: backbone or proj.N");
        }
        for (i, l) in self.layers.iter().enumerate() {
            let ok = l == "backbone"
                || l.strip_prefix("proj.")
                    .is_some_and(|n| n.parse::<usize>().is_ok());
            if !ok {
                return Err(SpecError::new(
                    format!("layers[{i}]"),
                    format!("`{l}` is not a layer: backbone or proj.N"),
                ));
            }
        }
        if self.image_size.is_some_and(|s| s < 4) {
            return bad("image_size", "must be at least 4 pixels");
        }
        if self.steps == 0 {
            return bad("steps", "must be at least 1");
        }
        if self.batch < 2 {
            return bad("batch", "must be at least 2");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", "must be a positive number");
        }
        if self.samples == 0 {
            return bad("samples", "must be at least 1");
        }
        if self.held_out_per_class == 0 {
            return bad(
                "held_out_per_class",
                "must be at least 1: conditioning is measured on held-out images",
            );
        }
        if self.grid_images == 0 {
            return bad("grid_images", "must be at least 1");
        }
        match self.kind {
            DecoderKind::Rcdm => self.rcdm.validate(),
            DecoderKind::Infusion => self.infusion.validate(),
        }
    }
}

impl RcdmSettings {
    fn validate(&self) -> Result<(), SpecError> {
        let bad = |field: &str, msg: String| Err(SpecError::new(format!("rcdm.{field}"), msg));
        if self.channels == 0 {
            return bad("channels", "must be at least 1".into());
        }
        if self.multipliers.is_empty() || self.multipliers.contains(&0) {
            return bad(
                "multipliers",
                "one positive multiplier per level, e.g. [1, 2, 2]".into(),
            );
        }
        if self.groups == 0 {
            return bad("groups", "must be at least 1".into());
        }
        for m in &self.multipliers {
            if !(self.channels * m).is_multiple_of(self.groups) {
                return bad(
                    "groups",
                    format!(
                        "{} groups do not divide a level's {} channels",
                        self.groups,
                        self.channels * m
                    ),
                );
            }
        }
        if self.diffusion_steps < 2 {
            return bad("diffusion_steps", "must be at least 2".into());
        }
        if self.sample_steps == 0 {
            return bad(
                "sample_steps",
                "must be at least 1: sampling takes at least one step".into(),
            );
        }
        if self.sample_steps > self.diffusion_steps {
            return bad(
                "sample_steps",
                format!(
                    "{} is more than the {} training steps",
                    self.sample_steps, self.diffusion_steps
                ),
            );
        }
        if !(0.0 < self.beta_start && self.beta_start < self.beta_end && self.beta_end < 1.0) {
            return bad("beta_end", "need 0 < beta_start < beta_end < 1".into());
        }
        if !(0.0..1.0).contains(&self.ema) {
            return bad("ema", "must be in [0, 1)".into());
        }
        Ok(())
    }

    /// Checks that `image_size` halves cleanly at every level.
    pub fn check_image_size(&self, image_size: usize) -> Result<(), SpecError> {
        let levels = self.multipliers.len();
        let div = 1usize << (levels - 1);
        if image_size == 0 || !image_size.is_multiple_of(div) {
            return Err(SpecError::new(
                "rcdm.multipliers",
                format!(
                    "{levels} levels halve the image {} times; {image_size} px does not divide by {div}",
                    levels - 1
                ),
            ));
        }
        Ok(())
    }
}

impl InfusionSettings {
    fn validate(&self) -> Result<(), SpecError> {
        let bad = |field: &str, msg: &str| Err(SpecError::new(format!("infusion.{field}"), msg));
        if self.steps == 0 {
            return bad(
                "steps",
                "must be at least 1: generation takes at least one step",
            );
        }
        if self.channels == 0 {
            return bad("channels", "must be at least 1");
        }
        if !(self.alpha0 >= 0.0 && self.alpha0 < 1.0) {
            return bad("alpha0", "must be in [0, 1)");
        }
        if !(self.omega >= 0.0 && self.omega.is_finite()) {
            return bad("omega", "must be 0 or more");
        }
        Ok(())
    }
}

/// What a finished decoder reports (`decoder.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DecoderReport {
    pub name: String,
    pub kind: DecoderKind,
    /// The spec it ran with, defaults filled in.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub settings: serde_json::Value,
    pub image_size: usize,
    /// Images it learnt from, and how many were held out to condition on.
    pub train_images: usize,
    pub held_out_images: usize,
    pub layers: Vec<DecoderLayer>,
}

/// One decoder: the layer it is conditioned on and how well it does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DecoderLayer {
    pub layer: String,
    /// Size of the representation conditioned on.
    pub dim: usize,
    /// Training loss, one point per logged step.
    pub loss: Vec<LossPoint>,
    /// How often a kNN classifier on this layer's representation (fitted on
    /// the run's training split) gives a sample its source image's class.
    pub conditioning_accuracy: f64,
    /// 1 / classes.
    pub chance: f64,
    /// Mean pairwise RMS pixel distance (0–1 scale) between samples drawn for
    /// one image.
    pub sample_diversity: f64,
    /// The same between two real held-out images of one class.
    pub real_pair_distance: f64,
    /// Seconds of the last attempt.
    pub seconds: f64,
    /// The step its training carried on from after an interruption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<usize>,
}

/// A decoder job of the API: a decoder trained for a finished run by a
/// worker of the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DecoderJob {
    pub id: String,
    pub run: String,
    pub status: crate::api::RunStatus,
    pub error: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub spec: DecoderSpec,
    /// Optimiser steps done over every layer's decoder, and in all.
    pub step: i64,
    pub total_steps: i64,
    pub last_loss: Option<f64>,
    /// Once it succeeded; its grids are at `…/samples.png` and
    /// `…/interpolation.png`.
    pub report: Option<DecoderReport>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub team: String,
    pub created_by: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LossPoint {
    pub step: usize,
    pub loss: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_fields_are_named() {
        DecoderSpec::default().validate().unwrap();
        let rcdm = DecoderSpec {
            kind: DecoderKind::Rcdm,
            ..Default::default()
        };
        rcdm.validate().unwrap();
        let cases = [
            (
                "kind = \"rcdm\"\n[rcdm]\nsample_steps = 0",
                "rcdm.sample_steps",
            ),
            ("[infusion]\nsteps = 0", "infusion.steps"),
            ("layers = [\"head\"]", "layers[0]"),
            (
                "kind = \"rcdm\"\n[rcdm]\nchannels = 12\ngroups = 8",
                "rcdm.groups",
            ),
            ("kind = \"gan\"", "kind"),
            ("stepz = 3", "stepz"),
        ];
        for (text, field) in cases {
            let e = DecoderSpec::from_toml(text).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
        }
    }

    #[test]
    fn the_infusion_rate_grows_linearly() {
        let s = InfusionSettings::default();
        assert!((s.rate(0) - 0.02).abs() < 1e-12);
        assert!((s.rate(1) - 0.04).abs() < 1e-12);
        assert!((s.rate(10) - 0.22).abs() < 1e-12);
        let fast = InfusionSettings { omega: 0.5, ..s };
        assert_eq!(fast.rate(5), 1.0);
    }

    #[test]
    fn image_sizes_must_halve_cleanly() {
        let s = RcdmSettings::default();
        s.check_image_size(16).unwrap();
        assert_eq!(
            s.check_image_size(18).unwrap_err().field,
            "rcdm.multipliers"
        );
    }
}
