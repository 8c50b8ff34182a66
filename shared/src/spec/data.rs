//! Where the images come from: the data sources, subsets of the training
//! split, and the built-in scenes.

use serde::{Deserialize, Serialize};

use super::*;
use crate::error::SpecError;

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

    /// The folder on the server this reads directly, if it names one (a
    /// registered data set's folder is the registry's business, not the spec's).
    pub fn server_path(&self) -> Option<&str> {
        match self {
            DataSpec::Cifar10 { path }
            | DataSpec::Cifar100 { path, .. }
            | DataSpec::Idx { path }
            | DataSpec::Stl10 { path, .. }
            | DataSpec::Folder { path, .. } => Some(path),
            DataSpec::Scenes(_) | DataSpec::Dataset { .. } => None,
        }
    }

    /// Points a spec that reads a folder at another copy of it (a worker's
    /// cache of a registered data set); `false` for one that reads none.
    pub fn set_server_path(&mut self, to: String) -> bool {
        match self {
            DataSpec::Cifar10 { path }
            | DataSpec::Cifar100 { path, .. }
            | DataSpec::Idx { path }
            | DataSpec::Stl10 { path, .. }
            | DataSpec::Folder { path, .. } => {
                *path = to;
                true
            }
            DataSpec::Scenes(_) | DataSpec::Dataset { .. } => false,
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

    pub(super) fn validate(&self) -> Result<(), SpecError> {
        match *self {
            SubsetSpec::PerClass { per_class: 0, .. } => {
                Err(SpecError::new("subset.per_class", "must be at least 1"))
            }
            SubsetSpec::PowerLaw { images: 0, .. } => {
                Err(SpecError::new("subset.images", "must be at least 1"))
            }
            SubsetSpec::PowerLaw { power, .. } if !(0.0..=10.0).contains(&power) => Err(
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

/// The checks of data that serde cannot make, in the order a spec reports them.
pub(super) fn check(spec: &RunSpec) -> Result<(), SpecError> {
    match &spec.data {
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
    Ok(())
}
