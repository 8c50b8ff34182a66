//! Embeds the shipped recipes (`../recipes/*.toml`) so that `GET /recipes`
//! serves exactly the files in the repository.

use std::fmt::Write;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the recipes folder")
        .map(|e| e.expect("a recipes entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut out = String::from("pub const RECIPES: &[(&str, &str)] = &[\n");
    for f in files {
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        let path = f.canonicalize().unwrap();
        writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let target = Path::new(&std::env::var("OUT_DIR").unwrap()).join("recipes.rs");
    std::fs::write(target, out).unwrap();
}
