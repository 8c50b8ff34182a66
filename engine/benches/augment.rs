//! `cargo xtask bench augment`: the SimCLR two-view pipeline (random
//! resized crop, flip, colour jitter, grayscale, normalisation) on images
//! held in memory, at 32 px and 96 px, in images per second on every core.
//! It writes the images and its settings under `target/bench-augment/` so
//! that `bench/reference/augment.py` (run by xtask in the same command)
//! times torchvision's pipeline on the very same images.
//! Images go through in training batches of `SSLAB_BENCH_BATCH` (256), as
//! the training loop asks for them. `SSLAB_BENCH_IMAGES` sets the count at
//! 32 px (4096; a ninth of it at 96).

use std::io::Write;
use std::time::Instant;

use sslab_engine::augment;
use sslab_engine::data::scenes;
use sslab_shared::spec::{AugmentSpec, ScenesSpec};

fn main() -> anyhow::Result<()> {
    let env = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let base = env("SSLAB_BENCH_IMAGES", 4096);
    let batch = env("SSLAB_BENCH_BATCH", 256).max(1);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-augment");
    std::fs::create_dir_all(&dir)?;
    let spec = AugmentSpec::default();
    std::fs::write(dir.join("spec.json"), serde_json::to_string_pretty(&spec)?)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("sslab_augment_threads={threads}");
    for side in [32usize, 96] {
        let n = if side == 32 { base } else { (base / 9).max(64) };
        let set = scenes::generate(&ScenesSpec {
            train_images: n,
            test_images: 1,
            image_size: side,
            ..Default::default()
        })
        .train;
        let mut f = std::fs::File::create(dir.join(format!("images-{side}.u8")))?;
        f.write_all(&set.pixels)?;
        let indices: Vec<usize> = (0..set.len()).collect();
        // One warm-up pass, then the best of three.
        let mut best = f64::INFINITY;
        for epoch in 0..4 {
            let t = Instant::now();
            for part in indices.chunks(batch) {
                let views = augment::batch_views(&spec, &set, part, 0, epoch, 2);
                std::hint::black_box(&views);
            }
            if epoch > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        let per_sec = set.len() as f64 / best;
        println!("sslab_augment_{side}_images_per_sec={per_sec:.1}");
        println!(
            "sslab_augment_{side}_images_per_sec_per_core={:.1}",
            per_sec / threads as f64
        );
    }
    Ok(())
}
