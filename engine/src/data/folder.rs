//! Image folders: one sub-folder per class holding PNG or JPEG files, as
//! torchvision's `ImageFolder` reads them. With `train/` and `test/`
//! sub-folders those are the splits; otherwise a seeded fraction of every
//! class is held out. Every image becomes RGB of one square size: gray is
//! copied to the three channels, alpha is composited over black, and the
//! shorter side is resized to the target before a centre crop.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use sslab_shared::rng::Rng;

use super::{ImageSet, Splits, read_file};
use crate::{EngineError, Result};

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Sorted entries of a folder, or an error naming it.
fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let read = std::fs::read_dir(dir).map_err(|e| EngineError::Io {
        what: format!("cannot read the folder {}", dir.display()),
        source: e,
    })?;
    let mut out: Vec<PathBuf> = read
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Class name → its image files, classes in name order.
fn classes(root: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let mut out = Vec::new();
    for dir in entries(root)?.into_iter().filter(|p| p.is_dir()) {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let files: Vec<PathBuf> = entries(&dir)?.into_iter().filter(|p| is_image(p)).collect();
        if files.is_empty() {
            return Err(EngineError::Data(format!(
                "the class folder {} has no PNG or JPEG images",
                dir.display()
            )));
        }
        out.push((name, files));
    }
    if out.len() < 2 {
        return Err(EngineError::Data(format!(
            "{} needs one sub-folder per class, at least two; found {}",
            root.display(),
            out.len()
        )));
    }
    Ok(out)
}

/// Decodes one file into `size`×`size` RGB bytes.
pub fn decode(path: &Path, size: usize) -> Result<Vec<u8>> {
    let bytes = read_file(path)?;
    let img = image::load_from_memory(&bytes).map_err(|e| {
        EngineError::Data(format!("{} is not a readable image: {e}", path.display()))
    })?;
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    // Alpha over black, explicitly.
    let rgb = image::RgbImage::from_fn(w, h, |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = p[3] as u32;
        image::Rgb([0, 1, 2].map(|c| ((p[c] as u32 * a + 127) / 255) as u8))
    });
    let scale = size as f64 / w.min(h) as f64;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(size as u32),
        ((h as f64 * scale).round() as u32).max(size as u32),
    );
    let resized = image::imageops::resize(&rgb, nw, nh, FilterType::Triangle);
    let (x0, y0) = ((nw - size as u32) / 2, (nh - size as u32) / 2);
    let crop = image::imageops::crop_imm(&resized, x0, y0, size as u32, size as u32).to_image();
    Ok(crop.into_raw())
}

fn read_set(files: &[(u32, PathBuf)], class_names: &[String], size: usize) -> Result<ImageSet> {
    let mut set = ImageSet {
        size,
        pixels: Vec::with_capacity(files.len() * size * size * 3),
        labels: Vec::with_capacity(files.len()),
        boxes: Vec::new(),
        class_names: class_names.to_vec(),
    };
    for (label, path) in files {
        set.pixels.extend(decode(path, size)?);
        set.labels.push(*label);
    }
    Ok(set)
}

pub fn load(root: &Path, size: usize, test_fraction: f64, seed: u64) -> Result<Splits> {
    let (train_dir, test_dir) = (root.join("train"), root.join("test"));
    let labelled = |list: Vec<(String, Vec<PathBuf>)>| -> (Vec<String>, Vec<(u32, PathBuf)>) {
        let names = list.iter().map(|(n, _)| n.clone()).collect();
        let files = list
            .into_iter()
            .enumerate()
            .flat_map(|(c, (_, fs))| fs.into_iter().map(move |f| (c as u32, f)))
            .collect();
        (names, files)
    };
    if train_dir.is_dir() && test_dir.is_dir() {
        let (names, train) = labelled(classes(&train_dir)?);
        let (test_names, test) = labelled(classes(&test_dir)?);
        if test_names != names {
            return Err(EngineError::Data(format!(
                "{} and {} must hold the same class folders; they hold {names:?} and {test_names:?}",
                train_dir.display(),
                test_dir.display()
            )));
        }
        return Ok(Splits {
            train: read_set(&train, &names, size)?,
            test: read_set(&test, &names, size)?,
        });
    }
    let list = classes(root)?;
    let names: Vec<String> = list.iter().map(|(n, _)| n.clone()).collect();
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (c, (name, mut files)) in list.into_iter().enumerate() {
        if files.len() < 2 {
            return Err(EngineError::Data(format!(
                "class `{name}` has one image; holding out a test split needs two or more"
            )));
        }
        Rng::derive(seed, &[0xF01D, c as u64]).shuffle(&mut files);
        let held =
            ((files.len() as f64 * test_fraction).round() as usize).clamp(1, files.len() - 1);
        for (i, f) in files.into_iter().enumerate() {
            if i < held {
                test.push((c as u32, f));
            } else {
                train.push((c as u32, f));
            }
        }
    }
    Ok(Splits {
        train: read_set(&train, &names, size)?,
        test: read_set(&test, &names, size)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save(path: &Path, img: image::DynamicImage) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        img.save(path).unwrap();
    }

    #[test]
    fn converts_gray_rgba_and_odd_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let gray = dir.path().join("g.png");
        save(
            &gray,
            image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(
                40,
                20,
                image::Luma([200]),
            )),
        );
        let px = decode(&gray, 16).unwrap();
        assert_eq!(px.len(), 16 * 16 * 3);
        assert!(px.chunks(3).all(|p| p == [200, 200, 200]));
        let rgba = dir.path().join("a.png");
        save(
            &rgba,
            image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
                9,
                33,
                image::Rgba([255, 100, 0, 128]),
            )),
        );
        let px = decode(&rgba, 8).unwrap();
        assert_eq!(&px[..3], &[128, 50, 0], "alpha over black");
        let jpeg = dir.path().join("c.jpg");
        save(
            &jpeg,
            image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
                50,
                50,
                image::Rgb([0, 0, 255]),
            )),
        );
        let px = decode(&jpeg, 32).unwrap();
        assert!(px[2] > 200 && px[0] < 40, "{:?}", &px[..3]);
    }

    #[test]
    fn splits_by_folder_or_by_a_seeded_fraction() {
        let dir = tempfile::tempdir().unwrap();
        for (class, colour) in [("cat", [255, 0, 0]), ("dog", [0, 255, 0])] {
            for i in 0..5 {
                let img = image::RgbImage::from_pixel(24, 24, image::Rgb(colour));
                save(
                    &dir.path().join(class).join(format!("{i}.png")),
                    image::DynamicImage::ImageRgb8(img),
                );
            }
        }
        std::fs::write(dir.path().join("cat").join("notes.txt"), "not an image").unwrap();
        let s = load(dir.path(), 32, 0.2, 7).unwrap();
        assert_eq!(s.train.class_names, ["cat", "dog"]);
        assert_eq!((s.train.len(), s.test.len()), (8, 2));
        assert_eq!(s.test.labels, [0, 1]);
        assert_eq!(&s.train.image(0)[..3], &[255, 0, 0]);
        let again = load(dir.path(), 32, 0.2, 7).unwrap();
        assert_eq!(again.train.pixels, s.train.pixels);

        // A corrupt image is named; an empty class is named.
        std::fs::write(dir.path().join("dog").join("9.png"), b"\x89PNG broken").unwrap();
        let err = load(dir.path(), 32, 0.2, 7).unwrap_err().to_string();
        assert!(
            err.contains("9.png") && err.contains("not a readable image"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("dog").join("9.png")).unwrap();
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        let err = load(dir.path(), 32, 0.2, 7).unwrap_err().to_string();
        assert!(
            err.contains("empty") && err.contains("no PNG or JPEG"),
            "{err}"
        );
    }
}
