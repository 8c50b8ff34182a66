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

    /// These images followed by `other`'s (same size; `other`'s boxes and
    /// class names are dropped).
    pub fn concat(&self, other: &ImageSet) -> ImageSet {
        let mut out = self.clone();
        out.pixels.extend_from_slice(&other.pixels);
        out.labels.extend_from_slice(&other.labels);
        if !out.boxes.is_empty() {
            out.boxes.extend(std::iter::repeat_n(NO_BOX, other.len()));
        }
        out
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

/// The label of an image that has none (STL-10's unlabelled split).
pub const UNLABELED: u32 = u32::MAX;

/// What a run trains on and what its probes are scored on.
#[derive(Debug, Clone)]
pub struct Splits {
    pub train: ImageSet,
    pub test: ImageSet,
    /// Images without labels that pretraining also reads (labels
    /// [`UNLABELED`]); the probes never see them.
    pub unlabeled: Option<ImageSet>,
}

impl Splits {
    /// A labelled train/test pair.
    pub fn new(train: ImageSet, test: ImageSet) -> Self {
        Splits {
            train,
            test,
            unlabeled: None,
        }
    }
}

/// Builds the splits a spec names. A registered data set is read from
/// where it was registered and must still hash to what it did then.
pub fn load(spec: &DataSpec) -> Result<Splits> {
    match spec {
        DataSpec::Dataset { name, registered } => {
            let r = registered.as_ref().ok_or_else(|| {
                EngineError::Data(format!(
                    "the data set `{name}` was not looked up in the registry; \
                     runs that name a data set go through the server or `sslab train`"
                ))
            })?;
            let splits = load(&r.data)?;
            let now = content_hash(&splits);
            if now != r.hash {
                return Err(EngineError::Data(format!(
                    "the data set `{name}` changed since it was registered: its files hash to {now}, not {}",
                    r.hash
                )));
            }
            Ok(splits)
        }
        DataSpec::Scenes(s) => Ok(scenes::generate(s)),
        DataSpec::Cifar10 { path } => cifar::load(Path::new(path), cifar::Labels::Ten),
        DataSpec::Cifar100 { path, coarse } => {
            cifar::load(Path::new(path), cifar::Labels::Hundred { coarse: *coarse })
        }
        DataSpec::Idx { path } => idx::load(Path::new(path)),
        DataSpec::Stl10 { path, unlabeled } => stl10::load(Path::new(path), *unlabeled),
        DataSpec::Folder {
            path,
            image_size,
            test_fraction,
            seed,
        } => folder::load(Path::new(path), *image_size, *test_fraction, *seed),
    }
}

/// `sha256:…` of every split's images, labels, boxes and the class names:
/// the same data gives the same hash whatever files it came from.
pub fn content_hash(splits: &Splits) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut add = |tag: &str, set: &ImageSet| {
        h.update(tag.as_bytes());
        h.update((set.size as u64).to_le_bytes());
        h.update((set.len() as u64).to_le_bytes());
        h.update(&set.pixels);
        for l in &set.labels {
            h.update(l.to_le_bytes());
        }
        for b in &set.boxes {
            for v in b {
                h.update(v.to_le_bytes());
            }
        }
        for c in &set.class_names {
            h.update((c.len() as u64).to_le_bytes());
            h.update(c.as_bytes());
        }
    };
    add("train", &splits.train);
    add("test", &splits.test);
    if let Some(u) = &splits.unlabeled {
        add("unlabeled", u);
    }
    let digest = h.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Image `i` of `set` as a PNG.
pub fn image_png(set: &ImageSet, i: usize) -> Result<Vec<u8>> {
    let img = image::RgbImage::from_raw(set.size as u32, set.size as u32, set.image(i).to_vec())
        .ok_or_else(|| EngineError::Data("an image of the wrong length".into()))?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| EngineError::Data(format!("cannot encode image {i}: {e}")))?;
    Ok(out.into_inner())
}

/// A PNG of up to `per_class` training images of each of the first
/// `classes` classes, one row per class: the thumbnails a data set is
/// listed with.
pub fn sample_grid(
    set: &ImageSet,
    per_class: usize,
    classes: usize,
    side: usize,
) -> Result<Vec<u8>> {
    let rows: Vec<Vec<usize>> = (0..set.classes().min(classes))
        .map(|c| {
            (0..set.len())
                .filter(|&i| set.labels[i] == c as u32)
                .take(per_class)
                .collect()
        })
        .filter(|r: &Vec<usize>| !r.is_empty())
        .collect();
    let (w, h) = ((per_class * side).max(1), (rows.len() * side).max(1));
    let mut grid = image::RgbImage::new(w as u32, h as u32);
    for (r, row) in rows.iter().enumerate() {
        for (c, &i) in row.iter().enumerate() {
            let img =
                image::RgbImage::from_raw(set.size as u32, set.size as u32, set.image(i).to_vec())
                    .ok_or_else(|| EngineError::Data("an image of the wrong length".into()))?;
            let small = image::imageops::resize(
                &img,
                side as u32,
                side as u32,
                image::imageops::FilterType::Triangle,
            );
            image::imageops::replace(&mut grid, &small, (c * side) as i64, (r * side) as i64);
        }
    }
    let mut out = std::io::Cursor::new(Vec::new());
    grid.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| EngineError::Data(format!("cannot encode the sample grid: {e}")))?;
    Ok(out.into_inner())
}

/// Every set is held decoded in memory: refuses `images` of `side` pixels
/// when they would not fit in the memory this machine has available, rather
/// than letting a run swap or be killed part way.
pub(crate) fn check_fits(what: &str, images: usize, side: usize) -> Result<()> {
    let need = images as u64 * (side * side * 3) as u64;
    if let Some(available) = available_memory()
        && need > available / 10 * 9
    {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        return Err(EngineError::Data(format!(
            "{what}: {images} images of {side} px take {:.1} GiB decoded, more than the {:.1} GiB \
             of memory available; use a smaller image size or fewer files",
            gib(need),
            gib(available)
        )));
    }
    Ok(())
}

/// `MemAvailable` of /proc/meminfo, where there is one.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// A whole file, or an error that names it and says what is wrong.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| EngineError::Io {
        what: format!("cannot read {}", path.display()),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sslab_shared::spec::{RegisteredData, ScenesSpec};

    #[test]
    fn a_registered_set_must_still_hash_as_it_did() {
        let spec = |seed| {
            DataSpec::Scenes(ScenesSpec {
                classes: 3,
                train_images: 30,
                test_images: 6,
                seed,
                ..ScenesSpec::default()
            })
        };
        let hash = content_hash(&load(&spec(1)).unwrap());
        assert_eq!(hash, content_hash(&load(&spec(1)).unwrap()));
        assert_ne!(hash, content_hash(&load(&spec(2)).unwrap()));
        let named = |hash: &str, data| DataSpec::Dataset {
            name: "shapes".into(),
            registered: Some(Box::new(RegisteredData {
                hash: hash.into(),
                data,
            })),
        };
        assert_eq!(load(&named(&hash, spec(1))).unwrap().train.len(), 30);
        let err = load(&named(&hash, spec(2))).unwrap_err().to_string();
        assert!(
            err.contains("`shapes` changed since it was registered"),
            "{err}"
        );
        let bare = DataSpec::Dataset {
            name: "shapes".into(),
            registered: None,
        };
        assert!(
            load(&bare)
                .unwrap_err()
                .to_string()
                .contains("not looked up")
        );
    }

    #[test]
    fn sets_that_cannot_stay_in_memory_are_refused() {
        assert!(check_fits("small", 100, 32).is_ok());
        if available_memory().is_some() {
            let err = check_fits("huge", 1 << 36, 96).unwrap_err().to_string();
            assert!(
                err.contains("huge: 68719476736 images of 96 px") && err.contains("GiB"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_sample_sheet_has_a_row_per_class() {
        let set = scenes::generate(&ScenesSpec {
            classes: 3,
            train_images: 30,
            test_images: 3,
            ..ScenesSpec::default()
        })
        .train;
        let png = sample_grid(&set, 4, 10, 16).unwrap();
        let img = image::load_from_memory(&png).unwrap();
        assert_eq!((img.width(), img.height()), (64, 48));
        let two = sample_grid(&set, 4, 2, 16).unwrap();
        assert_eq!(image::load_from_memory(&two).unwrap().height(), 32);
    }
}
