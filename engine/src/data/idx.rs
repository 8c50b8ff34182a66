//! MNIST and Fashion-MNIST in the IDX format (LeCun et al.; Xiao et al.
//! 2017): a big-endian header — two zero bytes, a type byte (0x08 =
//! unsigned byte), the number of dimensions, then each dimension as a u32 —
//! followed by the data. Images are 28×28 gray; we place them in 32×32 RGB
//! with a 2 px black border, as LeNet did, so every backbone sees 32 px.

use std::path::Path;

use super::{ImageSet, Splits, read_file};
use crate::{EngineError, Result};

/// The dimensions and the data of an unsigned-byte IDX file.
fn parse<'a>(bytes: &'a [u8], file: &Path, dims_wanted: usize) -> Result<(Vec<usize>, &'a [u8])> {
    let bad = |why: String| EngineError::Data(format!("{}: {why}", file.display()));
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(
            "not an IDX file (it must start with two zero bytes)".into()
        ));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "holds type 0x{:02x}; only unsigned bytes (0x08) are read",
            bytes[2]
        )));
    }
    let ndims = bytes[3] as usize;
    if ndims != dims_wanted {
        return Err(bad(format!(
            "has {ndims} dimensions, expected {dims_wanted}"
        )));
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(bad("the header is cut short".into()));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|d| {
            u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().unwrap_or_default()) as usize
        })
        .collect();
    let expected: usize = dims.iter().product();
    let data = &bytes[header..];
    if data.len() != expected {
        return Err(bad(format!(
            "the header promises {expected} bytes of data ({dims:?}) but {} follow: truncated or corrupt",
            data.len()
        )));
    }
    Ok((dims, data))
}

fn split(folder: &Path, images: &str, labels: &str) -> Result<ImageSet> {
    let image_path = folder.join(images);
    let label_path = folder.join(labels);
    let image_bytes = read_file(&image_path)?;
    let label_bytes = read_file(&label_path)?;
    let (dims, pixels) = parse(&image_bytes, &image_path, 3)?;
    let (ldims, labels) = parse(&label_bytes, &label_path, 1)?;
    let (n, h, w) = (dims[0], dims[1], dims[2]);
    if (h, w) != (28, 28) {
        return Err(EngineError::Data(format!(
            "{}: images are {h}×{w}; MNIST-style sets are 28×28",
            image_path.display()
        )));
    }
    if ldims[0] != n {
        return Err(EngineError::Data(format!(
            "{} has {} labels for the {n} images of {}",
            label_path.display(),
            ldims[0],
            image_path.display()
        )));
    }
    if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| **l > 9) {
        return Err(EngineError::Data(format!(
            "{}: label {i} is {l}; MNIST-style labels are 0–9",
            label_path.display()
        )));
    }
    let mut set = ImageSet {
        size: 32,
        pixels: vec![0; n * 32 * 32 * 3],
        labels: labels.iter().map(|&l| l as u32).collect(),
        boxes: Vec::new(),
        class_names: (0..10).map(|c| c.to_string()).collect(),
    };
    for i in 0..n {
        let src = &pixels[i * 28 * 28..(i + 1) * 28 * 28];
        let dst = &mut set.pixels[i * 32 * 32 * 3..(i + 1) * 32 * 32 * 3];
        for y in 0..28 {
            for x in 0..28 {
                let v = src[y * 28 + x];
                let o = ((y + 2) * 32 + x + 2) * 3;
                dst[o..o + 3].copy_from_slice(&[v, v, v]);
            }
        }
    }
    Ok(set)
}

pub fn load(folder: &Path) -> Result<Splits> {
    Ok(Splits::new(
        split(folder, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")?,
        split(folder, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            out.extend(d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    fn write(dir: &Path, n: u32) {
        let pixels: Vec<u8> = (0..n as usize * 784).map(|i| (i % 251) as u8).collect();
        let labels: Vec<u8> = (0..n as u8).map(|i| i % 10).collect();
        for (img, lab) in [
            ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        ] {
            std::fs::write(dir.join(img), idx(&[n, 28, 28], &pixels)).unwrap();
            std::fs::write(dir.join(lab), idx(&[n], &labels)).unwrap();
        }
    }

    #[test]
    fn reads_idx_into_padded_rgb() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 12);
        let s = load(dir.path()).unwrap();
        assert_eq!((s.train.len(), s.test.len(), s.train.size), (12, 12, 32));
        assert_eq!(s.train.labels[11], 1);
        let img = s.train.image(1);
        // The border is black; pixel (0, 0) of the digit sits at (2, 2), gray in RGB.
        assert_eq!(&img[..3], &[0, 0, 0]);
        let v = (784 % 251) as u8;
        let o = (2 * 32 + 2) * 3;
        assert_eq!(&img[o..o + 3], &[v, v, v]);
    }

    #[test]
    fn bad_files_are_named_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 5);
        let f = dir.path().join("train-images-idx3-ubyte");
        let mut bytes = std::fs::read(&f).unwrap();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&f, &bytes).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("train-images-idx3-ubyte") && err.contains("truncated"),
            "{err}"
        );

        write(dir.path(), 5);
        std::fs::write(
            dir.path().join("t10k-labels-idx1-ubyte"),
            idx(&[4], &[1, 2, 3, 4]),
        )
        .unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("has 4 labels for the 5 images"), "{err}");

        std::fs::write(
            dir.path().join("t10k-labels-idx1-ubyte"),
            b"\x1f\x8b\x08\x00gzip",
        )
        .unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not an IDX file"), "{err}");
    }
}
