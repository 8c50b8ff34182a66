//! `cargo xtask cuda`: the CUDA build on a machine without a CUDA install.
//! The toolkit comes from NVIDIA's PyPI wheels (nvcc, headers and the
//! libraries the binaries link against); the driver library is a link-time
//! stub, since the GPU machine's driver provides the real `libcuda.so.1`.
//! Binaries land in `target/cuda/bin`, and stripped and xz-compressed in
//! `target/cuda/carry` (the CUDA kernels make them ~70 MB; ~10 MB packed),
//! ready to be carried to a GPU machine and run there
//! (`bench/gpu/all.sh`, `bench/gpu/train-step.sh`). `--check` only type-checks both features,
//! with nvcc and the headers alone.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::{cargo, run};

/// CUDA 13.0: what the GPU machines' driver (580) runs. The libraries'
/// sonames are what counts at run time, and those hold across 13.x.
const WHEELS: [&str; 8] = [
    "nvidia-cuda-nvcc==13.0.*",
    "nvidia-cuda-crt==13.0.*",
    "nvidia-nvvm==13.0.*",
    "nvidia-cuda-cccl==13.0.*",
    "nvidia-cuda-runtime==13.0.*",
    "nvidia-cuda-nvrtc==13.0.*",
    "nvidia-cublas==13.0.*",
    "nvidia-curand==10.4.0.*",
];
const CUDNN_WHEEL: &str = "nvidia-cudnn-cu13==9.26.*";

/// H200 / H100 unless `CUDA_COMPUTE_CAP` says otherwise.
const DEFAULT_COMPUTE_CAP: &str = "90";

/// What type-checking needs: nvcc (our kernels are compiled to PTX by the
/// engine's build script) and the headers; nothing is linked.
const CHECK_WHEELS: [&str; 5] = [
    "nvidia-cuda-nvcc==13.0.*",
    "nvidia-cuda-crt==13.0.*",
    "nvidia-nvvm==13.0.*",
    "nvidia-cuda-cccl==13.0.*",
    "nvidia-cuda-runtime==13.0.*",
];

pub fn cuda(root: &Path, args: &[String]) -> Result<()> {
    let cudnn = args.iter().any(|a| a == "--cudnn");
    let check_only = args.iter().any(|a| a == "--check");
    if let Some(other) = args.iter().find(|a| *a != "--cudnn" && *a != "--check") {
        bail!("cargo xtask cuda takes --cudnn or --check, not `{other}`");
    }
    let out = root.join("target/cuda");
    if check_only {
        return check(&out);
    }
    let sdk = install_toolkit(&out.join("sdk"), &wheels(cudnn))?;
    let toolkit = sdk.join("nvidia/cu13");
    link_names(&toolkit.join("lib"))?;
    if cudnn {
        link_names(&sdk.join("nvidia/cudnn/lib"))?;
    }
    driver_stub(root, &toolkit.join("lib/stubs"))?;

    let features = if cudnn { "cudnn" } else { "cuda" };
    let path = format!(
        "{}:{}",
        toolkit.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let bin = out.join("bin");
    std::fs::create_dir_all(&bin)?;

    // One cargo call for both, so that nvcc compiles candle's kernels once.
    let mut build = cargo();
    build.args([
        "build",
        "--release",
        "--message-format",
        "json-render-diagnostics",
        "-p",
        "sslab-server",
        "--bin",
        "sslab",
        "-p",
        "sslab-engine",
        "--bench",
        "train_step",
        "--bench",
        "vit_step",
        "--features",
        &format!("sslab-server/{features},sslab-engine/{features}"),
    ]);
    build
        .env("PATH", &path)
        .env("CUDA_ROOT", &toolkit)
        .env("CUDA_PATH", &toolkit)
        .env("CARGO_TARGET_DIR", out.join("build"))
        .stderr(Stdio::inherit());
    if std::env::var_os("CUDA_COMPUTE_CAP").is_none() {
        // Without it candle's kernels ask nvidia-smi, which a build machine lacks.
        build.env("CUDA_COMPUTE_CAP", DEFAULT_COMPUTE_CAP);
    }
    if cudnn {
        build.env("CUDNN_LIB", sdk.join("nvidia/cudnn"));
    }
    eprintln!("xtask: {build:?}");
    let built = build.output().context("running cargo build")?;
    if !built.status.success() {
        bail!("the CUDA build failed (cargo's messages above)");
    }
    let executables: HashMap<String, PathBuf> = String::from_utf8_lossy(&built.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|m| {
            let name = m["target"]["name"].as_str()?.to_string();
            Some((name, PathBuf::from(m["executable"].as_str()?)))
        })
        .collect();
    for name in BINARIES {
        let built = executables
            .get(name)
            .with_context(|| format!("cargo named no `{name}` executable"))?;
        copy(built, &bin.join(name))?;
    }
    let carry = out.join("carry");
    std::fs::create_dir_all(&carry)?;
    for name in BINARIES {
        pack(&bin.join(name), &carry.join(format!("{name}.xz")))?;
    }
    eprintln!(
        "xtask: CUDA binaries ({features}, compute capability {}) in {}",
        std::env::var("CUDA_COMPUTE_CAP").unwrap_or(DEFAULT_COMPUTE_CAP.into()),
        bin.display()
    );
    Ok(())
}

/// `cargo check` of the server and the engine, every target, with `cuda`
/// and then with `cudnn`: how `cargo xtask test` keeps the GPU code
/// compiling on a machine without a GPU.
fn check(out: &Path) -> Result<()> {
    let sdk = install_toolkit(&out.join("check-sdk"), &CHECK_WHEELS)?;
    let toolkit = sdk.join("nvidia/cu13");
    let stub = nvcc_stub(&sdk, &toolkit.join("bin/nvcc"))?;
    let path = format!(
        "{}:{}",
        toolkit.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for features in ["cuda", "cudnn"] {
        let mut check = cargo();
        check
            .args([
                "check",
                "--all-targets",
                "-p",
                "sslab-server",
                "-p",
                "sslab-engine",
                "--features",
                &format!("sslab-server/{features},sslab-engine/{features}"),
            ])
            .env("PATH", &path)
            .env("CUDA_ROOT", &toolkit)
            .env("CUDA_PATH", &toolkit)
            .env("NVCC", &stub)
            .env("CARGO_TARGET_DIR", out.join("check"))
            .env(
                "CUDA_COMPUTE_CAP",
                std::env::var("CUDA_COMPUTE_CAP").unwrap_or(DEFAULT_COMPUTE_CAP.into()),
            );
        run(&mut check).with_context(|| format!("the `{features}` feature does not compile"))?;
    }
    Ok(())
}

/// A stand-in for nvcc that candle's kernel build (the `cudaforge` crate,
/// which alone reads `NVCC`) gets in a check: it writes empty PTX, objects
/// and an empty archive where nvcc would write them. A check links nothing,
/// and compiling candle's pinned kernels (its quantised-matmul templates
/// most of all) made the check 10 minutes on 2 cores instead of 4 while
/// checking nothing of ours; the engine's build script still runs the real
/// nvcc on our kernels.
fn nvcc_stub(sdk: &Path, nvcc: &Path) -> Result<PathBuf> {
    let stub = sdk.join("nvcc-stub");
    let script = format!(
        r#"#!/bin/sh
set -e
out= dir= src= lib= prev=
for a in "$@"; do
    case "$a" in
    --version) exec '{nvcc}' --version ;;
    --lib) lib=1 ;;
    *.cu) src=$a ;;
    esac
    case "$prev" in
    -o) out=$a ;;
    --output-directory) dir=$a ;;
    esac
    prev=$a
done
[ -n "$dir" ] && out="$dir/$(basename "$src" .cu).ptx"
[ -n "$out" ] || {{ echo "nvcc-stub: no output named in: $*" >&2; exit 1; }}
if [ -n "$lib" ]; then printf '!<arch>
' >"$out"; else : >"$out"; fi
"#,
        nvcc = nvcc.display()
    );
    std::fs::write(&stub, script).with_context(|| format!("writing {}", stub.display()))?;
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755))?;
    Ok(stub)
}

fn wheels(cudnn: bool) -> Vec<&'static str> {
    let mut wheels: Vec<&str> = WHEELS.to_vec();
    if cudnn {
        wheels.push(CUDNN_WHEEL);
    }
    wheels
}

/// Installs the wheels once into `sdk`; a stamp records which set is there.
fn install_toolkit(sdk: &Path, wheels: &[&str]) -> Result<PathBuf> {
    let want = wheels.join("\n");
    let stamp = sdk.join("wheels.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(sdk.to_path_buf());
    }
    if sdk.exists() {
        std::fs::remove_dir_all(sdk)?;
    }
    // One pip call into an empty folder: the wheels share the `nvidia/cu13`
    // tree, and pip merges them only within a single install.
    run(Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
        .arg(sdk)
        .args(wheels))?;
    std::fs::write(&stamp, want)?;
    Ok(sdk.to_path_buf())
}

/// What `cargo xtask cuda` builds for the GPU machine.
const BINARIES: [&str; 3] = ["sslab", "train_step", "vit_step"];

/// The linker asks for `libcublas.so`; the wheels carry `libcublas.so.13`.
fn link_names(lib: &Path) -> Result<()> {
    for entry in std::fs::read_dir(lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some((stem, version)) = name.split_once(".so.") else {
            continue;
        };
        if !version.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let link = lib.join(format!("{stem}.so"));
        if !link.exists() {
            std::os::unix::fs::symlink(&name, &link)?;
        }
    }
    Ok(())
}

/// `libcuda.so` with every driver entry point cudarc declares, each returning
/// an error: enough to link, never loaded where a real driver is installed
/// (its soname is the driver's, `libcuda.so.1`).
fn driver_stub(root: &Path, stubs: &Path) -> Result<()> {
    let lib = stubs.join("libcuda.so");
    if lib.exists() {
        return Ok(());
    }
    let metadata = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--features",
            "sslab-engine/cuda",
        ])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    let metadata: serde_json::Value =
        serde_json::from_slice(&metadata.stdout).context("reading cargo metadata")?;
    let manifest = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "cudarc")
        .and_then(|p| p["manifest_path"].as_str())
        .context("cudarc is not among the CUDA build's packages")?;
    let bindings = Path::new(manifest).with_file_name("src/driver/sys/mod.rs");
    let source = std::fs::read_to_string(&bindings)
        .with_context(|| format!("reading {}", bindings.display()))?;
    let mut names: Vec<&str> = source
        .split("pub unsafe fn ")
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
        .filter(|name| name.starts_with("cu"))
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.len() < 100 {
        bail!(
            "found only {} driver functions in {}",
            names.len(),
            bindings.display()
        );
    }
    std::fs::create_dir_all(stubs)?;
    let c = stubs.join("libcuda-stub.c");
    // 999 is CUDA_ERROR_UNKNOWN.
    let body: String = names
        .iter()
        .map(|n| format!("int {n}(void) {{ return 999; }}\n"))
        .collect();
    std::fs::write(&c, body)?;
    run(Command::new("cc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(&lib)
        .arg(&c))
}

/// A stripped, xz-compressed copy of the binary `from`.
fn pack(from: &Path, to: &Path) -> Result<()> {
    let stripped = to.with_extension("stripped");
    copy(from, &stripped)?;
    run(Command::new("strip").arg(&stripped))?;
    let file = std::fs::File::create(to)?;
    let status = Command::new("xz")
        .args(["-6", "-T2", "-c"])
        .arg(&stripped)
        .stdout(file)
        .status()
        .context("running xz")?;
    std::fs::remove_file(&stripped)?;
    if !status.success() {
        bail!("xz failed on {}", from.display());
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}
