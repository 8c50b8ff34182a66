//! `cargo xtask bench train-step`: one SimCLR training step (forward of two
//! views, NT-Xent, backward, AdamW) of a ResNet-18 with the CIFAR stem on
//! 32 px images, in images per second, next to the same model and step in
//! PyTorch (`bench/reference/train_step.py`, run by xtask in the same
//! command). Batch and step counts come from the environment:
//! `SSLAB_BENCH_BATCH` (256), `SSLAB_BENCH_STEPS` (3 on the CPU, 30 on a GPU).
//! Built with `--features cuda` it runs on the GPU when there is one
//! (`cargo xtask cuda`, then `bench/gpu/train-step.sh` on the GPU machine).
//! `SSLAB_BENCH_PRECISION=bf16` trains the backbone in bf16.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use candle_core::{DType, Tensor};
use sslab_engine::method;
use sslab_engine::model;
use sslab_engine::optim::Optimizer;
use sslab_shared::RunSpec;
use sslab_shared::rng::Rng;
use sslab_shared::spec::{BackboneKind, MethodSpec, Negatives, Precision, SimclrSpec};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of this process from the kernel: `VmHWM` (the peak) or
/// `VmRSS` (now).
fn rss_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Wall-clock time, for matching the timed steps with GPU samples.
fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    // SAFETY: no other thread has started.
    unsafe { sslab_engine::prepare_process() };
    let device = sslab_engine::default_device();
    let batch = env("SSLAB_BENCH_BATCH", 256);
    let steps = env("SSLAB_BENCH_STEPS", if device.is_cuda() { 30 } else { 3 }).max(1);
    let mut spec = RunSpec::default();
    spec.backbone.kind = BackboneKind::Resnet18;
    spec.backbone.width = 64;
    spec.projector.dims = "2048-128".parse().expect("widths");
    spec.method = MethodSpec::Simclr(SimclrSpec {
        temperature: 0.2,
        negatives: Negatives::All,
    });
    spec.optimizer.batch_size = batch;
    if std::env::var("SSLAB_BENCH_PRECISION").as_deref() == Ok("bf16") {
        spec.optimizer.precision = Precision::Bf16;
    }
    // CI has no GPU: here the GPU's convolution and kernels are checked
    // against the CPU's. A check that cannot run is reported, and the timing
    // goes on.
    if device.is_cuda() {
        for (dtype, name) in [(DType::F32, "f32"), (DType::BF16, "bf16")] {
            match sslab_engine::ops::conv_agreement(&device, dtype) {
                Ok(err) => println!("conv_{name}_max_relative_error_vs_cpu={err:.2e}"),
                Err(e) => println!("conv check {name} could not run: {e}"),
            }
            match sslab_engine::ops::gpu_agreement(&device, dtype) {
                Ok(errors) => {
                    for (op, err) in errors {
                        println!("{op}_{name}_max_relative_error_vs_cpu={err:.2e}");
                    }
                }
                Err(e) => println!("kernel checks {name} could not run: {e}"),
            }
        }
    }
    let spec = spec.into_valid()?;
    let (encoder, varmap) = model::build(&spec, &device)?;
    let mut method = method::build(&spec, &varmap, &device)?;
    let mut optimizer = Optimizer::new(&spec.optimizer, &varmap)?;
    let mut rng = Rng::new(1);
    let mut view = || -> candle_core::Result<Tensor> {
        let pixels: Vec<f32> = (0..batch * 3 * 32 * 32)
            .map(|_| rng.normal() as f32)
            .collect();
        Tensor::from_vec(pixels, (batch, 3, 32, 32), &device)
    };
    let views = [view()?, view()?];
    let at = method::StepInfo {
        step: 0,
        total_steps: steps + 1,
        steps_per_epoch: 1,
        seed: spec.seed,
    };
    // The loss is not read back: that would wait for the GPU every step.
    // On rayon's threads, as training runs it.
    let mut step = || -> anyhow::Result<()> {
        sslab_engine::on_workers(|| {
            let out = method.loss(&encoder, &views, &at)?;
            optimizer.step(&sslab_engine::ops::backward(&out.loss)?)?;
            Ok(())
        })
    };
    // Warm the allocator and caches (and, on a GPU, load the kernels).
    for _ in 0..if device.is_cuda() { 3 } else { 1 } {
        step()?;
    }
    device.synchronize()?;
    let window_start = unix_seconds();
    let started = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    device.synchronize()?;
    let seconds = started.elapsed().as_secs_f64() / steps as f64;
    let images_per_sec = batch as f64 / seconds;
    println!(
        "sslab (candle, {device:?}, {:?}): resnet18 cifar stem, batch {batch} x 2 views of 32 px: \
         {seconds:.3} s/step, {images_per_sec:.1} images/s, peak RSS {:.0} MiB",
        spec.optimizer.precision,
        rss_mib("VmHWM:")
    );
    // The allocator keeps freed activations for the next step; a finished
    // run hands them back.
    let kept = rss_mib("VmRSS:");
    sslab_engine::release_free_memory();
    println!(
        "resident between steps {kept:.0} MiB, after release_free_memory {:.0} MiB",
        rss_mib("VmRSS:")
    );
    println!("sslab_images_per_sec={images_per_sec:.3}");
    println!(
        "sslab_timed_window_unix={window_start:.3},{:.3}",
        unix_seconds()
    );
    Ok(())
}
