//! SSL methods, one per file, behind one trait.

pub mod simclr;

use candle_core::Tensor;
use sslab_shared::spec::MethodSpec;

use crate::model::Encoder;

/// What a method returns for one batch.
pub struct StepLoss {
    /// The scalar to minimise.
    pub loss: Tensor,
    /// Backbone output for the first view, (N, D): what the online probe reads.
    pub features: Tensor,
}

/// An SSL objective: views in, loss out, plus a hook for momentum updates.
pub trait Method: Send {
    /// `views` are same-shaped batches, view `v` of image `i` at row `i` of `views[v]`.
    fn loss(&self, encoder: &Encoder, views: &[Tensor]) -> candle_core::Result<StepLoss>;

    /// Called after every optimiser step (EMA teachers update here).
    fn after_step(&mut self, _step: usize, _total_steps: usize) -> candle_core::Result<()> {
        Ok(())
    }
}

/// The method a spec names.
pub fn build(spec: &MethodSpec) -> Box<dyn Method> {
    match spec {
        MethodSpec::Simclr { temperature } => Box::new(simclr::SimClr::new(*temperature)),
    }
}
