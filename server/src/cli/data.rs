//! `sslab data import PATH --format F --name N` and `sslab data list`: the
//! registry of the data folder, the same one `sslab serve` lists.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use sslab_shared::dataset::{DataFormat, Dataset, DatasetImport};

use crate::datasets::Registry;
use crate::store::Owner;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Register a data set: a folder (read where it is) or a tar, tar.gz or
    /// zip archive (unpacked into the data folder).
    Import {
        path: PathBuf,
        /// folder | cifar10 | cifar100 | stl10 | idx
        #[arg(long, value_parser = parse_format)]
        format: DataFormat,
        #[arg(long)]
        name: String,
        /// Image folders: the side every image is resized and cropped to.
        #[arg(long, default_value_t = 32)]
        image_size: usize,
        /// Image folders without train/ and test/: the held-out share per class.
        #[arg(long, default_value_t = 0.2)]
        test_fraction: f64,
        /// CIFAR-100: the 20 superclasses.
        #[arg(long)]
        coarse: bool,
        /// STL-10: also read the unlabelled split.
        #[arg(long)]
        unlabeled: bool,
        /// Seeds the held-out draw of image folders.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The team it is registered for.
        #[arg(long, default_value = Owner::DEFAULT_TEAM)]
        team: String,
    },
    /// The registered data sets: name, format, splits, images and classes.
    List {
        /// The team whose data sets are listed.
        #[arg(long, default_value = Owner::DEFAULT_TEAM)]
        team: String,
    },
}

fn parse_format(text: &str) -> Result<DataFormat, String> {
    DataFormat::parse(text).ok_or_else(|| {
        let all: Vec<&str> = DataFormat::ALL.iter().map(|f| f.as_str()).collect();
        format!("`{text}` is not a format; use one of {}", all.join(", "))
    })
}

pub async fn run<F, R>(command: &DataCommand, registry: F) -> anyhow::Result<()>
where
    F: FnOnce() -> R,
    R: Future<Output = anyhow::Result<Registry>>,
{
    match command {
        DataCommand::Import {
            path,
            format,
            name,
            image_size,
            test_fraction,
            coarse,
            unlabeled,
            seed,
            team,
        } => {
            let mut req = DatasetImport::new(name, *format);
            req.image_size = *image_size;
            req.test_fraction = *test_fraction;
            req.coarse = *coarse;
            req.unlabeled = *unlabeled;
            req.seed = *seed;
            let registry = registry().await?;
            let owner = Owner {
                team: team_id(&registry, team).await?,
                user: None,
                project: sslab_shared::project::DEFAULT_PROJECT.into(),
            };
            let meta = std::fs::metadata(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let d = if meta.is_dir() {
                req.path = Some(path.to_string_lossy().into_owned());
                registry.import_path(&req, &owner).await?
            } else {
                // The registry consumes its copy of the archive.
                let copy = registry.scratch()?;
                std::fs::copy(path, &copy)
                    .with_context(|| format!("cannot copy {}", path.display()))?;
                let origin = format!("archive {}", path.display());
                registry.import_archive(&req, &copy, origin, &owner).await?
            };
            println!(
                "registered `{}`: {} classes, {}, {}",
                d.name,
                d.classes.len(),
                splits(&d),
                d.hash
            );
            for s in &d.skipped {
                println!("  skipped {s}");
            }
            Ok(())
        }
        DataCommand::List { team } => {
            let registry = registry().await?;
            let all = registry
                .store()
                .list_datasets(&team_id(&registry, team).await?)
                .await?;
            if all.is_empty() {
                println!("no data sets are registered; add one with `sslab data import`");
                return Ok(());
            }
            println!(
                "{:<24} {:<9} {:>5} {:>8}  splits",
                "name", "format", "size", "classes"
            );
            for d in &all {
                println!(
                    "{:<24} {:<9} {:>5} {:>8}  {}",
                    d.name,
                    d.format.as_str(),
                    d.image_size,
                    d.classes.len(),
                    splits(d)
                );
            }
            Ok(())
        }
    }
}

async fn team_id(registry: &Registry, name: &str) -> anyhow::Result<String> {
    registry
        .store()
        .team_id(name)
        .await?
        .with_context(|| format!("no team named `{name}` (sslab admin create-team makes one)"))
}

fn splits(d: &Dataset) -> String {
    d.splits
        .iter()
        .map(|s| format!("{} {}", s.name, s.images))
        .collect::<Vec<_>>()
        .join(", ")
}
