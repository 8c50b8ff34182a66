//! Image folders: one sub-folder per class holding PNG or JPEG files, as
//! torchvision's `ImageFolder` reads them. With `train/` and `test/`
//! sub-folders those are the splits; otherwise a seeded fraction of every
//! class is held out. Every image becomes RGB of one square size: gray is
//! copied to the three channels, alpha is composited over black, and the
//! shorter side is resized to the target before a centre crop.
//!
//! Object boxes (for the déjà vu audit) come from an optional `boxes.csv` in
//! the root: `file,x0,y0,x1,y1`, the file relative to the root, coordinates in
//! the original image's pixels; or from a COCO-style `boxes.json` (`images`
//! with `id` and `file_name`, `annotations` with `image_id` and `bbox` =
//! `[x, y, width, height]`). Several boxes of one file merge into the
//! rectangle around them all. Boxes follow the resize and the crop.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

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
    Ok(decode_mapped(path, size)?.0)
}

/// Where an original pixel coordinate lands after the resize and the crop.
#[derive(Debug, Clone, Copy)]
struct Mapping {
    scale_x: f64,
    scale_y: f64,
    x0: f64,
    y0: f64,
}

impl Mapping {
    /// The box in output pixels, grown to whole pixels and clamped to the
    /// image; a box cropped away entirely comes out empty.
    fn map(&self, b: [f64; 4], size: usize) -> [u32; 4] {
        let s = size as f64;
        let x = |v: f64| v * self.scale_x - self.x0;
        let y = |v: f64| v * self.scale_y - self.y0;
        [
            x(b[0]).floor().clamp(0.0, s) as u32,
            y(b[1]).floor().clamp(0.0, s) as u32,
            x(b[2]).ceil().clamp(0.0, s) as u32,
            y(b[3]).ceil().clamp(0.0, s) as u32,
        ]
    }
}

fn decode_mapped(path: &Path, size: usize) -> Result<(Vec<u8>, Mapping)> {
    let bytes = read_file(path)?;
    let img = image::load_from_memory(&bytes).map_err(|e| {
        EngineError::Data(format!("{} is not a readable image: {e}", path.display()))
    })?;
    Ok(square(&img, size))
}

/// Largest side of an image `decode_bytes` takes.
pub const MAX_SIDE: u32 = 8192;

/// Decodes an image file's bytes (PNG or JPEG, at most [`MAX_SIDE`] pixels
/// a side) into `size`×`size` RGB bytes, as image folders are read.
pub fn decode_bytes(bytes: &[u8], size: usize) -> Result<Vec<u8>> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| EngineError::Data(format!("cannot read the image: {e}")))?;
    if reader.format().is_none() {
        return Err(EngineError::Data(
            "not an image: expected a PNG or JPEG file".into(),
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => EngineError::Data(format!(
            "the image is too large: at most {MAX_SIDE}×{MAX_SIDE} pixels"
        )),
        e => EngineError::Data(format!("not a readable image: {e}")),
    })?;
    if (img.width(), img.height()) == (size as u32, size as u32) {
        // Exactly the models' size: the pixels as they are.
        return Ok(over_black(&img).into_raw());
    }
    Ok(square(&img, size).0)
}

/// Alpha over black, explicitly.
fn over_black(img: &image::DynamicImage) -> image::RgbImage {
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    image::RgbImage::from_fn(w, h, |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = p[3] as u32;
        image::Rgb([0, 1, 2].map(|c| ((p[c] as u32 * a + 127) / 255) as u8))
    })
}

/// Alpha over black, the shorter side resized to `size`, the centre cut out.
fn square(img: &image::DynamicImage, size: usize) -> (Vec<u8>, Mapping) {
    let rgb = over_black(img);
    let (w, h) = rgb.dimensions();
    let scale = size as f64 / w.min(h) as f64;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(size as u32),
        ((h as f64 * scale).round() as u32).max(size as u32),
    );
    let resized = image::imageops::resize(&rgb, nw, nh, FilterType::Triangle);
    let (x0, y0) = ((nw - size as u32) / 2, (nh - size as u32) / 2);
    let crop = image::imageops::crop_imm(&resized, x0, y0, size as u32, size as u32).to_image();
    let mapping = Mapping {
        scale_x: nw as f64 / w as f64,
        scale_y: nh as f64 / h as f64,
        x0: x0 as f64,
        y0: y0 as f64,
    };
    (crop.into_raw(), mapping)
}

type Boxes = HashMap<PathBuf, [f64; 4]>;

/// The image a box file names, as a path under `root`, or why not.
fn boxed_image(root: &Path, name: &str) -> std::result::Result<PathBuf, &'static str> {
    let relative = Path::new(name);
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err("the file must be a path inside the folder");
    }
    let file = root.join(
        relative
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect::<PathBuf>(),
    );
    if !file.is_file() || !is_image(&file) {
        return Err("no such image");
    }
    Ok(file)
}

/// Adds `b` to the file's box: the rectangle around both.
fn merge(boxes: &mut Boxes, file: PathBuf, b: [f64; 4]) {
    boxes
        .entry(file)
        .and_modify(|u| {
            *u = [
                u[0].min(b[0]),
                u[1].min(b[1]),
                u[2].max(b[2]),
                u[3].max(b[3]),
            ]
        })
        .or_insert(b);
}

fn read_text(path: &Path) -> Result<String> {
    String::from_utf8(read_file(path)?)
        .map_err(|_| EngineError::Data(format!("{} is not UTF-8 text", path.display())))
}

/// The boxes of `root` (`boxes.csv` or `boxes.json`), by file; none when
/// it has neither.
fn read_boxes(root: &Path) -> Result<Option<Boxes>> {
    let (csv, json) = (root.join("boxes.csv"), root.join("boxes.json"));
    match (csv.is_file(), json.is_file()) {
        (true, true) => Err(EngineError::Data(format!(
            "{} has both boxes.csv and boxes.json; keep one",
            root.display()
        ))),
        (true, false) => read_csv_boxes(root, &csv).map(Some),
        (false, true) => read_coco_boxes(root, &json).map(Some),
        (false, false) => Ok(None),
    }
}

/// COCO-style boxes: `images[].{id, file_name}`, `annotations[].{image_id, bbox}`.
fn read_coco_boxes(root: &Path, path: &Path) -> Result<Boxes> {
    let bad = |why: String| EngineError::Data(format!("{}: {why}", path.display()));
    let doc: serde_json::Value =
        serde_json::from_str(&read_text(path)?).map_err(|e| bad(format!("not JSON: {e}")))?;
    let list = |key: &str| {
        doc.get(key)
            .and_then(|v| v.as_array())
            .ok_or_else(|| bad(format!("`{key}` must be a list")))
    };
    let mut files: HashMap<i64, PathBuf> = HashMap::new();
    for (i, img) in list("images")?.iter().enumerate() {
        let id = img.get("id").and_then(|v| v.as_i64());
        let name = img.get("file_name").and_then(|v| v.as_str());
        let (Some(id), Some(name)) = (id, name) else {
            return Err(bad(format!(
                "images[{i}] needs an integer `id` and a `file_name`"
            )));
        };
        let file =
            boxed_image(root, name).map_err(|why| bad(format!("images[{i}]: {why}: `{name}`")))?;
        files.insert(id, file);
    }
    let mut boxes = Boxes::new();
    for (i, a) in list("annotations")?.iter().enumerate() {
        let id = a.get("image_id").and_then(|v| v.as_i64());
        let bbox: Option<Vec<f64>> = a
            .get("bbox")
            .and_then(|v| v.as_array())
            .map(|v| v.iter().filter_map(|x| x.as_f64()).collect());
        let (Some(id), Some(bbox)) = (id, bbox) else {
            return Err(bad(format!("annotations[{i}] needs `image_id` and `bbox`")));
        };
        let file = files.get(&id).ok_or_else(|| {
            bad(format!(
                "annotations[{i}]: image_id {id} is not among `images`"
            ))
        })?;
        match bbox[..] {
            [x, y, w, h] if x >= 0.0 && y >= 0.0 && w > 0.0 && h > 0.0 => {
                merge(&mut boxes, file.clone(), [x, y, x + w, y + h])
            }
            _ => {
                return Err(bad(format!(
                    "annotations[{i}]: bbox must be [x, y, width, height] with x, y ≥ 0 and a positive size"
                )));
            }
        }
    }
    Ok(boxes)
}

/// `boxes.csv`: `file,x0,y0,x1,y1` rows.
fn read_csv_boxes(root: &Path, path: &Path) -> Result<Boxes> {
    let text = read_text(path)?;
    let mut boxes = Boxes::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (n == 0 && line.starts_with("file")) {
            continue;
        }
        let bad = |why: &str| {
            EngineError::Data(format!(
                "{} line {}: {why}: `{line}`",
                path.display(),
                n + 1
            ))
        };
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        if cols.len() != 5 {
            return Err(bad("expected file,x0,y0,x1,y1"));
        }
        let mut b = [0.0; 4];
        for (k, v) in cols[1..].iter().enumerate() {
            b[k] = v
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| bad("coordinates must be numbers ≥ 0"))?;
        }
        if b[0] >= b[2] || b[1] >= b[3] {
            return Err(bad("a box needs x0 < x1 and y0 < y1"));
        }
        let file = boxed_image(root, cols[0]).map_err(bad)?;
        merge(&mut boxes, file, b);
    }
    Ok(boxes)
}

fn read_set(
    files: &[(u32, PathBuf)],
    class_names: &[String],
    size: usize,
    boxes: Option<&Boxes>,
) -> Result<ImageSet> {
    let mut set = ImageSet {
        size,
        pixels: Vec::with_capacity(files.len() * size * size * 3),
        labels: Vec::with_capacity(files.len()),
        boxes: Vec::new(),
        class_names: class_names.to_vec(),
    };
    super::check_fits("an image folder", files.len(), size)?;
    // Decoding dominates reading a folder: spread it over the cores, keep the order.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = files.len().div_ceil(threads).max(1);
    type Part = Result<Vec<(Vec<u8>, Mapping)>>;
    let decoded: Vec<Part> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(_, path)| decode_mapped(path, size))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("decoding thread"))
            .collect()
    });
    let mut decoded_all = Vec::with_capacity(files.len());
    for part in decoded {
        decoded_all.extend(part?);
    }
    for ((label, path), (pixels, mapping)) in files.iter().zip(decoded_all) {
        set.pixels.extend(pixels);
        set.labels.push(*label);
        if let Some(boxes) = boxes {
            set.boxes.push(
                boxes
                    .get(path)
                    .map_or(super::NO_BOX, |&b| mapping.map(b, size)),
            );
        }
    }
    Ok(set)
}

pub fn load(root: &Path, size: usize, test_fraction: f64, seed: u64) -> Result<Splits> {
    let boxes = read_boxes(root)?;
    let boxes = boxes.as_ref();
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
        return Ok(Splits::new(
            read_set(&train, &names, size, boxes)?,
            read_set(&test, &names, size, boxes)?,
        ));
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
    Ok(Splits::new(
        read_set(&train, &names, size, boxes)?,
        read_set(&test, &names, size, boxes)?,
    ))
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

    #[test]
    fn boxes_follow_the_resize_and_crop_and_bad_rows_are_named() {
        let dir = tempfile::tempdir().unwrap();
        for class in ["a", "b"] {
            for i in 0..2 {
                let img = image::RgbImage::from_pixel(64, 32, image::Rgb([9, 9, 9]));
                save(
                    &dir.path().join(class).join(format!("{i}.png")),
                    image::DynamicImage::ImageRgb8(img),
                );
            }
        }
        // 64×32 → 32×16 → centre 16×16 crop from x = 8: x halves, then −8.
        std::fs::write(
            dir.path().join("boxes.csv"),
            "file,x0,y0,x1,y1\na/0.png,20,4,30,10\n./a/0.png,24,2,40,8\nb/1.png,0,0,8,8\n",
        )
        .unwrap();
        let s = load(dir.path(), 16, 0.5, 1).unwrap();
        let all: Vec<[u32; 4]> = s.train.boxes.iter().chain(&s.test.boxes).copied().collect();
        assert_eq!(all.len(), 4);
        assert!(all.contains(&[2, 1, 12, 5]), "{all:?}");
        // b/1.png's box lies left of the crop: empty after clamping.
        assert!(all.contains(&[0, 0, 0, 4]), "{all:?}");
        assert_eq!(all.iter().filter(|b| **b == crate::data::NO_BOX).count(), 2);

        std::fs::write(dir.path().join("boxes.csv"), "a/9.png,1,1,2,2\n").unwrap();
        let err = load(dir.path(), 16, 0.5, 1).unwrap_err().to_string();
        assert!(
            err.contains("line 1") && err.contains("no such image"),
            "{err}"
        );
        std::fs::write(dir.path().join("boxes.csv"), "../a/0.png,1,1,2,2\n").unwrap();
        let err = load(dir.path(), 16, 0.5, 1).unwrap_err().to_string();
        assert!(err.contains("inside the folder"), "{err}");
        std::fs::write(dir.path().join("boxes.csv"), "a/0.png,5,1,2,2\n").unwrap();
        let err = load(dir.path(), 16, 0.5, 1).unwrap_err().to_string();
        assert!(err.contains("x0 < x1"), "{err}");
        std::fs::write(dir.path().join("boxes.csv"), "a/0.png,1,1,2\n").unwrap();
        let err = load(dir.path(), 16, 0.5, 1).unwrap_err().to_string();
        assert!(err.contains("expected file,x0,y0,x1,y1"), "{err}");

        // The same boxes from COCO-style JSON ([x, y, width, height]).
        std::fs::write(
            dir.path().join("boxes.json"),
            r#"{"images": [{"id": 7, "file_name": "a/0.png"}, {"id": 8, "file_name": "b/1.png"}],
                "annotations": [{"image_id": 7, "bbox": [20, 4, 10, 6]},
                                {"image_id": 7, "bbox": [24, 2, 16, 6]},
                                {"image_id": 8, "bbox": [0, 0, 8, 8]}]}"#,
        )
        .unwrap();
        let err = load(dir.path(), 16, 0.5, 1).unwrap_err().to_string();
        assert!(err.contains("both boxes.csv and boxes.json"), "{err}");
        std::fs::remove_file(dir.path().join("boxes.csv")).unwrap();
        let s = load(dir.path(), 16, 0.5, 1).unwrap();
        let coco: Vec<[u32; 4]> = s.train.boxes.iter().chain(&s.test.boxes).copied().collect();
        assert_eq!(coco, all);
        for (json, words) in [
            (
                r#"{"images": [{"id": 1, "file_name": "a/5.png"}], "annotations": []}"#,
                "images[0]: no such image",
            ),
            (
                r#"{"images": [], "annotations": [{"image_id": 3, "bbox": [0, 0, 1, 1]}]}"#,
                "image_id 3 is not among",
            ),
            (
                r#"{"images": [{"id": 1, "file_name": "a/0.png"}], "annotations": [{"image_id": 1, "bbox": [0, 0, 0, 1]}]}"#,
                "positive size",
            ),
            (r#"{"annotations": []}"#, "`images` must be a list"),
            ("{", "not JSON"),
        ] {
            std::fs::write(dir.path().join("boxes.json"), json).unwrap();
            let err = load(dir.path(), 16, 0.5, 1).unwrap_err().to_string();
            assert!(err.contains("boxes.json") && err.contains(words), "{err}");
        }
    }
}
