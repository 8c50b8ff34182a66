//! STL-10, binary version (Coates, Lee & Ng 2011): `train_X.bin` and
//! `test_X.bin` hold 96×96 RGB images as three channel planes, each stored
//! column by column; `train_y.bin` and `test_y.bin` one label byte (1–10)
//! per image. `unlabeled_X.bin` (100 000 images, no labels) is read when
//! asked for: pretraining sees it, the probes do not.

use std::path::Path;

use super::{ImageSet, Splits, UNLABELED, read_file};
use crate::{EngineError, Result};

const SIDE: usize = 96;
const BYTES: usize = 3 * SIDE * SIDE;
const CLASSES: [&str; 10] = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
];

/// The images of `path`, planes and columns turned into RGB rows.
fn images(path: &Path) -> Result<Vec<u8>> {
    let x = read_file(path)?;
    if x.is_empty() || x.len() % BYTES != 0 {
        return Err(EngineError::Data(format!(
            "{} is {} bytes, not a whole number of {BYTES}-byte images: truncated or not STL-10",
            path.display(),
            x.len()
        )));
    }
    let mut pixels = vec![0u8; x.len()];
    for (i, img) in x.chunks_exact(BYTES).enumerate() {
        let out = &mut pixels[i * BYTES..(i + 1) * BYTES];
        for c in 0..3 {
            for col in 0..SIDE {
                for row in 0..SIDE {
                    out[(row * SIDE + col) * 3 + c] = img[c * SIDE * SIDE + col * SIDE + row];
                }
            }
        }
    }
    Ok(pixels)
}

fn names() -> Vec<String> {
    CLASSES.iter().map(|s| s.to_string()).collect()
}

fn split(folder: &Path, images_file: &str, labels: &str) -> Result<ImageSet> {
    let (xp, yp) = (folder.join(images_file), folder.join(labels));
    let pixels = images(&xp)?;
    let y = read_file(&yp)?;
    let n = pixels.len() / BYTES;
    if y.len() != n {
        return Err(EngineError::Data(format!(
            "{} has {} labels for the {n} images of {}",
            yp.display(),
            y.len(),
            xp.display()
        )));
    }
    if let Some((i, l)) = y.iter().enumerate().find(|(_, l)| !(1..=10).contains(*l)) {
        return Err(EngineError::Data(format!(
            "{}: label {i} is {l}; STL-10 labels are 1–10",
            yp.display()
        )));
    }
    Ok(ImageSet {
        size: SIDE,
        pixels,
        labels: y.iter().map(|&l| l as u32 - 1).collect(),
        boxes: Vec::new(),
        class_names: names(),
    })
}

pub fn load(folder: &Path, unlabeled: bool) -> Result<Splits> {
    let mut splits = Splits::new(
        split(folder, "train_X.bin", "train_y.bin")?,
        split(folder, "test_X.bin", "test_y.bin")?,
    );
    if unlabeled {
        let path = folder.join("unlabeled_X.bin");
        if let Ok(meta) = std::fs::metadata(&path) {
            super::check_fits(
                &path.display().to_string(),
                meta.len() as usize / BYTES,
                SIDE,
            )?;
        }
        let pixels = images(&path)?;
        let n = pixels.len() / BYTES;
        splits.unlabeled = Some(ImageSet {
            size: SIDE,
            pixels,
            labels: vec![UNLABELED; n],
            boxes: Vec::new(),
            class_names: names(),
        });
    }
    Ok(splits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_column_major_planes_and_one_based_labels() {
        let dir = tempfile::tempdir().unwrap();
        let mut img = vec![0u8; BYTES];
        // Red plane, column 5, row 2 → pixel (x 5, y 2).
        img[5 * SIDE + 2] = 200;
        // Blue plane, column 0, row 1.
        img[2 * SIDE * SIDE + 1] = 50;
        for (x, y) in [("train_X.bin", "train_y.bin"), ("test_X.bin", "test_y.bin")] {
            std::fs::write(dir.path().join(x), [img.clone(), img.clone()].concat()).unwrap();
            std::fs::write(dir.path().join(y), [1u8, 10]).unwrap();
        }
        let s = load(dir.path(), false).unwrap();
        assert!(s.unlabeled.is_none());
        assert_eq!((s.train.len(), s.train.size), (2, 96));
        assert_eq!(s.train.labels, [0, 9]);
        assert_eq!(s.train.image(0)[(2 * SIDE + 5) * 3], 200);
        assert_eq!(s.train.image(0)[(SIDE) * 3 + 2], 50);

        let err = load(dir.path(), true).unwrap_err().to_string();
        assert!(err.contains("unlabeled_X.bin"), "{err}");
        std::fs::write(dir.path().join("unlabeled_X.bin"), img.repeat(3)).unwrap();
        let u = load(dir.path(), true).unwrap().unlabeled.unwrap();
        assert_eq!((u.len(), u.labels[2]), (3, UNLABELED));
        assert_eq!(u.image(1)[(2 * SIDE + 5) * 3], 200);
        std::fs::write(dir.path().join("unlabeled_X.bin"), vec![0u8; 2 * BYTES - 1]).unwrap();
        let err = load(dir.path(), true).unwrap_err().to_string();
        assert!(
            err.contains("unlabeled_X.bin") && err.contains("truncated"),
            "{err}"
        );

        std::fs::write(dir.path().join("test_y.bin"), [1u8, 11]).unwrap();
        let err = load(dir.path(), false).unwrap_err().to_string();
        assert!(err.contains("test_y.bin: label 1 is 11"), "{err}");
        std::fs::write(dir.path().join("train_X.bin"), vec![0u8; BYTES + 5]).unwrap();
        let err = load(dir.path(), false).unwrap_err().to_string();
        assert!(
            err.contains("train_X.bin") && err.contains("truncated"),
            "{err}"
        );
    }
}
