//! `RunSpec`: everything a training run needs, as one document.
//!
//! The same document is TOML in a recipe file and JSON in the API. Unknown
//! fields are refused so that a typo never silently falls back to a default.

use serde::{Deserialize, Serialize};

use crate::error::SpecError;

/// A training run: data, method, model, augmentations, optimiser, schedule,
/// evaluation plan and seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSpec {
    /// Free text shown in lists; empty means the server picks one.
    pub name: String,
    pub data: DataSpec,
    /// Pretrain on part of the training split only (the probes still fit
    /// on all of it); absent means all of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<SubsetSpec>,
    pub method: MethodSpec,
    pub backbone: BackboneSpec,
    pub projector: ProjectorSpec,
    pub augment: AugmentSpec,
    pub optimizer: OptimizerSpec,
    pub schedule: ScheduleSpec,
    pub eval: EvalSpec,
    /// Seeds data order, augmentations and initialisation.
    pub seed: u64,
}

impl Default for RunSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            data: DataSpec::default(),
            subset: None,
            method: MethodSpec::default(),
            backbone: BackboneSpec::default(),
            projector: ProjectorSpec::default(),
            augment: AugmentSpec::default(),
            optimizer: OptimizerSpec::default(),
            schedule: ScheduleSpec::default(),
            eval: EvalSpec::default(),
            seed: 0,
        }
    }
}

/// Where the images come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataSpec {
    /// The built-in generator of labelled scenes (objects on backgrounds).
    Scenes(ScenesSpec),
    /// CIFAR-10, binary version: a folder with `data_batch_1.bin` …
    /// `data_batch_5.bin` and `test_batch.bin` (32 px, 10 classes).
    Cifar10 {
        /// The folder on the machine that trains.
        path: String,
    },
    /// CIFAR-100, binary version: a folder with `train.bin` and `test.bin`.
    Cifar100 {
        path: String,
        /// The 20 superclasses instead of the 100 classes.
        #[serde(default)]
        coarse: bool,
    },
    /// MNIST or Fashion-MNIST in IDX format: a folder with
    /// `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
    /// `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte` (uncompressed).
    /// The 28 px gray digits become 32 px RGB: a 2 px black border, the gray
    /// value in every channel.
    Idx { path: String },
    /// STL-10, binary version: `train_X.bin`, `train_y.bin`, `test_X.bin`,
    /// `test_y.bin` (96 px, 10 classes).
    Stl10 {
        path: String,
        /// Also pretrain on the 100 000 images of `unlabeled_X.bin`; the
        /// probes still fit on the labelled training split.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unlabeled: bool,
    },
    /// One sub-folder per class of PNG or JPEG images; `train/` and `test/`
    /// sub-folders if the split is given, else `test_fraction` of every class
    /// is held out (drawn from `seed`).
    Folder {
        path: String,
        /// Every image is resized (shorter side) and centre-cropped to this.
        #[serde(default = "default_folder_size")]
        image_size: usize,
        #[serde(default = "default_test_fraction")]
        test_fraction: f64,
        #[serde(default)]
        seed: u64,
    },
    /// A data set registered with the server (`sslab data import`, or an
    /// archive uploaded through the API), by name.
    Dataset {
        name: String,
        /// Filled in from the registry when a run is created, so that the run
        /// records exactly which data it saw; not written by hand.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        registered: Option<Box<RegisteredData>>,
    },
}

/// What a registered data set's name stood for when a run was created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisteredData {
    /// The content hash taken at registration (`sha256:…` of the decoded
    /// images, labels and class names); training refuses data that differs.
    pub hash: String,
    /// Where the files are and how to read them.
    pub data: DataSpec,
}

/// The rule for data set names: they appear in URLs and folder names.
pub fn check_dataset_name(name: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok) || name.starts_with('.') {
        return Err(format!(
            "`{name}` is not a data set name: 1–64 letters, digits, `-`, `_` or `.`, not starting with `.`"
        ));
    }
    Ok(())
}

fn default_folder_size() -> usize {
    32
}

fn default_test_fraction() -> f64 {
    0.2
}

impl Default for DataSpec {
    fn default() -> Self {
        DataSpec::Scenes(ScenesSpec::default())
    }
}

impl DataSpec {
    pub fn image_size(&self) -> usize {
        match self {
            DataSpec::Scenes(s) => s.image_size,
            DataSpec::Cifar10 { .. } | DataSpec::Cifar100 { .. } | DataSpec::Idx { .. } => 32,
            DataSpec::Stl10 { .. } => 96,
            DataSpec::Folder { image_size, .. } => *image_size,
            // Unknown (0) until the name is looked up.
            DataSpec::Dataset { registered, .. } => {
                registered.as_ref().map_or(0, |r| r.data.image_size())
            }
        }
    }

    pub fn source(&self) -> &'static str {
        match self {
            DataSpec::Scenes(_) => "scenes",
            DataSpec::Cifar10 { .. } => "cifar10",
            DataSpec::Cifar100 { .. } => "cifar100",
            DataSpec::Idx { .. } => "idx",
            DataSpec::Stl10 { .. } => "stl10",
            DataSpec::Folder { .. } => "folder",
            DataSpec::Dataset { .. } => "dataset",
        }
    }

    /// What the data is once a registered name is looked up; itself when it
    /// names no data set or has not been looked up yet.
    pub fn resolved(&self) -> &DataSpec {
        match self {
            DataSpec::Dataset {
                registered: Some(r),
                ..
            } => &r.data,
            other => other,
        }
    }

    /// Whether the images can carry object boxes (déjà vu needs them): the
    /// built-in scenes and image folders; a registered name not yet looked
    /// up is given the benefit of the doubt.
    pub fn may_have_boxes(&self) -> bool {
        matches!(
            self.resolved(),
            DataSpec::Scenes(_) | DataSpec::Folder { .. } | DataSpec::Dataset { .. }
        )
    }

    /// The name of the registered data set this names, if it names one.
    pub fn dataset_name(&self) -> Option<&str> {
        match self {
            DataSpec::Dataset { name, .. } => Some(name),
            _ => None,
        }
    }

    /// Training images, as far as the spec tells: exact for the built-in
    /// scenes, the standard size for file formats (the worker corrects it
    /// once the files are read).
    pub fn train_images(&self) -> usize {
        match self {
            DataSpec::Scenes(s) => s.train_images,
            DataSpec::Cifar10 { .. } | DataSpec::Cifar100 { .. } => 50_000,
            DataSpec::Idx { .. } => 60_000,
            DataSpec::Stl10 { unlabeled, .. } => {
                if *unlabeled {
                    105_000
                } else {
                    5_000
                }
            }
            // Unknown until the folder is read.
            DataSpec::Folder { .. } => 0,
            DataSpec::Dataset { registered, .. } => {
                registered.as_ref().map_or(0, |r| r.data.train_images())
            }
        }
    }
}

/// A deterministic part of the training split, drawn per class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SubsetSpec {
    /// `per_class` images of every class (all of a class that has fewer).
    PerClass {
        per_class: usize,
        #[serde(default)]
        seed: u64,
    },
    /// Class-imbalanced, as in the PMSN work: class c keeps
    /// round(images · p_c) images with p_c ∝ (1 + c)^(−power), at least one.
    PowerLaw {
        images: usize,
        power: f64,
        #[serde(default)]
        seed: u64,
    },
    /// One side of the déjà vu partition an audit with these `per_class`,
    /// `public_per_class` and `seed` deals (`AuditSpec.split`): part `a`
    /// trains a target, part `b` a reference, and the two finished runs
    /// can be audited as they are (`AuditSpec.runs`).
    Dejavu {
        part: DejavuPart,
        per_class: usize,
        #[serde(default)]
        public_per_class: usize,
        #[serde(default)]
        seed: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DejavuPart {
    A,
    B,
}

impl SubsetSpec {
    /// Images class `c` of `classes` keeps, before capping at what it has.
    pub fn wanted(&self, c: usize, classes: usize) -> usize {
        match *self {
            SubsetSpec::PerClass { per_class, .. } | SubsetSpec::Dejavu { per_class, .. } => {
                per_class
            }
            SubsetSpec::PowerLaw { images, power, .. } => {
                let weight = |c: usize| (1.0 + c as f64).powf(-power);
                let total: f64 = (0..classes).map(weight).sum();
                ((images as f64 * weight(c) / total).round() as usize).max(1)
            }
        }
    }

    pub fn seed(&self) -> u64 {
        match *self {
            SubsetSpec::PerClass { seed, .. }
            | SubsetSpec::PowerLaw { seed, .. }
            | SubsetSpec::Dejavu { seed, .. } => seed,
        }
    }

    fn validate(&self) -> Result<(), SpecError> {
        match *self {
            SubsetSpec::PerClass { per_class: 0, .. } => {
                Err(SpecError::new("subset.per_class", "must be at least 1"))
            }
            SubsetSpec::PowerLaw { images: 0, .. } => {
                Err(SpecError::new("subset.images", "must be at least 1"))
            }
            SubsetSpec::PowerLaw { power, .. } if !(power >= 0.0 && power <= 10.0) => Err(
                SpecError::new("subset.power", format!("must be in [0, 10], got {power}")),
            ),
            SubsetSpec::Dejavu { per_class: 0, .. } => {
                Err(SpecError::new("subset.per_class", "must be at least 1"))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScenesSpec {
    /// Number of object classes (at most `MAX_SCENE_CLASSES`).
    pub classes: usize,
    /// Images in the training split (SSL training and the kNN memory bank).
    pub train_images: usize,
    /// Images in the held-out split the probes are scored on.
    pub test_images: usize,
    /// Side of the square images in pixels: 32 or 64.
    pub image_size: usize,
    /// How strongly the background type follows the class: 0 = independent,
    /// 1 = each class always on its own background.
    pub background_correlation: f64,
    /// Chance that an object wears its class's colour (the others draw any
    /// colour): 0.5 by default; 0 leaves form and texture as the only cues,
    /// which random features read poorly and training must learn.
    pub class_colour: f64,
    /// Strength in [0, 1] of a pattern of each image's own (stripes, checks
    /// or rings of a random colour, direction and spacing) laid over its
    /// background, so that a crop of the background alone tells the image
    /// apart: something a model can memorise. 0 (the default) leaves the
    /// backgrounds generic.
    pub background_signature: f64,
    /// Seeds the generator; the test split uses a derived seed.
    pub seed: u64,
}

pub const MAX_SCENE_CLASSES: usize = 16;

impl Default for ScenesSpec {
    fn default() -> Self {
        Self {
            classes: 10,
            train_images: 2000,
            test_images: 500,
            image_size: 32,
            background_correlation: 0.2,
            class_colour: 0.5,
            background_signature: 0.0,
            seed: 0,
        }
    }
}

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
    pub dims: String,
    /// BatchNorm after each hidden Linear.
    pub batch_norm: bool,
}

impl Default for ProjectorSpec {
    fn default() -> Self {
        Self {
            dims: "256-128".into(),
            batch_norm: true,
        }
    }
}

impl ProjectorSpec {
    /// The widths as numbers, or a message saying what does not parse.
    pub fn parse_dims(&self) -> Result<Vec<usize>, String> {
        let text = self.dims.trim();
        if text.is_empty() {
            return Ok(Vec::new());
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
            .collect()
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Adamw,
    /// SGD with momentum (weight decay on ≥2-D weights only).
    Sgd,
    /// LARS (You et al. 2017, arXiv:1708.03888): SGD with momentum whose
    /// step for every weight matrix or kernel is scaled by the trust ratio
    /// η‖w‖ / (‖g‖ + λ‖w‖); biases and norms take plain steps.
    Lars,
}

/// The number format of the backbone's training forward and backward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    F32,
    /// bf16 activations and weight copies, f32 master weights, optimiser
    /// state, BatchNorm statistics, projector and loss (mixed precision).
    Bf16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerSpec {
    pub kind: OptimizerKind,
    /// Peak learning rate, reached at the end of warm-up.
    pub lr: f64,
    /// Applied to weights with two or more dimensions, never to biases or norms.
    pub weight_decay: f64,
    /// Weight decay at the end of training, reached along a cosine from
    /// `weight_decay` (DINO and MSN: 0.04 → 0.4); unset = constant.
    pub weight_decay_end: Option<f64>,
    /// SGD and LARS.
    pub momentum: f64,
    pub batch_size: usize,
    /// LARS trust coefficient η (0.02 in solo-learn's CIFAR recipes, 0.001
    /// in the paper).
    pub lars_eta: f64,
    /// Rescale the gradients when their global L2 norm is above this; 0 = never.
    pub grad_clip: f64,
    /// `bf16` trains the backbone in bfloat16 (fast on GPUs with bf16
    /// tensor cores, slow on CPUs); evaluation always runs in f32.
    pub precision: Precision,
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Adamw,
            lr: 2e-3,
            weight_decay: 1e-4,
            weight_decay_end: None,
            momentum: 0.9,
            batch_size: 128,
            lars_eta: 0.02,
            grad_clip: 0.0,
            precision: Precision::F32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleSpec {
    pub epochs: usize,
    /// Linear warm-up, then cosine decay to `final_lr_fraction` × lr.
    pub warmup_epochs: f64,
    pub final_lr_fraction: f64,
}

impl Default for ScheduleSpec {
    fn default() -> Self {
        Self {
            epochs: 20,
            warmup_epochs: 1.0,
            final_lr_fraction: 0.01,
        }
    }
}

/// A probe of a frozen representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// Weighted kNN (Wu et al. 2018) against the training split.
    Knn,
    /// Multinomial logistic regression on standardised features.
    Linear,
    /// Logistic regression on a few labels per class, over several draws.
    Lowshot,
    /// Effective rank of the embeddings (arXiv:2210.02885); needs no labels.
    Rankme,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 4] = [
        ProbeKind::Knn,
        ProbeKind::Linear,
        ProbeKind::Lowshot,
        ProbeKind::Rankme,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            ProbeKind::Knn => "knn",
            ProbeKind::Linear => "linear",
            ProbeKind::Lowshot => "lowshot",
            ProbeKind::Rankme => "rankme",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KnnMetric {
    Cosine,
    L2,
}

/// The evaluation plan: which probes, at which layers. Every probe is fitted
/// on the training split and scored on the test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSpec {
    pub probes: Vec<ProbeKind>,
    /// `backbone`, `proj.0`, …; empty means every layer (the guillotine view).
    pub layers: Vec<String>,
    /// kNN: neighbours that vote (20 and 200 are usual), vote weight
    /// exp(sim / T), and the similarity (cosine, or negative L2 distance).
    pub knn_k: usize,
    pub knn_temperature: f64,
    pub knn_metric: KnnMetric,
    /// Linear probe: L2 strengths tried, chosen on this fraction of the
    /// training split held out for validation.
    pub linear_l2: Vec<f64>,
    pub linear_val_fraction: f64,
    /// Full-batch optimiser steps per fit.
    pub linear_steps: usize,
    /// Low-shot: labelled images per class, and fractions of the labels.
    pub lowshot_shots: Vec<usize>,
    pub lowshot_fractions: Vec<f64>,
    /// Label draws averaged per setting (the spread is reported too).
    pub lowshot_draws: usize,
    pub lowshot_l2: f64,
    /// Train a linear classifier on stop-gradient backbone features during
    /// training and log its accuracy on each batch (`online_probe_acc`).
    pub online_probe: bool,
    /// Data to probe instead of the run's own (transfer). Its training split
    /// fits the probes (the kNN memory bank), its test split scores them.
    pub data: Option<DataSpec>,
    /// The déjà vu memorization monitor (`dejavu_gap`), off when absent.
    pub memorization: Option<MemorizationMonitor>,
}

/// Déjà vu on the model being trained (arXiv:2304.13850, one model): every
/// `every` epochs, the background crops of `canaries_per_class` training
/// images per class and of as many images of the same classes kept out of
/// training are attacked by k-NN over the other training images. The
/// canaries' top-1 minus the held-out top-1 is the `dejavu_gap`: above zero
/// and growing, the model is learning its training images' objects from their
/// backgrounds. Needs data with object boxes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemorizationMonitor {
    /// Epochs between attacks (the last epoch is always attacked).
    pub every: usize,
    /// Canaries per class; as many held-out images per class leave training.
    pub canaries_per_class: usize,
    /// Neighbours that vote. The public set (the training images that are
    /// not canaries) must hold at least 2·k images, or the vote is the same
    /// for every crop; the paper's k = 100 suits large sets.
    pub k: usize,
    /// What is compared: the projector's output or the backbone's.
    pub embedding: crate::audit::AttackEmbedding,
}

impl Default for MemorizationMonitor {
    fn default() -> Self {
        Self {
            every: 1,
            canaries_per_class: 10,
            k: 20,
            embedding: crate::audit::AttackEmbedding::Projector,
        }
    }
}

impl Default for EvalSpec {
    fn default() -> Self {
        Self {
            probes: ProbeKind::ALL.to_vec(),
            layers: Vec::new(),
            knn_k: 20,
            knn_temperature: 0.07,
            knn_metric: KnnMetric::Cosine,
            linear_l2: vec![0.0, 1e-4, 1e-3, 1e-2],
            linear_val_fraction: 0.2,
            linear_steps: 200,
            lowshot_shots: vec![1, 2, 5],
            lowshot_fractions: vec![0.01],
            lowshot_draws: 3,
            lowshot_l2: 1e-3,
            online_probe: true,
            data: None,
            memorization: None,
        }
    }
}

impl EvalSpec {
    /// Checks the plan against the layers a model has.
    pub fn validate(&self, layer_names: &[String]) -> Result<(), SpecError> {
        let bad = |field: &str, msg: String| Err(SpecError::new(field, msg));
        if self.probes.is_empty() {
            return bad(
                "eval.probes",
                "name at least one probe: knn, linear, lowshot or rankme".into(),
            );
        }
        for l in &self.layers {
            if !layer_names.contains(l) {
                return bad(
                    "eval.layers",
                    format!(
                        "this model has no layer `{l}`; its layers are {}",
                        layer_names.join(", ")
                    ),
                );
            }
        }
        if self.knn_k < 1 || self.knn_k > 1000 {
            return bad(
                "eval.knn_k",
                format!("must be between 1 and 1000, got {}", self.knn_k),
            );
        }
        if !(self.knn_temperature > 0.0) {
            return bad(
                "eval.knn_temperature",
                format!("must be above 0, got {}", self.knn_temperature),
            );
        }
        if self.linear_l2.is_empty() || self.linear_l2.iter().any(|x| !(0.0..=100.0).contains(x)) {
            return bad(
                "eval.linear_l2",
                "give one or more strengths in [0, 100]".into(),
            );
        }
        if !(self.linear_val_fraction > 0.0 && self.linear_val_fraction < 1.0) {
            return bad(
                "eval.linear_val_fraction",
                format!("must be in (0, 1), got {}", self.linear_val_fraction),
            );
        }
        if self.linear_steps < 1 || self.linear_steps > 100_000 {
            return bad(
                "eval.linear_steps",
                format!("must be between 1 and 100000, got {}", self.linear_steps),
            );
        }
        if self.lowshot_shots.iter().any(|&k| k < 1 || k > 10_000) {
            return bad(
                "eval.lowshot_shots",
                "shots per class must be between 1 and 10000".into(),
            );
        }
        if self
            .lowshot_fractions
            .iter()
            .any(|f| !(*f > 0.0 && *f <= 1.0))
        {
            return bad(
                "eval.lowshot_fractions",
                "fractions must be in (0, 1]".into(),
            );
        }
        if self.lowshot_draws < 1 || self.lowshot_draws > 100 {
            return bad(
                "eval.lowshot_draws",
                format!("must be between 1 and 100, got {}", self.lowshot_draws),
            );
        }
        if !(0.0..=100.0).contains(&self.lowshot_l2) {
            return bad(
                "eval.lowshot_l2",
                format!("must be in [0, 100], got {}", self.lowshot_l2),
            );
        }
        if let Some(data) = &self.data {
            // The data checks of a run, reported under `eval.`.
            let mut probe = RunSpec {
                data: data.clone(),
                ..RunSpec::default()
            };
            probe.optimizer.batch_size = 2;
            probe.eval.probes = vec![ProbeKind::Knn];
            if let Err(e) = probe.validate() {
                return Err(SpecError::new(format!("eval.{}", e.field), e.message));
            }
        }
        Ok(())
    }

    /// The layers to probe, in depth order.
    pub fn probed_layers(&self, layer_names: &[String]) -> Vec<String> {
        layer_names
            .iter()
            .filter(|l| self.layers.is_empty() || self.layers.contains(l))
            .cloned()
            .collect()
    }

    pub fn parse_toml(text: &str) -> Result<EvalSpec, SpecError> {
        crate::error::from_toml(text)
    }
}

impl RunSpec {
    /// Parses a spec from JSON; the error names the field that is wrong.
    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        let spec: RunSpec = crate::error::from_json(text)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Parses a spec from TOML (a recipe); the error names the field that is wrong.
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let spec: RunSpec = crate::error::from_toml(text)?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks values serde cannot: ranges and combinations.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |field: &str, msg: String| Err(SpecError::new(field, msg));
        if self.name.len() > 200 {
            return bad("name", "must be at most 200 characters".into());
        }
        if let Some(subset) = &self.subset {
            subset.validate()?;
        }
        match &self.data {
            DataSpec::Scenes(s) => {
                if s.classes < 2 || s.classes > MAX_SCENE_CLASSES {
                    return bad(
                        "data.classes",
                        format!(
                            "must be between 2 and {MAX_SCENE_CLASSES}, got {}",
                            s.classes
                        ),
                    );
                }
                if s.image_size != 32 && s.image_size != 64 {
                    return bad(
                        "data.image_size",
                        format!("must be 32 or 64, got {}", s.image_size),
                    );
                }
                if s.train_images < s.classes || s.train_images > 200_000 {
                    return bad(
                        "data.train_images",
                        format!(
                            "must be between the number of classes ({}) and 200000, got {}",
                            s.classes, s.train_images
                        ),
                    );
                }
                if s.test_images < 1 || s.test_images > 100_000 {
                    return bad(
                        "data.test_images",
                        format!("must be between 1 and 100000, got {}", s.test_images),
                    );
                }
                if !(0.0..=1.0).contains(&s.class_colour) {
                    return bad(
                        "data.class_colour",
                        format!(
                            "is a probability, must be in [0, 1], got {}",
                            s.class_colour
                        ),
                    );
                }
                if !(0.0..=1.0).contains(&s.background_correlation) {
                    return bad(
                        "data.background_correlation",
                        format!("must be in [0, 1], got {}", s.background_correlation),
                    );
                }
                if !(0.0..=1.0).contains(&s.background_signature) {
                    return bad(
                        "data.background_signature",
                        format!("must be in [0, 1], got {}", s.background_signature),
                    );
                }
            }
            DataSpec::Folder {
                path,
                image_size,
                test_fraction,
                ..
            } => {
                if path.trim().is_empty() {
                    return bad("data.path", "name the folder of class sub-folders".into());
                }
                if !(8..=256).contains(image_size) {
                    return bad(
                        "data.image_size",
                        format!("must be between 8 and 256, got {image_size}"),
                    );
                }
                if !(*test_fraction > 0.0 && *test_fraction < 1.0) {
                    return bad(
                        "data.test_fraction",
                        format!("must be in (0, 1), got {test_fraction}"),
                    );
                }
            }
            DataSpec::Cifar10 { path }
            | DataSpec::Cifar100 { path, .. }
            | DataSpec::Idx { path }
            | DataSpec::Stl10 { path, .. } => {
                if path.trim().is_empty() {
                    return bad(
                        "data.path",
                        "name the folder that holds the data set's files".into(),
                    );
                }
            }
            DataSpec::Dataset { name, registered } => {
                if let Err(m) = check_dataset_name(name) {
                    return bad("data.name", m);
                }
                if registered
                    .as_ref()
                    .is_some_and(|r| matches!(r.data, DataSpec::Dataset { .. }))
                {
                    return bad(
                        "data.registered",
                        "a registered data set names files, not another data set".into(),
                    );
                }
            }
        }
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
            if epochs >= 0.0 && epochs <= self.schedule.epochs as f64 {
                Ok(())
            } else {
                bad(
                    field,
                    format!(
                        "must be between 0 and the run's {} epochs, got {epochs}",
                        self.schedule.epochs
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
        match &self.method {
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
            MethodSpec::Barlow { lambda_offdiag } => {
                weight("method.lambda_offdiag", *lambda_offdiag)?
            }
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
                let batch = self.optimizer.batch_size;
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
                if let MethodSpec::Pmsn { power, .. } = &self.method
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
                        format!(
                            "must divide the decoder width {decoder_width}, got {decoder_heads}"
                        ),
                    );
                }
            }
            MethodSpec::Simmim { mask_ratio: r } => mask_ratio(*r)?,
        }
        if let Some(Err(m)) = self.predictor_dims() {
            return bad("method.predictor", m);
        }
        let b = &self.backbone;
        if b.width < 1 || b.width > 1024 {
            return bad(
                "backbone.width",
                format!("must be between 1 and 1024, got {}", b.width),
            );
        }
        if let Some(w) = b.last_block_width
            && (w < 1 || w > 16384)
        {
            return bad(
                "backbone.last_block_width",
                format!("must be between 1 and 16384, got {w}"),
            );
        }
        // A data set not yet looked up has no known size (0): the checks
        // that need it wait until the server has filled it in.
        let side = self.data.image_size();
        if b.kind == BackboneKind::Vit {
            if b.patch_size < 1 || side % b.patch_size != 0 {
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
            if b.heads < 1 || b.width % b.heads != 0 {
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
            if b.conv_stem && self.method.reconstructs() {
                return bad(
                    "backbone.conv_stem",
                    format!(
                        "{} reconstructs the patches it hides, and a conv stem's overlapping windows would show their edges to the encoder",
                        self.method.name()
                    ),
                );
            }
            if self.method.needs_vit() && side > 0 && side / b.patch_size < 2 {
                return bad(
                    "backbone.patch_size",
                    format!(
                        "{} masks patches and needs at least 2×2 of them; {} leaves one",
                        self.method.name(),
                        b.patch_size
                    ),
                );
            }
            if let Some(d) = &self.eval.data
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
        } else if self.method.needs_vit() {
            return bad(
                "backbone.kind",
                format!(
                    "{} masks patches and needs a ViT (backbone.kind = \"vit\"), not {}",
                    self.method.name(),
                    b.kind.name()
                ),
            );
        }
        if let Err(msg) = self.projector.parse_dims() {
            return bad("projector.dims", msg);
        }
        if self.method.reconstructs() && !self.projector.dims.trim().is_empty() {
            return bad(
                "projector.dims",
                format!(
                    "{} reconstructs pixels and trains no projector; set it to \"\"",
                    self.method.name()
                ),
            );
        }
        let a = &self.augment;
        if !(a.crop_min_scale > 0.0
            && a.crop_min_scale <= a.crop_max_scale
            && a.crop_max_scale <= 1.0)
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
        if !(a.blur_sigma[0] > 0.0 && a.blur_sigma[0] <= a.blur_sigma[1] && a.blur_sigma[1] <= 10.0)
        {
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
            if !self.method.takes_local_views() {
                return bad(
                    "augment.local_views",
                    format!(
                        "only dino, swav, msn and pmsn read local views, not {}",
                        self.method.name()
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
            if b.kind == BackboneKind::Vit && local % b.patch_size != 0 {
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
        let o = &self.optimizer;
        if !(o.lr > 0.0 && o.lr <= 10.0) {
            return bad("optimizer.lr", format!("must be in (0, 10], got {}", o.lr));
        }
        if !(0.0..=1.0).contains(&o.weight_decay) {
            return bad(
                "optimizer.weight_decay",
                format!("must be in [0, 1], got {}", o.weight_decay),
            );
        }
        if let Some(end) = o.weight_decay_end
            && !(0.0..=1.0).contains(&end)
        {
            return bad(
                "optimizer.weight_decay_end",
                format!("must be in [0, 1], got {end}"),
            );
        }
        if !(0.0..1.0).contains(&o.momentum) {
            return bad(
                "optimizer.momentum",
                format!("must be in [0, 1), got {}", o.momentum),
            );
        }
        if !(o.lars_eta > 0.0 && o.lars_eta <= 1.0) {
            return bad(
                "optimizer.lars_eta",
                format!("must be in (0, 1], got {}", o.lars_eta),
            );
        }
        if !(o.grad_clip >= 0.0 && o.grad_clip.is_finite()) {
            return bad(
                "optimizer.grad_clip",
                format!("must be 0 (off) or a positive norm, got {}", o.grad_clip),
            );
        }
        if o.precision == Precision::Bf16 && self.backbone.kind == BackboneKind::Vit {
            return bad(
                "optimizer.precision",
                "bf16 trains the convolutional backbones (tiny_cnn, resnet18, resnet50); a ViT trains in f32".into(),
            );
        }
        if o.batch_size < 2 || o.batch_size > 4096 {
            return bad(
                "optimizer.batch_size",
                format!("must be between 2 and 4096, got {}", o.batch_size),
            );
        }
        if let DataSpec::Scenes(s) = &self.data
            && o.batch_size > s.train_images
        {
            return bad(
                "optimizer.batch_size",
                format!(
                    "is larger than the training split ({} images); lower it or add images",
                    s.train_images
                ),
            );
        }
        let s = &self.schedule;
        if s.epochs < 1 || s.epochs > 10_000 {
            return bad(
                "schedule.epochs",
                format!("must be between 1 and 10000, got {}", s.epochs),
            );
        }
        if !(s.warmup_epochs >= 0.0 && s.warmup_epochs <= s.epochs as f64) {
            return bad(
                "schedule.warmup_epochs",
                format!(
                    "must be between 0 and epochs ({}), got {}",
                    s.epochs, s.warmup_epochs
                ),
            );
        }
        if !(0.0..=1.0).contains(&s.final_lr_fraction) {
            return bad(
                "schedule.final_lr_fraction",
                format!("must be in [0, 1], got {}", s.final_lr_fraction),
            );
        }
        self.eval.validate(&self.layer_names())?;
        if let Some(m) = &self.eval.memorization {
            if !self.data.may_have_boxes() {
                return bad(
                    "eval.memorization",
                    format!(
                        "the monitor attacks background crops and needs object boxes: the built-in scenes, or an image folder with boxes.csv or boxes.json; {} has none",
                        self.data.resolved().source()
                    ),
                );
            }
            if m.every < 1 || m.every > s.epochs.max(1) {
                return bad(
                    "eval.memorization.every",
                    format!(
                        "must be between 1 and epochs ({}), got {}",
                        s.epochs, m.every
                    ),
                );
            }
            if m.canaries_per_class < 1 {
                return bad(
                    "eval.memorization.canaries_per_class",
                    "must be at least 1".into(),
                );
            }
            if m.k < 1 || m.k > 1000 {
                return bad(
                    "eval.memorization.k",
                    format!("must be between 1 and 1000, got {}", m.k),
                );
            }
        }
        Ok(())
    }

    /// Makes the model fit the method: a ViT for the methods that mask
    /// patches, no projector for those that reconstruct pixels, no local
    /// views for those that do not read them.
    pub fn fit_model_to_method(&mut self) {
        if self.method.needs_vit() && self.backbone.kind != BackboneKind::Vit {
            self.backbone = BackboneSpec::small_vit();
        }
        if self.method.reconstructs() {
            self.projector.dims.clear();
        }
        if !self.method.takes_local_views() {
            self.augment.local_views = 0;
        }
    }

    /// Names of the probed layers, in depth order: `backbone`, `proj.0`, ….
    pub fn layer_names(&self) -> Vec<String> {
        let n = self.projector.parse_dims().map(|d| d.len()).unwrap_or(0);
        std::iter::once("backbone".to_string())
            .chain((0..n).map(|i| format!("proj.{i}")))
            .collect()
    }

    /// The method's predictor widths for this projector (`None` without a
    /// predictor); the input is the projector's output.
    pub fn predictor_dims(&self) -> Option<Result<Vec<usize>, String>> {
        let dims = self.projector.parse_dims().unwrap_or_default();
        let first = dims.first().copied().filter(|_| dims.len() > 1);
        self.method.predictor_dims(first, self.embedding_dim())
    }

    /// Width of the encoder's last layer: the projector's output, or the
    /// backbone's without a projector.
    pub fn embedding_dim(&self) -> usize {
        let dims = self.projector.parse_dims().unwrap_or_default();
        dims.last().copied().unwrap_or(self.backbone.output_dim())
    }

    /// Optimiser steps in the whole run (the last partial batch is dropped).
    pub fn total_steps(&self) -> usize {
        let all = self.data.train_images();
        // Exact once the data is read (the engine reports it); here a guess
        // from the class count where the spec says it.
        let n = match (&self.subset, &self.data) {
            (Some(subset), DataSpec::Scenes(s)) => (0..s.classes)
                .map(|c| subset.wanted(c, s.classes).min(all / s.classes.max(1) + 1))
                .sum::<usize>()
                .min(all),
            _ => all,
        };
        // The memorization monitor keeps its held-out images out of training.
        let n = match (&self.eval.memorization, &self.data) {
            (Some(m), DataSpec::Scenes(s)) => {
                n.saturating_sub((m.canaries_per_class * s.classes).min(all / 2))
            }
            _ => n,
        };
        (n / self.optimizer.batch_size).max(1) * self.schedule.epochs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memorization_monitor_needs_boxes_and_counts_its_heldout_images() {
        let spec = RunSpec::from_toml(
            "[data]\nsource = \"scenes\"\nclasses = 4\ntrain_images = 200\n\
             [optimizer]\nbatch_size = 20\n[schedule]\nepochs = 3\n\
             [eval.memorization]\nevery = 2\ncanaries_per_class = 5\n",
        )
        .unwrap();
        let m = spec.eval.memorization.clone().unwrap();
        assert_eq!((m.every, m.k), (2, 20));
        // 200 less 4 × 5 held out: 9 batches of 20 per epoch.
        assert_eq!(spec.total_steps(), 27);
        let err = RunSpec::from_toml(
            "[data]\nsource = \"cifar10\"\npath = \"/d\"\n[eval.memorization]\nevery = 1\n",
        )
        .unwrap_err();
        assert_eq!(err.field, "eval.memorization");
        assert!(err.message.contains("cifar10 has none"), "{}", err.message);
        let err = RunSpec::from_toml("[eval.memorization]\ncanaries_per_class = 0\n").unwrap_err();
        assert_eq!(err.field, "eval.memorization.canaries_per_class");
    }

    #[test]
    fn bf16_is_for_convolutional_backbones() {
        let spec = RunSpec::from_toml("[optimizer]\nprecision = \"bf16\"\n").unwrap();
        assert_eq!(spec.optimizer.precision, Precision::Bf16);
        let err = RunSpec::from_toml(
            "[backbone]\nkind = \"vit\"\nwidth = 48\nheads = 3\n[optimizer]\nprecision = \"bf16\"\n",
        )
        .unwrap_err();
        assert_eq!(err.field, "optimizer.precision");
        let err = RunSpec::from_toml("[optimizer]\nprecision = \"fp8\"\n").unwrap_err();
        assert_eq!(err.field, "optimizer.precision");
    }

    #[test]
    fn subsets_parse_round_trip_and_name_bad_fields() {
        let spec =
            RunSpec::from_toml("[subset]\nkind = \"power_law\"\nimages = 300\npower = 1.0\n")
                .unwrap();
        assert_eq!(
            spec.subset,
            Some(SubsetSpec::PowerLaw {
                images: 300,
                power: 1.0,
                seed: 0
            })
        );
        assert_eq!(RunSpec::from_toml(&spec.to_toml()).unwrap(), spec);
        // The default scenes (2000 images, batch 128): about 300 images, two
        // steps an epoch, not fifteen.
        assert_eq!(spec.total_steps(), 2 * spec.schedule.epochs);
        let err =
            RunSpec::from_toml("[subset]\nkind = \"per_class\"\nper_class = 0\n").unwrap_err();
        assert_eq!(err.field, "subset.per_class");
        let err = RunSpec::from_toml("[subset]\nkind = \"power_law\"\nimages = 9\npower = -1.0\n")
            .unwrap_err();
        assert_eq!(err.field, "subset.power");
        assert!(RunSpec::from_toml("[subset]\nkind = \"per_class\"\nper_clas = 3\n").is_err());
    }

    #[test]
    fn default_spec_is_valid_and_round_trips() {
        let spec = RunSpec::default();
        spec.validate().unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(RunSpec::from_json(&json).unwrap(), spec);
        assert_eq!(RunSpec::from_toml(&spec.to_toml()).unwrap(), spec);
    }

    #[test]
    fn unknown_field_is_named() {
        let err = RunSpec::from_json(r#"{"optimizer": {"lr": 0.1, "lrr": 2}}"#).unwrap_err();
        assert_eq!(err.field, "optimizer.lrr");
        assert!(err.message.contains("lrr"), "{}", err.message);
    }

    #[test]
    fn wrong_type_is_named() {
        let err = RunSpec::from_json(r#"{"schedule": {"epochs": "ten"}}"#).unwrap_err();
        assert_eq!(err.field, "schedule.epochs");
    }

    #[test]
    fn impossible_values_are_named() {
        let err =
            RunSpec::from_json(r#"{"method": {"name": "simclr", "temperature": 0}}"#).unwrap_err();
        assert_eq!(err.field, "method.temperature");
        let err = RunSpec::from_json(r#"{"projector": {"dims": "128-x"}}"#).unwrap_err();
        assert_eq!(err.field, "projector.dims");
        assert!(err.message.contains("`x`"));
        let err = RunSpec::from_toml("[optimizer]\nbatch_size = 1\n").unwrap_err();
        assert_eq!(err.field, "optimizer.batch_size");
        let err =
            RunSpec::from_json(r#"{"data": {"source": "scenes", "background_signature": 1.5}}"#)
                .unwrap_err();
        assert_eq!(err.field, "data.background_signature");
        assert!(err.message.contains("[0, 1]"), "{}", err.message);
    }

    #[test]
    fn file_sources_parse_and_check_their_fields() {
        let spec =
            RunSpec::from_toml("[data]\nsource = \"cifar100\"\npath = \"/d\"\ncoarse = true\n")
                .unwrap();
        assert_eq!(
            spec.data,
            DataSpec::Cifar100 {
                path: "/d".into(),
                coarse: true
            }
        );
        assert_eq!(spec.data.image_size(), 32);
        let folder =
            RunSpec::from_toml("[data]\nsource = \"folder\"\npath = \"/imgs\"\nimage_size = 64\n")
                .unwrap();
        assert_eq!(folder.data.image_size(), 64);
        for (text, field) in [
            ("[data]\nsource = \"idx\"\npath = \"\"\n", "data.path"),
            (
                "[data]\nsource = \"folder\"\npath = \"/x\"\nimage_size = 4\n",
                "data.image_size",
            ),
            (
                "[data]\nsource = \"folder\"\npath = \"/x\"\ntest_fraction = 1.0\n",
                "data.test_fraction",
            ),
            ("[data]\nsource = \"stl10\"\n", "data"),
        ] {
            let err = RunSpec::from_toml(text).unwrap_err();
            assert!(err.field.starts_with(field), "{text}: {err}");
        }
    }

    #[test]
    fn every_method_parses_with_defaults_and_checks_its_knobs() {
        for name in MethodSpec::NAMES {
            let m = MethodSpec::from_name(name).unwrap();
            assert_eq!(m.name(), name);
            let mut spec = RunSpec {
                method: m,
                ..RunSpec::default()
            };
            spec.fit_model_to_method();
            spec.validate().unwrap();
        }
        let cases = [
            (
                r#"{"name": "vicreg", "variance": -1}"#,
                "method.variance",
                "[0, 10000]",
            ),
            (
                r#"{"name": "barlow", "lambda_offdiag": 1e9}"#,
                "method.lambda_offdiag",
                "[0, 10000]",
            ),
            (
                r#"{"name": "byol", "ema_base": 1.0}"#,
                "method.ema_base",
                "[0, 1)",
            ),
            (
                r#"{"name": "byol", "predictor": "256-64"}"#,
                "method.predictor",
                "output width 128",
            ),
            (
                r#"{"name": "simsiam", "predictor": "32-x"}"#,
                "method.predictor",
                "`x`",
            ),
            (
                r#"{"name": "vicreg", "temperature": 0.5}"#,
                "method",
                "unknown field `temperature`",
            ),
            (
                r#"{"name": "dino3"}"#,
                "method.name",
                "unknown variant `dino3`",
            ),
            (
                r#"{"name": "dino", "student_temperature": 0}"#,
                "method.student_temperature",
                "(0, 10]",
            ),
            (
                r#"{"name": "swav", "prototypes": 1}"#,
                "method.prototypes",
                "between 2 and 65536",
            ),
            (
                r#"{"name": "swav", "queue_size": 100}"#,
                "method.queue_size",
                "batch size 128",
            ),
            (
                r#"{"name": "swav", "queue_size": 512, "queue_starts_epoch": -1}"#,
                "method.queue_starts_epoch",
                "between 0 and the run's",
            ),
            (
                r#"{"name": "simclr", "negatives": "two"}"#,
                "method",
                "unknown variant `two`",
            ),
        ];
        for (method, field, words) in cases {
            let err = RunSpec::from_json(&format!(r#"{{"method": {method}}}"#)).unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(err.message.contains(words), "{err}");
        }
        // The predictor follows the projector: "256-128" → hidden 256, out 128.
        let byol = MethodSpec::from_name("byol").unwrap();
        assert_eq!(
            byol.predictor_dims(Some(256), 128),
            Some(Ok(vec![256, 128]))
        );
        let simsiam = MethodSpec::from_name("simsiam").unwrap();
        assert_eq!(simsiam.predictor_dims(None, 128), Some(Ok(vec![32, 128])));
        assert_eq!(MethodSpec::default().predictor_dims(None, 128), None);
    }

    #[test]
    fn combinations_that_cannot_train_are_named() {
        let cases = [
            (
                r#"{"method": {"name": "msn"}, "backbone": {"kind": "resnet18"}}"#,
                "backbone.kind",
                "needs a ViT",
            ),
            (
                r#"{"method": {"name": "mae"}, "backbone": {"kind": "vit", "width": 48, "heads": 3, "patch_size": 5}, "projector": {"dims": ""}}"#,
                "backbone.patch_size",
                "divide the image size 32",
            ),
            (
                r#"{"method": {"name": "mae"}, "backbone": {"kind": "vit", "width": 48, "patch_size": 32}, "projector": {"dims": ""}}"#,
                "backbone.patch_size",
                "at least 2×2",
            ),
            (
                r#"{"backbone": {"kind": "vit", "width": 48, "patch_size": 8}, "eval": {"data": {"source": "folder", "path": "/d", "image_size": 28}}}"#,
                "eval.data",
                "28 px",
            ),
            (
                r#"{"backbone": {"kind": "vit", "width": 48, "patch_size": 3, "conv_stem": true}, "data": {"source": "folder", "path": "/d", "image_size": 48}}"#,
                "backbone.patch_size",
                "power of two from 2 up, got 3",
            ),
            (
                r#"{"backbone": {"kind": "vit", "width": 48, "patch_size": 1, "conv_stem": true}}"#,
                "backbone.patch_size",
                "got 1",
            ),
            (
                r#"{"method": {"name": "simmim"}, "backbone": {"kind": "vit", "width": 48, "conv_stem": true}, "projector": {"dims": ""}}"#,
                "backbone.conv_stem",
                "simmim reconstructs",
            ),
            (
                r#"{"backbone": {"kind": "resnet18", "conv_stem": true}}"#,
                "backbone.conv_stem",
                "not resnet18",
            ),
            (
                r#"{"backbone": {"kind": "vit", "width": 50, "heads": 3}}"#,
                "backbone.heads",
                "divide the width 50",
            ),
            (
                r#"{"method": {"name": "mae"}, "backbone": {"kind": "vit", "width": 48}}"#,
                "projector.dims",
                "trains no projector",
            ),
            (
                r#"{"method": {"name": "msn", "mask_ratio": 1.0}, "backbone": {"kind": "vit", "width": 48}}"#,
                "method.mask_ratio",
                "(0, 1)",
            ),
            (
                r#"{"method": {"name": "pmsn", "sinkhorn_iterations": 101}, "backbone": {"kind": "vit", "width": 48}}"#,
                "method.sinkhorn_iterations",
                "between 0 and 100, got 101",
            ),
            (
                r#"{"augment": {"local_views": 4}}"#,
                "augment.local_views",
                "only dino, swav, msn and pmsn",
            ),
            (
                r#"{"method": {"name": "dino"}, "backbone": {"kind": "vit", "width": 48, "patch_size": 8}, "augment": {"local_views": 2, "local_size": 12}}"#,
                "augment.local_size",
                "patch size 8",
            ),
            (
                r#"{"projector": {"dims": "128-x"}}"#,
                "projector.dims",
                "`x`",
            ),
            (
                r#"{"method": {"name": "simclr", "temperature": 0}}"#,
                "method.temperature",
                "(0, 10]",
            ),
            (
                r#"{"optimizer": {"weight_decay_end": 2}}"#,
                "optimizer.weight_decay_end",
                "[0, 1]",
            ),
        ];
        for (text, field, words) in cases {
            let err = RunSpec::from_json(text).unwrap_err();
            assert_eq!(err.field, field, "{text}: {err}");
            assert!(err.message.contains(words), "{text}: {err}");
        }
        // Picking a method that masks patches brings a ViT and drops the projector.
        let mut spec = RunSpec {
            method: MethodSpec::from_name("simmim").unwrap(),
            ..RunSpec::default()
        };
        assert!(spec.validate().is_err());
        spec.fit_model_to_method();
        assert_eq!(spec.backbone.kind, BackboneKind::Vit);
        assert_eq!(spec.layer_names(), ["backbone"]);
        spec.validate().unwrap();
    }

    /// Every method has a CIFAR-scale recipe and a `-tiny` one, and every
    /// recipe parses and validates as it is.
    #[test]
    fn every_recipe_is_a_valid_spec() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
        for name in MethodSpec::NAMES {
            for file in [format!("{name}.toml"), format!("{name}-tiny.toml")] {
                let text = std::fs::read_to_string(dir.join(&file))
                    .unwrap_or_else(|e| panic!("recipes/{file}: {e}"));
                let spec =
                    RunSpec::from_toml(&text).unwrap_or_else(|e| panic!("recipes/{file}: {e}"));
                assert_eq!(spec.method.name(), name, "recipes/{file}");
                assert_eq!(spec.name, file.trim_end_matches(".toml"));
            }
        }
    }

    #[test]
    fn toml_errors_name_the_field() {
        let err = RunSpec::from_toml("[data]\nsource = \"scenes\"\nclasess = 3\n").unwrap_err();
        assert!(err.field.starts_with("data"), "{}", err.field);
        assert!(err.message.contains("clasess"));
    }

    #[test]
    fn eval_plan_is_checked_against_the_model() {
        let mut spec = RunSpec::default();
        spec.eval.layers = vec!["proj.7".into()];
        let err = spec.validate().unwrap_err();
        assert_eq!(err.field, "eval.layers");
        assert!(
            err.message.contains("backbone, proj.0, proj.1"),
            "{}",
            err.message
        );
        let err = RunSpec::from_json(r#"{"eval": {"probes": ["knn", "svm"]}}"#).unwrap_err();
        assert_eq!(err.field, "eval.probes[1]");
        spec.eval.layers = vec!["proj.1".into()];
        assert_eq!(spec.eval.probed_layers(&spec.layer_names()), ["proj.1"]);
    }

    #[test]
    fn layer_names_follow_the_projector() {
        let mut spec = RunSpec::default();
        spec.projector.dims = "64-32-16".into();
        assert_eq!(
            spec.layer_names(),
            ["backbone", "proj.0", "proj.1", "proj.2"]
        );
        spec.projector.dims = String::new();
        assert_eq!(spec.layer_names(), ["backbone"]);
    }
}
