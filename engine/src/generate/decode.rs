//! A decoder for a finished run: trained on images the run did not train
//! on, conditioned on the run's frozen representation at each chosen layer,
//! then measured — do samples drawn from an image's representation carry
//! its class (a kNN classifier on that same representation says so), and
//! how much do they vary?

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use sslab_shared::RunSpec;
use sslab_shared::decoder::{DecoderKind, DecoderLayer, DecoderReport, DecoderSpec, LossPoint};
use sslab_shared::rng::Rng;

use super::infusion::Infusion;
use super::rcdm::Rcdm;
use crate::augment::{MEAN, STD};
use crate::data::ImageSet;
use crate::error::{EngineError, Result};
use crate::eval::Features;
use crate::model::Encoder;

/// Where training stands, for progress bars and logs.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The decoder being trained (index into the spec's layers).
    pub layer: usize,
    pub layers: usize,
    pub step: usize,
    pub steps: usize,
    pub loss: f32,
}

/// What a decoder run produces.
pub struct Decoded {
    pub report: DecoderReport,
    /// Rows: held-out images; columns: the image, then each layer's samples.
    pub samples_png: Vec<u8>,
    /// Per layer, a row of samples from representations interpolated
    /// between two held-out images of different classes.
    pub interpolation_png: Vec<u8>,
}

impl Decoded {
    /// The grids as the files a decoder job keeps, by name.
    pub fn files(&self) -> [(&'static str, &[u8]); 2] {
        [
            ("samples.png", &self.samples_png),
            ("interpolation.png", &self.interpolation_png),
        ]
    }
}

/// Training loss is recorded about this many times per decoder.
const LOSS_POINTS: usize = 100;
/// A resumable decoder saves its state about this many times.
const SAVES: usize = 20;
/// Images of the run's training split the kNN classifier remembers.
const KNN_BANK: usize = 4000;
/// Points of an interpolation, both ends included.
const INTERPOLATION_POINTS: usize = 6;

pub(crate) enum Generator {
    Infusion(Box<Infusion>),
    Rcdm(Box<Rcdm>),
}

impl Generator {
    /// `x` in [0, 1].
    fn train_step(&mut self, x: &Tensor, cond: &Tensor, rng: &mut Rng) -> Result<f32> {
        match self {
            Generator::Infusion(m) => m.train_step(x, cond, rng),
            Generator::Rcdm(m) => m.train_step(&x.affine(2.0, -1.0)?, cond, rng),
        }
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        match self {
            Generator::Infusion(m) => m.state(),
            Generator::Rcdm(m) => m.state(),
        }
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        match self {
            Generator::Infusion(m) => m.load_state(state),
            Generator::Rcdm(m) => m.load_state(state),
        }
    }

    /// One sample per row of `cond`, in [0, 1].
    pub(crate) fn sample(
        &self,
        cond: &Tensor,
        spec: &DecoderSpec,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        match self {
            Generator::Infusion(m) => m.sample(cond, spec.infusion.steps, rng),
            Generator::Rcdm(m) => m.sample(cond, rng),
        }
    }
}

/// Trains one decoder per layer of `spec` for the run (`run` its spec,
/// `checkpoint` its final weights). `progress` is told after every step and
/// stops the work by returning false. With `state`, a folder, each layer's
/// decoder saves its training there as it goes and carries on from what it
/// finds there: an interrupted job resumes where it was saved, to the
/// same result.
pub fn decode(
    run: &RunSpec,
    checkpoint: &Path,
    spec: &DecoderSpec,
    device: &Device,
    state: Option<&Path>,
    progress: &mut dyn FnMut(&Progress) -> bool,
) -> Result<Decoded> {
    let _release = crate::ReleaseMemoryAtEnd;
    spec.validate()?;
    let valid = run.clone().into_valid()?;
    let encoder = crate::train::load_encoder(&valid, checkpoint, device)?;
    let layer_index = spec
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            encoder
                .layer_names()
                .iter()
                .position(|n| n == l)
                .ok_or_else(|| {
                    EngineError::Spec(sslab_shared::SpecError::new(
                        format!("layers[{i}]"),
                        format!(
                            "the run has no layer `{l}`; it has {}",
                            encoder.layer_names().join(", ")
                        ),
                    ))
                })
        })
        .collect::<Result<Vec<usize>>>()?;

    let run_splits = crate::data::load(&run.data)?;
    let pool = match &spec.data {
        Some(d) => crate::data::load(d)?.train,
        None => run_splits.test.clone(),
    };
    if pool.size != run_splits.train.size {
        return Err(EngineError::Data(format!(
            "the run was trained on {r}×{r} images; the decoder's data are {p}×{p}",
            r = run_splits.train.size,
            p = pool.size
        )));
    }
    let (train, held) = hold_out(&pool, spec.held_out_per_class);
    if train.len() < 2 || held.is_empty() {
        return Err(EngineError::Data(format!(
            "{} images are too few: {} per class are held out and at least 2 must be left to train on",
            pool.len(),
            spec.held_out_per_class
        )));
    }
    let size = spec.image_size.unwrap_or(pool.size);
    if size > pool.size || pool.size % size != 0 {
        return Err(EngineError::Spec(sslab_shared::SpecError::new(
            "image_size",
            format!(
                "{size} px does not divide the run's {} px images",
                pool.size
            ),
        )));
    }
    let shrink = pool.size / size;
    if spec.kind == DecoderKind::Rcdm {
        spec.rcdm.check_image_size(size)?;
    }
    let bank_ids: Vec<usize> = (0..run_splits.train.len().min(KNN_BANK)).collect();
    let bank = run_splits.train.subset(&bank_ids);

    let embed = |set: &ImageSet| crate::eval::embed_layers(&encoder, set, device);
    let (train_f, held_f, bank_f) = (embed(&train)?, embed(&held)?, embed(&bank)?);
    let classes = run_splits.train.classes().max(pool.classes()).max(1);
    let train_pixels = Pixels {
        set: &train,
        shrink,
        device,
    };

    let grid_rows = grid_order(&held, spec.grid_images);
    let pair = interpolation_pair(&held);
    let mut layers = Vec::new();
    let mut grid_columns: Vec<Vec<Tensor>> = Vec::new();
    let mut interpolations: Vec<Tensor> = Vec::new();
    for (k, (&li, name)) in layer_index.iter().zip(&spec.layers).enumerate() {
        let started = Instant::now();
        let stats = Standardize::fit(&train_f[li]);
        let cond_train = stats.apply(&train_f[li], device)?;
        let cond_held = stats.apply(&held_f[li], device)?;
        let dim = train_f[li].dim;
        let saved = state.map(|dir| dir.join(format!("layer-{k}.safetensors")));
        let Trained {
            generator,
            loss,
            mut rng,
            resumed_from,
        } = train_generator(
            spec,
            k,
            &train_pixels,
            &cond_train,
            saved.as_deref(),
            &mut |step, loss| {
                progress(&Progress {
                    layer: k,
                    layers: spec.layers.len(),
                    step,
                    steps: spec.steps,
                    loss,
                })
            },
        )?;

        // `samples` draws for every held-out image, in image order.
        let repeated: Vec<usize> = (0..held.len())
            .flat_map(|i| std::iter::repeat_n(i, spec.samples))
            .collect();
        let mut drawn = Vec::new();
        for chunk in repeated.chunks(256) {
            let c = cond_held.index_select(&index_tensor(chunk, device)?, 0)?;
            drawn.push(generator.sample(&c, spec, &mut rng)?);
        }
        let drawn = Tensor::cat(&drawn, 0)?;
        let labels: Vec<u32> = repeated.iter().map(|&i| held.labels[i]).collect();
        let full = if shrink > 1 {
            drawn.upsample_bilinear2d(pool.size, pool.size, false)?
        } else {
            drawn.clone()
        };
        let drawn_f = embed_tensor(&encoder, &full, li)?;
        let ev = &run.eval;
        let accuracy = crate::probe::knn::knn_accuracy(
            &bank_f[li],
            &bank.labels,
            &drawn_f,
            &labels,
            classes,
            ev.knn_k,
            ev.knn_temperature,
            ev.knn_metric,
        );
        let pixels = drawn.flatten_from(1)?.to_vec2::<f32>()?;
        let real = Pixels {
            set: &held,
            ..train_pixels
        }
        .get(&(0..held.len()).collect::<Vec<_>>(), None)?
        .flatten_from(1)?
        .to_vec2::<f32>()?;
        layers.push(DecoderLayer {
            layer: name.clone(),
            dim,
            loss,
            conditioning_accuracy: accuracy,
            chance: 1.0 / classes as f64,
            sample_diversity: diversity(&pixels, spec.samples),
            real_pair_distance: real_distance(&real, &held.labels),
            seconds: started.elapsed().as_secs_f64(),
            resumed_from,
        });
        grid_columns.push(
            grid_rows
                .iter()
                .map(|&i| drawn.narrow(0, i * spec.samples, spec.samples))
                .collect::<candle_core::Result<_>>()?,
        );
        if let Some((a, b)) = pair {
            let ca = cond_held.get(a)?;
            let cb = cond_held.get(b)?;
            let mixed: Vec<Tensor> = (0..INTERPOLATION_POINTS)
                .map(|j| {
                    let w = j as f64 / (INTERPOLATION_POINTS - 1) as f64;
                    (ca.affine(1.0 - w, 0.0)? + cb.affine(w, 0.0)?)?.unsqueeze(0)
                })
                .collect::<candle_core::Result<_>>()?;
            // The same noise for every point, so only the conditioning moves.
            let same = Rng::derive(spec.seed, &[0x1A7E, k as u64]);
            let mut row = Vec::new();
            for m in mixed {
                row.push(generator.sample(&m, spec, &mut same.clone())?);
            }
            interpolations.push(Tensor::cat(&row, 0)?);
        }
    }

    let samples_png = samples_grid(&held, &grid_rows, &grid_columns)?;
    let interpolation_png = interpolation_grid(&held, pair, &interpolations)?;
    let report = DecoderReport {
        name: spec.name.clone(),
        kind: spec.kind,
        settings: serde_json::to_value(spec).unwrap_or_default(),
        image_size: size,
        train_images: train.len(),
        held_out_images: held.len(),
        layers,
    };
    Ok(Decoded {
        report,
        samples_png,
        interpolation_png,
    })
}

/// The images a generator learns from, at the side it generates.
#[derive(Clone, Copy)]
pub(crate) struct Pixels<'a> {
    pub set: &'a ImageSet,
    /// The set's side over the generated side.
    pub shrink: usize,
    pub device: &'a Device,
}

impl Pixels<'_> {
    /// Images `ids` as `n × 3 × s × s` in [0, 1], averaged down by
    /// `shrink`; with `rng`, dequantised.
    pub fn get(&self, ids: &[usize], rng: Option<&mut Rng>) -> Result<Tensor> {
        let x = to_unit(self.set, ids, rng, self.device)?;
        Ok(if self.shrink > 1 {
            x.avg_pool2d(self.shrink)?
        } else {
            x
        })
    }
}

/// A trained generator, its loss curve and the random stream to sample with.
pub(crate) struct Trained {
    pub generator: Generator,
    pub loss: Vec<LossPoint>,
    pub rng: Rng,
    /// The step it carried on from, when it did.
    pub resumed_from: Option<usize>,
}

/// Trains the job's `k`th generator on `pixels`, image `i` conditioned on
/// row `i` of `cond`. With `saved`, a file, training state is saved there
/// as it goes and taken up from there when it exists. `progress(step, loss)`
/// stops it by returning false.
pub(crate) fn train_generator(
    spec: &DecoderSpec,
    k: usize,
    pixels: &Pixels,
    cond: &Tensor,
    saved: Option<&Path>,
    progress: &mut dyn FnMut(usize, f32) -> bool,
) -> Result<Trained> {
    let n = pixels.set.len();
    let dim = cond.dim(1)?;
    let seed = spec.seed.wrapping_add(k as u64);
    let mut generator = match spec.kind {
        DecoderKind::Infusion => {
            let all = pixels.get(&(0..n).collect::<Vec<_>>(), None)?;
            Generator::Infusion(Box::new(Infusion::new(
                &spec.infusion,
                &all,
                dim,
                spec.lr,
                seed,
            )?))
        }
        DecoderKind::Rcdm => Generator::Rcdm(Box::new(Rcdm::new(
            &spec.rcdm,
            pixels.set.size / pixels.shrink,
            dim,
            spec.lr,
            seed,
            pixels.device,
        )?)),
    };
    let mut rng = Rng::derive(spec.seed, &[0xDEC0DE, k as u64]);
    let every = (spec.steps / LOSS_POINTS).max(1);
    let save_every = (spec.steps / SAVES).max(1);
    let mut loss = Vec::new();
    let mut start = 0;
    if let Some(path) = saved.filter(|p| p.exists()) {
        let s = SavedState::read(path, &mut generator)?;
        if s.step > spec.steps {
            return Err(EngineError::Data(format!(
                "{} saved step {} of a decoder of {} steps",
                path.display(),
                s.step,
                spec.steps
            )));
        }
        (start, rng, loss) = (s.step, s.rng, s.loss);
    }
    for step in start..spec.steps {
        let ids: Vec<usize> = (0..spec.batch).map(|_| rng.below(n)).collect();
        let x = pixels.get(&ids, Some(&mut rng))?;
        let c = cond.index_select(&index_tensor(&ids, pixels.device)?, 0)?;
        let value = generator.train_step(&x, &c, &mut rng)?;
        if step % every == 0 || step + 1 == spec.steps {
            loss.push(LossPoint {
                step: step + 1,
                loss: value as f64,
            });
        }
        if let Some(path) = saved
            && ((step + 1) % save_every == 0 || step + 1 == spec.steps)
        {
            SavedState::write(path, &generator, step + 1, &rng, &loss)?;
        }
        if !progress(step + 1, value) {
            return Err(EngineError::Data("the decoder was stopped".into()));
        }
    }
    Ok(Trained {
        generator,
        loss,
        rng,
        resumed_from: (start > 0).then_some(start),
    })
}

/// A decoder's training as saved: the generator's weights and optimiser,
/// the steps done, the random stream and the loss curve so far.
struct SavedState {
    step: usize,
    rng: Rng,
    loss: Vec<LossPoint>,
}

impl SavedState {
    fn write(
        path: &Path,
        generator: &Generator,
        step: usize,
        rng: &Rng,
        loss: &[LossPoint],
    ) -> Result<()> {
        let cpu = Device::Cpu;
        let mut tensors = HashMap::new();
        for (name, t) in generator.state()? {
            tensors.insert(name, t.to_device(&cpu)?);
        }
        let position = rng.position();
        tensors.insert("step".into(), Tensor::new(&[step as u32], &cpu)?);
        tensors.insert(
            "rng".into(),
            Tensor::new(&[(position >> 32) as u32, position as u32], &cpu)?,
        );
        let points: Vec<f64> = loss.iter().flat_map(|p| [p.step as f64, p.loss]).collect();
        tensors.insert(
            "loss".into(),
            Tensor::from_vec(points, (loss.len(), 2), &cpu)?,
        );
        // Whole or not at all: a crash mid-write leaves the last state.
        let part = PathBuf::from(format!("{}.part", path.display()));
        let failed = |e: &dyn std::fmt::Display| {
            EngineError::Data(format!(
                "cannot save the decoder's state to {}: {e}",
                path.display()
            ))
        };
        candle_core::safetensors::save(&tensors, &part).map_err(|e| failed(&e))?;
        std::fs::rename(&part, path).map_err(|e| failed(&e))
    }

    fn read(path: &Path, generator: &mut Generator) -> Result<SavedState> {
        let unreadable = |e: &dyn std::fmt::Display| {
            EngineError::Data(format!(
                "the decoder's saved state {} cannot be read ({e}); delete it to start over",
                path.display()
            ))
        };
        let tensors =
            candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| unreadable(&e))?;
        generator.load_state(&tensors).map_err(|e| unreadable(&e))?;
        let get = |name: &str| {
            tensors
                .get(name)
                .ok_or_else(|| unreadable(&format!("no `{name}`")))
        };
        let step = get("step")?.to_vec1::<u32>()?;
        let rng = get("rng")?.to_vec1::<u32>()?;
        let loss = get("loss")?.to_vec2::<f64>()?;
        let (Some(&step), [hi, lo]) = (step.first(), rng.as_slice()) else {
            return Err(unreadable(&"a malformed step or random state"));
        };
        Ok(SavedState {
            step: step as usize,
            rng: Rng::resume(((*hi as u64) << 32) | *lo as u64),
            loss: loss
                .iter()
                .map(|p| LossPoint {
                    step: p[0] as usize,
                    loss: p[1],
                })
                .collect(),
        })
    }
}

/// Splits `set` into images to train on and `per_class` held-out images
/// of every class (the first ones in order).
fn hold_out(set: &ImageSet, per_class: usize) -> (ImageSet, ImageSet) {
    let mut taken = vec![0usize; set.classes().max(1)];
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for i in 0..set.len() {
        let c = set.labels[i] as usize;
        if c < taken.len() && taken[c] < per_class {
            taken[c] += 1;
            held.push(i);
        } else {
            train.push(i);
        }
    }
    (set.subset(&train), set.subset(&held))
}

/// Held-out images shown in the grid: one per class first, then the rest.
fn grid_order(held: &ImageSet, rows: usize) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    let (mut first, mut rest) = (Vec::new(), Vec::new());
    for i in 0..held.len() {
        if seen.insert(held.labels[i]) {
            first.push(i);
        } else {
            rest.push(i);
        }
    }
    first.extend(rest);
    first.truncate(rows);
    first
}

/// The first held-out image and the first of another class.
fn interpolation_pair(held: &ImageSet) -> Option<(usize, usize)> {
    let a = 0;
    let b = (1..held.len()).find(|&i| held.labels[i] != held.labels[a])?;
    Some((a, b))
}

/// Images `ids` of `set` as `n × 3 × s × s` in [0, 1]; with `rng`,
/// dequantised with U(0, 1/256) noise.
pub(crate) fn to_unit(
    set: &ImageSet,
    ids: &[usize],
    mut rng: Option<&mut Rng>,
    device: &Device,
) -> Result<Tensor> {
    let s = set.size;
    let mut buf = vec![0.0f32; ids.len() * 3 * s * s];
    for (k, &i) in ids.iter().enumerate() {
        let img = set.image(i);
        let out = &mut buf[k * 3 * s * s..(k + 1) * 3 * s * s];
        for c in 0..3 {
            for p in 0..s * s {
                let jitter = rng.as_mut().map_or(0.0, |r| r.f32() / 256.0);
                out[c * s * s + p] = img[p * 3 + c] as f32 / 255.0 + jitter;
            }
        }
    }
    Ok(Tensor::from_vec(buf, (ids.len(), 3, s, s), device)?)
}

pub(crate) fn index_tensor(ids: &[usize], device: &Device) -> Result<Tensor> {
    let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    let n = ids.len();
    Ok(Tensor::from_vec(ids, n, device)?)
}

/// Per-dimension standardisation fitted on the decoder's training images:
/// every layer's representation reaches the decoder at one scale.
pub(crate) struct Standardize {
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Standardize {
    pub(crate) fn fit(f: &Features) -> Self {
        let n = f.len().max(1) as f32;
        let mut mean = vec![0.0f32; f.dim];
        for i in 0..f.len() {
            mean.iter_mut().zip(f.row(i)).for_each(|(m, v)| *m += v / n);
        }
        let mut var = vec![0.0f32; f.dim];
        for i in 0..f.len() {
            for ((s, v), m) in var.iter_mut().zip(f.row(i)).zip(&mean) {
                *s += (v - m) * (v - m) / n;
            }
        }
        Standardize {
            mean,
            // A dimension (nearly) constant on the training images stays
            // near 0 rather than blowing up on the held-out ones.
            std: var.iter().map(|v| v.sqrt().max(1e-3)).collect(),
        }
    }

    pub(crate) fn apply(&self, f: &Features, device: &Device) -> Result<Tensor> {
        let dim = f.dim;
        let data: Vec<f32> = f
            .data
            .iter()
            .enumerate()
            .map(|(i, v)| (v - self.mean[i % dim]) / self.std[i % dim])
            .collect();
        Ok(Tensor::from_vec(data, (f.len(), dim), device)?)
    }
}

/// The encoder's layer `layer` for images in [0, 1], normalised as
/// training normalised them.
pub(crate) fn embed_tensor(encoder: &Encoder, images: &Tensor, layer: usize) -> Result<Features> {
    let device = images.device();
    let mean = Tensor::from_vec(MEAN.to_vec(), (1, 3, 1, 1), device)?;
    let std = Tensor::from_vec(STD.to_vec(), (1, 3, 1, 1), device)?;
    let mut out = Features {
        dim: 0,
        data: Vec::new(),
    };
    let n = images.dim(0)?;
    for start in (0..n).step_by(256) {
        let x = images.narrow(0, start, (n - start).min(256))?;
        let x = x.broadcast_sub(&mean)?.broadcast_div(&std)?;
        let h = encoder.forward_layers(&x, false)?.swap_remove(layer);
        out.dim = h.dim(1)?;
        out.data.extend(h.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

fn rms(a: &[f32], b: &[f32]) -> f64 {
    let sq: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    (sq / a.len().max(1) as f64).sqrt()
}

/// Mean RMS distance between two samples of one image, over every pair of
/// every image's `per` samples (rows in image order); 0 for one sample.
fn diversity(samples: &[Vec<f32>], per: usize) -> f64 {
    let (mut sum, mut pairs) = (0.0, 0usize);
    for group in samples.chunks(per) {
        for i in 0..group.len() {
            for j in i + 1..group.len() {
                sum += rms(&group[i], &group[j]);
                pairs += 1;
            }
        }
    }
    if pairs == 0 { 0.0 } else { sum / pairs as f64 }
}

/// Mean RMS distance between two real images of one class.
fn real_distance(images: &[Vec<f32>], labels: &[u32]) -> f64 {
    let (mut sum, mut pairs) = (0.0, 0usize);
    for i in 0..images.len() {
        for j in i + 1..images.len() {
            if labels[i] == labels[j] {
                sum += rms(&images[i], &images[j]);
                pairs += 1;
            }
        }
    }
    if pairs == 0 { 0.0 } else { sum / pairs as f64 }
}

/// Pixels per cell side in the grids: small images are scaled up.
pub(crate) fn cell(size: usize) -> usize {
    size * (32 / size).max(1)
}

/// Draws one `3 × s × s` image in [0, 1] into `grid` at cell (`col`, `row`)
/// of `side` pixels (a multiple of `s`).
pub(crate) fn put(
    grid: &mut image::RgbImage,
    img: &Tensor,
    (col, row, side): (usize, usize, usize),
    gap: usize,
) -> Result<()> {
    let s = img.dim(1)?;
    let scale = side / s;
    let v = img.flatten_all()?.to_vec1::<f32>()?;
    for y in 0..side {
        for x in 0..side {
            let p = (y / scale) * s + x / scale;
            let px = [0, 1, 2].map(|c| (v[c * s * s + p].clamp(0.0, 1.0) * 255.0).round() as u8);
            grid.put_pixel(
                (col * side + gap + x) as u32,
                (row * side + y) as u32,
                image::Rgb(px),
            );
        }
    }
    Ok(())
}

pub(crate) fn png(grid: image::RgbImage) -> Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    grid.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| EngineError::Data(format!("cannot encode the sample grid: {e}")))?;
    Ok(out.into_inner())
}

/// Gap in pixels between the image column and each layer's block.
pub(crate) const GAP: usize = 6;

fn samples_grid(held: &ImageSet, rows: &[usize], columns: &[Vec<Tensor>]) -> Result<Vec<u8>> {
    let side = cell(held.size);
    let per = columns
        .first()
        .and_then(|c| c.first())
        .map_or(0, |t| t.dim(0).unwrap_or(0));
    let width = side + columns.len() * (GAP + per * side);
    let mut grid = image::RgbImage::from_pixel(
        width as u32,
        (rows.len() * side).max(1) as u32,
        image::Rgb([255, 255, 255]),
    );
    let real = to_unit(held, rows, None, &Device::Cpu)?;
    for (r, _) in rows.iter().enumerate() {
        put(&mut grid, &real.get(r)?, (0, r, side), 0)?;
        for (l, column) in columns.iter().enumerate() {
            let samples = column[r].to_device(&Device::Cpu)?;
            for j in 0..per {
                let col = 1 + l * per + j;
                put(&mut grid, &samples.get(j)?, (col, r, side), (l + 1) * GAP)?;
            }
        }
    }
    png(grid)
}

/// Rows: one per layer, image a, the interpolated samples, image b.
fn interpolation_grid(
    held: &ImageSet,
    pair: Option<(usize, usize)>,
    rows: &[Tensor],
) -> Result<Vec<u8>> {
    let side = cell(held.size);
    let Some((a, b)) = pair else {
        return png(image::RgbImage::from_pixel(
            1,
            1,
            image::Rgb([255, 255, 255]),
        ));
    };
    let width = 2 * side + 2 * GAP + INTERPOLATION_POINTS * side;
    let mut grid = image::RgbImage::from_pixel(
        width as u32,
        (rows.len() * side).max(1) as u32,
        image::Rgb([255, 255, 255]),
    );
    let ends = to_unit(held, &[a, b], None, &Device::Cpu)?;
    for (r, row) in rows.iter().enumerate() {
        let row = row.to_device(&Device::Cpu)?;
        put(&mut grid, &ends.get(0)?, (0, r, side), 0)?;
        for j in 0..INTERPOLATION_POINTS {
            put(&mut grid, &row.get(j)?, (1 + j, r, side), GAP)?;
        }
        put(
            &mut grid,
            &ends.get(1)?,
            (1 + INTERPOLATION_POINTS, r, side),
            2 * GAP,
        )?;
    }
    png(grid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sslab_shared::decoder::RcdmSettings;

    /// 12 images of 8 px in two colours, conditioned on their colour.
    fn two_colours() -> (ImageSet, Tensor) {
        let n = 12;
        let pixels = (0..n)
            .flat_map(|i| {
                let rgb = if i % 2 == 0 {
                    [200, 40, 40]
                } else {
                    [30, 60, 220]
                };
                rgb.repeat(64)
            })
            .collect();
        let set = ImageSet {
            size: 8,
            pixels,
            labels: (0..n).map(|i| (i % 2) as u32).collect(),
            boxes: Vec::new(),
            class_names: vec!["red".into(), "blue".into()],
        };
        let cond: Vec<f32> = (0..n)
            .flat_map(|i| if i % 2 == 0 { [1.0, -1.0] } else { [-1.0, 1.0] })
            .collect();
        (set, Tensor::from_vec(cond, (n, 2), &Device::Cpu).unwrap())
    }

    /// Stopped at step 7 and taken up again from its last save (step 6),
    /// a decoder ends exactly where an uninterrupted one does: losses,
    /// weights and the samples drawn after.
    #[test]
    fn a_resumed_decoder_ends_where_an_uninterrupted_one_does() {
        let (set, cond) = two_colours();
        let pixels = Pixels {
            set: &set,
            shrink: 1,
            device: &Device::Cpu,
        };
        for kind in [DecoderKind::Infusion, DecoderKind::Rcdm] {
            let spec = DecoderSpec {
                kind,
                // Saved every 2 steps.
                steps: 40,
                batch: 4,
                infusion: sslab_shared::decoder::InfusionSettings {
                    steps: 2,
                    channels: 4,
                    blocks: 1,
                    ..Default::default()
                },
                rcdm: RcdmSettings {
                    channels: 4,
                    multipliers: vec![1, 2],
                    attention: vec![4],
                    groups: 2,
                    diffusion_steps: 20,
                    sample_steps: 4,
                    ..Default::default()
                },
                ..Default::default()
            };
            let draw = |t: Trained| {
                let mut rng = t.rng;
                let x = t.generator.sample(&cond, &spec, &mut rng).unwrap();
                (t.loss, x.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            };
            let whole = train_generator(&spec, 0, &pixels, &cond, None, &mut |_, _| true).unwrap();
            assert_eq!(whole.resumed_from, None);
            let whole = draw(whole);

            let dir = tempfile::tempdir().unwrap();
            let saved = dir.path().join("layer-0.safetensors");
            let err = train_generator(&spec, 0, &pixels, &cond, Some(&saved), &mut |s, _| s < 7)
                .err()
                .expect("stopped");
            assert!(err.to_string().contains("stopped"), "{err}");
            let mut steps = Vec::new();
            let resumed = train_generator(&spec, 0, &pixels, &cond, Some(&saved), &mut |s, _| {
                steps.push(s);
                true
            })
            .unwrap();
            assert_eq!(resumed.resumed_from, Some(6), "{kind:?}");
            assert_eq!(steps, (7..=40).collect::<Vec<_>>());
            assert_eq!(draw(resumed), whole, "{kind:?}");

            // A finished decoder's state trains no more; a broken one is
            // named, not silently started over.
            let again = train_generator(&spec, 0, &pixels, &cond, Some(&saved), &mut |_, _| {
                panic!("no step is left")
            })
            .unwrap();
            assert_eq!(again.resumed_from, Some(40));
            std::fs::write(&saved, b"half a file").unwrap();
            let err = train_generator(&spec, 0, &pixels, &cond, Some(&saved), &mut |_, _| true)
                .err()
                .expect("unreadable");
            assert!(err.to_string().contains("delete it to start over"), "{err}");
        }
    }

    #[test]
    fn distances_are_rms_per_pixel() {
        let a = vec![0.0f32; 4];
        let b = vec![1.0f32; 4];
        assert!((rms(&a, &b) - 1.0).abs() < 1e-12);
        // Two images with two samples each: pairs (a, b) and (a, a).
        let samples = vec![a.clone(), b.clone(), a.clone(), a.clone()];
        assert!((diversity(&samples, 2) - 0.5).abs() < 1e-12);
        assert_eq!(diversity(&samples, 1), 0.0);
        let labels = [0, 0, 1, 1];
        assert!((real_distance(&samples, &labels) - 0.5).abs() < 1e-12);
    }
}
