//! The data set registry: data sets are imported from a folder on the
//! server or from an uploaded archive, read whole once (every image decoded,
//! every label checked) and only then recorded with their splits, class
//! counts, content hash and a sheet of sample thumbnails. A failed import
//! leaves nothing behind: files are unpacked into a scratch folder that is
//! renamed into place only when the row is about to be written.

use std::path::{Path, PathBuf};

use sslab_engine::data::{self, Splits};
use sslab_shared::dataset::{DataFormat, Dataset, DatasetImport, SplitInfo};
use sslab_shared::spec::{DataSpec, RegisteredData};
use sslab_shared::{RunSpec, SpecError};

use crate::archive;
use crate::store::{Owner, Store, StoreError, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The request names something wrong; `field` says what.
    #[error("{0}")]
    Invalid(SpecError),
    /// The files cannot be used as a data set of that format.
    #[error("{0}")]
    Data(String),
    #[error("a data set named `{0}` is already registered")]
    Exists(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(String),
}

pub type Result<T> = std::result::Result<T, RegistryError>;

fn invalid<T>(field: &str, msg: impl Into<String>) -> Result<T> {
    Err(RegistryError::Invalid(SpecError::new(field, msg)))
}

/// What uploads may weigh.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of one uploaded archive.
    pub max_upload: u64,
    /// Bytes an archive may unpack to.
    pub max_unpacked: u64,
    /// Files and folders in one archive.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_upload: 4 << 30,
            max_unpacked: 16 << 30,
            max_entries: 2_000_000,
        }
    }
}

#[derive(Clone)]
pub struct Registry {
    store: Store,
    /// Where data set folders are kept for good (with S3, beside the disk).
    artifacts: crate::artifacts::Artifacts,
    /// `DATA_DIR/datasets`: one folder per data set (thumbnails, and the
    /// files of uploads).
    root: PathBuf,
    pub limits: Limits,
}

/// Samples per class and classes on a data set's thumbnail sheet.
const SHEET: (usize, usize, usize) = (8, 10, 32);

impl Registry {
    pub fn new(store: Store, data_dir: &Path, limits: Limits) -> Self {
        Registry {
            store,
            artifacts: crate::artifacts::Artifacts::new(data_dir),
            root: data_dir.join("datasets"),
            limits,
        }
    }

    /// The registry, keeping data set folders in `artifacts`' store too.
    pub fn keeping_in(mut self, artifacts: &crate::artifacts::Artifacts) -> Self {
        self.artifacts = artifacts.clone();
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where a registered data set's thumbnails (and an upload's files) are.
    pub fn folder(&self, d: &Dataset) -> PathBuf {
        self.root.join(&d.id)
    }

    /// The thumbnail sheet of a registered data set, fetched from the
    /// artifact store when this disk lacks it.
    pub async fn samples_path(&self, d: &Dataset) -> anyhow::Result<PathBuf> {
        let path = self.folder(d).join("samples.png");
        self.artifacts.fetch(&path).await?;
        Ok(path)
    }

    /// A scratch file for an upload on the registry's disk, so that the
    /// rename into place does not cross file systems.
    pub fn scratch(&self) -> Result<PathBuf> {
        let dir = self.root.join(".incoming");
        std::fs::create_dir_all(&dir)
            .map_err(|e| RegistryError::Io(format!("cannot create {}: {e}", dir.display())))?;
        Ok(dir.join(uuid::Uuid::new_v4().simple().to_string()))
    }

    /// A usable name no data set of the team has yet.
    pub async fn check_free(&self, team: &str, name: &str) -> Result<()> {
        sslab_shared::spec::check_dataset_name(name)
            .map_err(|m| RegistryError::Invalid(SpecError::new("name", m)))?;
        if self.store.dataset(team, name).await?.is_some() {
            return Err(RegistryError::Exists(name.to_string()));
        }
        Ok(())
    }

    /// Registers files that stay where they are on this machine.
    pub async fn import_path(&self, req: &DatasetImport, owner: &Owner) -> Result<Dataset> {
        self.check_free(&owner.team, &req.name).await?;
        let Some(path) = req.path.as_deref().filter(|p| !p.trim().is_empty()) else {
            return invalid("path", "name the folder on the server that holds the files");
        };
        let dir = std::fs::canonicalize(path).map_err(|e| {
            RegistryError::Invalid(SpecError::new("path", format!("cannot open {path}: {e}")))
        })?;
        if !dir.is_dir() {
            return invalid("path", format!("{} is not a folder", dir.display()));
        }
        let spec = req
            .data_spec(&dir.to_string_lossy())
            .map_err(RegistryError::Invalid)?;
        let id = new_id();
        let (splits, hash) = read(spec.clone()).await?;
        let folder = self.root.join(&id);
        let origin = format!("folder {}", dir.display());
        let d = describe(id, req, spec, origin, &splits, hash, Vec::new());
        self.record(d, &splits, &folder, owner).await
    }

    /// Unpacks `archive` (tar, tar.gz or zip) and registers its files. The
    /// archive file is removed either way.
    pub async fn import_archive(
        &self,
        req: &DatasetImport,
        archive: &Path,
        origin: String,
        owner: &Owner,
    ) -> Result<Dataset> {
        let result = self.unpack_and_record(req, archive, origin, owner).await;
        let _ = std::fs::remove_file(archive);
        result
    }

    async fn unpack_and_record(
        &self,
        req: &DatasetImport,
        archive: &Path,
        origin: String,
        owner: &Owner,
    ) -> Result<Dataset> {
        self.check_free(&owner.team, &req.name).await?;
        if req.path.is_some() {
            return invalid("path", "an upload carries its files; leave `path` out");
        }
        // Checked before unpacking: a bad option should not cost an unpack.
        req.data_spec("/").map_err(RegistryError::Invalid)?;
        let id = new_id();
        let scratch = archive.with_extension("unpacked");
        let folder = self.root.join(&id);
        let result = async {
            std::fs::create_dir_all(&scratch).map_err(|e| {
                RegistryError::Io(format!("cannot create {}: {e}", scratch.display()))
            })?;
            let limits = archive::Limits {
                max_bytes: self.limits.max_unpacked,
                max_entries: self.limits.max_entries,
            };
            let (format, archive_path, scratch_path) =
                (req.format, archive.to_path_buf(), scratch.clone());
            let unpacked = tokio::task::spawn_blocking(move || {
                archive::unpack(&archive_path, &scratch_path, limits, &|p| keeps(format, p))
            })
            .await
            .map_err(|e| RegistryError::Io(format!("unpacking stopped: {e}")))?
            .map_err(|e| match e {
                archive::ArchiveError::Refused(m) => RegistryError::Data(m),
                // A full disk is the server's trouble, not the archive's.
                io @ archive::ArchiveError::Io { .. } => RegistryError::Io(io.to_string()),
            })?;
            let root = data_root(&scratch);
            let spec = req
                .data_spec(&root.to_string_lossy())
                .map_err(RegistryError::Invalid)?;
            let (splits, hash) = read(spec).await?;
            // The files move once, now that they are known to be good.
            std::fs::create_dir_all(&folder).map_err(|e| {
                RegistryError::Io(format!("cannot create {}: {e}", folder.display()))
            })?;
            let files = folder.join("files");
            std::fs::rename(&scratch, &files).map_err(|e| {
                RegistryError::Io(format!(
                    "cannot move the files into {}: {e}",
                    files.display()
                ))
            })?;
            // Runs keep this path: make it absolute whatever `--data-dir` was.
            let files = std::fs::canonicalize(&files)
                .map_err(|e| RegistryError::Io(format!("cannot open {}: {e}", files.display())))?;
            let rel = root.strip_prefix(&scratch).unwrap_or(Path::new(""));
            let spec = req
                .data_spec(&files.join(rel).to_string_lossy())
                .map_err(RegistryError::Invalid)?;
            let d = describe(id, req, spec, origin, &splits, hash, unpacked.skipped);
            self.record(d, &splits, &folder, owner).await
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&scratch);
            let _ = std::fs::remove_dir_all(&folder);
        }
        // Messages name files as they are in the archive, not where it was unpacked.
        let inside = format!("{}/", scratch.display());
        result.map_err(|e| match e {
            RegistryError::Data(m) => RegistryError::Data(m.replace(&inside, "")),
            RegistryError::Invalid(e) => {
                RegistryError::Invalid(SpecError::new(e.field, e.message.replace(&inside, "")))
            }
            other => other,
        })
    }

    /// Writes the thumbnails and the row; the folder is removed if either fails.
    async fn record(
        &self,
        mut d: Dataset,
        splits: &Splits,
        folder: &Path,
        owner: &Owner,
    ) -> Result<Dataset> {
        d.team = owner.team.clone();
        let written = async {
            let (per_class, classes, side) = SHEET;
            let sheet = data::sample_grid(&splits.train, per_class, classes, side)
                .map_err(|e| RegistryError::Io(e.to_string()))?;
            std::fs::create_dir_all(folder)
                .and_then(|_| std::fs::write(folder.join("samples.png"), sheet))
                .map_err(|e| {
                    RegistryError::Io(format!("cannot write {}: {e}", folder.display()))
                })?;
            // Registered only once the store holds its files.
            self.artifacts
                .persist_dir(folder)
                .await
                .map_err(|e| RegistryError::Io(format!("{e:#}")))?;
            if !self.store.insert_dataset(&d, owner).await? {
                return Err(RegistryError::Exists(d.name.clone()));
            }
            Ok(())
        }
        .await;
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(folder);
            let _ = self.artifacts.forget_dir(folder).await;
            return Err(e);
        }
        tracing::info!(name = %d.name, hash = %d.hash, "data set registered");
        Ok(d)
    }

    /// Fills in what a run's registered data set names stand for, and checks
    /// the spec again now that image sizes are known. `within` prefixes the
    /// fields errors name: where the run sits in a larger spec (`base.`, `run.`).
    /// Names are looked up among `team`'s data sets.
    pub async fn resolve(&self, spec: &mut RunSpec, within: &str, team: &str) -> Result<()> {
        let resolved = async {
            self.resolve_data(&mut spec.data, "data", team).await?;
            if let Some(d) = &mut spec.eval.data {
                self.resolve_data(d, "eval.data", team).await?;
            }
            spec.validate().map_err(RegistryError::Invalid)
        }
        .await;
        resolved.map_err(|e| match e {
            RegistryError::Invalid(e) => {
                RegistryError::Invalid(SpecError::new(format!("{within}{}", e.field), e.message))
            }
            other => other,
        })
    }

    /// Fills in one data spec that may name a registered data set; `field`
    /// names it in errors.
    pub async fn resolve_data(&self, data: &mut DataSpec, field: &str, team: &str) -> Result<()> {
        let DataSpec::Dataset { name, registered } = data else {
            return Ok(());
        };
        let Some(d) = self.store.dataset(team, name).await? else {
            return invalid(
                &format!("{field}.name"),
                format!(
                    "no data set named `{name}` is registered (GET /api/v1/datasets lists them)"
                ),
            );
        };
        *registered = Some(Box::new(RegisteredData {
            hash: d.hash,
            data: d.data,
        }));
        Ok(())
    }
}

/// Why a server folder named over the API was refused.
#[derive(Debug)]
pub enum PathRefused {
    /// Not inside the `--data-root` folders (or none are set): nothing
    /// about the file system outside them is revealed.
    Outside(String),
    /// Inside them, but it cannot be opened.
    Unreadable(String),
}

/// Where server folders may be read from over the API: `path`, with every
/// link followed, inside one of `roots` (`sslab serve --data-root`).
pub fn under_roots(path: &str, roots: &[PathBuf]) -> std::result::Result<PathBuf, PathRefused> {
    if roots.is_empty() {
        return Err(PathRefused::Outside(
            "this server reads no folders named over the API; an operator can allow some \
             with `sslab serve --data-root DIR`, or register data with an upload or \
             `sslab data import`"
                .into(),
        ));
    }
    let given = Path::new(path);
    if given
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(PathRefused::Outside(format!(
            "`{path}` must not contain `..`"
        )));
    }
    let outside = || {
        PathRefused::Outside(format!(
            "`{path}` is not inside a folder this server reads (its --data-root list); a link out of one counts as outside"
        ))
    };
    // Checked before the file system is touched, and again once links are followed.
    if !roots.iter().any(|root| given.starts_with(root)) {
        return Err(outside());
    }
    let real = std::fs::canonicalize(given)
        .map_err(|e| PathRefused::Unreadable(format!("cannot open {path}: {e}")))?;
    if roots.iter().any(|root| real.starts_with(root)) {
        Ok(real)
    } else {
        Err(outside())
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Which unpacked files a format reads; the rest is reported as skipped.
fn keeps(format: DataFormat, path: &Path) -> std::result::Result<(), String> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    match format {
        DataFormat::Folder => {
            if ["png", "jpg", "jpeg"].contains(&ext.as_str())
                || name == "boxes.csv"
                || name == "boxes.json"
            {
                Ok(())
            } else {
                Err("not a PNG or JPEG image".into())
            }
        }
        // The binary formats read fixed names; anything else is not theirs.
        DataFormat::Cifar10 | DataFormat::Cifar100 => (ext == "bin")
            .then_some(())
            .ok_or_else(|| "not a CIFAR .bin file".into()),
        DataFormat::Stl10 => (ext == "bin")
            .then_some(())
            .ok_or_else(|| "not an STL-10 .bin file".into()),
        DataFormat::Idx => name
            .contains("-ubyte")
            .then_some(())
            .ok_or_else(|| "not an IDX file (…-ubyte)".into()),
    }
}

/// An archive of one folder (`pets/cat/…`) is read from inside it.
fn data_root(dir: &Path) -> PathBuf {
    let mut root = dir.to_path_buf();
    loop {
        let entries: Vec<PathBuf> = match std::fs::read_dir(&root) {
            Ok(r) => r.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
            Err(_) => return root,
        };
        match entries.as_slice() {
            // A lone `train/` is a split whose `test/` is missing: the reader says so.
            [only] if only.is_dir() && !only.ends_with("train") && !only.ends_with("test") => {
                root = only.clone()
            }
            _ => return root,
        }
    }
}

/// Reads every file of the data set and hashes its content, on a blocking
/// thread.
async fn read(spec: DataSpec) -> Result<(Splits, String)> {
    tokio::task::spawn_blocking(move || {
        let splits = data::load(&spec).map_err(|e| RegistryError::Data(e.to_string()))?;
        if splits.train.is_empty() {
            return Err(RegistryError::Data(
                "the training split has no images".into(),
            ));
        }
        let hash = data::content_hash(&splits);
        Ok((splits, hash))
    })
    .await
    .map_err(|e| RegistryError::Io(format!("reading the data set stopped: {e}")))?
}

fn split_info(name: &str, set: &data::ImageSet) -> SplitInfo {
    let mut per_class = vec![0; set.classes()];
    for &l in &set.labels {
        if let Some(c) = per_class.get_mut(l as usize) {
            *c += 1;
        }
    }
    SplitInfo {
        name: name.into(),
        images: set.len(),
        per_class,
    }
}

fn describe(
    id: String,
    req: &DatasetImport,
    spec: DataSpec,
    origin: String,
    splits: &Splits,
    hash: String,
    skipped: Vec<String>,
) -> Dataset {
    let mut list = vec![
        split_info("train", &splits.train),
        split_info("test", &splits.test),
    ];
    if let Some(u) = &splits.unlabeled {
        list.push(SplitInfo {
            name: "unlabeled".into(),
            images: u.len(),
            per_class: Vec::new(),
        });
    }
    let boxed = |s: &data::ImageSet| s.boxes.iter().filter(|b| **b != data::NO_BOX).count();
    Dataset {
        id,
        name: req.name.clone(),
        format: req.format,
        origin,
        hash,
        image_size: spec.image_size(),
        data: spec,
        classes: splits.train.class_names.clone(),
        splits: list,
        boxed_images: boxed(&splits.train) + boxed(&splits.test),
        skipped,
        created_at: now_ms(),
        // Set when it is recorded for its owner.
        team: String::new(),
    }
}
