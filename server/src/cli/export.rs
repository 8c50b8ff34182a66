//! `sslab export --audit DIR | --run DIR --out BUNDLE`: a demo bundle for the
//! browser demo from folders `sslab audit` or `sslab train` wrote. Publish it
//! by uploading it as a tar archive (`POST /api/v1/demos`).

use std::path::Path;

use anyhow::{Context, bail};
use sslab_engine::export::{self, Options};
use sslab_shared::audit::AuditReport;
use sslab_shared::spec::DataSpec;

use crate::cli::train::finished_run;
use crate::store::Owner;

pub struct Request<'a> {
    pub audit: Option<&'a Path>,
    pub run: Option<&'a Path>,
    pub out: &'a Path,
    /// A data spec in TOML for a run's public set; default: its held-out split.
    pub public: Option<&'a Path>,
    /// For a run: the layer to embed at; default `backbone`.
    pub layer: Option<&'a str>,
    pub f16: bool,
    pub max_mib: u64,
}

pub async fn run<F, R>(req: Request<'_>, registry: F) -> anyhow::Result<()>
where
    F: FnOnce() -> R,
    R: Future<Output = anyhow::Result<crate::datasets::Registry>>,
{
    let mut opts = Options {
        f16: req.f16,
        max_bytes: req.max_mib << 20,
        ..Options::default()
    };
    let out = req.out.to_path_buf();
    let manifest = match (req.audit, req.run) {
        (Some(dir), None) => {
            if req.public.is_some() || req.layer.is_some() {
                bail!("--public and --layer are for --run; an audit's bundle uses its own");
            }
            let file = dir.join("audit.json");
            let text = std::fs::read_to_string(&file).with_context(|| {
                format!(
                    "cannot read {}; is this a folder `sslab audit` wrote?",
                    file.display()
                )
            })?;
            let report: AuditReport = serde_json::from_str(&text)
                .with_context(|| format!("{} is not an audit report", file.display()))?;
            let (a, b) = (
                dir.join("target-a.safetensors"),
                dir.join("reference-b.safetensors"),
            );
            for f in [&a, &b] {
                if !f.is_file() {
                    bail!("{} is missing", f.display());
                }
            }
            opts.title = format!("{}: a déjà vu memorization audit", report.spec.name);
            opts.source = dir.display().to_string();
            tokio::task::spawn_blocking(move || export::export_audit(&report, &a, &b, &opts, &out))
                .await?
        }
        (None, Some(dir)) => {
            let (spec, checkpoint) = finished_run(dir)?;
            let public = match req.public {
                Some(path) => Some(public_data(path, registry).await?),
                None => None,
            };
            let layer = req.layer.unwrap_or("backbone").to_string();
            if !spec.layer_names().contains(&layer) {
                bail!(
                    "{} has no layer `{layer}`; its layers are {}",
                    dir.display(),
                    spec.layer_names().join(", ")
                );
            }
            opts.title = spec.name.clone();
            opts.source = dir.display().to_string();
            tokio::task::spawn_blocking(move || -> sslab_engine::Result<_> {
                let public = public
                    .map(|d| sslab_engine::data::load(&d).map(|s| s.train.concat(&s.test)))
                    .transpose()?;
                export::export_run(&spec, &checkpoint, public, &layer, &opts, &out)
            })
            .await?
        }
        _ => bail!("name exactly one of --audit DIR and --run DIR"),
    }
    .map_err(|e| anyhow::anyhow!("export failed: {e}"))?;
    println!(
        "{} model(s), {} public images, {} demo images, {:.1} MiB",
        manifest.models.len(),
        manifest.public.count,
        manifest.images.len(),
        manifest.total_bytes() as f64 / (1 << 20) as f64
    );
    println!("wrote {}", req.out.display());
    Ok(())
}

/// A data spec file, with a registered data set's name resolved.
async fn public_data<F, R>(path: &Path, registry: F) -> anyhow::Result<DataSpec>
where
    F: FnOnce() -> R,
    R: Future<Output = anyhow::Result<crate::datasets::Registry>>,
{
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut data = sslab_shared::error::from_toml::<DataSpec>(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if matches!(data, DataSpec::Dataset { .. }) {
        registry()
            .await?
            .resolve_data(&mut data, "public", Owner::DEFAULT_TEAM)
            .await?;
    }
    Ok(data)
}
