//! `RunSpec`: everything a training run needs, as one document.
//!
//! The same document is TOML in a recipe file and JSON in the API. Unknown
//! fields are refused so that a typo never silently falls back to a default.

mod augment;
mod data;
mod eval;
pub mod help;
mod method;
mod model;
mod optim;
mod schedule;
#[cfg(test)]
mod tests;

pub use augment::*;
pub use data::*;
pub use eval::*;
pub use method::*;
pub use model::*;
pub use optim::*;
pub use schedule::*;

use serde::{Deserialize, Serialize};

use crate::error::SpecError;

/// A training run: data, method, model, augmentations, optimiser, schedule,
/// evaluation plan and seed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSpec {
    /// Free text shown in lists; empty means the server picks one.
    pub name: String,
    pub data: DataSpec,
    /// Pretrain on part of the training split only (the probes still fit
    /// on all of it); absent means all of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<SubsetSpec>,
    pub method: MethodSpec,
    pub backbone: BackboneSpec,
    pub projector: ProjectorSpec,
    pub augment: AugmentSpec,
    pub optimizer: OptimizerSpec,
    pub schedule: ScheduleSpec,
    pub eval: EvalSpec,
    /// Seeds data order, augmentations and initialisation.
    pub seed: u64,
}

/// A run spec that passed [`RunSpec::validate`]: what the engine trains.
/// Only [`RunSpec::into_valid`] makes one, so a function that takes it
/// needs no check of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSpec(RunSpec);

impl std::ops::Deref for ValidSpec {
    type Target = RunSpec;

    fn deref(&self) -> &RunSpec {
        &self.0
    }
}

impl ValidSpec {
    pub fn into_inner(self) -> RunSpec {
        self.0
    }
}

/// A failed check: the field's dotted path and what is wrong.
fn bad<T>(field: &str, msg: String) -> Result<T, SpecError> {
    Err(SpecError::new(field, msg))
}

impl RunSpec {
    /// Parses a spec from JSON; the error names the field that is wrong.
    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        let spec: RunSpec = crate::error::from_json(text)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Parses a spec from TOML (a recipe); the error names the field that is wrong.
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let spec: RunSpec = crate::error::from_toml(text)?;
        spec.validate()?;
        Ok(spec)
    }

    /// The spec, checked once, in the type the engine takes.
    pub fn into_valid(self) -> Result<ValidSpec, SpecError> {
        self.validate()?;
        Ok(ValidSpec(self))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks values serde cannot: ranges and combinations.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.name.len() > 200 {
            return bad("name", "must be at most 200 characters".into());
        }
        if let Some(subset) = &self.subset {
            subset.validate()?;
        }
        data::check(self)?;
        self.method.validate(self)?;
        if let Some(Err(m)) = self.predictor_dims() {
            return bad("method.predictor", m);
        }
        model::check(self)?;
        augment::check(self)?;
        optim::check(self)?;
        schedule::check(self)?;
        self.eval.validate(&self.layer_names())?;
        eval::check(self)
    }

    /// Makes the model fit the method: a ViT for the methods that mask
    /// patches, no projector for those that reconstruct pixels, no local
    /// views for those that do not read them.
    pub fn fit_model_to_method(&mut self) {
        if self.method.needs_vit() && self.backbone.kind != BackboneKind::Vit {
            self.backbone = BackboneSpec::small_vit();
        }
        if self.method.reconstructs() {
            self.projector.dims.clear();
        }
        if !self.method.takes_local_views() {
            self.augment.local_views = 0;
        }
    }

    /// Names of the probed layers, in depth order: `backbone`, `proj.0`, ….
    pub fn layer_names(&self) -> Vec<String> {
        let n = self.projector.dims.len();
        std::iter::once("backbone".to_string())
            .chain((0..n).map(|i| format!("proj.{i}")))
            .collect()
    }

    /// Points inside the backbone that CKA can compare, in depth order:
    /// the tiny CNN's `block0`…`block2`, a ResNet's `stem` and
    /// `layer1`…`layer4`, a ViT's `blocks.I.attn` and `blocks.I.mlp` (after
    /// each residual add). Each is pooled to one vector per image.
    pub fn block_names(&self) -> Vec<String> {
        match self.backbone.kind {
            BackboneKind::TinyCnn => (0..3).map(|i| format!("block{i}")).collect(),
            BackboneKind::Resnet18 | BackboneKind::Resnet50 => std::iter::once("stem".to_string())
                .chain((1..=4).map(|i| format!("layer{i}")))
                .collect(),
            BackboneKind::Vit => (0..self.backbone.depth)
                .flat_map(|i| [format!("blocks.{i}.attn"), format!("blocks.{i}.mlp")])
                .collect(),
        }
    }

    /// Everything CKA can compare: the backbone's blocks, then the named
    /// layers (`backbone`, `proj.0`, …).
    pub fn cka_layer_names(&self) -> Vec<String> {
        self.block_names()
            .into_iter()
            .chain(self.layer_names())
            .collect()
    }

    /// The method's predictor widths for this projector (`None` without a
    /// predictor); the input is the projector's output.
    pub fn predictor_dims(&self) -> Option<Result<Vec<usize>, String>> {
        let dims = &self.projector.dims;
        let first = dims.first().filter(|_| dims.len() > 1);
        self.method.predictor_dims(first, self.embedding_dim())
    }

    /// Width of the encoder's last layer: the projector's output, or the
    /// backbone's without a projector.
    pub fn embedding_dim(&self) -> usize {
        self.projector
            .dims
            .last()
            .unwrap_or(self.backbone.output_dim())
    }

    /// Optimiser steps in the whole run (the last partial batch is dropped).
    pub fn total_steps(&self) -> usize {
        let all = self.data.train_images();
        // Exact once the data is read (the engine reports it); here a guess
        // from the class count where the spec says it.
        let n = match (&self.subset, &self.data) {
            (Some(subset), DataSpec::Scenes(s)) => (0..s.classes)
                .map(|c| subset.wanted(c, s.classes).min(all / s.classes.max(1) + 1))
                .sum::<usize>()
                .min(all),
            _ => all,
        };
        // The memorization monitor keeps its held-out images out of training.
        let n = match (&self.eval.memorization, &self.data) {
            (Some(m), DataSpec::Scenes(s)) => {
                n.saturating_sub((m.canaries_per_class * s.classes).min(all / 2))
            }
            _ => n,
        };
        (n / self.optimizer.batch_size).max(1) * self.schedule.epochs
    }
}
