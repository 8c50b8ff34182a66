//! Two-view and multi-crop augmentations.

use serde::{Deserialize, Serialize};

use super::*;
use crate::error::SpecError;

/// Two-view augmentations in the SimCLR style.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentSpec {
    /// Random resized crop: smallest and largest area fraction kept.
    pub crop_min_scale: f64,
    pub crop_max_scale: f64,
    pub flip_prob: f64,
    /// Chance of applying colour jitter, and its strength (brightness,
    /// contrast and saturation factors in 1 ± 0.8·s, hue shift ± 0.2·s).
    pub jitter_prob: f64,
    pub jitter_strength: f64,
    pub grayscale_prob: f64,
    /// Chance of a Gaussian blur for the first and the second view: BYOL's
    /// asymmetric [1.0, 0.1]; off at CIFAR scale.
    pub blur_prob: [f64; 2],
    /// Blur standard deviation range in pixels, drawn per view.
    pub blur_sigma: [f64; 2],
    /// Chance of solarizing (values ≥ 0.5 become 1 − v) per view: BYOL's [0.0, 0.2].
    pub solarize_prob: [f64; 2],
    /// Standard deviation of additive Gaussian noise on [0, 1] pixels, after
    /// everything else; with every other augmentation off this is the
    /// noise-only training of arXiv:2303.01986.
    pub noise_std: f64,
    /// Multi-crop (arXiv:2006.09882): small extra views besides the two
    /// global ones, for DINO, SwAV, MSN and PMSN; 0 = none, 6–10 typical.
    pub local_views: usize,
    /// Side of the local views in pixels; 0 = half the image size.
    pub local_size: usize,
    /// Area fraction range of the local crops; [0.05, 0.4] as in DINO.
    pub local_crop_scale: [f64; 2],
}

impl Default for AugmentSpec {
    fn default() -> Self {
        Self {
            crop_min_scale: 0.2,
            crop_max_scale: 1.0,
            flip_prob: 0.5,
            jitter_prob: 0.8,
            jitter_strength: 0.5,
            grayscale_prob: 0.2,
            blur_prob: [0.0, 0.0],
            blur_sigma: [0.1, 2.0],
            solarize_prob: [0.0, 0.0],
            noise_std: 0.0,
            local_views: 0,
            local_size: 0,
            local_crop_scale: [0.05, 0.4],
        }
    }
}

impl AugmentSpec {
    /// Side of the local views for images of `image_size` pixels.
    pub fn local_side(&self, image_size: usize) -> usize {
        if self.local_size == 0 {
            image_size / 2
        } else {
            self.local_size
        }
    }
}

/// The checks of augment that serde cannot make, in the order a spec reports them.
pub(super) fn check(spec: &RunSpec) -> Result<(), SpecError> {
    let b = &spec.backbone;
    let side = spec.data.image_size();
    let a = &spec.augment;
    if !(a.crop_min_scale > 0.0 && a.crop_min_scale <= a.crop_max_scale && a.crop_max_scale <= 1.0)
    {
        return bad(
            "augment.crop_min_scale",
            format!(
                "need 0 < crop_min_scale ≤ crop_max_scale ≤ 1, got {} and {}",
                a.crop_min_scale, a.crop_max_scale
            ),
        );
    }
    for (field, p) in [
        ("augment.flip_prob", a.flip_prob),
        ("augment.jitter_prob", a.jitter_prob),
        ("augment.grayscale_prob", a.grayscale_prob),
        ("augment.blur_prob", a.blur_prob[0]),
        ("augment.blur_prob", a.blur_prob[1]),
        ("augment.solarize_prob", a.solarize_prob[0]),
        ("augment.solarize_prob", a.solarize_prob[1]),
    ] {
        if !(0.0..=1.0).contains(&p) {
            return bad(
                field,
                format!("is a probability, must be in [0, 1], got {p}"),
            );
        }
    }
    if !(a.blur_sigma[0] > 0.0 && a.blur_sigma[0] <= a.blur_sigma[1] && a.blur_sigma[1] <= 10.0) {
        return bad(
            "augment.blur_sigma",
            format!("need 0 < min ≤ max ≤ 10 pixels, got {:?}", a.blur_sigma),
        );
    }
    if !(0.0..=1.0).contains(&a.noise_std) {
        return bad(
            "augment.noise_std",
            format!("must be in [0, 1], got {}", a.noise_std),
        );
    }
    if a.local_views > 0 {
        if !spec.method.takes_local_views() {
            return bad(
                "augment.local_views",
                format!(
                    "only dino, swav, msn and pmsn read local views, not {}",
                    spec.method.name()
                ),
            );
        }
        if a.local_views > 16 {
            return bad(
                "augment.local_views",
                format!("must be at most 16, got {}", a.local_views),
            );
        }
        let local = a.local_side(side);
        if side > 0 && (local < 4 || local > side) {
            return bad(
                "augment.local_size",
                format!("must be between 4 and the image size {side}, got {local}"),
            );
        }
        if b.kind == BackboneKind::Vit && !local.is_multiple_of(b.patch_size) {
            return bad(
                "augment.local_size",
                format!(
                    "the ViT's patch size {} must divide the local view size {local}",
                    b.patch_size
                ),
            );
        }
        let [lo, hi] = a.local_crop_scale;
        if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
            return bad(
                "augment.local_crop_scale",
                format!("need 0 < min ≤ max ≤ 1, got {:?}", a.local_crop_scale),
            );
        }
    }
    if !(0.0..=1.0).contains(&a.jitter_strength) {
        return bad(
            "augment.jitter_strength",
            format!("must be in [0, 1], got {}", a.jitter_strength),
        );
    }
    Ok(())
}
