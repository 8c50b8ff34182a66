//! Runs exported sslab models in the browser: the demo pages load this module
//! in a Web Worker and answer crops on the visitor's machine, with the
//! engine's own model and k-NN code.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sslab_engine::augment::{MEAN, STD};
use sslab_engine::export::bundle::{self, Demo};
use sslab_engine::model::Encoder;
use sslab_shared::RunSpec;
use sslab_shared::demo::Manifest;
use wasm_bindgen::prelude::*;

/// The version of this module (the workspace version).
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

fn js(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// A demo bundle: built from its manifest, then fed the files it names, then
/// opened; it then answers crops of the image last set.
#[wasm_bindgen]
pub struct DemoBundle {
    manifest: Manifest,
    files: HashMap<String, Vec<u8>>,
    demo: Option<Demo>,
    /// The current image, `input_size` pixels square, RGB.
    image: Option<Vec<u8>>,
}

#[wasm_bindgen]
impl DemoBundle {
    /// Parses `manifest.json`; another format or version is refused by name.
    #[wasm_bindgen(constructor)]
    pub fn new(manifest_json: &str) -> Result<DemoBundle, JsError> {
        Ok(DemoBundle {
            manifest: bundle::parse_manifest(manifest_json).map_err(js)?,
            files: HashMap::new(),
            demo: None,
            image: None,
        })
    }

    /// The files `open` needs: every model's weights and embeddings.
    pub fn needed(&self) -> Vec<String> {
        self.manifest
            .models
            .iter()
            .flat_map(|m| [m.weights.clone(), m.embeddings.clone()])
            .collect()
    }

    /// The SHA-256 the manifest gives `path` (files are fetched by it).
    pub fn sha256(&self, path: &str) -> Result<String, JsError> {
        self.manifest
            .files
            .iter()
            .find(|f| f.path == path)
            .map(|f| f.sha256.clone())
            .ok_or_else(|| js(format!("`{path}` is not a file of this bundle")))
    }

    /// Adds one file, checked against its size and hash.
    pub fn add_file(&mut self, path: &str, bytes: Vec<u8>) -> Result<(), JsError> {
        bundle::verify_file(&self.manifest, path, &bytes).map_err(js)?;
        self.files.insert(path.to_string(), bytes);
        Ok(())
    }

    /// Builds the models from the files added.
    pub fn open(&mut self) -> Result<(), JsError> {
        let demo = Demo::open(self.manifest.clone(), &mut self.files).map_err(js)?;
        self.demo = Some(demo);
        Ok(())
    }

    /// Sets the image to crop from a bundle file (checked against its hash).
    pub fn set_bundle_image(&mut self, path: &str, bytes: Vec<u8>) -> Result<(), JsError> {
        bundle::verify_file(&self.manifest, path, &bytes).map_err(js)?;
        self.set_image(&bytes)
    }

    /// Sets the image to crop from a PNG or JPEG file of any size: its
    /// shorter side is resized to the models' input and the centre kept.
    pub fn set_image(&mut self, bytes: &[u8]) -> Result<(), JsError> {
        let size = self.manifest.input_size;
        let rgb = sslab_engine::data::folder::decode_bytes(bytes, size).map_err(js)?;
        self.image = Some(rgb);
        Ok(())
    }

    /// The current image as RGBA (for a canvas), `input_size` square.
    pub fn image_rgba(&self) -> Result<Vec<u8>, JsError> {
        let rgb = self.image.as_ref().ok_or_else(|| js("no image is set"))?;
        Ok(rgb
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect())
    }

    /// Every model's embedding of the crop `[x0, y0, x1, y1)`, one after
    /// the other.
    pub fn embed(&self, x0: u32, y0: u32, x1: u32, y1: u32) -> Result<Vec<f32>, JsError> {
        let (demo, image) = self.ready()?;
        Ok(demo.embed(image, [x0, y0, x1, y1]).map_err(js)?.concat())
    }

    /// The models' answers for the crop, as JSON (`sslab_shared::demo::Answer`).
    pub fn predict(&self, x0: u32, y0: u32, x1: u32, y1: u32) -> Result<String, JsError> {
        let (demo, image) = self.ready()?;
        let answer = demo.predict(image, [x0, y0, x1, y1]).map_err(js)?;
        serde_json::to_string(&answer).map_err(js)
    }

    fn ready(&self) -> Result<(&Demo, &[u8]), JsError> {
        let demo = self
            .demo
            .as_ref()
            .ok_or_else(|| js("the bundle is not open"))?;
        let image = self.image.as_deref().ok_or_else(|| js("no image is set"))?;
        Ok((demo, image))
    }
}

/// An encoder loaded from a run's spec and checkpoint.
#[wasm_bindgen]
pub struct Embedder {
    encoder: Encoder,
    size: usize,
}

#[wasm_bindgen]
impl Embedder {
    /// `spec_json`: the run's `RunSpec` as JSON; `weights`: its checkpoint
    /// (safetensors bytes).
    #[wasm_bindgen(constructor)]
    pub fn new(spec_json: &str, weights: Vec<u8>) -> Result<Embedder, JsError> {
        let spec = RunSpec::from_json(spec_json)
            .and_then(RunSpec::into_valid)
            .map_err(|e| JsError::new(&format!("invalid spec: {e}")))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
            .map_err(|e| JsError::new(&format!("cannot read the weights: {e}")))?;
        let encoder = Encoder::new(&spec, vb)
            .map_err(|e| JsError::new(&format!("weights do not fit the spec: {e}")))?;
        Ok(Embedder {
            encoder,
            size: spec.data.image_size(),
        })
    }

    /// Names of the layers `embed` can read: `backbone`, `proj.0`, …
    pub fn layers(&self) -> Vec<String> {
        self.encoder.layer_names().to_vec()
    }

    /// Embeds an RGBA image (as from a canvas) at layer `layer`. The image is
    /// resized to the model's input size.
    pub fn embed(
        &self,
        rgba: &[u8],
        width: usize,
        height: usize,
        layer: usize,
    ) -> Result<Vec<f32>, JsError> {
        let x = to_input(rgba, width, height, self.size)?;
        let outs = self
            .encoder
            .forward_layers(&x, false)
            .map_err(|e| JsError::new(&e.to_string()))?;
        let out = outs.get(layer).ok_or_else(|| {
            JsError::new(&format!(
                "layer {layer} does not exist; there are {}",
                outs.len()
            ))
        })?;
        out.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| JsError::new(&e.to_string()))
    }
}

/// Bilinear resize to `size`×`size` and the training normalisation, as (1, 3, S, S).
fn to_input(rgba: &[u8], w: usize, h: usize, size: usize) -> Result<Tensor, JsError> {
    if w == 0 || h == 0 || rgba.len() != w * h * 4 {
        return Err(JsError::new(&format!(
            "expected {w}×{h} RGBA pixels ({} bytes), got {} bytes",
            w * h * 4,
            rgba.len()
        )));
    }
    let mut data = vec![0f32; 3 * size * size];
    for oy in 0..size {
        for ox in 0..size {
            let fx = ((ox as f32 + 0.5) * w as f32 / size as f32 - 0.5).clamp(0.0, (w - 1) as f32);
            let fy = ((oy as f32 + 0.5) * h as f32 / size as f32 - 0.5).clamp(0.0, (h - 1) as f32);
            let (x0, y0) = (fx as usize, fy as usize);
            let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
            let (tx, ty) = (fx - x0 as f32, fy - y0 as f32);
            for c in 0..3 {
                let p = |x: usize, y: usize| rgba[(y * w + x) * 4 + c] as f32 / 255.0;
                let v = (p(x0, y0) * (1.0 - tx) + p(x1, y0) * tx) * (1.0 - ty)
                    + (p(x0, y1) * (1.0 - tx) + p(x1, y1) * tx) * ty;
                data[c * size * size + oy * size + ox] = (v - MEAN[c]) / STD[c];
            }
        }
    }
    Tensor::from_vec(data, (1, 3, size, size), &Device::Cpu)
        .map_err(|e| JsError::new(&e.to_string()))
}
