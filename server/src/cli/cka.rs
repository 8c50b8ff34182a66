//! `sslab cka --a RUN --b RUN --out DIR`: how alike two finished runs'
//! representations are, layer by layer (CKA), on the same held-out images.
//! Writes `DIR/cka.json` (rows: the first run's layers).

use std::path::Path;

use anyhow::{Context, bail};
use sslab_engine::cka;
use sslab_shared::cka::{CkaResult, CkaSettings, CkaSide};
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
    let data = match req.data {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let mut data = sslab_shared::error::from_toml::<DataSpec>(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            if matches!(data, DataSpec::Dataset { .. }) {
                registry()
                    .await?
                    .resolve_data(&mut data, "data", Owner::DEFAULT_TEAM)
                    .await?;
            }
            Some(data)
        }
        None => None,
    };
    let output = compare_dirs(
        Side {
            dir: req.a,
            layers: req.layers_a,
        },
        Side {
            dir: req.b,
            layers: req.layers_b,
        },
        data,
        req.minibatch,
    )
    .await?;
    print_matrix(&output.a, &output.b, &output.matrix);
    std::fs::create_dir_all(req.out)
        .with_context(|| format!("cannot create {}", req.out.display()))?;
    let file = req.out.join("cka.json");
    super::train::write_json(&file, &output)?;
    println!("wrote {}", file.display());
    Ok(())
}

/// A run folder and its layers to compare, comma-separated (all without).
pub struct Side<'a> {
    pub dir: &'a Path,
    pub layers: Option<&'a str>,
}

/// CKA of two finished run folders' layers on the test split of `data`
/// (default: the runs' own data, which must be the same).
pub async fn compare_dirs(
    a: Side<'_>,
    b: Side<'_>,
    data: Option<DataSpec>,
    batch: Option<usize>,
) -> anyhow::Result<CkaResult> {
    let (spec_a, ckpt_a) = finished_run(a.dir)?;
    let (spec_b, ckpt_b) = finished_run(b.dir)?;
    let data = match data {
        Some(d) => d,
        None => {
            if spec_a.data.resolved() != spec_b.data.resolved() {
                bail!(
                    "{} and {} were trained on different data; name the images to compare them on with --data FILE",
                    a.dir.display(),
                    b.dir.display()
                );
            }
            spec_a.data.clone()
        }
    };
    let names_a = spec_a.cka_layer_names();
    let names_b = spec_b.cka_layer_names();
    let pick_a = pick(&names_a, a.layers, a.dir)?;
    let pick_b = pick(&names_b, b.layers, b.dir)?;
    let side = |dir: &Path, spec_name: String, names: &[String], pick: &[usize]| CkaSide {
        run: dir.display().to_string(),
        name: spec_name,
        layers: pick.iter().map(|&i| names[i].clone()).collect(),
    };
    let side_a = side(a.dir, spec_a.name.clone(), &names_a, &pick_a);
    let side_b = side(b.dir, spec_b.name.clone(), &names_b, &pick_b);
    let (label_a, label_b) = (a.dir.display().to_string(), b.dir.display().to_string());
    let data_for_job = data.clone();
    let (matrix, images) = tokio::task::spawn_blocking(move || {
        let run_a = cka::Run {
            label: &label_a,
            spec: &spec_a,
            checkpoint: &ckpt_a,
            layers: &pick_a,
        };
        let run_b = cka::Run {
            label: &label_b,
            spec: &spec_b,
            checkpoint: &ckpt_b,
            layers: &pick_b,
        };
        let device = sslab_engine::default_device();
        cka::compare_runs(&run_a, &run_b, &data_for_job, batch, &device)
    })
    .await??;
    Ok(CkaResult {
        a: side_a,
        b: side_b,
        matrix,
        settings: CkaSettings::on_test_split(batch, images, data),
    })
}

fn print_matrix(a: &CkaSide, b: &CkaSide, m: &[Vec<f64>]) {
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
