//! Files jobs leave behind, under `DATA_DIR/artifacts/`: `runs/ID/`,
//! `audits/ID/`, export jobs' bundles, `exports/ID/`, and published demos'
//! bundles, `demos/SLUG/`.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Artifacts {
    root: PathBuf,
}

impl Artifacts {
    pub fn new(data_dir: &Path) -> Self {
        Artifacts {
            root: data_dir.join("artifacts"),
        }
    }

    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.root.join("runs").join(id)
    }

    /// An audit's two checkpoints and its `examples.csv`.
    pub fn audit_dir(&self, id: &str) -> PathBuf {
        self.root.join("audits").join(id)
    }

    /// A published demo's bundle files.
    pub fn demo_dir(&self, slug: &str) -> PathBuf {
        self.root.join("demos").join(slug)
    }

    /// An export job's bundle.
    pub fn export_dir(&self, id: &str) -> PathBuf {
        self.root.join("exports").join(id)
    }

    pub fn checkpoint(&self, id: &str) -> PathBuf {
        self.run_dir(id).join("checkpoint.safetensors")
    }
}
