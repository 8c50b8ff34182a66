//! The déjà vu paper's pictures: what each model draws from a background
//! crop alone. A decoder per model learns the public set (which neither
//! model trained on) from the attacked layer's representation; each attacked
//! image's crop is then drawn by the model that trained on the image
//! (target) and by the other one (reference). A target that memorized the
//! image draws its object; the reference can only draw what the background
//! suggests.

use std::time::Instant;

use candle_core::{Device, Tensor};
use sslab_shared::audit::{
    AttackEmbedding, AuditSpec, Example, ReconstructSpec, ReconstructedImage, Reconstruction,
};
use sslab_shared::decoder::DecoderKind;

use super::{Model, Prepared};
use crate::data::ImageSet;
use crate::error::{EngineError, Result};
use crate::eval::{self, Features};
use crate::generate::decode::{
    GAP, Pixels, Standardize, Trained, cell, embed_tensor, index_tensor, png, put, to_unit,
    train_generator,
};
use crate::model::Encoder;
use crate::probe::knn::knn_predict;

/// Drawings sampled at once.
const CHUNK: usize = 256;

/// What one model's decoder drew: `samples` rows per attacked image, in the
/// order of `Prepared::crops` (A-only crops, then B-only), in [0, 1] at the
/// decoder's side.
struct Drawn {
    images: Tensor,
    /// One drawing per attacked image from its whole image, in the
    /// examples' order: what the decoder can show at best.
    from_wholes: Tensor,
    loss: Vec<sslab_shared::decoder::LossPoint>,
    dim: usize,
}

/// Trains both models' decoders and draws every attacked image from its
/// crop. `examples` are the report's rows (A-only images first, as
/// `Prepared::attacked` lists them); `encoders` are models A and B at the
/// last epoch. `progress(model, step, steps)` stops the work by returning
/// false. The report part and the grid as a PNG.
pub fn reconstruct(
    spec: &AuditSpec,
    settings: &ReconstructSpec,
    prep: &Prepared,
    examples: &[Example],
    encoders: [&Encoder; 2],
    device: &Device,
    progress: &mut dyn FnMut(Model, usize, usize) -> bool,
) -> Result<(Reconstruction, Vec<u8>)> {
    let started = Instant::now();
    let decoder = settings.decoder();
    let pool_side = prep.pool.size;
    let size = side(settings, pool_side)?;
    let crops = prep.crops[0].concat(&prep.crops[1]);
    let wholes = prep
        .pool
        .subset(&examples.iter().map(|e| e.image).collect::<Vec<_>>());
    if crops.len() != examples.len() {
        return Err(EngineError::Data(format!(
            "{} crops for {} attacked images",
            crops.len(),
            examples.len()
        )));
    }
    let attacked_layer = |all: Vec<Features>| match spec.attack.embedding {
        AttackEmbedding::Projector => all.into_iter().last(),
        AttackEmbedding::Backbone => all.into_iter().next(),
    };
    let pixels = Pixels {
        set: &prep.public,
        shrink: pool_side / size,
        device,
    };
    let repeated: Vec<usize> = (0..crops.len())
        .flat_map(|i| std::iter::repeat_n(i, settings.samples))
        .collect();

    let mut drawn = Vec::new();
    let mut judges = Vec::new();
    for (k, (model, encoder)) in [Model::A, Model::B].into_iter().zip(encoders).enumerate() {
        let layers = eval::embed_layers(encoder, &prep.public, device)?;
        // The full-image classifier that judges every drawing.
        judges.push(layers[0].clone());
        let public = attacked_layer(layers).expect("a layer");
        let stats = Standardize::fit(&public);
        let cond = stats.apply(&public, device)?;
        let Trained {
            generator,
            loss,
            mut rng,
            ..
        } = train_generator(&decoder, k, &pixels, &cond, None, &mut |step, _| {
            progress(model, step, decoder.steps)
        })?;
        let at_crops =
            attacked_layer(eval::embed_layers(encoder, &crops, device)?).expect("a layer");
        let cond_crops = stats.apply(&at_crops, device)?;
        let mut sample = |cond: &Tensor, rows: &[usize]| -> Result<Tensor> {
            let mut parts = Vec::new();
            for chunk in rows.chunks(CHUNK) {
                let c = cond.index_select(&index_tensor(chunk, device)?, 0)?;
                parts.push(generator.sample(&c, &decoder, &mut rng)?);
            }
            Ok(Tensor::cat(&parts, 0)?)
        };
        let images = sample(&cond_crops, &repeated)?;
        let at_wholes =
            attacked_layer(eval::embed_layers(encoder, &wholes, device)?).expect("a layer");
        let from_wholes = sample(
            &stats.apply(&at_wholes, device)?,
            &(0..wholes.len()).collect::<Vec<_>>(),
        )?;
        drawn.push(Drawn {
            images,
            from_wholes,
            loss,
            dim: public.dim,
        });
    }

    // Each drawing's class by each model's full-image kNN on the public
    // set: per drawing, the share of the two judges that say `labels[row]`.
    let e = &spec.run.eval;
    let classes = prep.pool.classes().max(1);
    let judge = |drawings: &Tensor, labels: &[u32]| -> Result<Vec<f64>> {
        let mut right = vec![0.0f64; labels.len()];
        for (bank, encoder) in judges.iter().zip(encoders) {
            let mut f = Features {
                dim: 0,
                data: Vec::new(),
            };
            for start in (0..labels.len()).step_by(CHUNK) {
                let part = drawings.narrow(0, start, CHUNK.min(labels.len() - start))?;
                let part = if pool_side != size {
                    part.upsample_bilinear2d(pool_side, pool_side, false)?
                } else {
                    part
                };
                let e = embed_tensor(encoder, &part, 0)?;
                f.dim = e.dim;
                f.data.extend(e.data);
            }
            let predicted = knn_predict(
                bank,
                &prep.public.labels,
                &f,
                classes,
                e.knn_k,
                e.knn_temperature,
                e.knn_metric,
            );
            for (r, (p, l)) in right.iter_mut().zip(predicted.iter().zip(labels)) {
                *r += f64::from(p == l) / judges.len() as f64;
            }
        }
        Ok(right)
    };
    let row_labels: Vec<u32> = repeated.iter().map(|&i| examples[i].label).collect();
    let labels: Vec<u32> = examples.iter().map(|e| e.label).collect();
    let right = [
        judge(&drawn[0].images, &row_labels)?,
        judge(&drawn[1].images, &row_labels)?,
    ];
    let right_whole = [
        judge(&drawn[0].from_wholes, &labels)?,
        judge(&drawn[1].from_wholes, &labels)?,
    ];
    let a_only = prep.crops[0].len();
    // The model that trained on example `i` (A for A-only images).
    let target_of = |i: usize| usize::from(i >= a_only);
    let score = |wanted: &dyn Fn(usize) -> bool, target: bool| -> Option<f64> {
        let (mut sum, mut n) = (0.0, 0usize);
        for (row, &i) in repeated.iter().enumerate() {
            if wanted(i) {
                let m = if target {
                    target_of(i)
                } else {
                    1 - target_of(i)
                };
                sum += right[m][row];
                n += 1;
            }
        }
        (n > 0).then(|| sum / n as f64)
    };
    let every = |_: usize| true;
    let memorized = |i: usize| examples[i].outcome() == "memorized";
    let whole_image_top1 = (0..examples.len())
        .map(|i| right_whole[target_of(i)][i])
        .sum::<f64>()
        / examples.len().max(1) as f64;

    let rows = grid_rows(examples, settings.images);
    let png = grid(
        &crops,
        &prep.pool,
        examples,
        &rows,
        &drawn,
        settings.samples,
        target_of,
    )?;
    let reconstruction = Reconstruction {
        kind: settings.kind,
        layer: match spec.attack.embedding {
            AttackEmbedding::Projector => "projector",
            AttackEmbedding::Backbone => "backbone",
        }
        .into(),
        dim: drawn[0].dim,
        image_size: size,
        public_images: prep.public.len(),
        target_top1: score(&every, true).unwrap_or(0.0),
        reference_top1: score(&every, false).unwrap_or(0.0),
        memorized_target_top1: score(&memorized, true),
        memorized_reference_top1: score(&memorized, false),
        whole_image_top1,
        chance: 1.0 / classes as f64,
        rows: rows
            .iter()
            .map(|&i| ReconstructedImage {
                image: examples[i].image,
                set: examples[i].set.clone(),
                label: examples[i].label,
                outcome: examples[i].outcome().into(),
            })
            .collect(),
        loss_b: std::mem::take(&mut drawn[1].loss),
        loss_a: std::mem::take(&mut drawn[0].loss),
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((reconstruction, png))
}

/// The side the decoders draw at, checked against the data's: an audit
/// checks it before it trains anything.
pub fn side(settings: &ReconstructSpec, data_side: usize) -> Result<usize> {
    let size = settings.image_size.unwrap_or(data_side);
    if size > data_side || !data_side.is_multiple_of(size) {
        return Err(EngineError::Spec(sslab_shared::SpecError::new(
            "reconstruct.image_size",
            format!("{size} px does not divide the data's {data_side} px images"),
        )));
    }
    if settings.kind == DecoderKind::Rcdm {
        settings.rcdm.check_image_size(size).map_err(|e| {
            sslab_shared::SpecError::new(format!("reconstruct.{}", e.field), e.message)
        })?;
    }
    Ok(size)
}

/// Up to `n` examples: the memorized ones by the target's confidence, then
/// the others by the same.
fn grid_rows(examples: &[Example], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by(|&i, &j| {
        let mem = |k: usize| examples[k].outcome() != "memorized";
        mem(i).cmp(&mem(j)).then(
            examples[j]
                .target
                .confidence
                .total_cmp(&examples[i].target.confidence),
        )
    });
    order.truncate(n);
    order
}

/// One row per shown example: its crop, the image, the target's drawings,
/// then the reference's.
fn grid(
    crops: &ImageSet,
    pool: &ImageSet,
    examples: &[Example],
    rows: &[usize],
    drawn: &[Drawn],
    samples: usize,
    target_of: impl Fn(usize) -> usize,
) -> Result<Vec<u8>> {
    let side = cell(pool.size);
    let width = 2 * side + 2 * (GAP + samples * side);
    let mut grid = image::RgbImage::from_pixel(
        width as u32,
        (rows.len() * side).max(1) as u32,
        image::Rgb([255, 255, 255]),
    );
    let cpu = Device::Cpu;
    for (r, &i) in rows.iter().enumerate() {
        put(
            &mut grid,
            &to_unit(crops, &[i], None, &cpu)?.get(0)?,
            (0, r, side),
            0,
        )?;
        let whole = to_unit(pool, &[examples[i].image], None, &cpu)?;
        put(&mut grid, &whole.get(0)?, (1, r, side), 0)?;
        let t = target_of(i);
        for (block, m) in [t, 1 - t].into_iter().enumerate() {
            let mine = drawn[m]
                .images
                .narrow(0, i * samples, samples)?
                .to_device(&cpu)?;
            for j in 0..samples {
                let col = 2 + block * samples + j;
                put(&mut grid, &mine.get(j)?, (col, r, side), (block + 1) * GAP)?;
            }
        }
    }
    png(grid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dejavu::{AuditObserver, run, run_trained};
    use crate::train::{Control, StepMetrics};
    use sslab_shared::audit::Guess;

    fn example(outcome: &str, confidence: f64) -> Example {
        let (t, r) = match outcome {
            "memorized" => (0, 1),
            "correlated" => (0, 0),
            _ => (1, 1),
        };
        let guess = |label: u32| Guess {
            top5: vec![label],
            confidence,
            neighbours: vec![],
        };
        Example {
            image: 0,
            set: "A".into(),
            label: 0,
            crop: [0, 0, 1, 1],
            target: guess(t),
            reference: guess(r),
        }
    }

    #[test]
    fn memorized_images_come_first_most_confident_first() {
        let examples = [
            example("correlated", -0.1),
            example("memorized", -2.0),
            example("unassociated", -0.5),
            example("memorized", -1.0),
        ];
        assert_eq!(grid_rows(&examples, 3), [3, 1, 0]);
        assert_eq!(grid_rows(&examples, 10), [3, 1, 0, 2]);
    }

    /// Keeps the grid and counts the decoders' steps; stops them at
    /// `stop_at` when set.
    #[derive(Default)]
    struct Keep {
        png: Option<Vec<u8>>,
        steps: [usize; 2],
        stop_at: Option<usize>,
    }

    impl AuditObserver for Keep {
        fn on_step(&mut self, _: Model, _: &StepMetrics) -> Control {
            Control::Continue
        }

        fn on_decoder_step(&mut self, model: Model, step: usize, _: usize) -> Control {
            self.steps[usize::from(model == Model::B)] += 1;
            match self.stop_at {
                Some(s) if step >= s => Control::Stop,
                _ => Control::Continue,
            }
        }

        fn on_reconstruction(&mut self, png: &[u8]) {
            self.png = Some(png.to_vec());
        }
    }

    #[test]
    fn both_models_draw_every_crop() {
        let spec = AuditSpec::from_json(
            r#"{"name": "drawn", "split": {"per_class": 6}, "attack": {"k": 10},
                "run": {"seed": 3,
                    "data": {"source": "scenes", "classes": 3, "train_images": 90, "test_images": 30},
                    "backbone": {"kind": "tiny_cnn", "width": 8}, "projector": {"dims": "32-16"},
                    "optimizer": {"batch_size": 12}, "schedule": {"epochs": 2}},
                "reconstruct": {"steps": 30, "batch": 16, "samples": 2, "images": 3,
                    "infusion": {"steps": 3, "channels": 8, "blocks": 1}}}"#,
        )
        .unwrap();
        let dir = std::env::temp_dir().join(format!("sslab-dejavu-drawn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut keep = Keep::default();
        let report = run(&spec, &Device::Cpu, &dir, &mut keep).unwrap();
        let r = report.reconstruction.clone().expect("reconstructions");
        assert_eq!(keep.steps, [30, 30]);
        assert_eq!(
            (r.layer.as_str(), r.dim, r.image_size),
            ("projector", 16, 32)
        );
        assert_eq!(r.public_images, report.split.public);
        assert!((r.chance - 1.0 / 3.0).abs() < 1e-12);
        for v in [r.target_top1, r.reference_top1, r.whole_image_top1] {
            assert!((0.0..=1.0).contains(&v), "{r:?}");
        }
        let memorized = report.memorized(usize::MAX).len();
        assert_eq!(r.memorized_target_top1.is_some(), memorized > 0);
        // Rows: memorized images first.
        assert_eq!(r.rows.len(), 3);
        let first_other = r.rows.iter().position(|x| x.outcome != "memorized");
        assert_eq!(first_other.unwrap_or(3), memorized.min(3), "{:?}", r.rows);
        for loss in [&r.loss_a, &r.loss_b] {
            assert!(loss.iter().all(|p| p.loss.is_finite()));
            assert!(loss.last().unwrap().loss < loss[0].loss, "{loss:?}");
        }
        // Crop, image, then two drawings per model, each model's block
        // after a gap; the two models draw differently.
        let grid = image::load_from_memory(keep.png.as_ref().unwrap())
            .unwrap()
            .to_rgb8();
        assert_eq!(
            (grid.width(), grid.height()),
            ((2 * 32 + 2 * (GAP + 2 * 32)) as u32, 3 * 32)
        );
        let block = |b: u32| -> Vec<u8> {
            let x0 = (2 * 32 + (b + 1) * GAP as u32) + b * 2 * 32;
            (0..96)
                .flat_map(|y| (x0..x0 + 64).map(move |x| (x, y)))
                .flat_map(|(x, y)| grid.get_pixel(x, y).0)
                .collect()
        };
        assert_ne!(block(0), block(1));

        // The same checkpoints again: stopped while drawing, or refused a
        // side that does not divide the images, it says so.
        let (a, b) = (
            dir.join("target-a.safetensors"),
            dir.join("reference-b.safetensors"),
        );
        let mut stopping = Keep {
            stop_at: Some(5),
            ..Keep::default()
        };
        let err = run_trained(&spec, &a, &b, &Device::Cpu, &mut stopping).unwrap_err();
        assert!(err.to_string().contains("stopped while drawing"), "{err}");
        assert_eq!(stopping.steps, [5, 0]);
        let mut odd = spec.clone();
        odd.reconstruct.as_mut().unwrap().image_size = Some(12);
        let err = run_trained(&odd, &a, &b, &Device::Cpu, &mut Keep::default()).unwrap_err();
        assert!(err.to_string().contains("reconstruct.image_size"), "{err}");
        // Before any model trains.
        struct Untrained;
        impl AuditObserver for Untrained {
            fn on_step(&mut self, _: Model, _: &StepMetrics) -> Control {
                panic!("a model trained before the sizes were checked")
            }
        }
        let err = run(&odd, &Device::Cpu, &dir, &mut Untrained).unwrap_err();
        assert!(err.to_string().contains("reconstruct.image_size"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
