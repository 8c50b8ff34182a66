//! CIFAR-10 and CIFAR-100, binary version (Krizhevsky 2009; the files of
//! www.cs.toronto.edu/~kriz/cifar.html): fixed-size records of label bytes
//! followed by 3072 pixel bytes, the red, green and blue 32×32 planes.

use std::path::Path;

use super::{ImageSet, Splits, read_file};
use crate::{EngineError, Result};

const PIXELS: usize = 3 * 32 * 32;

const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Which label a record carries and where.
#[derive(Debug, Clone, Copy)]
pub enum Labels {
    /// One label byte (CIFAR-10).
    Ten,
    /// Coarse then fine label byte (CIFAR-100); which one to keep.
    Hundred { coarse: bool },
}

impl Labels {
    fn label_bytes(self) -> usize {
        match self {
            Labels::Ten => 1,
            Labels::Hundred { .. } => 2,
        }
    }

    fn classes(self) -> usize {
        match self {
            Labels::Ten => 10,
            Labels::Hundred { coarse: true } => 20,
            Labels::Hundred { coarse: false } => 100,
        }
    }
}

/// Parses the records of one file into `set`; the error names the file and
/// the record.
fn parse(bytes: &[u8], file: &Path, labels: Labels, set: &mut ImageSet) -> Result<()> {
    let record = labels.label_bytes() + PIXELS;
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        return Err(EngineError::Data(format!(
            "{} is {} bytes, not a whole number of {record}-byte records: truncated or not a CIFAR binary file",
            file.display(),
            bytes.len()
        )));
    }
    for (i, r) in bytes.chunks_exact(record).enumerate() {
        let label = match labels {
            Labels::Ten => r[0],
            Labels::Hundred { coarse: true } => r[0],
            Labels::Hundred { coarse: false } => r[1],
        } as usize;
        if label >= labels.classes() {
            return Err(EngineError::Data(format!(
                "{}: record {i} has label {label}, outside 0–{}: corrupt, or the wrong CIFAR version",
                file.display(),
                labels.classes() - 1
            )));
        }
        set.labels.push(label as u32);
        let planes = &r[labels.label_bytes()..];
        // Planar R, G, B → interleaved RGB.
        for p in 0..32 * 32 {
            set.pixels
                .extend_from_slice(&[planes[p], planes[1024 + p], planes[2048 + p]]);
        }
    }
    Ok(())
}

fn empty_set(labels: Labels) -> ImageSet {
    let class_names = match labels {
        Labels::Ten => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
        other => (0..other.classes()).map(|c| format!("class {c}")).collect(),
    };
    ImageSet {
        size: 32,
        pixels: Vec::new(),
        labels: Vec::new(),
        boxes: Vec::new(),
        class_names,
    }
}

/// Reads the training and test files of `folder`.
pub fn load(folder: &Path, labels: Labels) -> Result<Splits> {
    let (train_files, test_files): (Vec<String>, Vec<String>) = match labels {
        Labels::Ten => (
            (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            vec!["test_batch.bin".into()],
        ),
        Labels::Hundred { .. } => (vec!["train.bin".into()], vec!["test.bin".into()]),
    };
    let mut train = empty_set(labels);
    for f in &train_files {
        let path = folder.join(f);
        parse(&read_file(&path)?, &path, labels, &mut train)?;
    }
    let mut test = empty_set(labels);
    for f in &test_files {
        let path = folder.join(f);
        parse(&read_file(&path)?, &path, labels, &mut test)?;
    }
    Ok(Splits::new(train, test))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CIFAR-10 record: label, then the R, G and B planes.
    fn record(label: u8, rgb: [u8; 3]) -> Vec<u8> {
        let mut r = vec![label];
        for c in rgb {
            r.extend(std::iter::repeat_n(c, 1024));
        }
        r
    }

    fn write_cifar10(dir: &Path, per_file: usize) {
        for f in (1..=5)
            .map(|i| format!("data_batch_{i}.bin"))
            .chain(["test_batch.bin".to_string()])
        {
            let bytes: Vec<u8> = (0..per_file)
                .flat_map(|i| record((i % 10) as u8, [10, 20, i as u8]))
                .collect();
            std::fs::write(dir.join(f), bytes).unwrap();
        }
    }

    #[test]
    fn reads_cifar10_records_in_order() {
        let dir = tempfile::tempdir().unwrap();
        write_cifar10(dir.path(), 4);
        let s = load(dir.path(), Labels::Ten).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (20, 4));
        assert_eq!(s.train.labels[..4], [0, 1, 2, 3]);
        assert_eq!(s.train.class_names[3], "cat");
        // Planes become interleaved pixels.
        assert_eq!(&s.train.image(3)[..6], &[10, 20, 3, 10, 20, 3]);
        assert_eq!(s.train.pixels.len(), 20 * 32 * 32 * 3);
    }

    #[test]
    fn reads_cifar100_fine_or_coarse() {
        let dir = tempfile::tempdir().unwrap();
        let rec = |coarse: u8, fine: u8| {
            let mut r = vec![coarse, fine];
            r.extend(std::iter::repeat_n(7u8, PIXELS));
            r
        };
        std::fs::write(
            dir.path().join("train.bin"),
            [rec(3, 42), rec(19, 99)].concat(),
        )
        .unwrap();
        std::fs::write(dir.path().join("test.bin"), rec(0, 0)).unwrap();
        let fine = load(dir.path(), Labels::Hundred { coarse: false }).unwrap();
        assert_eq!(fine.train.labels, [42, 99]);
        assert_eq!(fine.train.classes(), 100);
        let coarse = load(dir.path(), Labels::Hundred { coarse: true }).unwrap();
        assert_eq!(coarse.train.labels, [3, 19]);
    }

    #[test]
    fn truncated_corrupt_and_missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        write_cifar10(dir.path(), 3);
        let f = dir.path().join("data_batch_2.bin");
        let mut bytes = std::fs::read(&f).unwrap();
        bytes.truncate(bytes.len() - 100);
        std::fs::write(&f, &bytes).unwrap();
        let err = load(dir.path(), Labels::Ten).unwrap_err().to_string();
        assert!(
            err.contains("data_batch_2.bin") && err.contains("truncated"),
            "{err}"
        );

        write_cifar10(dir.path(), 3);
        let mut bytes = std::fs::read(dir.path().join("test_batch.bin")).unwrap();
        bytes[3073] = 12;
        std::fs::write(dir.path().join("test_batch.bin"), &bytes).unwrap();
        let err = load(dir.path(), Labels::Ten).unwrap_err().to_string();
        assert!(
            err.contains("test_batch.bin: record 1 has label 12"),
            "{err}"
        );

        std::fs::remove_file(dir.path().join("data_batch_4.bin")).unwrap();
        let err = load(dir.path(), Labels::Ten).unwrap_err().to_string();
        assert!(err.contains("data_batch_4.bin"), "{err}");
    }
}
