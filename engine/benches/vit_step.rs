//! `cargo xtask bench vit-step`: one training step (forward, backward,
//! AdamW, and for DINO the teacher's forward and EMA update) of an MAE and
//! a DINO ViT, in images per second, next to the same models and steps in
//! PyTorch eager (`bench/reference/vit_step.py`, run by xtask in the same
//! command). Four cases: ViT-Tiny (width 192, 12 blocks, 3 heads, patch 4)
//! at 32 px and ViT-Small (384, 12, 6, patch 8) at 96 px, each under MAE
//! (75 % masked, decoder 128 wide, 2 blocks) and DINO (two global views,
//! projector 2048-256, 4096 prototypes). `SSLAB_BENCH_BATCH` (16 on the CPU,
//! 256 on a GPU) and `SSLAB_BENCH_STEPS` (2 on the CPU, 20 on a GPU);
//! `SSLAB_BENCH_CASES` picks cases by name (comma-separated);
//! `SSLAB_BENCH_PRECISION=bf16` trains in bf16.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use sslab_engine::method;
use sslab_engine::model;
use sslab_engine::optim::Optimizer;
use sslab_shared::RunSpec;
use sslab_shared::rng::Rng;
use sslab_shared::spec::{
    BackboneKind, BackboneSpec, DataSpec, DinoSpec, MaeSpec, MethodSpec, Precision, ScenesSpec,
};

/// A method on a ViT at one image size.
struct Case {
    name: &'static str,
    dino: bool,
    image: usize,
    patch: usize,
    width: usize,
    heads: usize,
}

const CASES: [Case; 4] = [
    Case {
        name: "mae_tiny_32",
        dino: false,
        image: 32,
        patch: 4,
        width: 192,
        heads: 3,
    },
    Case {
        name: "dino_tiny_32",
        dino: true,
        image: 32,
        patch: 4,
        width: 192,
        heads: 3,
    },
    Case {
        name: "mae_small_96",
        dino: false,
        image: 96,
        patch: 8,
        width: 384,
        heads: 6,
    },
    Case {
        name: "dino_small_96",
        dino: true,
        image: 96,
        patch: 8,
        width: 384,
        heads: 6,
    },
];

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn spec(case: &Case, batch: usize) -> RunSpec {
    let mut spec = RunSpec::default();
    spec.data = if case.image == 96 {
        // Only the size is read: the bench feeds random pixels.
        DataSpec::Stl10 {
            path: "unused".into(),
            unlabeled: false,
        }
    } else {
        DataSpec::Scenes(ScenesSpec {
            image_size: case.image,
            ..ScenesSpec::default()
        })
    };
    spec.backbone = BackboneSpec {
        kind: BackboneKind::Vit,
        width: case.width,
        depth: 12,
        heads: case.heads,
        patch_size: case.patch,
        ..BackboneSpec::small_vit()
    };
    if case.dino {
        spec.projector.dims = "2048-256".parse().expect("widths");
        spec.method = MethodSpec::Dino(DinoSpec {
            warmup_teacher_epochs: 0.0,
            freeze_last_layer_epochs: 0.0,
            ..DinoSpec::default()
        });
    } else {
        spec.projector.dims = "".parse().expect("no widths");
        spec.method = MethodSpec::Mae(MaeSpec {
            decoder_width: 128,
            ..MaeSpec::default()
        });
    }
    spec.optimizer.batch_size = batch;
    if std::env::var("SSLAB_BENCH_PRECISION").as_deref() == Ok("bf16") {
        spec.optimizer.precision = Precision::Bf16;
    }
    spec
}

/// Wall-clock time, for matching the timed steps with GPU samples.
fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Seconds per step of one case.
fn time_case(case: &Case, batch: usize, steps: usize, device: &Device) -> anyhow::Result<f64> {
    let spec = spec(case, batch).into_valid()?;
    let (encoder, varmap) = model::build(&spec, device)?;
    let mut method = method::build(&spec, &varmap, device)?;
    let mut optimizer = Optimizer::new(&spec.optimizer, &varmap)?;
    let mut rng = Rng::new(1);
    let side = case.image;
    let mut view = || -> candle_core::Result<Tensor> {
        let pixels: Vec<f32> = (0..batch * 3 * side * side)
            .map(|_| rng.normal() as f32)
            .collect();
        Tensor::from_vec(pixels, (batch, 3, side, side), device)
    };
    let views: Vec<Tensor> = if case.dino {
        vec![view()?, view()?]
    } else {
        vec![view()?]
    };
    let mut step_no = 0;
    // The loss is not read back: that would wait for the GPU every step.
    let mut step = || -> anyhow::Result<()> {
        let at = method::StepInfo {
            step: step_no,
            total_steps: 1000,
            steps_per_epoch: 100,
            seed: spec.seed,
        };
        step_no += 1;
        let out = method.loss(&encoder, &views, &at)?;
        optimizer.step(&sslab_engine::ops::backward(&out.loss)?)?;
        method.after_step(&at)?;
        Ok(())
    };
    for _ in 0..if device.is_cuda() { 3 } else { 1 } {
        step()?;
    }
    device.synchronize()?;
    let started = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    device.synchronize()?;
    Ok(started.elapsed().as_secs_f64() / steps as f64)
}

/// The ViT's ops on this device against the CPU's, in f32 and bf16: a
/// disagreement stops the bench before it times anything.
fn check_ops(device: &Device) -> anyhow::Result<()> {
    for (dtype, name, tolerance) in [(DType::F32, "f32", 1e-3f32), (DType::BF16, "bf16", 5e-2)] {
        for (op, err) in sslab_engine::ops::gpu_agreement(device, dtype)? {
            if !matches!(op, "layer_norm" | "attention" | "gelu") {
                continue;
            }
            let verdict = if err <= tolerance { "ok" } else { "FAILED" };
            println!("{op}_{name}_max_relative_error_vs_cpu={err:.2e} {verdict}");
            if err > tolerance {
                anyhow::bail!(
                    "{op} in {name} on {device:?} disagrees with the CPU op by {err:.2e} (tolerance {tolerance:.0e})"
                );
            }
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // SAFETY: no other thread has started.
    unsafe { sslab_engine::prepare_process() };
    let device = sslab_engine::default_device();
    let batch = env("SSLAB_BENCH_BATCH", if device.is_cuda() { 256 } else { 16 });
    let steps = env("SSLAB_BENCH_STEPS", if device.is_cuda() { 20 } else { 2 }).max(1);
    let wanted = std::env::var("SSLAB_BENCH_CASES").unwrap_or_default();
    if !device.is_cpu() {
        check_ops(&device)?;
    }
    // Every case's warm-up and timed steps, for the GPU script's samples.
    let window_start = unix_seconds();
    for case in CASES
        .iter()
        .filter(|c| wanted.is_empty() || wanted.split(',').any(|w| w == c.name))
    {
        let seconds = sslab_engine::on_workers(|| time_case(case, batch, steps, &device))?;
        let images_per_sec = batch as f64 / seconds;
        println!(
            "sslab (candle, {device:?}): {}, batch {batch}: {seconds:.3} s/step, {images_per_sec:.1} images/s",
            case.name
        );
        println!("sslab_{}_images_per_sec={images_per_sec:.3}", case.name);
    }
    println!(
        "sslab_timed_window_unix={window_start:.3},{:.3}",
        unix_seconds()
    );
    sslab_engine::release_free_memory();
    Ok(())
}
