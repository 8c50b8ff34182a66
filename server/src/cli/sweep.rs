//! `sslab sweep --spec FILE --out DIR`: every run of a sweep on this
//! machine, one after another, each in its own subfolder; then
//! `DIR/summary.csv` (one row per run and layer) and `DIR/sweep.json`.

use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::{Context, bail};
use sslab_shared::api::{RunStatus, SweepRun};
use sslab_shared::sweep::{SweepSpec, canonical_path, value_label};

use crate::cli::train::{folder_safe, interrupt_flag, train_into, write_json};

/// A folder name for a run: its index, then its axis values and seed.
pub(crate) fn folder_name(index: usize, point: &sslab_shared::sweep::SweepPoint) -> String {
    let mut name = format!("{index:03}");
    let paths: Vec<&str> = point.values.keys().map(String::as_str).collect();
    for (path, v) in &point.values {
        let short = sslab_shared::sweep::short_path(path, &paths);
        name.push_str(&format!("-{short}={}", value_label(v)));
    }
    name.push_str(&format!("-seed={}", point.seed));
    folder_safe(&name, "-=._", '_').chars().take(120).collect()
}

pub async fn run(spec_path: &Path, out: &Path, max_runs: usize) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(spec_path)
        .with_context(|| format!("cannot read the sweep {}", spec_path.display()))?;
    let is_json = spec_path.extension().is_some_and(|e| e == "json");
    let invalid = |e| anyhow::anyhow!("{}: invalid sweep: {e}", spec_path.display());
    let spec = if is_json {
        SweepSpec::from_json(&text)
    } else {
        SweepSpec::from_toml(&text)
    }
    .map_err(invalid)?;
    let points = spec.expand(max_runs).map_err(invalid)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_json(
        &out.join("sweep.json"),
        &serde_json::json!({ "spec": spec, "points": points }),
    )?;
    let axes: Vec<String> = spec.swept_axes().map(|a| canonical_path(&a.path)).collect();
    let interrupted = interrupt_flag();
    let mut runs: Vec<SweepRun> = Vec::new();
    for (i, point) in points.iter().enumerate() {
        let folder = folder_name(i, point);
        println!("[{}/{}] {}", i + 1, points.len(), point.spec.name);
        let trained =
            train_into(&point.spec, &out.join(&folder), false, interrupted.clone()).await?;
        match trained.status {
            RunStatus::Succeeded => {
                if let Some(e) = trained
                    .evaluations
                    .iter()
                    .find(|e| e.layer == "backbone" && e.probe == "knn")
                {
                    println!("      kNN top-1 at the backbone {:.4}", e.value);
                }
            }
            other => println!(
                "      {}: {}",
                other.as_str(),
                trained.error.as_deref().unwrap_or("stopped")
            ),
        }
        runs.push(SweepRun {
            id: folder,
            name: point.spec.name.clone(),
            status: trained.status,
            seed: point.seed,
            values: point.values.clone(),
            last_loss: trained.last_loss,
            error: trained.error,
            evaluations: trained.evaluations,
        });
        if interrupted.load(Ordering::Relaxed) {
            break;
        }
    }
    let summary = out.join("summary.csv");
    std::fs::write(&summary, crate::sweep::summary_csv(&axes, &runs))
        .with_context(|| format!("cannot write {}", summary.display()))?;
    print_aggregates(&axes, &runs);
    println!("wrote {}", summary.display());
    if interrupted.load(Ordering::Relaxed) {
        bail!(
            "interrupted after {} of {} runs; summary.csv holds those",
            runs.len(),
            points.len()
        );
    }
    let failed = runs
        .iter()
        .filter(|r| r.status != RunStatus::Succeeded)
        .count();
    if failed > 0 {
        bail!(
            "{failed} of {} runs did not succeed; they are marked in summary.csv and left out of the means",
            runs.len()
        );
    }
    Ok(())
}

/// kNN top-1 per axis value and layer, mean ± std over seeds.
fn print_aggregates(axes: &[String], runs: &[SweepRun]) {
    let (aggregates, _) = crate::sweep::aggregate(axes, runs);
    println!(
        "{:<28} {:<16} {:<10} {:>8} {:>8} {:>3}",
        "axis", "value", "layer", "kNN mean", "std", "n"
    );
    for a in aggregates
        .iter()
        .filter(|a| a.probe == "knn" && a.metric == "top1")
    {
        println!(
            "{:<28} {:<16} {:<10} {:>8.4} {:>8.4} {:>3}",
            a.axis,
            value_label(&a.value),
            a.layer,
            a.mean,
            a.std,
            a.n
        );
    }
}
