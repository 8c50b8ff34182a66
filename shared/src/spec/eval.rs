//! The evaluation plan: probes, layers, transfer data and the memorization
//! monitor.

use serde::{Deserialize, Serialize};

use super::*;
use crate::error::SpecError;

/// A probe of a frozen representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// Weighted kNN (Wu et al. 2018) against the training split.
    Knn,
    /// Multinomial logistic regression on standardised features.
    Linear,
    /// Logistic regression on a few labels per class, over several draws.
    Lowshot,
    /// Effective rank of the embeddings (arXiv:2210.02885); needs no labels.
    Rankme,
    /// ViTs only: each block's mean attention distance and attention
    /// entropy (rows at `blocks.I.attn`, whatever `layers` says); nothing
    /// for other backbones.
    Attention,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 5] = [
        ProbeKind::Knn,
        ProbeKind::Linear,
        ProbeKind::Lowshot,
        ProbeKind::Rankme,
        ProbeKind::Attention,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            ProbeKind::Knn => "knn",
            ProbeKind::Linear => "linear",
            ProbeKind::Lowshot => "lowshot",
            ProbeKind::Rankme => "rankme",
            ProbeKind::Attention => "attention",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KnnMetric {
    Cosine,
    L2,
}

/// The evaluation plan: which probes, at which layers. Every probe is fitted
/// on the training split and scored on the test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSpec {
    pub probes: Vec<ProbeKind>,
    /// `backbone`, `proj.0`, …; empty means every layer (the guillotine view).
    pub layers: Vec<String>,
    /// kNN: neighbours that vote (20 and 200 are usual), vote weight
    /// exp(sim / T), and the similarity (cosine, or negative L2 distance).
    pub knn_k: usize,
    pub knn_temperature: f64,
    pub knn_metric: KnnMetric,
    /// Linear probe: L2 strengths tried, chosen on this fraction of the
    /// training split held out for validation.
    pub linear_l2: Vec<f64>,
    pub linear_val_fraction: f64,
    /// Full-batch optimiser steps per fit.
    pub linear_steps: usize,
    /// Low-shot: labelled images per class, and fractions of the labels.
    pub lowshot_shots: Vec<usize>,
    pub lowshot_fractions: Vec<f64>,
    /// Label draws averaged per setting (the spread is reported too).
    pub lowshot_draws: usize,
    pub lowshot_l2: f64,
    /// Train a linear classifier on stop-gradient backbone features during
    /// training and log its accuracy on each batch (`online_probe_acc`).
    pub online_probe: bool,
    /// Data to probe instead of the run's own (transfer). Its training split
    /// fits the probes (the kNN memory bank), its test split scores them.
    pub data: Option<DataSpec>,
    /// The déjà vu memorization monitor (`dejavu_gap`), off when absent.
    pub memorization: Option<MemorizationMonitor>,
}

/// Déjà vu on the model being trained (arXiv:2304.13850, one model): every
/// `every` epochs, the background crops of `canaries_per_class` training
/// images per class and of as many images of the same classes kept out of
/// training are attacked by k-NN over the other training images. The
/// canaries' top-1 minus the held-out top-1 is the `dejavu_gap`: above zero
/// and growing, the model is learning its training images' objects from their
/// backgrounds. Needs data with object boxes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemorizationMonitor {
    /// Epochs between attacks (the last epoch is always attacked).
    pub every: usize,
    /// Canaries per class; as many held-out images per class leave training.
    pub canaries_per_class: usize,
    /// Neighbours that vote. The public set (the training images that are
    /// not canaries) must hold at least 2·k images, or the vote is the same
    /// for every crop; the paper's k = 100 suits large sets.
    pub k: usize,
    /// What is compared: the projector's output or the backbone's.
    pub embedding: crate::audit::AttackEmbedding,
}

impl Default for MemorizationMonitor {
    fn default() -> Self {
        Self {
            every: 1,
            canaries_per_class: 10,
            k: 20,
            embedding: crate::audit::AttackEmbedding::Projector,
        }
    }
}

impl Default for EvalSpec {
    fn default() -> Self {
        Self {
            probes: ProbeKind::ALL.to_vec(),
            layers: Vec::new(),
            knn_k: 20,
            knn_temperature: 0.07,
            knn_metric: KnnMetric::Cosine,
            linear_l2: vec![0.0, 1e-4, 1e-3, 1e-2],
            linear_val_fraction: 0.2,
            linear_steps: 200,
            lowshot_shots: vec![1, 2, 5],
            lowshot_fractions: vec![0.01],
            lowshot_draws: 3,
            lowshot_l2: 1e-3,
            online_probe: true,
            data: None,
            memorization: None,
        }
    }
}

impl EvalSpec {
    /// Checks the plan against the layers a model has.
    pub fn validate(&self, layer_names: &[String]) -> Result<(), SpecError> {
        let bad = |field: &str, msg: String| Err(SpecError::new(field, msg));
        if self.probes.is_empty() {
            return bad(
                "eval.probes",
                "name at least one probe: knn, linear, lowshot, rankme or attention".into(),
            );
        }
        for l in &self.layers {
            if !layer_names.contains(l) {
                return bad(
                    "eval.layers",
                    format!(
                        "this model has no layer `{l}`; its layers are {}",
                        layer_names.join(", ")
                    ),
                );
            }
        }
        if self.knn_k < 1 || self.knn_k > 1000 {
            return bad(
                "eval.knn_k",
                format!("must be between 1 and 1000, got {}", self.knn_k),
            );
        }
        if !(self.knn_temperature > 0.0) {
            return bad(
                "eval.knn_temperature",
                format!("must be above 0, got {}", self.knn_temperature),
            );
        }
        if self.linear_l2.is_empty() || self.linear_l2.iter().any(|x| !(0.0..=100.0).contains(x)) {
            return bad(
                "eval.linear_l2",
                "give one or more strengths in [0, 100]".into(),
            );
        }
        if !(self.linear_val_fraction > 0.0 && self.linear_val_fraction < 1.0) {
            return bad(
                "eval.linear_val_fraction",
                format!("must be in (0, 1), got {}", self.linear_val_fraction),
            );
        }
        if self.linear_steps < 1 || self.linear_steps > 100_000 {
            return bad(
                "eval.linear_steps",
                format!("must be between 1 and 100000, got {}", self.linear_steps),
            );
        }
        if self
            .lowshot_shots
            .iter()
            .any(|&k| !(1..=10_000).contains(&k))
        {
            return bad(
                "eval.lowshot_shots",
                "shots per class must be between 1 and 10000".into(),
            );
        }
        if self
            .lowshot_fractions
            .iter()
            .any(|f| !(*f > 0.0 && *f <= 1.0))
        {
            return bad(
                "eval.lowshot_fractions",
                "fractions must be in (0, 1]".into(),
            );
        }
        if self.lowshot_draws < 1 || self.lowshot_draws > 100 {
            return bad(
                "eval.lowshot_draws",
                format!("must be between 1 and 100, got {}", self.lowshot_draws),
            );
        }
        if !(0.0..=100.0).contains(&self.lowshot_l2) {
            return bad(
                "eval.lowshot_l2",
                format!("must be in [0, 100], got {}", self.lowshot_l2),
            );
        }
        if let Some(data) = &self.data {
            // The data checks of a run, reported under `eval.`.
            let mut probe = RunSpec {
                data: data.clone(),
                ..RunSpec::default()
            };
            probe.optimizer.batch_size = 2;
            probe.eval.probes = vec![ProbeKind::Knn];
            if let Err(e) = probe.validate() {
                return Err(SpecError::new(format!("eval.{}", e.field), e.message));
            }
        }
        Ok(())
    }

    /// The layers to probe, in depth order.
    pub fn probed_layers(&self, layer_names: &[String]) -> Vec<String> {
        layer_names
            .iter()
            .filter(|l| self.layers.is_empty() || self.layers.contains(l))
            .cloned()
            .collect()
    }

    pub fn parse_toml(text: &str) -> Result<EvalSpec, SpecError> {
        crate::error::from_toml(text)
    }
}

/// The checks of eval that serde cannot make, in the order a spec reports them.
pub(super) fn check(spec: &RunSpec) -> Result<(), SpecError> {
    let s = &spec.schedule;
    if let Some(m) = &spec.eval.memorization {
        if !spec.data.may_have_boxes() {
            return bad(
                "eval.memorization",
                format!(
                    "the monitor attacks background crops and needs object boxes: the built-in scenes, or an image folder with boxes.csv or boxes.json; {} has none",
                    spec.data.resolved().source()
                ),
            );
        }
        if m.every < 1 || m.every > s.epochs.max(1) {
            return bad(
                "eval.memorization.every",
                format!(
                    "must be between 1 and epochs ({}), got {}",
                    s.epochs, m.every
                ),
            );
        }
        if m.canaries_per_class < 1 {
            return bad(
                "eval.memorization.canaries_per_class",
                "must be at least 1".into(),
            );
        }
        if m.k < 1 || m.k > 1000 {
            return bad(
                "eval.memorization.k",
                format!("must be between 1 and 1000, got {}", m.k),
            );
        }
    }
    Ok(())
}
