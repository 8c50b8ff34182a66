//! Unpacking uploaded data sets: tar, tar.gz and zip archives, with every
//! entry's path checked and every byte counted as it is written, so that a
//! crafted archive can neither write outside its folder nor fill the disk.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

/// How much an archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes written in all, counted as they are decompressed (headers are
    /// not trusted).
    pub max_bytes: u64,
    pub max_entries: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive itself is refused; the message names the entry.
    #[error("{0}")]
    Refused(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn refused<T>(msg: impl Into<String>) -> Result<T, ArchiveError> {
    Err(ArchiveError::Refused(msg.into()))
}

/// What the archive held that was left out, each with why.
#[derive(Debug, Default)]
pub struct Unpacked {
    pub files: usize,
    pub skipped: Vec<String>,
}

/// Which files to keep: `Err(why)` leaves a file out.
pub type Keep<'a> = &'a dyn Fn(&Path) -> Result<(), String>;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Zip,
    Tar,
    TarGz,
}

fn kind(path: &Path) -> Result<Kind, ArchiveError> {
    let mut head = [0u8; 512];
    let mut file = open(path)?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(io(format!("cannot read {}", path.display()), e)),
        }
    }
    if head[..n].starts_with(b"PK\x03\x04") || head[..n].starts_with(b"PK\x05\x06") {
        Ok(Kind::Zip)
    } else if head[..n].starts_with(&[0x1f, 0x8b]) {
        Ok(Kind::TarGz)
    } else if n >= 262 && &head[257..262] == b"ustar" {
        Ok(Kind::Tar)
    } else if n == 0 {
        refused("the upload is empty: send a tar, tar.gz or zip archive")
    } else {
        refused("the upload is not a tar, tar.gz or zip archive")
    }
}

fn open(path: &Path) -> Result<std::fs::File, ArchiveError> {
    std::fs::File::open(path).map_err(|e| io(format!("cannot open {}", path.display()), e))
}

fn io(what: String, source: std::io::Error) -> ArchiveError {
    ArchiveError::Io { what, source }
}

/// The entry's path below the destination, or why it is refused. Entries
/// that reach outside (`..`, absolute paths, drive prefixes) refuse the
/// whole archive: such an archive was made to attack, not by mistake.
fn safe_path(name: &str) -> Result<Option<PathBuf>, ArchiveError> {
    if name.contains('\0') {
        return refused(format!("entry `{name}`: the name holds a NUL byte"));
    }
    let mut out = PathBuf::new();
    for part in Path::new(&name.replace('\\', "/")).components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return refused(format!(
                    "entry `{name}`: `..` would write outside the data set's folder"
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return refused(format!(
                    "entry `{name}`: an absolute path would write outside the data set's folder"
                ));
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Metadata that archivers add and no reader wants.
fn is_clutter(path: &Path) -> bool {
    path.components().any(|c| {
        let s = c.as_os_str().to_string_lossy();
        s.starts_with('.') || s == "__MACOSX" || s == "Thumbs.db"
    })
}

/// Writes entries into `dest`, counting bytes against the limits.
struct Writer<'a> {
    dest: &'a Path,
    limits: Limits,
    keep: Keep<'a>,
    written: u64,
    entries: usize,
    out: Unpacked,
}

impl Writer<'_> {
    /// `Ok(None)`: the entry is not written (skipped or a folder).
    fn target(
        &mut self,
        name: &str,
        is_dir: bool,
        is_file: bool,
    ) -> Result<Option<PathBuf>, ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return refused(format!(
                "the archive has more than {} entries",
                self.limits.max_entries
            ));
        }
        let Some(rel) = safe_path(name)? else {
            return Ok(None);
        };
        if is_clutter(&rel) {
            return Ok(None);
        }
        if is_dir {
            let dir = self.dest.join(&rel);
            std::fs::create_dir_all(&dir)
                .map_err(|e| io(format!("cannot create {}", dir.display()), e))?;
            return Ok(None);
        }
        if !is_file {
            self.out.skipped.push(format!(
                "{name}: not a regular file (links are not followed)"
            ));
            return Ok(None);
        }
        if let Err(why) = (self.keep)(&rel) {
            // Its folder stays, so that a class folder of only such files is
            // reported as empty rather than silently missing.
            if let Some(parent) = rel.parent() {
                let dir = self.dest.join(parent);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| io(format!("cannot create {}", dir.display()), e))?;
            }
            self.out.skipped.push(format!("{name}: {why}"));
            return Ok(None);
        }
        Ok(Some(rel))
    }

    fn write(&mut self, rel: &Path, name: &str, mut from: impl Read) -> Result<(), ArchiveError> {
        let path = self.dest.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| io(format!("cannot create {}", parent.display()), e))?;
        }
        let mut file = std::fs::File::create_new(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                ArchiveError::Refused(format!("entry `{name}` appears twice in the archive"))
            } else {
                io(format!("cannot create {}", path.display()), e)
            }
        })?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from.read(&mut buf).map_err(|e| {
                ArchiveError::Refused(format!(
                    "entry `{name}`: the archive is truncated or corrupt ({e})"
                ))
            })?;
            if n == 0 {
                break;
            }
            self.written += n as u64;
            if self.written > self.limits.max_bytes {
                return refused(format!(
                    "the archive unpacks to more than {} bytes (limit reached in `{name}`); \
                     a zip bomb, or a data set bigger than this server accepts",
                    self.limits.max_bytes
                ));
            }
            file.write_all(&buf[..n])
                .map_err(|e| io(format!("cannot write {}", path.display()), e))?;
        }
        self.out.files += 1;
        Ok(())
    }
}

/// Unpacks `archive` into the existing folder `dest`. On error `dest` may
/// hold part of it: the caller removes the folder.
pub fn unpack(
    archive: &Path,
    dest: &Path,
    limits: Limits,
    keep: Keep,
) -> Result<Unpacked, ArchiveError> {
    let mut w = Writer {
        dest,
        limits,
        keep,
        written: 0,
        entries: 0,
        out: Unpacked::default(),
    };
    match kind(archive)? {
        Kind::Zip => unpack_zip(archive, &mut w)?,
        Kind::Tar => unpack_tar(open(archive)?, &mut w)?,
        Kind::TarGz => unpack_tar(flate2::read::GzDecoder::new(open(archive)?), &mut w)?,
    }
    if w.out.files == 0 {
        return refused("the archive holds no files this format reads");
    }
    Ok(w.out)
}

fn unpack_tar(from: impl Read, w: &mut Writer) -> Result<(), ArchiveError> {
    let corrupt = |e: std::io::Error| {
        ArchiveError::Refused(format!("the archive is truncated or corrupt: {e}"))
    };
    let mut tar = tar::Archive::new(from);
    for entry in tar.entries().map_err(corrupt)? {
        let entry = entry.map_err(corrupt)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let t = entry.header().entry_type();
        // PAX and GNU long-name records are read by the tar crate itself.
        if t.is_pax_global_extensions() || t.is_pax_local_extensions() || t.is_gnu_longname() {
            continue;
        }
        if let Some(rel) = w.target(&name, t.is_dir(), t.is_file())? {
            w.write(&rel, &name, entry)?;
        }
    }
    Ok(())
}

fn unpack_zip(path: &Path, w: &mut Writer) -> Result<(), ArchiveError> {
    let mut zip = zip::ZipArchive::new(open(path)?).map_err(|e| {
        ArchiveError::Refused(format!("not a complete zip archive (truncated?): {e}"))
    })?;
    for i in 0..zip.len() {
        let entry = zip.by_index(i).map_err(|e| {
            ArchiveError::Refused(format!("zip entry {i}: the archive is corrupt: {e}"))
        })?;
        let name = entry.name().to_string();
        let is_link = entry.unix_mode().is_some_and(|m| m & 0o170000 == 0o120000);
        if let Some(rel) = w.target(&name, entry.is_dir(), !entry.is_dir() && !is_link)? {
            w.write(&rel, &name, entry)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_bytes: 1 << 20,
            max_entries: 100,
        }
    }

    fn keep_png(p: &Path) -> Result<(), String> {
        if p.extension().is_some_and(|e| e == "png") {
            Ok(())
        } else {
            Err("not a PNG or JPEG image".into())
        }
    }

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // set_path refuses `..`; write the raw name as an attacker would.
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in entries {
            z.start_file(*name, opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap().into_inner()
    }

    fn unpack_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<Unpacked, ArchiveError>) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("upload");
        std::fs::write(&file, bytes).unwrap();
        let dest = dir.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        let r = unpack(&file, &dest, limits(), &keep_png);
        (dir, r)
    }

    #[test]
    fn tar_and_zip_unpack_and_skip_what_is_not_kept() {
        let entries: [(&str, &[u8]); 4] = [
            ("pets/cat/a.png", b"png-a"),
            ("pets/dog/b.png", b"png-b"),
            ("pets/notes.txt", b"hello"),
            ("pets/.DS_Store", b"x"),
        ];
        for bytes in [tar_of(&entries), zip_of(&entries)] {
            let (dir, r) = unpack_bytes(&bytes);
            let out = r.unwrap();
            assert_eq!(out.files, 2);
            assert_eq!(out.skipped, ["pets/notes.txt: not a PNG or JPEG image"]);
            let a = dir.path().join("out/pets/cat/a.png");
            assert_eq!(std::fs::read(a).unwrap(), b"png-a");
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar_of(&entries)).unwrap();
        let (_d, r) = unpack_bytes(&gz.finish().unwrap());
        assert_eq!(r.unwrap().files, 2);
    }

    #[test]
    fn escaping_entries_refuse_the_archive() {
        for name in ["../evil.png", "a/../../evil.png", "/etc/evil.png"] {
            for bytes in [tar_of(&[(name, b"x")]), zip_of(&[(name, b"x")])] {
                let (dir, r) = unpack_bytes(&bytes);
                let err = r.unwrap_err().to_string();
                assert!(err.contains(name) && err.contains("outside"), "{err}");
                assert!(!dir.path().join("evil.png").exists());
            }
        }
    }

    #[test]
    fn bombs_truncation_and_garbage_are_refused() {
        // 8 MiB of zeros deflate to a few KiB: the counted bytes stop it.
        let zeros = vec![0u8; 8 << 20];
        let bomb = zip_of(&[("c/a.png", &zeros)]);
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        let (dir, r) = unpack_bytes(&bomb);
        let err = r.unwrap_err().to_string();
        assert!(err.contains("zip bomb") && err.contains("c/a.png"), "{err}");
        let written = std::fs::metadata(dir.path().join("out/c/a.png"))
            .unwrap()
            .len();
        assert!(written <= limits().max_bytes + 64 * 1024, "{written}");

        let tar = tar_of(&[("c/a.png", &[7u8; 4000])]);
        let (_d, r) = unpack_bytes(&tar[..2000]);
        let err = r.unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        let zip = zip_of(&[("c/a.png", &[7u8; 4000])]);
        let (_d, r) = unpack_bytes(&zip[..zip.len() - 30]);
        assert!(r.unwrap_err().to_string().contains("truncated"));

        let (_d, r) = unpack_bytes(b"just some text, not an archive");
        assert!(
            r.unwrap_err()
                .to_string()
                .contains("not a tar, tar.gz or zip")
        );
        let (_d, r) = unpack_bytes(b"");
        assert!(r.unwrap_err().to_string().contains("empty"));
        let (_d, r) = unpack_bytes(&tar_of(&[("readme.md", b"x")]));
        assert!(r.unwrap_err().to_string().contains("no files"));
        let many: Vec<(String, Vec<u8>)> =
            (0..101).map(|i| (format!("c/{i}.png"), vec![1])).collect();
        let refs: Vec<(&str, &[u8])> = many
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        let (_d, r) = unpack_bytes(&tar_of(&refs));
        assert!(r.unwrap_err().to_string().contains("more than 100 entries"));
    }
}
