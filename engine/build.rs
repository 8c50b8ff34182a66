//! With the `cuda` feature, compiles `src/ops/kernels.cu` to PTX for the
//! CUDA ops (`src/ops/cuda.rs`). nvcc comes from `CUDA_ROOT` or the PATH
//! (`cargo xtask cuda` sets both); `CUDA_COMPUTE_CAP` picks the target
//! (80 when unset: PTX that the driver compiles for any newer GPU).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/ops/kernels.cu");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=CUDA_ROOT");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var_os("CUDA_ROOT")
        .map(|root| PathBuf::from(root).join("bin/nvcc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("kernels.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("-o")
        .arg(&out)
        .arg("src/ops/kernels.cu")
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "running {}: {e} (the cuda feature needs nvcc)",
                nvcc.display()
            )
        });
    assert!(status.success(), "nvcc failed on src/ops/kernels.cu");
}
