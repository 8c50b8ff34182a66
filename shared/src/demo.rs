//! Demo bundles: what `sslab export` writes and the browser demo loads. A
//! bundle is a folder of files named by a versioned `manifest.json`, which
//! gives every file's size and SHA-256 so a page can refuse a damaged one.

use serde::{Deserialize, Serialize};

use crate::RunSpec;

/// The `format` of every manifest.
pub const FORMAT: &str = "sslab-demo";
/// The manifest version this build reads and writes.
pub const VERSION: u32 = 1;
/// The manifest's own file name in a bundle.
pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DemoKind {
    /// A déjà vu audit: two models, each image attacked with both.
    Audit,
    /// One finished run: one model's answers, no verdicts.
    Run,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] when written by this build.
    pub version: u32,
    pub kind: DemoKind,
    pub title: String,
    /// Where the models came from: an audit's or a run's id, or a folder.
    pub source: String,
    /// Side of the square images the models take, in pixels.
    pub input_size: usize,
    /// Per-channel mean and standard deviation of pixels in [0, 1].
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// The layer whose output is embedded (`backbone`, `proj.0`, …).
    pub layer: String,
    /// Neighbours that vote on a crop's label.
    pub k: usize,
    /// How the first crop of a demo image was found.
    pub crop_rule: String,
    pub models: Vec<DemoModel>,
    pub public: PublicSet,
    pub class_names: Vec<String>,
    pub images: Vec<DemoImage>,
    /// Every other file of the bundle.
    pub files: Vec<BundleFile>,
}

/// One encoder and its embedding of the public set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoModel {
    /// "A" or "B" for an audit's models; the run's name otherwise.
    pub name: String,
    pub spec: RunSpec,
    /// Encoder weights (safetensors).
    pub weights: String,
    /// "f32" or "f16".
    pub dtype: String,
    /// The public images' embeddings: `count` × `dim` little-endian f16.
    pub embeddings: String,
    pub dim: usize,
}

/// The images crops are matched against, with their labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublicSet {
    pub count: usize,
    pub labels: Vec<u32>,
    /// One PNG of every public image's thumbnail, row by row.
    pub sprite: String,
    pub thumb: usize,
    pub columns: usize,
}

/// An image the visitor can crop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoImage {
    /// A PNG of `input_size` pixels square.
    pub file: String,
    pub label: u32,
    /// `[x0, y0, x1, y1)` of the object, when the data has boxes.
    pub object: Option<[u32; 4]>,
    /// The crop the page starts with.
    pub crop: [u32; 4],
    /// The model (index into `models`) that trained on this image.
    pub target: Option<usize>,
    /// The audit's verdict: memorized, correlated, forgotten or unassociated.
    pub verdict: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleFile {
    pub path: String,
    pub bytes: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// What the models say about one crop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// One per model, in the manifest's order.
    pub models: Vec<ModelAnswer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelAnswer {
    /// Labels by their share of the k neighbours' votes, most first.
    pub top: Vec<LabelShare>,
    /// The nearest public images (indices into the public set), nearest first.
    pub neighbours: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelShare {
    pub label: u32,
    pub name: String,
    /// Votes over k, in [0, 1].
    pub share: f64,
}

impl Manifest {
    /// Refuses another format or version, and file names that could leave
    /// the bundle's folder, by name.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "not an sslab demo bundle: format is `{}`, expected `{FORMAT}`",
                self.format
            ));
        }
        if self.version != VERSION {
            return Err(format!(
                "the bundle is version {}; this build reads version {VERSION} (export it again)",
                self.version
            ));
        }
        if let Some(f) = self.files.iter().find(|f| !plain_path(&f.path)) {
            return Err(format!(
                "`{}` is not a plain relative file name (letters, digits, `.`, `_`, `-` and `/`)",
                f.path
            ));
        }
        let named = self
            .models
            .iter()
            .flat_map(|m| [&m.weights, &m.embeddings])
            .chain([&self.public.sprite])
            .chain(self.images.iter().map(|i| &i.file));
        for path in named {
            if !self.files.iter().any(|f| &f.path == path) {
                return Err(format!("`{path}` is named but not listed in `files`"));
            }
        }
        Ok(())
    }

    /// Files and their sizes, summed.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// A published demo, as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Demo {
    /// The demo's name in its public address, `/demo/{slug}`.
    pub slug: String,
    #[serde(default)]
    pub team: String,
    pub title: String,
    pub kind: DemoKind,
    /// Where the models came from (an audit, a run, or an upload).
    pub source: String,
    /// The bundle's files, summed.
    pub bytes: u64,
    pub models: usize,
    pub images: usize,
    #[serde(default)]
    pub created_by: Option<String>,
    pub created_at: i64,
}

/// What an export job reads: a finished run or audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ExportSource {
    Run,
    Audit,
}

impl ExportSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportSource::Run => "run",
            ExportSource::Audit => "audit",
        }
    }
}

/// How to export: the body of `POST /runs/{id}/export` and
/// `POST /audits/{id}/export` (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct ExportOptions {
    /// Weights as f16: half the size.
    pub f16: bool,
    /// A run's layer to embed at (default `backbone`); an audit uses its own.
    pub layer: Option<String>,
}

/// An export job: a demo bundle written from a finished run or audit, then
/// published with `POST /demos {"export": id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Export {
    pub id: String,
    pub source: ExportSource,
    pub source_id: String,
    pub options: ExportOptions,
    pub status: crate::api::RunStatus,
    pub error: Option<String>,
    /// The bundle's size once written.
    pub bytes: u64,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    #[serde(default)]
    pub team: String,
    #[serde(default)]
    pub created_by: Option<String>,
}

/// The body of `POST /demos` that publishes an export job's bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PublishExport {
    pub export: String,
}

/// `a/b.png`: relative, no `..`, no empty part, plain characters only.
fn plain_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 200
        && path.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        })
}

#[cfg(test)]
mod tests {
    use super::plain_path;

    #[test]
    fn only_plain_relative_paths_pass() {
        for ok in ["manifest.json", "images/3.png", "a-b_c.f16"] {
            assert!(plain_path(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "a\\b",
            "a b",
            "./a",
        ] {
            assert!(!plain_path(bad), "{bad}");
        }
    }
}
