//! Reading a demo bundle and answering crops with it: the code the browser
//! demo runs (through `sslab-wasm-infer`) and the native engine runs the same
//! way, so their answers can be compared.

use std::collections::HashMap;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use sha2::{Digest, Sha256};
use sslab_shared::audit::Guess;
use sslab_shared::demo::{Answer, LabelShare, Manifest, ModelAnswer};

use crate::data::ImageSet;
use crate::dejavu::attack::PublicIndex;
use crate::dejavu::crop::{Rect, resize_crop};
use crate::eval::{self, Features};
use crate::model::Encoder;
use crate::{EngineError, Result};

/// Neighbour images an answer names per model.
pub const NEIGHBOURS: usize = 5;

fn bad(msg: impl Into<String>) -> EngineError {
    EngineError::Data(msg.into())
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Parses a manifest and refuses another format or version.
pub fn parse_manifest(text: &str) -> Result<Manifest> {
    let manifest: Manifest = serde_json::from_str(text)
        .map_err(|e| bad(format!("the bundle's manifest.json is not valid: {e}")))?;
    manifest.check().map_err(bad)?;
    Ok(manifest)
}

/// Checks one file against the manifest's size and hash.
pub fn verify_file(manifest: &Manifest, path: &str, bytes: &[u8]) -> Result<()> {
    let entry = manifest
        .files
        .iter()
        .find(|f| f.path == path)
        .ok_or_else(|| bad(format!("`{path}` is not a file of this bundle")))?;
    if bytes.len() as u64 != entry.bytes {
        return Err(bad(format!(
            "`{path}` is {} bytes; the manifest says {} (truncated or replaced)",
            bytes.len(),
            entry.bytes
        )));
    }
    let got = sha256_hex(bytes);
    if got != entry.sha256 {
        return Err(bad(format!(
            "`{path}` does not match its hash in the manifest (sha256 {got}, expected {})",
            entry.sha256
        )));
    }
    Ok(())
}

/// Little-endian f16 values as f32.
pub fn f16_to_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

pub fn f32_to_f16(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect()
}

/// An encoder from safetensors bytes (f32 or f16 weights, computed in f32).
pub fn encoder_from_bytes(spec: &sslab_shared::RunSpec, weights: Vec<u8>) -> Result<Encoder> {
    let spec = spec.clone().into_valid()?;
    let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)?;
    Encoder::new(&spec, vb)
}

/// A loaded bundle: every model with its index of the public set.
pub struct Demo {
    pub manifest: Manifest,
    encoders: Vec<Encoder>,
    layer: usize,
    index: Vec<Features>,
}

impl Demo {
    /// Opens a bundle from its files (every file the manifest names,
    /// verified); `files` may hold more, such as the demo images.
    pub fn open(manifest: Manifest, files: &mut HashMap<String, Vec<u8>>) -> Result<Demo> {
        manifest.check().map_err(bad)?;
        let mut take = |path: &str| -> Result<Vec<u8>> {
            let bytes = files
                .remove(path)
                .ok_or_else(|| bad(format!("the bundle has no `{path}`")))?;
            verify_file(&manifest, path, &bytes)?;
            Ok(bytes)
        };
        let mut encoders = Vec::new();
        let mut index = Vec::new();
        let mut layer = None;
        for m in &manifest.models {
            let encoder = encoder_from_bytes(&m.spec, take(&m.weights)?).map_err(|e| {
                bad(format!(
                    "the weights of model {} do not fit its spec: {e}",
                    m.name
                ))
            })?;
            let at = encoder
                .layer_names()
                .iter()
                .position(|l| *l == manifest.layer)
                .ok_or_else(|| {
                    bad(format!(
                        "model {} has no layer `{}`; it has {}",
                        m.name,
                        manifest.layer,
                        encoder.layer_names().join(", ")
                    ))
                })?;
            if *layer.get_or_insert(at) != at {
                return Err(bad("the models read different layers"));
            }
            let data = f16_to_f32(&take(&m.embeddings)?);
            if data.len() != manifest.public.count * m.dim {
                return Err(bad(format!(
                    "`{}` holds {} values; {} public images × {} dimensions were expected",
                    m.embeddings,
                    data.len(),
                    manifest.public.count,
                    m.dim
                )));
            }
            encoders.push(encoder);
            index.push(Features { dim: m.dim, data });
        }
        let public = &manifest.public;
        if public.labels.len() != public.count
            || public
                .labels
                .iter()
                .any(|&l| l as usize >= manifest.class_names.len())
        {
            return Err(bad(
                "the public labels do not match the public set or the class names",
            ));
        }
        Ok(Demo {
            layer: layer.ok_or_else(|| bad("the bundle has no model"))?,
            manifest,
            encoders,
            index,
        })
    }

    /// Every model's embedding of `rect` of the `input_size` square RGB image.
    pub fn embed(&self, rgb: &[u8], rect: Rect) -> Result<Vec<Vec<f32>>> {
        let s = self.manifest.input_size;
        if rgb.len() != s * s * 3 {
            return Err(bad(format!(
                "expected a {s}×{s} RGB image ({} bytes), got {} bytes",
                s * s * 3,
                rgb.len()
            )));
        }
        check_crop(rect, s)?;
        let image = ImageSet {
            size: s,
            pixels: rgb.to_vec(),
            labels: vec![0],
            boxes: Vec::new(),
            class_names: self.manifest.class_names.clone(),
        };
        let crop = ImageSet {
            pixels: resize_crop(&image, 0, rect),
            ..image
        };
        self.encoders
            .iter()
            .map(|enc| {
                let layers = eval::embed_layers(enc, &crop, &Device::Cpu)?;
                Ok(layers[self.layer].data.clone())
            })
            .collect()
    }

    /// Every model's k-NN answer for its embedding.
    pub fn answer(&self, embeddings: &[Vec<f32>]) -> Answer {
        let m = &self.manifest;
        let models = embeddings
            .iter()
            .zip(&self.index)
            .map(|(query, features)| {
                let index = PublicIndex {
                    features,
                    labels: &m.public.labels,
                    classes: m.class_names.len(),
                };
                let nearest = index.nearest(query, m.k);
                let mut votes = vec![0usize; m.class_names.len()];
                for &j in &nearest {
                    votes[m.public.labels[j] as usize] += 1;
                }
                let Guess { top5, .. } = index.vote(&nearest);
                let top = top5
                    .iter()
                    .map(|&l| LabelShare {
                        label: l,
                        name: m.class_names[l as usize].clone(),
                        share: votes[l as usize] as f64 / nearest.len() as f64,
                    })
                    .collect();
                ModelAnswer {
                    top,
                    neighbours: nearest.into_iter().take(NEIGHBOURS).collect(),
                }
            })
            .collect();
        Answer { models }
    }

    /// `embed` then `answer`.
    pub fn predict(&self, rgb: &[u8], rect: Rect) -> Result<Answer> {
        Ok(self.answer(&self.embed(rgb, rect)?))
    }
}

/// A crop must have an area and lie inside the `size`-pixel image.
pub fn check_crop(rect: Rect, size: usize) -> Result<()> {
    let [x0, y0, x1, y1] = rect;
    if x1 <= x0 || y1 <= y0 {
        return Err(bad(format!(
            "the crop [{x0}, {y0}, {x1}, {y1}) has no area; drag a larger box"
        )));
    }
    if x1 as usize > size || y1 as usize > size {
        return Err(bad(format!(
            "the crop [{x0}, {y0}, {x1}, {y1}) reaches outside the {size}×{size} image"
        )));
    }
    Ok(())
}

/// A bundle folder on disk: its manifest and every file it names, verified.
pub fn read_dir(dir: &std::path::Path) -> Result<(Manifest, HashMap<String, Vec<u8>>)> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| EngineError::Io {
            what: format!("cannot read {}", path.display()),
            source,
        })
    };
    let text = String::from_utf8(read(&dir.join(sslab_shared::demo::MANIFEST))?)
        .map_err(|_| bad("manifest.json is not UTF-8"))?;
    let manifest = parse_manifest(&text)?;
    let mut files = HashMap::new();
    for f in &manifest.files {
        let bytes = read(&dir.join(&f.path))?;
        verify_file(&manifest, &f.path, &bytes)?;
        files.insert(f.path.clone(), bytes);
    }
    Ok((manifest, files))
}
