//! Runs an exported sslab encoder in the browser: the demo pages load this
//! module lazily and embed image crops on the visitor's machine.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sslab_engine::augment::{MEAN, STD};
use sslab_engine::model::Encoder;
use sslab_shared::RunSpec;
use wasm_bindgen::prelude::*;

/// The version of this module (the workspace version).
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
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
