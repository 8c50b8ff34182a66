//! sslab's engine: data, augmentations, backbones and heads, SSL methods, the
//! training loop and the evaluations. It knows nothing of HTTP or SQL: it
//! reports through an [`train::Observer`].

pub mod augment;
pub mod cka;
pub mod data;
pub mod dejavu;
pub mod error;
pub mod eval;
pub mod export;
pub mod generate;
pub mod method;
pub mod model;
pub mod ops;
pub mod optim;
pub mod probe;
pub mod train;

pub use error::{EngineError, Result};

// Training allocates and frees activation-sized buffers in every op. glibc
// (and jemalloc's defaults for big blocks) hand them back to the kernel,
// which zeroes fresh pages on the next touch; one arena that keeps every
// freed page (no decay: even a 30 s decay returned enough within one step
// for the kernel's zeroing to take a tenth of it), on huge pages, reuses
// them instead. A finished job hands them back: `ReleaseMemoryAtEnd`.
// jemalloc reuses a free extent only up to 64 times the size asked for
// (`lg_extent_max_active_fit` 6); with every freed page kept, a ViT's mix of
// large and small buffers then mapped fresh memory every step, without bound
// (DINO on a ViT-Tiny: +600 MB of RSS and a third of the step in the
// kernel's page zeroing per step). 2^10 lets big free extents be split.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(feature = "jemalloc")]
const JEMALLOC_CONF: &[u8] =
    b"narenas:1,oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:0,thp:always,lg_extent_max_active_fit:10\0";

#[cfg(feature = "jemalloc")]
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF_PTR: Option<&'static std::ffi::c_char> =
    // SAFETY: a NUL-terminated string that lives for the whole program.
    Some(unsafe { &*(JEMALLOC_CONF.as_ptr() as *const std::ffi::c_char) });

/// Prepares the process for training; call it first thing in `main`.
/// - candle's worker for elementwise ops spins 25 000 times after each op
///   before it sleeps, and on a 2-core machine that spinning takes a core
///   from the matrix kernels between ops (18 % of the CPU time of a small
///   ViT step, which then ran 15 % slower): it sleeps at once.
/// - candle counts its threads anew for every matmul and every call of
///   `get_num_threads`, by reading `/proc/cpuinfo` unless
///   `RAYON_NUM_THREADS` is set (3.5 % of a small ViT step): the count is
///   taken once and set there. rayon's pool then has as many threads as
///   candle's kernels use: one per physical core.
///
/// A setting of the user's own of either variable is kept.
///
/// # Safety
/// No other thread may be running yet: it sets environment variables.
pub unsafe fn prepare_process() {
    const SPIN: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    const THREADS: &str = "RAYON_NUM_THREADS";
    if std::env::var_os(SPIN).is_none() {
        // SAFETY: the caller's promise that no other thread reads the
        // environment meanwhile.
        unsafe { std::env::set_var(SPIN, "0") };
    }
    if std::env::var_os(THREADS).is_none() {
        let threads = candle_core::utils::get_num_threads().to_string();
        // SAFETY: as above.
        unsafe { std::env::set_var(THREADS, threads) };
    }
}

/// Runs `f` on one of rayon's threads while the caller waits. The kernels
/// split their work with rayon: from a thread outside the pool each split
/// is handed over and waited for, two thread switches per op; from inside,
/// the caller takes a share itself and the other threads steal the rest
/// (MAE on a ViT-Small on 2 cores: a fifth more images a second).
pub fn on_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// Returns the allocator's free pages to the system; the allocator keeps
/// them while a run trains.
pub fn release_free_memory() {
    #[cfg(feature = "jemalloc")]
    // SAFETY: "arena.<MALLCTL_ARENAS_ALL>.purge" takes and returns nothing;
    // the name is NUL-terminated.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}

/// Calls [`release_free_memory`] when dropped: held by each job's entry
/// point, so that a server's memory falls back after an audit, a decoder
/// or an evaluation however it ends, as it does after a run.
pub struct ReleaseMemoryAtEnd;

impl Drop for ReleaseMemoryAtEnd {
    fn drop(&mut self) {
        release_free_memory();
    }
}

/// The device `name` names: `cpu`, or `cuda:N` (`cuda` alone is `cuda:0`)
/// in a build with the `cuda` feature.
pub fn device_named(name: &str) -> std::result::Result<candle_core::Device, String> {
    let name = name.trim();
    if name == "cpu" {
        return Ok(candle_core::Device::Cpu);
    }
    let index = match name.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| format!("`{name}` is not a device: use cpu or cuda:N"))?,
        None => return Err(format!("`{name}` is not a device: use cpu or cuda:N")),
    };
    #[cfg(feature = "cuda")]
    {
        candle_core::Device::new_cuda(index)
            .map_err(|e| format!("cannot open GPU {index} (`{name}`): {e}"))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = index;
        Err(format!(
            "`{name}` needs a CUDA build of sslab (`cargo xtask cuda`); this one runs on the CPU only"
        ))
    }
}

/// The device this process chose with [`choose_device`], if it did.
static CHOSEN: std::sync::OnceLock<candle_core::Device> = std::sync::OnceLock::new();

/// Makes the device `name` names ([`device_named`]) the one
/// [`default_device`] answers for the rest of the process: how a machine
/// with several GPUs puts its in-process worker on one of them.
pub fn choose_device(name: &str) -> std::result::Result<(), String> {
    let device = device_named(name)?;
    CHOSEN
        .set(device)
        .map_err(|_| "the device was already chosen".to_string())
}

/// The device training runs on: the one chosen with [`choose_device`], else
/// the first CUDA GPU when built with `cuda` and one is present, else the CPU.
pub fn default_device() -> candle_core::Device {
    if let Some(device) = CHOSEN.get() {
        return device.clone();
    }
    #[cfg(feature = "cuda")]
    if let Ok(d) = candle_core::Device::new_cuda(0) {
        return d;
    }
    candle_core::Device::Cpu
}
