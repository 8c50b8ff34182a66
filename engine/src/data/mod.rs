//! Labelled image sets and the splits a run trains and evaluates on.

pub mod cifar;
pub mod folder;
pub mod idx;
pub mod scenes;
pub mod stl10;
pub mod subset;

use std::path::Path;

use sslab_shared::spec::DataSpec;

use crate::{EngineError, Result};

/// The box of an image that has none, in a set where others do.
pub const NO_BOX: [u32; 4] = [0; 4];

/// Square RGB images held in memory, with labels and object boxes.
#[derive(Debug, Clone)]
pub struct ImageSet {
    /// Side in pixels.
    pub size: usize,
    /// `len × size × size × 3` bytes, row-major RGB.
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
    /// Object bounding box per image, `[x0, y0, x1, y1)` in pixels
    /// ([`NO_BOX`] for an image without one); empty when the data set has none.
    pub boxes: Vec<[u32; 4]>,
    pub class_names: Vec<String>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn classes(&self) -> usize {
        self.class_names.len()
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.size * self.size * 3;
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The images `indices`, in that order, with their labels and boxes.
    pub fn subset(&self, indices: &[usize]) -> ImageSet {
        ImageSet {
            size: self.size,
            pixels: indices
                .iter()
                .flat_map(|&i| self.image(i).to_vec())
                .collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            boxes: if self.boxes.is_empty() {
                Vec::new()
            } else {
                indices.iter().map(|&i| self.boxes[i]).collect()
            },
            class_names: self.class_names.clone(),
        }
    }
}

/// What a run trains on and what its probes are scored on.
#[derive(Debug, Clone)]
pub struct Splits {
    pub train: ImageSet,
    pub test: ImageSet,
}

/// Builds the splits a spec names.
pub fn load(spec: &DataSpec) -> Result<Splits> {
    match spec {
        DataSpec::Scenes(s) => Ok(scenes::generate(s)),
        DataSpec::Cifar10 { path } => cifar::load(Path::new(path), cifar::Labels::Ten),
        DataSpec::Cifar100 { path, coarse } => {
            cifar::load(Path::new(path), cifar::Labels::Hundred { coarse: *coarse })
        }
        DataSpec::Idx { path } => idx::load(Path::new(path)),
        DataSpec::Stl10 { path } => stl10::load(Path::new(path)),
        DataSpec::Folder {
            path,
            image_size,
            test_fraction,
            seed,
        } => folder::load(Path::new(path), *image_size, *test_fraction, *seed),
    }
}

/// A whole file, or an error that names it and says what is wrong.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| EngineError::Io {
        what: format!("cannot read {}", path.display()),
        source: e,
    })
}
