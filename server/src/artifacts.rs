//! Files jobs leave behind: `runs/ID/`, `audits/ID/`, export jobs' bundles,
//! `exports/ID/`, and published demos' bundles, `demos/SLUG/`.
//!
//! Jobs write into a local folder and read from it. Where the files are
//! kept for good is `sslab serve --artifacts`: `file:///path` (default:
//! `DATA_DIR/artifacts`, the local folder itself, so nothing is copied) or
//! `s3://bucket/prefix` through the `object_store` crate. With S3 the local
//! folder is a cache that may be lost: a written file is stored
//! (`persist`) before anything depends on it, and a file to read is
//! fetched (`fetch`) when the cache lacks it, so a server on a fresh disk
//! serves everything the store holds. The cache never holds a file the
//! store does not. Registered data sets' folders (`DATA_DIR/datasets/ID/`:
//! an upload's files and the thumbnail sheet) are kept the same way, under
//! `datasets/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow};
use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

#[derive(Debug, Clone)]
pub struct Artifacts {
    root: PathBuf,
    /// `DATA_DIR/datasets`, and its canonical form (the paths runs record).
    datasets: (PathBuf, PathBuf),
    remote: Option<Arc<Remote>>,
}

#[derive(Debug)]
struct Remote {
    store: Arc<dyn ObjectStore>,
    url: String,
}

impl Artifacts {
    /// The plain local folder `DATA_DIR/artifacts`.
    pub fn new(data_dir: &Path) -> Self {
        let datasets = data_dir.join("datasets");
        Artifacts {
            root: data_dir.join("artifacts"),
            datasets: (datasets.clone(), datasets),
            remote: None,
        }
    }

    /// The store `url` names (`file:///path` or `s3://bucket/prefix`), or
    /// the local folder without one. S3 takes the usual AWS environment
    /// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`, `AWS_ENDPOINT` for another S3-compatible server,
    /// `AWS_ALLOW_HTTP=true` for one on plain HTTP).
    pub fn open(data_dir: &Path, url: Option<&str>) -> anyhow::Result<Self> {
        let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(Self::new(data_dir));
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(anyhow!(
                    "--artifacts {url}: a file URL names an absolute folder, file:///path"
                ));
            }
            return Ok(Artifacts {
                root: PathBuf::from(path),
                ..Self::new(data_dir)
            });
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(anyhow!(
                "--artifacts {url}: use file:///path or s3://bucket/prefix"
            ));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(anyhow!("--artifacts {url}: the bucket is missing"));
        }
        let s3 = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            // A store that is away is retried for a minute, however many
            // tries that takes, before a job or request fails on it.
            .with_retry(object_store::RetryConfig {
                max_retries: 1000,
                retry_timeout: std::time::Duration::from_secs(60),
                ..Default::default()
            })
            .build()
            .with_context(|| format!("--artifacts {url}"))?;
        let store: Arc<dyn ObjectStore> = match prefix.trim_matches('/') {
            "" => Arc::new(s3),
            p => Arc::new(object_store::prefix::PrefixStore::new(s3, p)),
        };
        let datasets = data_dir.join("datasets");
        std::fs::create_dir_all(&datasets)
            .with_context(|| format!("creating {}", datasets.display()))?;
        let canonical = std::fs::canonicalize(&datasets)
            .with_context(|| format!("opening {}", datasets.display()))?;
        Ok(Artifacts {
            root: data_dir.join("artifacts"),
            datasets: (datasets, canonical),
            remote: Some(Arc::new(Remote {
                store,
                url: url.to_string(),
            })),
        })
    }

    /// Where the files are kept, for logs.
    pub fn location(&self) -> String {
        match &self.remote {
            Some(r) => format!("{} (cache {})", r.url, self.root.display()),
            None => self.root.display().to_string(),
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

    /// A decoder job's sample grids.
    pub fn decoder_dir(&self, id: &str) -> PathBuf {
        self.root.join("decoders").join(id)
    }

    pub fn checkpoint(&self, id: &str) -> PathBuf {
        self.run_dir(id).join("checkpoint.safetensors")
    }

    /// The store's name for a file of the local folder or of a data set's.
    fn key(&self, path: &Path) -> anyhow::Result<Key> {
        let (prefix, rel) = if let Ok(rel) = path.strip_prefix(&self.root) {
            ("", rel)
        } else if let Some(rel) = [&self.datasets.0, &self.datasets.1]
            .into_iter()
            .find_map(|d| path.strip_prefix(d).ok())
        {
            ("datasets/", rel)
        } else {
            return Err(anyhow!("{} is outside the artifact folder", path.display()));
        };
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        Ok(Key::from(format!("{prefix}{}", parts.join("/"))))
    }

    /// Where a stored file lives in the local folders.
    fn path_of(&self, key: &Key) -> PathBuf {
        let mut parts = key.parts().peekable();
        let base = match parts.peek() {
            Some(p) if p.as_ref() == "datasets" => {
                parts.next();
                self.datasets.0.clone()
            }
            _ => self.root.clone(),
        };
        parts.fold(base, |p, part| p.join(part.as_ref()))
    }

    /// Makes sure the registered data set `data` names is on this disk,
    /// fetching its folder from the store when the cache lacks it (a data
    /// set that reads a server folder of its own is that folder's).
    pub async fn need_data(&self, data: &sslab_shared::spec::DataSpec) -> anyhow::Result<()> {
        let sslab_shared::spec::DataSpec::Dataset {
            registered: Some(r),
            ..
        } = data
        else {
            return Ok(());
        };
        let Some(path) = r.data.server_path().map(Path::new) else {
            return Ok(());
        };
        if self.remote.is_none() || path.exists() {
            return Ok(());
        }
        let Some((base, rel)) = [&self.datasets.0, &self.datasets.1]
            .into_iter()
            .find_map(|d| path.strip_prefix(d).ok().map(|rel| (d, rel)))
        else {
            return Ok(());
        };
        let Some(id) = rel.components().next() else {
            return Ok(());
        };
        self.fetch_dir(&base.join(id)).await?;
        if !path.exists() {
            return Err(anyhow!(
                "the files of the registered data set are neither at {} nor in the artifact store",
                path.display()
            ));
        }
        Ok(())
    }

    /// Stores a written file for good (a multipart upload for big ones,
    /// each request retried by the client); nothing to do for a local
    /// store. On failure the local copy goes too, so that nothing reads a
    /// file the store lacks.
    pub async fn persist(&self, path: &Path) -> anyhow::Result<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let key = self.key(path)?;
        let result = upload(remote, path, &key).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(path).await;
        }
        result.with_context(|| format!("cannot store {key} in {}", remote.url))
    }

    /// `persist` for every file under `dir`.
    pub async fn persist_dir(&self, dir: &Path) -> anyhow::Result<()> {
        if self.remote.is_none() {
            return Ok(());
        }
        for file in files_under(dir).await? {
            self.persist(&file).await?;
        }
        Ok(())
    }

    /// Makes sure the local folder holds `path`, fetching it from the store
    /// when it does not; `false` when the store has no such file either.
    pub async fn fetch(&self, path: &Path) -> anyhow::Result<bool> {
        if tokio::fs::metadata(path).await.is_ok_and(|m| m.is_file()) {
            return Ok(true);
        }
        let Some(remote) = &self.remote else {
            return Ok(false);
        };
        let key = self.key(path)?;
        match download(remote, &key, path).await {
            Ok(()) => Ok(true),
            Err(e)
                if e.downcast_ref::<object_store::Error>()
                    .is_some_and(|e| matches!(e, object_store::Error::NotFound { .. })) =>
            {
                Ok(false)
            }
            Err(e) => Err(e.context(format!("cannot fetch {key} from {}", remote.url))),
        }
    }

    /// `fetch` for a file a job cannot do without: its absence is an error
    /// that names it.
    pub async fn need(&self, path: &Path) -> anyhow::Result<()> {
        if self.fetch(path).await? {
            return Ok(());
        }
        let key = self.key(path)?;
        Err(anyhow!("{key} is not in the artifact store"))
    }

    /// `fetch` for every stored file under `dir`.
    pub async fn fetch_dir(&self, dir: &Path) -> anyhow::Result<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let prefix = self.key(dir)?;
        let mut listing = remote.store.list(Some(&prefix));
        let mut keys = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.with_context(|| format!("cannot list {prefix} in {}", remote.url))?;
            keys.push(meta.location);
        }
        for key in keys {
            self.fetch(&self.path_of(&key)).await?;
        }
        Ok(())
    }

    /// The size of a kept file, without fetching it; `None` when absent.
    pub async fn size(&self, path: &Path) -> anyhow::Result<Option<u64>> {
        if let Ok(m) = tokio::fs::metadata(path).await
            && m.is_file()
        {
            return Ok(Some(m.len()));
        }
        let Some(remote) = &self.remote else {
            return Ok(None);
        };
        match remote.store.head(&self.key(path)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!("cannot reach {}", remote.url))),
        }
    }

    /// The names of the files kept directly in `dir`.
    pub async fn list(&self, dir: &Path) -> anyhow::Result<Vec<String>> {
        let mut names = Vec::new();
        match &self.remote {
            Some(remote) => {
                let prefix = self.key(dir)?;
                let listing = remote
                    .store
                    .list_with_delimiter(Some(&prefix))
                    .await
                    .with_context(|| format!("cannot list {prefix} in {}", remote.url))?;
                for meta in listing.objects {
                    if let Some(name) = meta.location.filename() {
                        names.push(name.to_string());
                    }
                }
            }
            None => {
                let mut entries = match tokio::fs::read_dir(dir).await {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
                    Err(e) => return Err(e.into()),
                };
                while let Some(e) = entries.next_entry().await? {
                    if e.file_type().await?.is_file() {
                        names.push(e.file_name().to_string_lossy().into_owned());
                    }
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Removes one kept file, here and in the store.
    pub async fn remove(&self, path: &Path) -> anyhow::Result<()> {
        match tokio::fs::remove_file(path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(remote) = &self.remote {
            match remote.store.delete(&self.key(path)?).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Removes every stored file under `dir` from the store (the local
    /// folder is the caller's: deletes move it aside first). A folder
    /// outside the artifact folder (a data set's) has nothing stored.
    pub async fn forget_dir(&self, dir: &Path) -> anyhow::Result<()> {
        let (Some(remote), Ok(prefix)) = (&self.remote, self.key(dir)) else {
            return Ok(());
        };
        let listing = remote
            .store
            .list(Some(&prefix))
            .map(|m| m.map(|m| m.location))
            .boxed();
        let mut deleted = remote.store.delete_stream(listing);
        while let Some(done) = deleted.next().await {
            match done {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("cannot delete {prefix} in {}", remote.url)));
                }
            }
        }
        Ok(())
    }
}

async fn upload(remote: &Remote, path: &Path, key: &Key) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let mut writer = object_store::buffered::BufWriter::new(remote.store.clone(), key.clone());
    if let Err(e) = tokio::io::copy(&mut file, &mut writer).await {
        let _ = writer.abort().await;
        return Err(e.into());
    }
    writer.shutdown().await?;
    Ok(())
}

/// Streams a stored file into `to` through a partial file, so that a broken
/// download leaves nothing behind.
async fn download(remote: &Remote, key: &Key, to: &Path) -> anyhow::Result<()> {
    let got = remote.store.get(key).await?;
    if let Some(dir) = to.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let part = to.with_file_name(format!(
        ".{}.{}.part",
        to.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    let written = async {
        let mut out = tokio::fs::File::create(&part).await?;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk?).await?;
        }
        out.sync_all().await?;
        tokio::fs::rename(&part, to).await?;
        anyhow::Ok(())
    }
    .await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(&part).await;
    }
    written
}

/// Every file under `dir` (none when it does not exist), partial files left out.
pub(crate) async fn files_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut todo = vec![dir];
        while let Some(d) = todo.pop() {
            let entries = match std::fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(anyhow::Error::new(e).context(d.display().to_string())),
            };
            for e in entries {
                let e = e?;
                let kind = e.file_type()?;
                if kind.is_dir() {
                    todo.push(e.path());
                } else if kind.is_file() && !e.file_name().to_string_lossy().starts_with('.') {
                    out.push(e.path());
                }
            }
        }
        out.sort();
        Ok(out)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let data = Path::new("/data");
        assert_eq!(
            Artifacts::open(data, None).unwrap().root,
            Path::new("/data/artifacts")
        );
        assert_eq!(
            Artifacts::open(data, Some("file:///srv/art")).unwrap().root,
            Path::new("/srv/art")
        );
        for bad in ["file://rel", "ftp://x", "s3://", "/plain/path"] {
            let e = Artifacts::open(data, Some(bad)).unwrap_err().to_string();
            assert!(e.contains("--artifacts"), "{bad}: {e}");
        }
    }

    #[test]
    fn keys_are_relative_to_the_folder() {
        let a = Artifacts::new(Path::new("/d"));
        let key = a.key(&a.checkpoint("r1")).unwrap();
        assert_eq!(key.as_ref(), "runs/r1/checkpoint.safetensors");
        assert_eq!(a.path_of(&key), a.checkpoint("r1"));
        let sheet = Path::new("/d/datasets/ds1/samples.png");
        let key = a.key(sheet).unwrap();
        assert_eq!(key.as_ref(), "datasets/ds1/samples.png");
        assert_eq!(a.path_of(&key), sheet);
        assert!(a.key(Path::new("/elsewhere/x")).is_err());
    }
}
