//! Publishing demo bundles: an uploaded tar archive is read in memory,
//! every file checked against the manifest and the models built once, then
//! written to the artifact store under a new slug.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use sslab_engine::export::bundle::{self, Demo as Opened};
use sslab_shared::demo::{Demo, MANIFEST, Manifest};

/// Why a bundle is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Over the cap (413).
    #[error("{0}")]
    TooLarge(String),
    /// Damaged, mismatched or not a bundle (422).
    #[error("{0}")]
    Invalid(String),
}

/// A checked bundle: its manifest and every file it names.
pub struct Checked {
    pub manifest: Manifest,
    pub files: HashMap<String, Vec<u8>>,
}

/// Reads a tar archive of a bundle folder (as `tar -cf b.tar -C BUNDLE .`
/// makes it) and checks it whole: version, every file's size and hash, the
/// cap, and that the weights fit their specs.
pub fn check_archive(archive: &[u8], max_bytes: u64) -> Result<Checked, Refused> {
    let invalid = |m: String| Refused::Invalid(m);
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tar = tar::Archive::new(archive);
    let entries = tar
        .entries()
        .map_err(|e| invalid(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("the archive is damaged: {e}")))?;
        if entry.header().entry_type().is_dir() {
            continue;
        }
        if !entry.header().entry_type().is_file() {
            return Err(invalid("the archive may hold plain files only".into()));
        }
        let name = entry
            .path()
            .map_err(|e| invalid(format!("an entry has an unreadable name: {e}")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let size = entry.header().size().unwrap_or(u64::MAX);
        let so_far: u64 = files.values().map(|f| f.len() as u64).sum();
        if so_far.saturating_add(size) > max_bytes {
            return Err(Refused::TooLarge(format!(
                "the bundle is over this server's cap of {} (at `{name}`)",
                mib(max_bytes)
            )));
        }
        let mut bytes = Vec::with_capacity(size.min(max_bytes) as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| invalid(format!("`{name}` is cut short in the archive: {e}")))?;
        files.insert(name, bytes);
    }
    let text = files
        .remove(MANIFEST)
        .ok_or_else(|| invalid(format!("the archive has no {MANIFEST} at its top")))?;
    let text = String::from_utf8(text).map_err(|_| invalid(format!("{MANIFEST} is not UTF-8")))?;
    let manifest = bundle::parse_manifest(&text).map_err(|e| invalid(e.to_string()))?;
    if let Some(extra) = files
        .keys()
        .find(|k| !manifest.files.iter().any(|f| &f.path == *k))
    {
        return Err(invalid(format!(
            "`{extra}` is in the archive but not in the manifest"
        )));
    }
    for f in &manifest.files {
        let bytes = files
            .get(&f.path)
            .ok_or_else(|| invalid(format!("the archive has no `{}`", f.path)))?;
        bundle::verify_file(&manifest, &f.path, bytes).map_err(|e| invalid(e.to_string()))?;
    }
    finish(manifest, files, max_bytes)
}

/// Checks an export job's bundle folder as `check_archive` checks an upload.
pub fn check_folder(dir: &Path, max_bytes: u64) -> Result<Checked, Refused> {
    let (manifest, files) = bundle::read_dir(dir).map_err(|e| Refused::Invalid(e.to_string()))?;
    finish(manifest, files, max_bytes)
}

/// The cap, and the models built once: proof the weights fit their specs.
fn finish(
    manifest: Manifest,
    files: HashMap<String, Vec<u8>>,
    max_bytes: u64,
) -> Result<Checked, Refused> {
    if manifest.total_bytes() > max_bytes {
        return Err(Refused::TooLarge(format!(
            "the bundle is {}, over this server's cap of {}",
            mib(manifest.total_bytes()),
            mib(max_bytes)
        )));
    }
    let mut copy = files.clone();
    Opened::open(manifest.clone(), &mut copy).map_err(|e| Refused::Invalid(e.to_string()))?;
    Ok(Checked { manifest, files })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Writes a checked bundle into `dir` through a sibling scratch folder, so
/// that `dir` either holds the whole bundle or does not exist.
pub fn store(checked: &Checked, dir: &Path) -> std::io::Result<()> {
    let parent = dir.parent().expect("a demo folder has a parent");
    std::fs::create_dir_all(parent)?;
    let scratch = parent.join(format!(".incoming-{}", uuid::Uuid::new_v4().simple()));
    let write = || -> std::io::Result<()> {
        let text =
            serde_json::to_string_pretty(&checked.manifest).map_err(std::io::Error::other)?;
        std::fs::create_dir_all(&scratch)?;
        std::fs::write(scratch.join(MANIFEST), text)?;
        for (path, bytes) in &checked.files {
            let file = scratch.join(path);
            if let Some(p) = file.parent() {
                std::fs::create_dir_all(p)?;
            }
            std::fs::write(file, bytes)?;
        }
        std::fs::rename(&scratch, dir)
    };
    let result = write();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    result
}

/// A slug from the title (lower-case letters, digits and dashes) and a
/// random tail, so that slugs cannot be guessed from titles alone.
pub fn slug(title: &str) -> String {
    let mut base = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            base.push(c.to_ascii_lowercase());
        } else if !base.ends_with('-') && !base.is_empty() {
            base.push('-');
        }
        if base.len() >= 32 {
            break;
        }
    }
    let base = base.trim_end_matches('-');
    let tail = &uuid::Uuid::new_v4().simple().to_string()[..8];
    if base.is_empty() {
        format!("demo-{tail}")
    } else {
        format!("{base}-{tail}")
    }
}

/// The listing row of a checked bundle.
pub fn row(checked: &Checked, slug: String, source: String, created_at: i64) -> Demo {
    let m = &checked.manifest;
    Demo {
        slug,
        team: String::new(),
        title: if m.title.is_empty() {
            "sslab demo".into()
        } else {
            m.title.clone()
        },
        kind: m.kind,
        source,
        bytes: m.total_bytes(),
        models: m.models.len(),
        images: m.images.len(),
        created_by: None,
        created_at,
    }
}

/// The content type of a bundle file, by extension.
pub fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::slug;

    #[test]
    fn slugs_are_plain_and_unguessable() {
        let s = slug("dejavu-tiny: a déjà vu audit!");
        assert!(s.starts_with("dejavu-tiny-a-d-j-vu-audit-"), "{s}");
        assert_eq!(s.len(), "dejavu-tiny-a-d-j-vu-audit-".len() + 8);
        assert_ne!(slug("x"), slug("x"));
        assert!(slug("ééé").starts_with("demo-"));
    }
}
