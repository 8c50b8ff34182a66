//! sslab's engine: data, augmentations, backbones and heads, SSL methods, the
//! training loop and the evaluations. It knows nothing of HTTP or SQL: it
//! reports through an [`train::Observer`].

pub mod augment;
pub mod data;
pub mod dejavu;
pub mod error;
pub mod eval;
pub mod method;
pub mod model;
pub mod ops;
pub mod optim;
pub mod probe;
pub mod train;

pub use error::{EngineError, Result};

/// The device training runs on: the first CUDA GPU when built with `cuda`
/// and one is present, else the CPU.
pub fn default_device() -> candle_core::Device {
    #[cfg(feature = "cuda")]
    if let Ok(d) = candle_core::Device::new_cuda(0) {
        return d;
    }
    candle_core::Device::Cpu
}
