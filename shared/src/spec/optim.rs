//! The optimiser and the number format of training.

use serde::{Deserialize, Serialize};

use super::*;
use crate::error::SpecError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Adamw,
    /// SGD with momentum (weight decay on ≥2-D weights only).
    Sgd,
    /// LARS (You et al. 2017, arXiv:1708.03888): SGD with momentum whose
    /// step for every weight matrix or kernel is scaled by the trust ratio
    /// η‖w‖ / (‖g‖ + λ‖w‖); biases and norms take plain steps.
    Lars,
}

/// The number format of the backbone's training forward and backward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    F32,
    /// bf16 activations and weight copies, f32 master weights, optimiser
    /// state, BatchNorm statistics, projector and loss (mixed precision).
    Bf16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerSpec {
    pub kind: OptimizerKind,
    /// Peak learning rate, reached at the end of warm-up.
    pub lr: f64,
    /// Applied to weights with two or more dimensions, never to biases or norms.
    pub weight_decay: f64,
    /// Weight decay at the end of training, reached along a cosine from
    /// `weight_decay` (DINO and MSN: 0.04 → 0.4); unset = constant.
    pub weight_decay_end: Option<f64>,
    /// SGD and LARS.
    pub momentum: f64,
    pub batch_size: usize,
    /// LARS trust coefficient η (0.02 in solo-learn's CIFAR recipes, 0.001
    /// in the paper).
    pub lars_eta: f64,
    /// Rescale the gradients when their global L2 norm is above this; 0 = never.
    pub grad_clip: f64,
    /// `bf16` trains the backbone in bfloat16 (fast on GPUs with bf16
    /// tensor cores, slow on CPUs); evaluation always runs in f32.
    pub precision: Precision,
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Adamw,
            lr: 2e-3,
            weight_decay: 1e-4,
            weight_decay_end: None,
            momentum: 0.9,
            batch_size: 128,
            lars_eta: 0.02,
            grad_clip: 0.0,
            precision: Precision::F32,
        }
    }
}

/// The checks of optim that serde cannot make, in the order a spec reports them.
pub(super) fn check(spec: &RunSpec) -> Result<(), SpecError> {
    let o = &spec.optimizer;
    if !(o.lr > 0.0 && o.lr <= 10.0) {
        return bad("optimizer.lr", format!("must be in (0, 10], got {}", o.lr));
    }
    if !(0.0..=1.0).contains(&o.weight_decay) {
        return bad(
            "optimizer.weight_decay",
            format!("must be in [0, 1], got {}", o.weight_decay),
        );
    }
    if let Some(end) = o.weight_decay_end
        && !(0.0..=1.0).contains(&end)
    {
        return bad(
            "optimizer.weight_decay_end",
            format!("must be in [0, 1], got {end}"),
        );
    }
    if !(0.0..1.0).contains(&o.momentum) {
        return bad(
            "optimizer.momentum",
            format!("must be in [0, 1), got {}", o.momentum),
        );
    }
    if !(o.lars_eta > 0.0 && o.lars_eta <= 1.0) {
        return bad(
            "optimizer.lars_eta",
            format!("must be in (0, 1], got {}", o.lars_eta),
        );
    }
    if !(o.grad_clip >= 0.0 && o.grad_clip.is_finite()) {
        return bad(
            "optimizer.grad_clip",
            format!("must be 0 (off) or a positive norm, got {}", o.grad_clip),
        );
    }
    if o.batch_size < 2 || o.batch_size > 4096 {
        return bad(
            "optimizer.batch_size",
            format!("must be between 2 and 4096, got {}", o.batch_size),
        );
    }
    if let DataSpec::Scenes(s) = &spec.data
        && o.batch_size > s.train_images
    {
        return bad(
            "optimizer.batch_size",
            format!(
                "is larger than the training split ({} images); lower it or add images",
                s.train_images
            ),
        );
    }
    Ok(())
}
