//! `sslab audit --spec FILE --out DIR`: a déjà vu audit on this machine.
//! Writes `audit.json` (the split, and per snapshot the curves, the
//! four-way split and the per-class gaps), `examples.csv` (one row per
//! attacked image at the last snapshot), both models' checkpoints and, when
//! the spec has `reconstruct`, `reconstruction.png`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use indicatif::ProgressBar;
use sslab_engine::dejavu::{AuditObserver, Model};
use sslab_engine::train::{Control, StepMetrics};
use sslab_shared::audit::{AuditReport, AuditSpec, SnapshotReport};

use crate::cli::train::{interrupt_flag, step_bar, write_json};

struct Progress {
    bar: ProgressBar,
    model: Option<Model>,
    /// The decoder being trained, once the reconstructions started.
    decoder: Option<Model>,
    interrupted: Arc<AtomicBool>,
    out: std::path::PathBuf,
    /// Why `reconstruction.png` could not be written.
    unwritten: Option<String>,
}

impl Progress {
    fn control(&self) -> Control {
        if self.interrupted.load(Ordering::Relaxed) {
            Control::Stop
        } else {
            Control::Continue
        }
    }
}

impl AuditObserver for Progress {
    fn on_step(&mut self, model: Model, m: &StepMetrics) -> Control {
        if self.model != Some(model) {
            self.model = Some(model);
            self.bar.set_length(m.total_steps as u64);
        }
        let which = match model {
            Model::A => "target (A)",
            Model::B => "reference (B)",
        };
        self.bar.set_position(m.step as u64);
        self.bar
            .set_message(format!("{which} epoch {} loss {:.4}", m.epoch, m.loss));
        self.control()
    }

    fn on_decoder_step(&mut self, model: Model, step: usize, steps: usize) -> Control {
        if self.decoder != Some(model) {
            self.decoder = Some(model);
            self.bar.set_length(steps as u64);
            self.bar.set_message(match model {
                Model::A => "decoder of the target (A)",
                Model::B => "decoder of the reference (B)",
            });
        }
        self.bar.set_position(step as u64);
        self.control()
    }

    fn on_reconstruction(&mut self, png: &[u8]) {
        let path = self.out.join("reconstruction.png");
        if let Err(e) = std::fs::write(&path, png) {
            self.unwritten = Some(format!("cannot write {}: {e}", path.display()));
        }
    }

    fn on_snapshot(&mut self, s: &SnapshotReport) {
        self.bar.println(summary_line(s));
    }
}

fn summary_line(s: &SnapshotReport) -> String {
    let at = |f: f64| s.curve.iter().find(|p| (p.fraction - f).abs() < 1e-9);
    let (all, top) = (at(1.0), at(0.2));
    format!(
        "epoch {:>4}: top-1 target {:.3} reference {:.3} (most confident 20 %: {:.3} vs {:.3}); full-image kNN {:.3} / {:.3}",
        s.epoch,
        all.map_or(0.0, |p| p.target_top1),
        all.map_or(0.0, |p| p.reference_top1),
        top.map_or(0.0, |p| p.target_top1),
        top.map_or(0.0, |p| p.reference_top1),
        s.knn_target,
        s.knn_reference
    )
}

pub fn read_audit_spec(path: &Path) -> anyhow::Result<AuditSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the spec {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        AuditSpec::from_json(&text)
    } else {
        AuditSpec::from_toml(&text)
    }
    .map_err(|e| anyhow::anyhow!("{}: invalid audit spec: {e}", path.display()))
}

pub async fn run(spec_path: &Path, out: &Path) -> anyhow::Result<()> {
    let spec = read_audit_spec(spec_path)?;
    if spec.runs.is_some() {
        anyhow::bail!(
            "{}: `runs` names runs of a server; audit them with POST /api/v1/audits",
            spec_path.display()
        );
    }
    let report = audit_into(spec, out, interrupt_flag())
        .await?
        .map_err(|e| anyhow::anyhow!("the audit failed: {e}"))?;
    let s = &report.split;
    println!(
        "A-only {} (attacked {}), B-only {} (attacked {}), shared {}, public {}",
        s.a_only, s.attacked_a, s.b_only, s.attacked_b, s.shared, s.public
    );
    for (why, n) in &s.skipped {
        println!("not attacked: {n} × {why}");
    }
    for w in &s.warnings {
        println!("warning: {w}");
    }
    for snap in &report.snapshots {
        println!("{}", summary_line(snap));
    }
    if let Some(last) = report.snapshots.last() {
        let f = last.four_way;
        println!(
            "last epoch: {} memorized, {} correlated, {} forgotten, {} unassociated",
            f.memorized, f.correlated, f.forgotten, f.unassociated
        );
    }
    if let Some(r) = &report.reconstruction {
        let memorized = match (r.memorized_target_top1, r.memorized_reference_top1) {
            (Some(t), Some(f)) => format!("; on memorized images {t:.3} vs {f:.3}"),
            _ => String::new(),
        };
        println!(
            "drawn from the crops, the true class: target {:.3} reference {:.3} (chance {:.3}){memorized}; from the whole images {:.3}; grid in reconstruction.png",
            r.target_top1, r.reference_top1, r.chance, r.whole_image_top1
        );
    }
    println!("wrote {}", out.display());
    Ok(())
}

/// Runs an audit into `out` (both checkpoints, `audit.json`,
/// `examples.csv`). The outer `Err` is a file that cannot be written; the
/// inner one says why the audit itself failed.
pub async fn audit_into(
    spec: AuditSpec,
    out: &Path,
    interrupted: Arc<AtomicBool>,
) -> anyhow::Result<Result<AuditReport, String>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut progress = Progress {
        bar: step_bar(spec.run.total_steps()),
        model: None,
        decoder: None,
        interrupted,
        out: out.to_path_buf(),
        unwritten: None,
    };
    let dir = out.to_path_buf();
    let (report, progress) = tokio::task::spawn_blocking(move || {
        let device = sslab_engine::default_device();
        let report = sslab_engine::dejavu::run(&spec, &device, &dir, &mut progress);
        (report, progress)
    })
    .await?;
    progress.bar.finish_and_clear();
    let report = match report {
        Ok(r) => r,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if let Some(why) = progress.unwritten {
        anyhow::bail!(why);
    }
    write_json(&out.join("audit.json"), &report)?;
    write_examples(&out.join("examples.csv"), &report)?;
    Ok(Ok(report))
}

fn write_examples(path: &Path, report: &AuditReport) -> anyhow::Result<()> {
    let mut file =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(crate::csv::examples(report).as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
