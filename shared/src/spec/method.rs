//! The SSL method and its hyper-parameters.

use serde::{Deserialize, Serialize};

use super::*;
use crate::error::SpecError;

/// The SSL method and its hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum MethodSpec {
    /// SimCLR (arXiv:2002.05709): NT-Xent over two augmented views.
    Simclr {
        /// Softmax temperature; 0.5 at CIFAR scale, 0.1–0.2 on ImageNet.
        #[serde(default = "default_simclr_temperature")]
        temperature: f64,
        /// `all`: every other view in the batch is a negative (NT-Xent);
        /// `single`: each positive pair meets one negative only (arXiv:2303.01986).
        #[serde(default)]
        negatives: Negatives,
    },
    /// VICReg (Bardes et al. 2022, arXiv:2105.04906): invariance, variance and
    /// covariance terms on the projector output of the two views.
    Vicreg {
        /// λ, weight of the mean squared distance between the views.
        #[serde(default = "default_vicreg_weight")]
        invariance: f64,
        /// μ, weight of the hinge on each dimension's standard deviation.
        #[serde(default = "default_vicreg_weight")]
        variance: f64,
        /// ν, weight of the squared off-diagonal covariances.
        #[serde(default = "default_vicreg_covariance")]
        covariance: f64,
    },
    /// Barlow Twins (Zbontar et al. 2021, arXiv:2103.03230): the
    /// cross-correlation of the two views pushed to the identity.
    Barlow {
        /// Weight of the off-diagonal terms; 5e-3 in the paper (or 1/d).
        #[serde(default = "default_barlow_lambda")]
        lambda_offdiag: f64,
    },
    /// BYOL (Grill et al. 2020, arXiv:2006.07733): a predictor on the online
    /// branch regresses an EMA target's projection of the other view.
    Byol {
        /// Predictor widths, e.g. "512-128"; the last must equal the
        /// projector's output. Empty: one hidden layer as wide as the
        /// projector's first.
        #[serde(default)]
        predictor: String,
        /// EMA rate at the start; it rises to 1 along a cosine. 0.99 at
        /// CIFAR scale, 0.996 on ImageNet.
        #[serde(default = "default_byol_ema")]
        ema_base: f64,
    },
    /// MoCo v3 (Chen, Xie & He 2021, arXiv:2104.02057): InfoNCE between the
    /// online predictor and a momentum encoder's projection of the other view.
    Mocov3 {
        /// InfoNCE temperature; 0.2 in the paper.
        #[serde(default = "default_moco_temperature")]
        temperature: f64,
        /// Predictor widths, as for BYOL.
        #[serde(default)]
        predictor: String,
        /// Momentum of the key encoder at the start, rising to 1 along a cosine.
        #[serde(default = "default_byol_ema")]
        ema_base: f64,
    },
    /// SimSiam (Chen & He 2021, arXiv:2011.10566): BYOL without the EMA
    /// target, the stop-gradient alone prevents collapse.
    Simsiam {
        /// Predictor widths; empty: a bottleneck of a quarter of the
        /// projector's output, then back to it.
        #[serde(default)]
        predictor: String,
    },
    /// DINO (Caron et al. 2021, arXiv:2104.14294): the student's softmax over
    /// prototypes matches an EMA teacher's centred, sharpened one, across
    /// global and local crops.
    Dino {
        /// Output dimension K of the head (65536 on ImageNet, 4096 at CIFAR scale).
        #[serde(default = "default_dino_prototypes")]
        prototypes: usize,
        /// τ_s; 0.1.
        #[serde(default = "default_proto_temperature")]
        student_temperature: f64,
        /// τ_t after its warm-up; 0.04–0.07.
        #[serde(default = "default_teacher_temperature")]
        teacher_temperature: f64,
        /// τ_t at the start, rising linearly to `teacher_temperature`.
        #[serde(default = "default_warmup_teacher_temperature")]
        warmup_teacher_temperature: f64,
        /// Length of that warm-up in epochs (30 in the paper); cut to the run's length.
        #[serde(default = "default_warmup_teacher_epochs")]
        warmup_teacher_epochs: f64,
        /// Momentum of the running centre of the teacher's outputs; 0.9.
        #[serde(default = "default_center_momentum")]
        center_momentum: f64,
        /// Teacher EMA rate at the start, rising to 1 along a cosine; 0.996.
        #[serde(default = "default_slow_ema")]
        ema_base: f64,
        /// Epochs at the start during which the last layer (the prototypes)
        /// does not move, which the paper finds steadies the start; 1.
        #[serde(default = "default_one")]
        freeze_last_layer_epochs: f64,
    },
    /// SwAV (Caron et al. 2020, arXiv:2006.09882): Sinkhorn-Knopp codes over
    /// prototypes, each view predicting the other's code.
    Swav {
        /// Number of prototypes; 3000.
        #[serde(default = "default_swav_prototypes")]
        prototypes: usize,
        /// Softmax temperature of the predictions; 0.1.
        #[serde(default = "default_proto_temperature")]
        temperature: f64,
        /// Entropic regularisation ε of Sinkhorn-Knopp; 0.05.
        #[serde(default = "default_swav_epsilon")]
        epsilon: f64,
        /// Sinkhorn-Knopp iterations; 3.
        #[serde(default = "default_sinkhorn_iterations")]
        sinkhorn_iterations: usize,
        /// Epochs at the start during which the prototypes do not move; 1.
        #[serde(default = "default_one")]
        freeze_prototypes_epochs: f64,
        /// Features of past batches kept per global view and scored with
        /// each batch before Sinkhorn-Knopp, so that batches far below 256
        /// still get balanced codes; 0 (the default) keeps none, 3840 at
        /// CIFAR scale. At least the batch size.
        #[serde(default)]
        queue_size: usize,
        /// Epoch from which the queue fills; it takes part once full. 0.
        #[serde(default)]
        queue_starts_epoch: f64,
    },
    /// MSN (Assran et al. 2022, arXiv:2204.07141): an anchor view with patches
    /// dropped matches an EMA target's sharpened prototype assignment of an
    /// unmasked view; me-max keeps every prototype in use. ViT only.
    Msn {
        /// Number of learnable prototypes K; 1024.
        #[serde(default = "default_msn_prototypes")]
        prototypes: usize,
        /// Anchor softmax temperature; 0.1.
        #[serde(default = "default_proto_temperature")]
        temperature: f64,
        /// Target sharpening T (p^(1/T)); 0.25.
        #[serde(default = "default_msn_sharpen")]
        sharpen: f64,
        /// λ of the mean-entropy maximisation; 1.
        #[serde(default = "default_one")]
        me_max_weight: f64,
        /// Fraction of the anchor's patches dropped; 0.15 in the paper, 0.6–0.7 elsewhere.
        #[serde(default = "default_msn_mask_ratio")]
        mask_ratio: f64,
        /// Target EMA rate at the start, rising to 1 along a cosine; 0.996.
        #[serde(default = "default_slow_ema")]
        ema_base: f64,
        /// Sinkhorn-Knopp iterations that balance the targets over the
        /// prototypes; 3 as the authors' configuration, 0 switches it off.
        #[serde(default = "default_sinkhorn_iterations")]
        sinkhorn_iterations: usize,
    },
    /// PMSN (Assran et al. 2022, arXiv:2210.07277): MSN with a power-law prior
    /// π_k ∝ k^(−power) in place of the uniform one, regulariser λ·KL(p̄‖π).
    Pmsn {
        #[serde(default = "default_msn_prototypes")]
        prototypes: usize,
        #[serde(default = "default_proto_temperature")]
        temperature: f64,
        #[serde(default = "default_msn_sharpen")]
        sharpen: f64,
        /// λ of KL(p̄‖π); 1.
        #[serde(default = "default_one")]
        me_max_weight: f64,
        #[serde(default = "default_msn_mask_ratio")]
        mask_ratio: f64,
        #[serde(default = "default_slow_ema")]
        ema_base: f64,
        /// Exponent τ of the prior; 0.25. 0 is MSN.
        #[serde(default = "default_pmsn_power")]
        power: f64,
        /// As MSN's, but 0 by default: balancing the targets uniformly
        /// works against the power-law prior.
        #[serde(default)]
        sinkhorn_iterations: usize,
    },
    /// MAE (He et al. 2022, arXiv:2111.06377): the ViT encodes the visible
    /// patches only; a light decoder fills in mask tokens and regresses the
    /// masked patches' pixels. ViT only, no projector.
    Mae {
        /// Fraction of patches masked; 0.75.
        #[serde(default = "default_mae_mask_ratio")]
        mask_ratio: f64,
        /// Decoder width (512 in the paper).
        #[serde(default = "default_decoder_width")]
        decoder_width: usize,
        /// Decoder blocks (8 in the paper).
        #[serde(default = "default_decoder_depth")]
        decoder_depth: usize,
        /// Decoder attention heads (16 in the paper).
        #[serde(default = "default_decoder_heads")]
        decoder_heads: usize,
        /// Regress each patch's pixels normalised by the patch's own mean and std.
        #[serde(default = "default_true")]
        norm_pix_loss: bool,
    },
    /// SimMIM (Xie et al. 2022, arXiv:2111.09886): masked patches replaced by a
    /// learned token at the encoder's input, a linear head regresses their
    /// raw pixels with an L1 loss. ViT only, no projector.
    Simmim {
        /// Fraction of patches masked; 0.6.
        #[serde(default = "default_simmim_mask_ratio")]
        mask_ratio: f64,
    },
}

/// Which negatives SimCLR contrasts each positive pair with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Negatives {
    #[default]
    All,
    Single,
}

fn default_dino_prototypes() -> usize {
    4096
}

fn default_swav_prototypes() -> usize {
    3000
}

fn default_msn_prototypes() -> usize {
    1024
}

fn default_proto_temperature() -> f64 {
    0.1
}

fn default_teacher_temperature() -> f64 {
    0.07
}

fn default_warmup_teacher_temperature() -> f64 {
    0.04
}

fn default_warmup_teacher_epochs() -> f64 {
    30.0
}

fn default_center_momentum() -> f64 {
    0.9
}

fn default_slow_ema() -> f64 {
    0.996
}

fn default_swav_epsilon() -> f64 {
    0.05
}

fn default_sinkhorn_iterations() -> usize {
    3
}

fn default_msn_sharpen() -> f64 {
    0.25
}

fn default_one() -> f64 {
    1.0
}

fn default_true() -> bool {
    true
}

fn default_msn_mask_ratio() -> f64 {
    0.15
}

fn default_pmsn_power() -> f64 {
    0.25
}

fn default_mae_mask_ratio() -> f64 {
    0.75
}

fn default_decoder_width() -> usize {
    128
}

fn default_decoder_depth() -> usize {
    2
}

fn default_decoder_heads() -> usize {
    4
}

fn default_simmim_mask_ratio() -> f64 {
    0.6
}

fn default_simclr_temperature() -> f64 {
    0.5
}

fn default_vicreg_weight() -> f64 {
    25.0
}

fn default_vicreg_covariance() -> f64 {
    1.0
}

fn default_barlow_lambda() -> f64 {
    5e-3
}

fn default_byol_ema() -> f64 {
    0.99
}

fn default_moco_temperature() -> f64 {
    0.2
}

impl Default for MethodSpec {
    fn default() -> Self {
        MethodSpec::Simclr {
            temperature: default_simclr_temperature(),
            negatives: Negatives::All,
        }
    }
}

impl MethodSpec {
    pub fn name(&self) -> &'static str {
        match self {
            MethodSpec::Simclr { .. } => "simclr",
            MethodSpec::Vicreg { .. } => "vicreg",
            MethodSpec::Barlow { .. } => "barlow",
            MethodSpec::Byol { .. } => "byol",
            MethodSpec::Mocov3 { .. } => "mocov3",
            MethodSpec::Simsiam { .. } => "simsiam",
            MethodSpec::Dino { .. } => "dino",
            MethodSpec::Swav { .. } => "swav",
            MethodSpec::Msn { .. } => "msn",
            MethodSpec::Pmsn { .. } => "pmsn",
            MethodSpec::Mae { .. } => "mae",
            MethodSpec::Simmim { .. } => "simmim",
        }
    }

    /// Methods that drop or mask patches and so need a ViT.
    pub fn needs_vit(&self) -> bool {
        matches!(
            self,
            MethodSpec::Msn { .. }
                | MethodSpec::Pmsn { .. }
                | MethodSpec::Mae { .. }
                | MethodSpec::Simmim { .. }
        )
    }

    /// Methods that reconstruct pixels and train no projector.
    pub fn reconstructs(&self) -> bool {
        matches!(self, MethodSpec::Mae { .. } | MethodSpec::Simmim { .. })
    }

    /// Methods that read local (multi-crop) views.
    pub fn takes_local_views(&self) -> bool {
        matches!(
            self,
            MethodSpec::Dino { .. }
                | MethodSpec::Swav { .. }
                | MethodSpec::Msn { .. }
                | MethodSpec::Pmsn { .. }
        )
    }

    /// The method with its defaults, by name.
    pub fn from_name(name: &str) -> Option<MethodSpec> {
        serde_json::from_value(serde_json::json!({ "name": name })).ok()
    }

    pub const NAMES: [&'static str; 12] = [
        "simclr", "vicreg", "barlow", "byol", "mocov3", "simsiam", "swav", "dino", "msn", "pmsn",
        "mae", "simmim",
    ];

    /// The predictor's layer widths for a projector output of `out`, or
    /// `None` for methods without a predictor.
    pub fn predictor_dims(
        &self,
        first_hidden: Option<usize>,
        out: usize,
    ) -> Option<Result<Vec<usize>, String>> {
        let (text, default) = match self {
            MethodSpec::Byol { predictor, .. } | MethodSpec::Mocov3 { predictor, .. } => {
                (predictor, vec![first_hidden.unwrap_or(4 * out), out])
            }
            MethodSpec::Simsiam { predictor } => (predictor, vec![(out / 4).max(1), out]),
            _ => return None,
        };
        if text.trim().is_empty() {
            return Some(Ok(default));
        }
        let dims = ProjectorSpec {
            dims: text.clone(),
            batch_norm: true,
        }
        .parse_dims();
        Some(dims.and_then(|d| match d.last() {
            Some(&last) if last == out => Ok(d),
            Some(&last) => Err(format!(
                "the predictor must end at the projector's output width {out}, not {last}"
            )),
            None => Err("give the predictor's widths, e.g. \"512-128\"".into()),
        }))
    }
}

/// The checks of method that serde cannot make, in the order a spec reports them.
pub(super) fn check(spec: &RunSpec) -> Result<(), SpecError> {
    let weight = |field: &str, v: f64| {
        if (0.0..=1e4).contains(&v) {
            Ok(())
        } else {
            bad(field, format!("must be in [0, 10000], got {v}"))
        }
    };
    let temperature = |field: &str, t: f64| {
        if t > 0.0 && t <= 10.0 {
            Ok(())
        } else {
            bad(field, format!("must be in (0, 10], got {t}"))
        }
    };
    let ema = |v: f64| {
        if (0.0..1.0).contains(&v) {
            Ok(())
        } else {
            bad("method.ema_base", format!("must be in [0, 1), got {v}"))
        }
    };
    let frozen = |field: &str, epochs: f64| {
        if epochs >= 0.0 && epochs <= spec.schedule.epochs as f64 {
            Ok(())
        } else {
            bad(
                field,
                format!(
                    "must be between 0 and the run's {} epochs, got {epochs}",
                    spec.schedule.epochs
                ),
            )
        }
    };
    let prototypes = |k: usize| {
        if (2..=65536).contains(&k) {
            Ok(())
        } else {
            bad(
                "method.prototypes",
                format!("must be between 2 and 65536, got {k}"),
            )
        }
    };
    let mask_ratio = |r: f64| {
        if r > 0.0 && r < 1.0 {
            Ok(())
        } else {
            bad(
                "method.mask_ratio",
                format!("is the fraction of patches masked, must be in (0, 1), got {r}"),
            )
        }
    };
    match &spec.method {
        MethodSpec::Simclr { temperature: t, .. } => temperature("method.temperature", *t)?,
        MethodSpec::Vicreg {
            invariance,
            variance,
            covariance,
        } => {
            weight("method.invariance", *invariance)?;
            weight("method.variance", *variance)?;
            weight("method.covariance", *covariance)?;
        }
        MethodSpec::Barlow { lambda_offdiag } => weight("method.lambda_offdiag", *lambda_offdiag)?,
        MethodSpec::Byol { ema_base, .. } => ema(*ema_base)?,
        MethodSpec::Mocov3 {
            temperature: t,
            ema_base,
            ..
        } => {
            temperature("method.temperature", *t)?;
            ema(*ema_base)?;
        }
        MethodSpec::Simsiam { .. } => {}
        MethodSpec::Dino {
            prototypes: k,
            student_temperature,
            teacher_temperature,
            warmup_teacher_temperature,
            warmup_teacher_epochs,
            center_momentum,
            ema_base,
            freeze_last_layer_epochs,
        } => {
            prototypes(*k)?;
            frozen("method.freeze_last_layer_epochs", *freeze_last_layer_epochs)?;
            temperature("method.student_temperature", *student_temperature)?;
            temperature("method.teacher_temperature", *teacher_temperature)?;
            temperature(
                "method.warmup_teacher_temperature",
                *warmup_teacher_temperature,
            )?;
            if !(*warmup_teacher_epochs >= 0.0 && warmup_teacher_epochs.is_finite()) {
                return bad(
                    "method.warmup_teacher_epochs",
                    format!("must be 0 or more, got {warmup_teacher_epochs}"),
                );
            }
            if !(0.0..1.0).contains(center_momentum) {
                return bad(
                    "method.center_momentum",
                    format!("must be in [0, 1), got {center_momentum}"),
                );
            }
            ema(*ema_base)?;
        }
        MethodSpec::Swav {
            prototypes: k,
            temperature: t,
            epsilon,
            sinkhorn_iterations,
            freeze_prototypes_epochs,
            queue_size,
            queue_starts_epoch,
        } => {
            prototypes(*k)?;
            frozen("method.freeze_prototypes_epochs", *freeze_prototypes_epochs)?;
            frozen("method.queue_starts_epoch", *queue_starts_epoch)?;
            let batch = spec.optimizer.batch_size;
            if *queue_size != 0 && !(batch..=65_536).contains(queue_size) {
                return bad(
                    "method.queue_size",
                    format!(
                        "must be 0 (no queue) or between the batch size {batch} and 65536, got {queue_size}"
                    ),
                );
            }
            temperature("method.temperature", *t)?;
            if !(*epsilon > 0.0 && *epsilon <= 10.0) {
                return bad(
                    "method.epsilon",
                    format!("must be in (0, 10], got {epsilon}"),
                );
            }
            if !(1..=100).contains(sinkhorn_iterations) {
                return bad(
                    "method.sinkhorn_iterations",
                    format!("must be between 1 and 100, got {sinkhorn_iterations}"),
                );
            }
        }
        MethodSpec::Msn {
            prototypes: k,
            temperature: t,
            sharpen,
            me_max_weight,
            mask_ratio: r,
            ema_base,
            sinkhorn_iterations,
        }
        | MethodSpec::Pmsn {
            prototypes: k,
            temperature: t,
            sharpen,
            me_max_weight,
            mask_ratio: r,
            ema_base,
            sinkhorn_iterations,
            ..
        } => {
            prototypes(*k)?;
            temperature("method.temperature", *t)?;
            if !(*sharpen > 0.0 && *sharpen <= 1.0) {
                return bad(
                    "method.sharpen",
                    format!("must be in (0, 1], got {sharpen}"),
                );
            }
            weight("method.me_max_weight", *me_max_weight)?;
            mask_ratio(*r)?;
            ema(*ema_base)?;
            if *sinkhorn_iterations > 100 {
                return bad(
                    "method.sinkhorn_iterations",
                    format!("must be between 0 and 100, got {sinkhorn_iterations}"),
                );
            }
            if let MethodSpec::Pmsn { power, .. } = &spec.method
                && !(0.0..=10.0).contains(power)
            {
                return bad("method.power", format!("must be in [0, 10], got {power}"));
            }
        }
        MethodSpec::Mae {
            mask_ratio: r,
            decoder_width,
            decoder_depth,
            decoder_heads,
            ..
        } => {
            mask_ratio(*r)?;
            if !(1..=4096).contains(decoder_width) {
                return bad(
                    "method.decoder_width",
                    format!("must be between 1 and 4096, got {decoder_width}"),
                );
            }
            if !(1..=32).contains(decoder_depth) {
                return bad(
                    "method.decoder_depth",
                    format!("must be between 1 and 32, got {decoder_depth}"),
                );
            }
            if *decoder_heads == 0 || decoder_width % decoder_heads != 0 {
                return bad(
                    "method.decoder_heads",
                    format!("must divide the decoder width {decoder_width}, got {decoder_heads}"),
                );
            }
        }
        MethodSpec::Simmim { mask_ratio: r } => mask_ratio(*r)?,
    }
    Ok(())
}
