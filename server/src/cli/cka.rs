//! `sslab cka --a RUN --b RUN --out DIR`: how alike two finished runs'
//! representations are, layer by layer (CKA), on the same held-out images.
//! Writes `DIR/cka.json` (rows: the first run's layers).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Serialize;
use sslab_shared::spec::DataSpec;

use super::train::finished_run;
use crate::store::Owner;

/// What the command was asked.
pub struct Request<'a> {
    pub a: &'a Path,
    pub b: &'a Path,
    pub out: &'a Path,
    /// A data spec in TOML (the keys of a recipe's `[data]`); default: the
    /// runs' own data, which must be the same.
    pub data: Option<&'a Path>,
    pub layers_a: Option<&'a str>,
    pub layers_b: Option<&'a str>,
    /// Minibatch CKA over batches of this many images; linear CKA without.
    pub minibatch: Option<usize>,
}

#[derive(Serialize)]
struct Side {
    run: String,
    name: String,
    layers: Vec<String>,
}

#[derive(Serialize)]
struct Settings {
    kind: &'static str,
    batch: Option<usize>,
    split: &'static str,
    images: usize,
    data: DataSpec,
}

#[derive(Serialize)]
struct Output {
    a: Side,
    b: Side,
    matrix: Vec<Vec<f64>>,
    settings: Settings,
}

/// The layers asked for, by name, among the run's own; all without a list.
fn pick(all: &[String], asked: Option<&str>, run: &Path) -> anyhow::Result<Vec<usize>> {
    let Some(asked) = asked else {
        return Ok((0..all.len()).collect());
    };
    asked
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            all.iter().position(|a| a == l).with_context(|| {
                format!(
                    "{} has no layer `{l}`; its layers are {}",
                    run.display(),
                    all.join(", ")
                )
            })
        })
        .collect()
}

pub async fn run<F, R>(req: Request<'_>, registry: F) -> anyhow::Result<()>
where
    F: FnOnce() -> R,
    R: Future<Output = anyhow::Result<crate::datasets::Registry>>,
{
    if req.minibatch.is_some_and(|b| b < 4) {
        bail!("--minibatch takes batches of at least 4 images");
    }
    let (spec_a, ckpt_a) = finished_run(req.a)?;
    let (spec_b, ckpt_b) = finished_run(req.b)?;
    let mut data = match req.data {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            sslab_shared::error::from_toml::<DataSpec>(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => {
            if spec_a.data.resolved() != spec_b.data.resolved() {
                bail!(
                    "{} and {} were trained on different data; name the images to compare them on with --data FILE",
                    req.a.display(),
                    req.b.display()
                );
            }
            spec_a.data.clone()
        }
    };
    if matches!(data, DataSpec::Dataset { .. }) && req.data.is_some() {
        registry()
            .await?
            .resolve_data(&mut data, "data", Owner::DEFAULT_TEAM)
            .await?;
    }
    let (title_a, title_b) = (spec_a.name.clone(), spec_b.name.clone());
    let names_a = spec_a.layer_names();
    let names_b = spec_b.layer_names();
    let pick_a = pick(&names_a, req.layers_a, req.a)?;
    let pick_b = pick(&names_b, req.layers_b, req.b)?;
    let side = |dir: &Path, spec_name: String, names: &[String], pick: &[usize]| Side {
        run: dir.display().to_string(),
        name: spec_name,
        layers: pick.iter().map(|&i| names[i].clone()).collect(),
    };
    let a = side(req.a, title_a, &names_a, &pick_a);
    let b = side(req.b, title_b, &names_b, &pick_b);
    let (layers_a, layers_b) = (a.layers.clone(), b.layers.clone());
    let (dir_a, dir_b) = (req.a.to_path_buf(), req.b.to_path_buf());
    let batch = req.minibatch;
    let data_for_job = data.clone();
    let (matrix, images) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let device = sslab_engine::default_device();
        let splits = sslab_engine::data::load(&data_for_job)?;
        let features =
            |spec: sslab_shared::RunSpec, ckpt: &PathBuf, dir: &PathBuf, pick: &[usize]| {
                if spec.data.image_size() != 0 && spec.data.image_size() != splits.test.size {
                    bail!(
                        "{} was trained on {} px images; these are {} px",
                        dir.display(),
                        spec.data.image_size(),
                        splits.test.size
                    );
                }
                let spec = spec.into_valid()?;
                let encoder = sslab_engine::train::load_encoder(&spec, ckpt, &device)?;
                let all = sslab_engine::eval::embed_layers(&encoder, &splits.test, &device)?;
                Ok(pick.iter().map(|&i| all[i].clone()).collect::<Vec<_>>())
            };
        let fa = features(spec_a, &ckpt_a, &dir_a, &pick_a)?;
        let fb = features(spec_b, &ckpt_b, &dir_b, &pick_b)?;
        let images = splits.test.len();
        let matrix = sslab_engine::cka::matrix(&fa, &fb, batch).map_err(|(i, j, e)| {
            anyhow::anyhow!(
                "{} layer `{}` against {} layer `{}`: {e}",
                dir_a.display(),
                layers_a[i],
                dir_b.display(),
                layers_b[j]
            )
        })?;
        Ok((matrix, images))
    })
    .await??;
    print_matrix(&a, &b, &matrix);
    let output = Output {
        a,
        b,
        matrix,
        settings: Settings {
            kind: if batch.is_some() {
                "minibatch"
            } else {
                "linear"
            },
            batch,
            split: "test",
            images,
            data,
        },
    };
    std::fs::create_dir_all(req.out)
        .with_context(|| format!("cannot create {}", req.out.display()))?;
    let file = req.out.join("cka.json");
    super::train::write_json(&file, &output)?;
    println!("wrote {}", file.display());
    Ok(())
}

fn print_matrix(a: &Side, b: &Side, m: &[Vec<f64>]) {
    print!("{:<12}", "");
    for l in &b.layers {
        print!(" {l:>10}");
    }
    println!();
    for (l, row) in a.layers.iter().zip(m) {
        print!("{l:<12}");
        for v in row {
            print!(" {v:>10.4}");
        }
        println!();
    }
}
