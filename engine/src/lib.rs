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

// Training allocates and frees activation-sized buffers in every op. glibc
// (and jemalloc's defaults for big blocks) hand them back to the kernel,
// which zeroes fresh pages on the next touch; one arena that keeps freed
// pages for 30 s, on huge pages, reuses them instead.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(feature = "jemalloc")]
const JEMALLOC_CONF: &[u8] =
    b"narenas:1,oversize_threshold:0,dirty_decay_ms:30000,muzzy_decay_ms:30000,thp:always\0";

#[cfg(feature = "jemalloc")]
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF_PTR: Option<&'static std::ffi::c_char> =
    // SAFETY: a NUL-terminated string that lives for the whole program.
    Some(unsafe { &*(JEMALLOC_CONF.as_ptr() as *const std::ffi::c_char) });

/// The device training runs on: the first CUDA GPU when built with `cuda`
/// and one is present, else the CPU.
pub fn default_device() -> candle_core::Device {
    #[cfg(feature = "cuda")]
    if let Ok(d) = candle_core::Device::new_cuda(0) {
        return d;
    }
    candle_core::Device::Cpu
}
