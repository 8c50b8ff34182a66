//! The backbone and the projector.

use serde::{Deserialize, Serialize};

use super::*;
use crate::error::SpecError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackboneKind {
    /// Three conv blocks; for tests and quick looks.
    TinyCnn,
    /// ResNet-18: basic blocks, 512 wide at width 64.
    Resnet18,
    /// ResNet-50: bottleneck blocks, 2048 wide at width 64.
    Resnet50,
    /// A Vision Transformer (arXiv:2010.11929): `width` is the embedding
    /// dimension; ViT-Tiny is width 192, depth 12, 3 heads; ViT-Small 384, 12, 6.
    Vit,
}

impl BackboneKind {
    pub fn name(&self) -> &'static str {
        match self {
            BackboneKind::TinyCnn => "tiny_cnn",
            BackboneKind::Resnet18 => "resnet18",
            BackboneKind::Resnet50 => "resnet50",
            BackboneKind::Vit => "vit",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackboneSpec {
    pub kind: BackboneKind,
    /// Channels of the first stage; later stages double it.
    /// ResNet-18 uses 64; the tiny CNN 16.
    pub width: usize,
    /// Width of the very last block, i.e. the representation dimension
    /// (arXiv:2304.05369). Unset: the architecture's own (8 × width for
    /// ResNets, 4 × for the tiny CNN, the embedding width for a ViT; set, a
    /// ViT ends with a linear layer to it).
    pub last_block_width: Option<usize>,
    /// ResNets: `cifar` (3×3 conv, no pooling; for images up to 64 px) or
    /// `imagenet` (7×7/2 conv and a 3×3/2 max-pool).
    pub stem: Stem,
    /// ViT: side of the square patches in pixels; it must divide the image size.
    pub patch_size: usize,
    /// ViT: transformer blocks.
    pub depth: usize,
    /// ViT: embed patches with 3×3 stride-2 conv-BN-ReLU layers, one per
    /// halving of the patch side, and a linear map to the width, instead of
    /// one linear map of each patch's pixels (Xiao et al. 2021,
    /// arXiv:2106.14881). A ViT then learns on small data sets in the steps
    /// a CNN needs. The patch size must be a power of two.
    pub conv_stem: bool,
    /// ViT: attention heads; they must divide `width`.
    pub heads: usize,
}

impl Default for BackboneSpec {
    fn default() -> Self {
        Self {
            kind: BackboneKind::TinyCnn,
            width: 32,
            last_block_width: None,
            stem: Stem::Cifar,
            patch_size: 4,
            depth: 12,
            conv_stem: false,
            heads: 3,
        }
    }
}

/// The first layers of a ResNet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stem {
    #[default]
    Cifar,
    Imagenet,
}

impl BackboneSpec {
    /// Dimension of the backbone's output (the representation).
    pub fn output_dim(&self) -> usize {
        let natural = match self.kind {
            BackboneKind::TinyCnn => self.width * 4,
            BackboneKind::Resnet18 => self.width * 8,
            BackboneKind::Resnet50 => self.width * 32,
            BackboneKind::Vit => self.width,
        };
        self.last_block_width.unwrap_or(natural)
    }

    /// A small ViT for 32 px images: patch 4, width 96, depth 6, 3 heads.
    pub fn small_vit() -> Self {
        BackboneSpec {
            kind: BackboneKind::Vit,
            width: 96,
            depth: 6,
            heads: 3,
            patch_size: 4,
            last_block_width: None,
            stem: Stem::Cifar,
            conv_stem: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectorSpec {
    /// Layer widths, e.g. "512-512-128": Linear+BN+ReLU for each hidden layer,
    /// the last one a plain Linear. Empty: no projector.
    pub dims: Dims,
    /// BatchNorm after each hidden Linear.
    pub batch_norm: bool,
}

impl Default for ProjectorSpec {
    fn default() -> Self {
        Self {
            dims: Dims(vec![256, 128]),
            batch_norm: true,
        }
    }
}

/// Layer widths, written `"512-512-128"` in specs; empty: no layers. Parsed
/// once, when the spec is read, and written back in the same spelling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dims(Vec<usize>);

impl Dims {
    pub fn new(widths: Vec<usize>) -> Self {
        Dims(widths)
    }

    pub fn as_slice(&self) -> &[usize] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn first(&self) -> Option<usize> {
        self.0.first().copied()
    }

    pub fn last(&self) -> Option<usize> {
        self.0.last().copied()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

impl std::str::FromStr for Dims {
    type Err = String;

    /// The widths as numbers, or a message saying what does not parse.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Dims::default());
        }
        text.split('-')
            .map(|part| match part.trim().parse::<usize>() {
                Ok(0) => Err("layer widths must be at least 1".to_string()),
                Ok(d) if d > 65536 => Err(format!("layer width {d} is above 65536")),
                Ok(d) => Ok(d),
                Err(_) => Err(format!(
                    "`{part}` is not a layer width; write widths joined by '-', e.g. \"512-512-128\""
                )),
            })
            .collect::<Result<_, _>>()
            .map(Dims)
    }
}

impl std::fmt::Display for Dims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text: Vec<String> = self.0.iter().map(usize::to_string).collect();
        f.write_str(&text.join("-"))
    }
}

impl PartialEq<&str> for Dims {
    fn eq(&self, text: &&str) -> bool {
        text.parse::<Dims>().is_ok_and(|d| d == *self)
    }
}

impl Serialize for Dims {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dims {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The checks of model that serde cannot make, in the order a spec reports them.
pub(super) fn check(spec: &RunSpec) -> Result<(), SpecError> {
    let b = &spec.backbone;
    if b.width < 1 || b.width > 1024 {
        return bad(
            "backbone.width",
            format!("must be between 1 and 1024, got {}", b.width),
        );
    }
    if let Some(w) = b.last_block_width
        && !(1..=16384).contains(&w)
    {
        return bad(
            "backbone.last_block_width",
            format!("must be between 1 and 16384, got {w}"),
        );
    }
    // A data set not yet looked up has no known size (0): the checks
    // that need it wait until the server has filled it in.
    let side = spec.data.image_size();
    if b.kind == BackboneKind::Vit {
        if b.patch_size < 1 || !side.is_multiple_of(b.patch_size) {
            return bad(
                "backbone.patch_size",
                format!("must divide the image size {side}, got {}", b.patch_size),
            );
        }
        if !(1..=48).contains(&b.depth) {
            return bad(
                "backbone.depth",
                format!("must be between 1 and 48, got {}", b.depth),
            );
        }
        if b.heads < 1 || !b.width.is_multiple_of(b.heads) {
            return bad(
                "backbone.heads",
                format!("must divide the width {}, got {}", b.width, b.heads),
            );
        }
        if b.conv_stem && !(b.patch_size >= 2 && b.patch_size.is_power_of_two()) {
            return bad(
                "backbone.patch_size",
                format!(
                    "a conv stem halves the image once per layer: the patch size must be a power of two from 2 up, got {}",
                    b.patch_size
                ),
            );
        }
        if b.conv_stem && spec.method.reconstructs() {
            return bad(
                "backbone.conv_stem",
                format!(
                    "{} reconstructs the patches it hides, and a conv stem's overlapping windows would show their edges to the encoder",
                    spec.method.name()
                ),
            );
        }
        if spec.method.needs_vit() && side > 0 && side / b.patch_size < 2 {
            return bad(
                "backbone.patch_size",
                format!(
                    "{} masks patches and needs at least 2×2 of them; {} leaves one",
                    spec.method.name(),
                    b.patch_size
                ),
            );
        }
        if let Some(d) = &spec.eval.data
            && d.image_size() % b.patch_size != 0
        {
            return bad(
                "eval.data",
                format!(
                    "its {} px images do not split into the ViT's {} px patches",
                    d.image_size(),
                    b.patch_size
                ),
            );
        }
    } else if b.conv_stem {
        return bad(
            "backbone.conv_stem",
            format!(
                "only a ViT has one, not {} (a ResNet's first layers are backbone.stem)",
                b.kind.name()
            ),
        );
    } else if spec.method.needs_vit() {
        return bad(
            "backbone.kind",
            format!(
                "{} masks patches and needs a ViT (backbone.kind = \"vit\"), not {}",
                spec.method.name(),
                b.kind.name()
            ),
        );
    }
    if spec.method.reconstructs() && !spec.projector.dims.is_empty() {
        return bad(
            "projector.dims",
            format!(
                "{} reconstructs pixels and trains no projector; set it to \"\"",
                spec.method.name()
            ),
        );
    }
    Ok(())
}
