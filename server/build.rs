//! Embeds the shipped recipes (`../recipes/*.toml`) so that `GET /recipes`
//! serves exactly the files in the repository.

use std::fmt::Write;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
    let mut out = embed("RECIPES", &root);
    out.push_str(&embed("STUDIES", &root.join("studies")));
    let target = Path::new(&std::env::var("OUT_DIR").unwrap()).join("recipes.rs");
    std::fs::write(target, out).unwrap();
}

/// `pub const NAME: &[(stem, text)]` of every `.toml` file in `dir`, sorted.
fn embed(name: &str, dir: &Path) -> String {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("a recipes folder")
        .map(|e| e.expect("a recipes entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut out = format!("pub const {name}: &[(&str, &str)] = &[\n");
    for f in files {
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        let path = f.canonicalize().unwrap();
        writeln!(
            out,
            "    ({stem:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    out
}
