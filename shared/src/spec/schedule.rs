//! Epochs, warm-up and the learning-rate decay.

use serde::{Deserialize, Serialize};

use super::*;
use crate::error::SpecError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleSpec {
    pub epochs: usize,
    /// Linear warm-up, then cosine decay to `final_lr_fraction` × lr.
    pub warmup_epochs: f64,
    pub final_lr_fraction: f64,
}

impl Default for ScheduleSpec {
    fn default() -> Self {
        Self {
            epochs: 20,
            warmup_epochs: 1.0,
            final_lr_fraction: 0.01,
        }
    }
}

/// The checks of schedule that serde cannot make, in the order a spec reports them.
pub(super) fn check(spec: &RunSpec) -> Result<(), SpecError> {
    let s = &spec.schedule;
    if s.epochs < 1 || s.epochs > 10_000 {
        return bad(
            "schedule.epochs",
            format!("must be between 1 and 10000, got {}", s.epochs),
        );
    }
    if !(s.warmup_epochs >= 0.0 && s.warmup_epochs <= s.epochs as f64) {
        return bad(
            "schedule.warmup_epochs",
            format!(
                "must be between 0 and epochs ({}), got {}",
                s.epochs, s.warmup_epochs
            ),
        );
    }
    if !(0.0..=1.0).contains(&s.final_lr_fraction) {
        return bad(
            "schedule.final_lr_fraction",
            format!("must be in [0, 1], got {}", s.final_lr_fraction),
        );
    }
    Ok(())
}
