//! Registered data sets: what an import asks for and what the registry keeps.

use serde::{Deserialize, Serialize};

use crate::SpecError;
use crate::spec::{DataSpec, check_dataset_name};

/// The file formats a data set can be imported from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DataFormat {
    /// One sub-folder per class of PNG/JPEG files (optional `boxes.csv`).
    Folder,
    Cifar10,
    Cifar100,
    Stl10,
    /// MNIST / Fashion-MNIST IDX files.
    Idx,
}

impl DataFormat {
    pub const ALL: [DataFormat; 5] = [
        DataFormat::Folder,
        DataFormat::Cifar10,
        DataFormat::Cifar100,
        DataFormat::Stl10,
        DataFormat::Idx,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            DataFormat::Folder => "folder",
            DataFormat::Cifar10 => "cifar10",
            DataFormat::Cifar100 => "cifar100",
            DataFormat::Stl10 => "stl10",
            DataFormat::Idx => "idx",
        }
    }

    pub fn parse(text: &str) -> Option<DataFormat> {
        DataFormat::ALL.into_iter().find(|f| f.as_str() == text)
    }
}

fn default_image_size() -> usize {
    32
}

fn default_test_fraction() -> f64 {
    0.2
}

/// A new data set: `POST /datasets` (files already on the server), the
/// query of `POST /datasets/upload` (an archive in the body), and
/// `sslab data import`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatasetImport {
    pub name: String,
    pub format: DataFormat,
    /// The folder on the server; uploads leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Image folders: the side every image is resized and centre-cropped to.
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    /// Image folders without `train/` and `test/`: the held-out share of
    /// every class.
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// CIFAR-100: the 20 superclasses.
    #[serde(default)]
    pub coarse: bool,
    /// STL-10: also read `unlabeled_X.bin` for pretraining.
    #[serde(default)]
    pub unlabeled: bool,
    /// Seeds the held-out draw of image folders.
    #[serde(default)]
    pub seed: u64,
}

impl DatasetImport {
    /// A request for `name` in `format` with the defaults.
    pub fn new(name: &str, format: DataFormat) -> Self {
        DatasetImport {
            name: name.to_string(),
            format,
            path: None,
            image_size: default_image_size(),
            test_fraction: default_test_fraction(),
            coarse: false,
            unlabeled: false,
            seed: 0,
        }
    }

    /// The spec that reads the files under `root`, checked like a run's.
    pub fn data_spec(&self, root: &str) -> Result<DataSpec, SpecError> {
        check_dataset_name(&self.name).map_err(|m| SpecError::new("name", m))?;
        let path = root.to_string();
        let data = match self.format {
            DataFormat::Folder => DataSpec::Folder {
                path,
                image_size: self.image_size,
                test_fraction: self.test_fraction,
                seed: self.seed,
            },
            DataFormat::Cifar10 => DataSpec::Cifar10 { path },
            DataFormat::Cifar100 => DataSpec::Cifar100 {
                path,
                coarse: self.coarse,
            },
            DataFormat::Stl10 => DataSpec::Stl10 {
                path,
                unlabeled: self.unlabeled,
            },
            DataFormat::Idx => DataSpec::Idx { path },
        };
        if self.unlabeled && self.format != DataFormat::Stl10 {
            return Err(SpecError::new(
                "unlabeled",
                "only STL-10 has an unlabelled split",
            ));
        }
        if self.coarse && self.format != DataFormat::Cifar100 {
            return Err(SpecError::new("coarse", "only CIFAR-100 has superclasses"));
        }
        let spec = crate::RunSpec {
            data: data.clone(),
            ..Default::default()
        };
        spec.validate().map_err(|e| {
            let field = e
                .field
                .strip_prefix("data.")
                .unwrap_or(&e.field)
                .to_string();
            SpecError::new(field, e.message)
        })?;
        Ok(data)
    }
}

/// Images of one split, in total and per class (in `Dataset::classes` order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SplitInfo {
    /// `train`, `test` or `unlabeled`.
    pub name: String,
    pub images: usize,
    /// Empty for the unlabelled split.
    pub per_class: Vec<usize>,
}

/// A registered data set as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Dataset {
    pub id: String,
    pub name: String,
    pub format: DataFormat,
    /// Where it came from: the server folder, or the uploaded archive's name.
    pub origin: String,
    /// `sha256:…` of the decoded images, labels and class names.
    pub hash: String,
    /// How runs read it.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: DataSpec,
    pub image_size: usize,
    pub classes: Vec<String>,
    pub splits: Vec<SplitInfo>,
    /// Images that have an object box (image folders with `boxes.csv`).
    pub boxed_images: usize,
    /// Files of an upload that were left out, each with why.
    pub skipped: Vec<String>,
    pub created_at: i64,
    /// The team that owns it; names are unique within a team.
    #[serde(default)]
    pub team: String,
}

impl Dataset {
    pub fn images(&self, split: &str) -> usize {
        self.splits
            .iter()
            .find(|s| s.name == split)
            .map_or(0, |s| s.images)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_data_set_is_checked_once_its_size_is_known() {
        let text = r#"{"data": {"source": "dataset", "name": "pets"},
                       "backbone": {"kind": "vit", "patch_size": 5, "width": 48, "heads": 3}}"#;
        let mut spec = crate::RunSpec::from_json(text).unwrap();
        assert_eq!(spec.data.image_size(), 0);
        if let DataSpec::Dataset { registered, .. } = &mut spec.data {
            *registered = Some(Box::new(crate::spec::RegisteredData {
                hash: "sha256:0".into(),
                data: DatasetImport::new("pets", DataFormat::Folder)
                    .data_spec("/srv/pets")
                    .unwrap(),
            }));
        }
        assert_eq!(spec.data.image_size(), 32);
        assert_eq!(spec.validate().unwrap_err().field, "backbone.patch_size");
        let err = crate::RunSpec::from_json(r#"{"data": {"source": "dataset", "name": "a/b"}}"#)
            .unwrap_err();
        assert_eq!(err.field, "data.name");
    }

    #[test]
    fn import_requests_become_checked_specs() {
        let mut req = DatasetImport::new("pets", DataFormat::Folder);
        req.image_size = 64;
        assert_eq!(
            req.data_spec("/srv/pets").unwrap(),
            DataSpec::Folder {
                path: "/srv/pets".into(),
                image_size: 64,
                test_fraction: 0.2,
                seed: 0
            }
        );
        req.image_size = 4;
        assert_eq!(req.data_spec("/x").unwrap_err().field, "image_size");
        let bad = DatasetImport::new("../etc", DataFormat::Cifar10);
        assert_eq!(bad.data_spec("/x").unwrap_err().field, "name");
        let mut stl = DatasetImport::new("stl", DataFormat::Cifar10);
        stl.unlabeled = true;
        assert_eq!(stl.data_spec("/x").unwrap_err().field, "unlabeled");
        let q: DatasetImport =
            serde_json::from_str(r#"{"name":"d","format":"stl10","unlabeled":true}"#).unwrap();
        assert!(matches!(
            q.data_spec("/d").unwrap(),
            DataSpec::Stl10 {
                unlabeled: true,
                ..
            }
        ));
    }
}
