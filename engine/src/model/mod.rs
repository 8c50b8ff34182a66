//! Encoders: a backbone followed by a projector, each layer's output named so
//! that every layer can be probed (guillotine regularization, arXiv:2206.13378).

pub mod cnn;
pub mod dense;
pub mod norm;
pub mod projector;
pub mod resnet;
pub mod vit;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sslab_shared::ValidSpec;
use sslab_shared::spec::{BackboneKind, Precision, Stem};

use crate::Result;
use sslab_shared::rng::Rng;

pub use projector::Projector;

/// Global average pooling over the spatial dimensions: (B, C, H, W) → (B, C).
pub fn global_avg_pool(x: &Tensor) -> candle_core::Result<Tensor> {
    // In f32 whatever the activations' dtype: a bf16 mean over many
    // positions would lose digits.
    x.to_dtype(DType::F32)?.mean(3)?.mean(2)
}

pub enum Backbone {
    TinyCnn(cnn::TinyCnn),
    Resnet(resnet::ResNet),
    Vit(vit::Vit),
}

impl Backbone {
    /// The ViT, for the methods that drop or mask patches.
    pub fn vit(&self) -> Option<&vit::Vit> {
        match self {
            Backbone::Vit(v) => Some(v),
            _ => None,
        }
    }
}

impl ModuleT for Backbone {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        match self {
            Backbone::TinyCnn(m) => m.forward_t(x, train),
            Backbone::Resnet(m) => m.forward_t(x, train),
            Backbone::Vit(m) => m.forward_t(x, train),
        }
    }
}

/// Backbone + projector.
pub struct Encoder {
    pub backbone: Backbone,
    pub projector: Projector,
    layer_names: Vec<String>,
    /// The backbone's training dtype (`optimizer.precision`).
    compute: DType,
}

impl Encoder {
    /// Builds the encoder a spec describes, with weights under `vb`
    /// (`backbone.*`, `projector.*`).
    pub fn new(spec: &ValidSpec, vb: VarBuilder) -> Result<Self> {
        let b = &spec.backbone;
        let backbone = match b.kind {
            BackboneKind::TinyCnn => Backbone::TinyCnn(cnn::TinyCnn::new(
                b.width,
                b.output_dim(),
                vb.pp("backbone"),
            )?),
            BackboneKind::Resnet18 => Backbone::Resnet(resnet::ResNet::resnet18(
                b.width,
                b.output_dim(),
                b.stem == Stem::Imagenet,
                vb.pp("backbone"),
            )?),
            BackboneKind::Resnet50 => Backbone::Resnet(resnet::ResNet::resnet50(
                b.width,
                b.output_dim(),
                b.stem == Stem::Imagenet,
                vb.pp("backbone"),
            )?),
            BackboneKind::Vit => Backbone::Vit(vit::Vit::new(
                &vit::VitShape {
                    image_size: spec.data.image_size(),
                    patch: b.patch_size,
                    width: b.width,
                    depth: b.depth,
                    heads: b.heads,
                    conv_stem: b.conv_stem,
                    out_dim: b.last_block_width,
                },
                vb.pp("backbone"),
            )?),
        };
        let projector = Projector::new(
            b.output_dim(),
            spec.projector.dims.as_slice(),
            spec.projector.batch_norm,
            vb.pp("projector"),
        )?;
        Ok(Encoder {
            backbone,
            projector,
            layer_names: spec.layer_names(),
            compute: match spec.optimizer.precision {
                Precision::F32 => DType::F32,
                Precision::Bf16 => DType::BF16,
            },
        })
    }

    /// The dtype the backbone trains in (`optimizer.precision`); methods
    /// that drive a ViT's parts themselves (MAE, SimMIM, MSN) cast to it.
    pub fn compute(&self) -> DType {
        self.compute
    }

    /// `backbone`, `proj.0`, `proj.1`, …
    pub fn layer_names(&self) -> &[String] {
        &self.layer_names
    }

    /// Every CKA tap (`RunSpec::cka_layer_names`): the backbone's blocks,
    /// pooled, then every named layer (inference).
    pub fn forward_taps(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let mut out = match &self.backbone {
            Backbone::TinyCnn(m) => m.taps(x)?,
            Backbone::Resnet(m) => m.taps(x)?,
            Backbone::Vit(m) => m.taps(x)?,
        };
        out.extend(self.forward_layers(x, false)?);
        Ok(out)
    }

    /// The output of every named layer, in depth order.
    pub fn forward_layers(&self, x: &Tensor, train: bool) -> candle_core::Result<Vec<Tensor>> {
        self.layers_from(self.backbone_forward(x, train)?, train)
    }

    /// The backbone's representation, in f32. In training with bf16
    /// precision the backbone runs on bf16 copies of the input and weights;
    /// the gradients flow back through the casts to the f32 weights.
    pub fn backbone_forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if train && self.compute != DType::F32 {
            self.backbone
                .forward_t(&x.to_dtype(self.compute)?, train)?
                .to_dtype(DType::F32)
        } else {
            self.backbone.forward_t(x, train)
        }
    }

    /// Every named layer's output from the backbone's output `h`.
    pub fn layers_from(&self, h: Tensor, train: bool) -> candle_core::Result<Vec<Tensor>> {
        let projected = self.projector.forward_layers(&h, train)?;
        Ok(std::iter::once(h).chain(projected).collect())
    }
}

impl ModuleT for Encoder {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let h = self.backbone_forward(x, train)?;
        self.projector.forward_t(&h, train)
    }
}

/// A freshly initialised encoder and the variables that hold its weights.
pub fn build(spec: &ValidSpec, device: &Device) -> Result<(Encoder, VarMap)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let encoder = Encoder::new(spec, vb)?;
    seed_weights(&varmap, spec.seed)?;
    Ok((encoder, varmap))
}

/// Re-draws every matrix and kernel from the run's seed, so that the same
/// spec starts from the same weights (candle's CPU initialisers are not
/// seedable). Uniform ±1/sqrt(fan_in), PyTorch's default for Linear and Conv;
/// a ViT's tokens (CLS, positions, mask) N(0, 0.02) as in ViT, DeiT and MAE.
fn seed_weights(varmap: &VarMap, seed: u64) -> Result<()> {
    seed_weights_under(varmap, "", seed)
}

/// Learned tokens of the ViT and the masking methods, by variable name.
const TOKENS: [&str; 3] = ["cls_token", "pos_embed", "mask_token"];

/// `seed_weights` for the variables whose names start with `prefix`.
pub fn seed_weights_under(varmap: &VarMap, prefix: &str, seed: u64) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().filter(|n| n.starts_with(prefix)).collect();
    names.sort();
    for (k, name) in names.into_iter().enumerate() {
        let var = &data[name];
        let dims = var.dims();
        if dims.len() < 2 {
            // Biases start at zero; norm weights keep their constants.
            if name.ends_with("bias") {
                var.set(&var.zeros_like()?)?;
            }
            continue;
        }
        let mut rng = Rng::derive(seed, &[0xC0FFEE, k as u64]);
        let values: Vec<f32> = if TOKENS.iter().any(|t| name.ends_with(t)) {
            (0..var.elem_count())
                .map(|_| (0.02 * rng.normal()) as f32)
                .collect()
        } else {
            let fan_in: usize = dims[1..].iter().product();
            let bound = 1.0 / (fan_in as f64).sqrt();
            (0..var.elem_count())
                .map(|_| rng.range(-bound, bound) as f32)
                .collect()
        };
        var.set(&Tensor::from_vec(values, dims, var.device())?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sslab_shared::RunSpec;

    fn values(varmap: &VarMap, suffix: &str) -> Vec<f32> {
        let data = varmap.data().lock().unwrap();
        let (_, var) = data.iter().find(|(n, _)| n.ends_with(suffix)).unwrap();
        var.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// bf16 training: the backbone's output stays close to f32's, comes
    /// back in f32, and its gradients reach the f32 weights; evaluation is
    /// f32 exactly. A CNN and a ViT (its linear layers, norms and tokens
    /// cast on the way in).
    #[test]
    fn bf16_training_is_close_to_f32_and_trains_f32_weights() {
        let mut cnn = RunSpec::default();
        cnn.backbone.width = 8;
        let mut vit = RunSpec::default();
        vit.backbone = sslab_shared::spec::BackboneSpec {
            kind: BackboneKind::Vit,
            width: 24,
            depth: 2,
            heads: 2,
            patch_size: 8,
            ..Default::default()
        };
        // Three conv kernels, BatchNorm γ and β; the ViT's patch embedding,
        // tokens, per block two norms and four linear layers, the last norm.
        for (spec, weights) in [(cnn, 9), (vit, 2 + 2 + 2 * 12 + 2)] {
            bf16_against_f32(spec, weights);
        }
    }

    fn bf16_against_f32(mut spec: RunSpec, expected_weights: usize) {
        let (full, _) = build(&spec.clone().into_valid().unwrap(), &Device::Cpu).unwrap();
        spec.optimizer.precision = Precision::Bf16;
        let (half, varmap) = build(&spec.clone().into_valid().unwrap(), &Device::Cpu).unwrap();
        let mut rng = Rng::new(4);
        let pixels: Vec<f32> = (0..4 * 3 * 32 * 32).map(|_| rng.normal() as f32).collect();
        let x = Tensor::from_vec(pixels, (4, 3, 32, 32), &Device::Cpu).unwrap();
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(
            values(&full.backbone_forward(&x, false).unwrap()),
            values(&half.backbone_forward(&x, false).unwrap())
        );
        let a = values(&full.backbone_forward(&x, true).unwrap());
        let h = half.backbone_forward(&x, true).unwrap();
        assert_eq!(h.dtype(), DType::F32);
        let b = values(&h);
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(worst > 0.0 && worst < 0.05 * scale, "{worst} of {scale}");
        let grads = crate::ops::backward(&h.sqr().unwrap().sum_all().unwrap()).unwrap();
        let data = varmap.data().lock().unwrap();
        let weights: Vec<_> = data
            .iter()
            .filter(|(n, _)| n.starts_with("backbone.") && !n.contains("running"))
            .collect();
        assert_eq!(weights.len(), expected_weights, "{:?}", spec.backbone.kind);
        for (name, var) in weights {
            assert_eq!(var.dtype(), DType::F32, "{name}");
            let g = grads
                .get(var)
                .unwrap_or_else(|| panic!("{name} has no gradient"));
            assert_eq!(g.dtype(), DType::F32);
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm.is_finite() && norm > 0.0, "{name}: {norm}");
        }
    }

    /// One tap per name, each one vector per image; the last tap of a CNN
    /// is its pooled representation, and a ViT's last MLP tap is the
    /// patch tokens before the final norm.
    #[test]
    fn taps_match_their_names_and_end_at_the_representation() {
        let mut rng = Rng::new(2);
        let pixels: Vec<f32> = (0..2 * 3 * 32 * 32).map(|_| rng.normal() as f32).collect();
        let x = Tensor::from_vec(pixels, (2, 3, 32, 32), &Device::Cpu).unwrap();
        for (kind, width) in [
            (BackboneKind::TinyCnn, 8),
            (BackboneKind::Resnet18, 4),
            (BackboneKind::Vit, 24),
        ] {
            let mut spec = RunSpec::default();
            spec.backbone.kind = kind;
            spec.backbone.width = width;
            spec.backbone.depth = 2;
            let valid = spec.clone().into_valid().unwrap();
            let (encoder, _) = build(&valid, &Device::Cpu).unwrap();
            let taps = encoder.forward_taps(&x).unwrap();
            let names = spec.cka_layer_names();
            assert_eq!(taps.len(), names.len(), "{kind:?}: {names:?}");
            for (t, n) in taps.iter().zip(&names) {
                assert_eq!(t.dims().len(), 2, "{kind:?} {n}");
                assert_eq!(t.dim(0).unwrap(), 2, "{kind:?} {n}");
            }
            let blocks = spec.block_names().len();
            if kind != BackboneKind::Vit {
                let last = taps[blocks - 1]
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let rep = taps[blocks]
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                assert_eq!(last, rep, "{kind:?}");
            }
        }
    }

    #[test]
    fn vit_tokens_start_normal_and_small_matrices_uniform() {
        let mut spec = RunSpec::default();
        spec.backbone.kind = BackboneKind::Vit;
        spec.backbone.width = 48;
        spec.backbone.depth = 1;
        let (_, varmap) = build(&spec.clone().into_valid().unwrap(), &Device::Cpu).unwrap();
        let pos = values(&varmap, "pos_embed");
        let n = pos.len() as f64;
        let mean = pos.iter().map(|&v| v as f64).sum::<f64>() / n;
        let std = (pos.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(
            mean.abs() < 0.003 && (std - 0.02).abs() < 0.002,
            "{mean} {std}"
        );
        // Normal, not uniform: some values beyond 1.5 σ.
        assert!(pos.iter().any(|v| v.abs() > 0.03));
        assert!(values(&varmap, "cls_token").iter().all(|v| v.abs() < 0.15));
        // A 48-wide linear layer keeps ±1/√48.
        let fc = values(&varmap, "blocks.0.mlp.fc1.weight");
        let bound = 1.0 / 48f32.sqrt();
        assert!(fc.iter().all(|v| v.abs() <= bound));
        assert!(fc.iter().any(|v| v.abs() > 0.9 * bound));
    }
}
