//! Demo bundles (`sslab_shared::demo`): the encoders of a finished audit or
//! run, their embeddings of a public set, its thumbnails and the images a
//! visitor crops, written into one folder for the browser demo.

pub mod bundle;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sslab_shared::audit::{AttackEmbedding, AuditReport, AuditSpec};
use sslab_shared::demo::{
    BundleFile, DemoImage, DemoKind, DemoModel, FORMAT, MANIFEST, Manifest, PublicSet, VERSION,
};
use sslab_shared::{RunSpec, ValidSpec};

use crate::augment::{MEAN, STD};
use crate::data::{self, ImageSet};
use crate::dejavu::crop;
use crate::dejavu::split::{BoxState, box_of};
use crate::{EngineError, Result, model};

/// The default cap on a bundle's files, summed.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// Thumbnails in the sprite are at most this many pixels square.
const MAX_THUMB: usize = 48;

#[derive(Debug, Clone)]
pub struct Options {
    /// Weights as f16 (half the size; embeddings are always f16).
    pub f16: bool,
    pub max_bytes: u64,
    /// Demo images, at most.
    pub images: usize,
    pub title: String,
    pub source: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            f16: false,
            max_bytes: DEFAULT_MAX_BYTES,
            images: 24,
            title: String::new(),
            source: String::new(),
        }
    }
}

/// One model to export: its spec and training checkpoint.
pub struct Source<'a> {
    pub name: String,
    pub spec: &'a RunSpec,
    pub checkpoint: &'a Path,
}

/// The files of a bundle as they are written, with their sizes and hashes.
struct Writer {
    dir: PathBuf,
    files: Vec<BundleFile>,
}

impl Writer {
    /// `dir` must be new or empty, so that a refused bundle can be removed
    /// whole without touching anything else.
    fn new(dir: &Path) -> Result<Writer> {
        let io = |what: String| move |source| EngineError::Io { what, source };
        if dir.exists() {
            let mut entries =
                std::fs::read_dir(dir).map_err(io(format!("cannot read {}", dir.display())))?;
            if entries.next().is_some() {
                return Err(EngineError::Data(format!(
                    "{} is not empty; export into a new folder",
                    dir.display()
                )));
            }
        }
        std::fs::create_dir_all(dir.join("images"))
            .map_err(io(format!("cannot create {}", dir.display())))?;
        Ok(Writer {
            dir: dir.to_path_buf(),
            files: Vec::new(),
        })
    }

    fn put(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        let full = self.dir.join(path);
        std::fs::write(&full, bytes).map_err(|source| EngineError::Io {
            what: format!("cannot write {}", full.display()),
            source,
        })?;
        self.files.push(BundleFile {
            path: path.to_string(),
            bytes: bytes.len() as u64,
            sha256: bundle::sha256_hex(bytes),
        });
        Ok(())
    }

    /// Refuses a bundle over `max` bytes, naming its largest files, and
    /// removes what was written.
    fn check_size(&self, max: u64) -> Result<()> {
        let total: u64 = self.files.iter().map(|f| f.bytes).sum();
        if total <= max {
            return Ok(());
        }
        let mut largest: Vec<&BundleFile> = self.files.iter().collect();
        largest.sort_by_key(|f| std::cmp::Reverse(f.bytes));
        let listed: Vec<String> = largest
            .iter()
            .take(4)
            .map(|f| format!("{} {}", f.path, mib(f.bytes)))
            .collect();
        let _ = std::fs::remove_dir_all(&self.dir);
        Err(EngineError::Data(format!(
            "the bundle is {}, over the cap of {} (largest: {}); use f16 weights, a smaller public set, or raise the cap",
            mib(total),
            mib(max),
            listed.join(", ")
        )))
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// The encoder weights of a checkpoint alone, as safetensors bytes.
fn encoder_weights(spec: &ValidSpec, checkpoint: &Path, f16: bool) -> Result<Vec<u8>> {
    let (_, mut varmap) = model::build(spec, &Device::Cpu)?;
    varmap.load(checkpoint).map_err(|e| {
        EngineError::Data(format!(
            "{} does not hold this spec's encoder: {e}",
            checkpoint.display()
        ))
    })?;
    let tensors: HashMap<String, Tensor> = {
        let data = varmap.data().lock().expect("varmap lock");
        data.iter()
            .map(|(name, var)| {
                let t = var.as_tensor();
                let t = if f16 {
                    t.to_dtype(DType::F16)?
                } else {
                    t.clone()
                };
                Ok((name.clone(), t))
            })
            .collect::<Result<_>>()?
    };
    let tmp = std::env::temp_dir().join(format!(
        "sslab-export-{}-{}.safetensors",
        std::process::id(),
        bundle::sha256_hex(checkpoint.to_string_lossy().as_bytes())
    ));
    candle_core::safetensors::save(&tensors, &tmp)?;
    let bytes = std::fs::read(&tmp).map_err(|source| EngineError::Io {
        what: format!("cannot read {}", tmp.display()),
        source,
    });
    let _ = std::fs::remove_file(&tmp);
    bytes
}

/// Every public image's thumbnail in one PNG, `columns` to a row.
fn sprite(public: &ImageSet) -> Result<(Vec<u8>, usize, usize)> {
    let s = public.size;
    let thumb = s.min(MAX_THUMB);
    let columns = (public.len() as f64).sqrt().ceil().max(1.0) as usize;
    let rows = public.len().div_ceil(columns).max(1);
    let mut sheet = image::RgbImage::new((columns * thumb) as u32, (rows * thumb) as u32);
    for i in 0..public.len() {
        let img = image::RgbImage::from_raw(s as u32, s as u32, public.image(i).to_vec())
            .ok_or_else(|| EngineError::Data("an image of the wrong length".into()))?;
        let small = if thumb == s {
            img
        } else {
            image::imageops::resize(
                &img,
                thumb as u32,
                thumb as u32,
                image::imageops::FilterType::Triangle,
            )
        };
        let (x, y) = ((i % columns) * thumb, (i / columns) * thumb);
        image::imageops::replace(&mut sheet, &small, x as i64, y as i64);
    }
    let mut out = std::io::Cursor::new(Vec::new());
    sheet
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| EngineError::Data(format!("cannot encode the thumbnails: {e}")))?;
    Ok((out.into_inner(), thumb, columns))
}

/// A demo image as it goes into the manifest, before its file is written.
struct Picked {
    pool_index: usize,
    crop: [u32; 4],
    target: Option<usize>,
    verdict: Option<String>,
}

/// Writes the models, the public set and the picked images of `pool`.
#[allow(clippy::too_many_arguments)]
fn write(
    kind: DemoKind,
    sources: &[Source],
    layer: &str,
    k: usize,
    crop_rule: &str,
    public: &ImageSet,
    pool: &ImageSet,
    picked: &[Picked],
    opts: &Options,
    out: &Path,
) -> Result<Manifest> {
    if public.is_empty() {
        return Err(EngineError::Data("the public set has no images".into()));
    }
    let mut w = Writer::new(out)?;
    let mut models = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let spec = src.spec.clone().into_valid()?;
        let weights = encoder_weights(&spec, src.checkpoint, opts.f16)?;
        // The index is embedded with the weights as exported, so that the
        // page and the index agree even with f16 weights.
        let encoder = bundle::encoder_from_bytes(src.spec, weights.clone())?;
        let at = encoder
            .layer_names()
            .iter()
            .position(|l| l == layer)
            .ok_or_else(|| {
                EngineError::Data(format!(
                    "{} has no layer `{layer}`; it has {}",
                    src.name,
                    encoder.layer_names().join(", ")
                ))
            })?;
        let features = crate::eval::embed_layers(&encoder, public, &Device::Cpu)?.swap_remove(at);
        let (wpath, epath) = (format!("model-{i}.safetensors"), format!("model-{i}.f16"));
        w.put(&wpath, &weights)?;
        w.put(&epath, &bundle::f32_to_f16(&features.data))?;
        models.push(DemoModel {
            name: src.name.clone(),
            spec: src.spec.clone(),
            weights: wpath,
            dtype: if opts.f16 { "f16" } else { "f32" }.into(),
            embeddings: epath,
            dim: features.dim,
        });
    }
    let (sheet, thumb, columns) = sprite(public)?;
    w.put("public.png", &sheet)?;
    let mut images = Vec::new();
    for p in picked {
        let file = format!("images/{}.png", p.pool_index);
        w.put(&file, &data::image_png(pool, p.pool_index)?)?;
        images.push(DemoImage {
            file,
            label: pool.labels[p.pool_index],
            object: match box_of(pool, p.pool_index) {
                BoxState::Valid(b) => Some(b),
                _ => None,
            },
            crop: p.crop,
            target: p.target,
            verdict: p.verdict.clone(),
        });
    }
    w.check_size(opts.max_bytes)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        kind,
        title: opts.title.clone(),
        source: opts.source.clone(),
        input_size: pool.size,
        mean: MEAN,
        std: STD,
        layer: layer.into(),
        k,
        crop_rule: crop_rule.into(),
        models,
        public: PublicSet {
            count: public.len(),
            labels: public.labels.clone(),
            sprite: "public.png".into(),
            thumb,
            columns,
        },
        class_names: public.class_names.clone(),
        images,
        files: w.files,
    };
    let text = serde_json::to_string_pretty(&manifest).expect("a manifest serializes");
    std::fs::write(out.join(MANIFEST), text).map_err(|source| EngineError::Io {
        what: format!("cannot write {}", out.join(MANIFEST).display()),
        source,
    })?;
    Ok(manifest)
}

/// A bundle of an audit's two models: the audit's public set, and its
/// attacked images with their verdicts, the most convincingly memorized
/// first. `target` and `reference` are the checkpoints of the models
/// trained on A and on B.
pub fn export_audit(
    report: &AuditReport,
    target: &Path,
    reference: &Path,
    opts: &Options,
    out: &Path,
) -> Result<Manifest> {
    let spec: &AuditSpec = &report.spec;
    let prep = crate::dejavu::prepare(spec)?;
    let layer = match spec.attack.embedding {
        AttackEmbedding::Backbone => "backbone".to_string(),
        AttackEmbedding::Projector => spec
            .run
            .layer_names()
            .last()
            .cloned()
            .unwrap_or_else(|| "backbone".into()),
    };
    let rank = |outcome: &str| match outcome {
        "memorized" => 0,
        "correlated" => 1,
        "forgotten" => 2,
        _ => 3,
    };
    let mut examples: Vec<_> = report.examples.iter().collect();
    // Memorized images by the target's confidence, then the other verdicts.
    examples.sort_by(|a, b| {
        rank(a.outcome())
            .cmp(&rank(b.outcome()))
            .then(b.target.confidence.total_cmp(&a.target.confidence))
            .then(a.image.cmp(&b.image))
    });
    let picked: Vec<Picked> = examples
        .iter()
        .filter(|e| e.image < prep.pool.len())
        .take(opts.images)
        .map(|e| Picked {
            pool_index: e.image,
            crop: e.crop,
            target: Some(if e.set == "B" { 1 } else { 0 }),
            verdict: Some(e.outcome().to_string()),
        })
        .collect();
    let sources = [
        Source {
            name: "A".into(),
            spec: &spec.run,
            checkpoint: target,
        },
        Source {
            name: "B".into(),
            spec: &spec.run,
            checkpoint: reference,
        },
    ];
    let rule = format!(
        "{:?} background crop outside the object box (shorter side at least {} of the image)",
        spec.attack.crop, spec.attack.min_crop
    )
    .to_lowercase();
    write(
        DemoKind::Audit,
        &sources,
        &layer,
        spec.attack.k,
        &rule,
        &prep.public,
        &prep.pool,
        &picked,
        opts,
        out,
    )
}

/// A bundle of one run's encoder at `layer`: `public` is the index (the
/// run's held-out split unless given), and the demo images come from its
/// training split, spread over the classes.
pub fn export_run(
    spec: &RunSpec,
    checkpoint: &Path,
    public: Option<ImageSet>,
    layer: &str,
    opts: &Options,
    out: &Path,
) -> Result<Manifest> {
    let splits = data::load(&spec.data)?;
    let public = public.unwrap_or_else(|| splits.test.clone());
    let pool = &splits.train;
    if public.size != pool.size {
        return Err(EngineError::Data(format!(
            "the public images are {} px; the run's are {} px",
            public.size, pool.size
        )));
    }
    // Round-robin over the classes so that every class shows.
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); pool.classes().max(1)];
    for i in 0..pool.len() {
        if let Some(v) = by_class.get_mut(pool.labels[i] as usize) {
            v.push(i);
        }
    }
    let mut order = Vec::new();
    for round in 0.. {
        let before = order.len();
        order.extend(by_class.iter().filter_map(|v| v.get(round)));
        if order.len() == before || order.len() >= opts.images {
            break;
        }
    }
    order.truncate(opts.images);
    let s = pool.size as u32;
    let attack = sslab_shared::audit::AttackSpec {
        min_crop: 0.0,
        ..Default::default()
    };
    let picked: Vec<Picked> = order
        .into_iter()
        .map(|i| Picked {
            pool_index: i,
            crop: crop::background_crop(pool, i, &attack).unwrap_or([
                s / 4,
                s / 4,
                s - s / 4,
                s - s / 4,
            ]),
            target: None,
            verdict: None,
        })
        .collect();
    let sources = [Source {
        name: spec.name.clone(),
        spec,
        checkpoint,
    }];
    write(
        DemoKind::Run,
        &sources,
        layer,
        spec.eval.knn_k,
        "largest background crop outside the object box, or the centre half without a box",
        &public,
        pool,
        &picked,
        opts,
        out,
    )
}

#[cfg(test)]
mod tests;
