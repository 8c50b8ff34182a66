//! Embeds the shipped recipes (`../recipes/*.toml`) so that `GET /recipes`
//! serves exactly the files in the repository, and the SQL migrations
//! (`../migrations/<dialect>/*.sql`) so that the binary carries its schema
//! without sqlx's proc-macro driver stack.

use std::fmt::Write;
use std::path::{Path, PathBuf};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());

    let recipes = root.join("recipes");
    let mut out = String::new();
    for (name, dir) in [
        ("RECIPES", recipes.clone()),
        ("STUDIES", recipes.join("studies")),
    ] {
        out.push_str(&format!("pub const {name}: &[(&str, &str)] = &[\n"));
        for (stem, path) in files(&dir, "toml") {
            writeln!(out, "    ({stem:?}, include_str!({path:?})),").unwrap();
        }
        out.push_str("];\n");
    }
    std::fs::write(out_dir.join("recipes.rs"), out).unwrap();

    // `<version>_<description>.sql`, read as sqlx reads a migrations folder.
    let mut out = String::new();
    for dialect in ["sqlite", "postgres"] {
        let name = dialect.to_uppercase();
        out.push_str(&format!("pub const {name}: &[(i64, &str, &str)] = &[\n"));
        for (stem, path) in files(&root.join("migrations").join(dialect), "sql") {
            let (version, description) = stem
                .split_once('_')
                .unwrap_or_else(|| panic!("{path}: not <version>_<description>.sql"));
            let version: i64 = version
                .parse()
                .unwrap_or_else(|_| panic!("{path}: the version is not a number"));
            let description = description.replace('_', " ");
            writeln!(
                out,
                "    ({version}, {description:?}, include_str!({path:?})),"
            )
            .unwrap();
        }
        out.push_str("];\n");
    }
    std::fs::write(out_dir.join("migrations.rs"), out).unwrap();
}

/// (stem, absolute path) of every `.ext` file in `dir`, sorted.
fn files(dir: &Path, ext: &str) -> Vec<(String, String)> {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
            (stem, f.canonicalize().unwrap().display().to_string())
        })
        .collect()
}
