//! `sslab train [--spec] FILE [--out DIR] [--resume]`: one run on this machine,
//! with a progress bar. Writes `run.json`, `metrics.jsonl`, `evaluations.json`
//! and `checkpoint.safetensors` (with its training state) into DIR, and
//! `memorization.jsonl` when the spec has the memorization monitor.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sslab_engine::train::{Control, Observer, Outcome, StepMetrics};
use sslab_shared::RunSpec;
use sslab_shared::api::{Evaluation, EvaluationRequest, MemorizationPoint, RunStatus};

use crate::store::{Owner, now_ms};

#[derive(Serialize)]
struct RunFile<'a> {
    spec: &'a RunSpec,
    status: RunStatus,
    started_at: i64,
    finished_at: Option<i64>,
    error: Option<String>,
    steps: usize,
    last_loss: Option<f64>,
}

struct CliObserver {
    bar: ProgressBar,
    metrics: std::io::BufWriter<std::fs::File>,
    memorization: Option<std::fs::File>,
    /// What could not be written, and why.
    write_error: Option<String>,
    interrupted: Arc<AtomicBool>,
    steps: usize,
    last_loss: Option<f64>,
}

impl Observer for CliObserver {
    fn on_step(&mut self, m: &StepMetrics) -> Control {
        self.steps = m.step;
        self.last_loss = Some(m.loss);
        let line = serde_json::json!({
            "step": m.step, "epoch": m.epoch, "loss": m.loss, "lr": m.lr, "images_per_sec": m.images_per_sec,
            "data_wait": m.data_wait, "online_probe_acc": m.online_probe_acc,
        });
        if let Err(e) = writeln!(self.metrics, "{line}") {
            self.write_error = Some(format!("cannot write metrics.jsonl: {e}"));
            return Control::Stop;
        }
        self.bar.set_position(m.step as u64);
        self.bar.set_message(format!(
            "epoch {} loss {:.4} lr {:.2e} {:.0} img/s, {:.0}% waiting for data",
            m.epoch,
            m.loss,
            m.lr,
            m.images_per_sec,
            100.0 * m.data_wait
        ));
        if self.interrupted.load(Ordering::Relaxed) {
            Control::Stop
        } else {
            Control::Continue
        }
    }

    /// The epoch's lines reach the file before its checkpoint: `--resume`
    /// keeps the lines of the epochs the checkpoint holds.
    fn before_checkpoint(&mut self, _epoch: usize) {
        if let Err(e) = self.metrics.flush() {
            self.write_error = Some(format!("cannot write metrics.jsonl: {e}"));
        }
    }

    fn on_memorization(&mut self, p: &MemorizationPoint) {
        self.bar.println(format!(
            "epoch {}: dejavu_gap {:+.3} (top-1 on canary crops {:.3}, held out {:.3}; most confident 20 %: {:+.3})",
            p.epoch, p.dejavu_gap, p.canary_top1, p.heldout_top1, p.dejavu_gap_confident
        ));
        if let Some(file) = &mut self.memorization {
            let line = serde_json::to_string(p).unwrap_or_default();
            if let Err(e) = writeln!(file, "{line}") {
                self.write_error = Some(format!("cannot write memorization.jsonl: {e}"));
            }
        }
    }

    fn on_evaluating(&mut self) {
        self.bar.set_message("evaluating every layer");
    }
}

/// Keeps the lines of a JSON-lines file that `keep` accepts.
fn filter_lines(path: &Path, keep: impl Fn(&serde_json::Value) -> bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| keep(&v)))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, kept).with_context(|| format!("cannot write {}", path.display()))
}

/// Opens `path` for writing: appended to when resuming, else emptied.
fn open_lines(path: &Path, resume: bool) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resume)
        .truncate(!resume)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// The progress bar of a training command: steps done of `steps`.
pub fn step_bar(steps: usize) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// How a local run ended. `Err` from `train_into` is kept for files that
/// cannot be written; a run that fails to train is a `Failed` result.
pub struct Trained {
    pub status: RunStatus,
    pub evaluations: Vec<Evaluation>,
    pub steps: usize,
    pub last_loss: Option<f64>,
    pub error: Option<String>,
}

/// Set when the user presses Ctrl-C; runs stop at their next step.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, Ordering::Relaxed);
        }
    });
    interrupted
}

pub fn read_run_spec(spec_path: &Path) -> anyhow::Result<RunSpec> {
    let text = std::fs::read_to_string(spec_path)
        .with_context(|| format!("cannot read the spec {}", spec_path.display()))?;
    let is_json = spec_path.extension().is_some_and(|e| e == "json");
    if is_json {
        RunSpec::from_json(&text)
    } else {
        RunSpec::from_toml(&text)
    }
    .map_err(|e| anyhow::anyhow!("{}: invalid spec: {e}", spec_path.display()))
}

/// runs/<name>, with the name made one folder's name (`-` for the rest).
fn default_out_dir(name: &str) -> PathBuf {
    let folder = folder_safe(name, ".-_", '-');
    let folder = if folder.chars().all(|c| c == '.') {
        "run".to_string()
    } else {
        folder
    };
    Path::new("runs").join(folder)
}

/// `name` with every character other than ASCII letters, digits and `keep`
/// replaced by `with`.
pub fn folder_safe(name: &str, keep: &str, with: char) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || keep.contains(c) {
                c
            } else {
                with
            }
        })
        .collect()
}

/// `registry` opens the data folder's registry, needed only when the spec
/// names a registered data set.
pub async fn run<F, R>(
    spec_path: &Path,
    out: Option<&Path>,
    resume: bool,
    registry: F,
) -> anyhow::Result<()>
where
    F: FnOnce() -> R,
    R: Future<Output = anyhow::Result<crate::datasets::Registry>>,
{
    let mut spec = read_run_spec(spec_path)?;
    let names_dataset = spec.data.dataset_name().is_some()
        || spec
            .eval
            .data
            .as_ref()
            .is_some_and(|d| d.dataset_name().is_some());
    if names_dataset {
        registry()
            .await?
            .resolve(&mut spec, "", Owner::DEFAULT_TEAM)
            .await
            .with_context(|| format!("{}", spec_path.display()))?;
    }
    let default_out;
    let out = match out {
        Some(out) => out,
        None => {
            default_out = default_out_dir(&spec.name);
            eprintln!("writing into {}", default_out.display());
            &default_out
        }
    };
    if resume {
        check_resumable(&spec, out)?;
    }
    let trained = train_into(&spec, out, resume, interrupt_flag()).await?;
    match trained.status {
        RunStatus::Succeeded => {
            println!(
                "finished {} steps, final loss {:.4}",
                trained.steps,
                trained.last_loss.unwrap_or(f64::NAN)
            );
            print_table(&trained.evaluations);
            println!("wrote {}", out.display());
            Ok(())
        }
        RunStatus::Cancelled => bail!(
            "interrupted after {} steps; the last end-of-epoch checkpoint is kept in {}; \
             continue with `sslab train --spec {} --out {} --resume`",
            trained.steps,
            out.display(),
            spec_path.display(),
            out.display()
        ),
        _ => bail!("training failed: {}", trained.error.unwrap_or_default()),
    }
}

/// A run can be resumed from `out` when it was trained there with this very
/// spec. Keeps the metrics of the epochs the checkpoint holds and drops those
/// of the unfinished epoch, which the resumed run trains again.
fn check_resumable(spec: &RunSpec, out: &Path) -> anyhow::Result<()> {
    let run_file = out.join("run.json");
    let text = std::fs::read_to_string(&run_file)
        .with_context(|| format!("cannot resume: cannot read {}", run_file.display()))?;
    let previous: RunFileIn = serde_json::from_str(&text)
        .with_context(|| format!("cannot resume: {} is not a run file", run_file.display()))?;
    if previous.spec != *spec {
        bail!(
            "cannot resume: the spec differs from the one {} was trained with",
            out.display()
        );
    }
    let checkpoint = out.join("checkpoint.safetensors");
    let epochs = sslab_engine::train::checkpoint_epochs(&checkpoint)
        .with_context(|| format!("cannot resume from {}", checkpoint.display()))?;
    let kept_steps = epochs * (spec.total_steps() / spec.schedule.epochs);
    filter_lines(&out.join("metrics.jsonl"), |v| {
        v["step"].as_u64().is_some_and(|s| s as usize <= kept_steps)
    })?;
    filter_lines(&out.join("memorization.jsonl"), |v| {
        v["epoch"].as_u64().is_some_and(|e| e as usize <= epochs)
    })
}

/// Trains `spec` with a progress bar, writing `run.json`, `metrics.jsonl`,
/// `evaluations.json` and the checkpoint into `out`; with `resume`, continues
/// from the checkpoint there and appends to the metrics.
pub async fn train_into(
    spec: &RunSpec,
    out: &Path,
    resume: bool,
    interrupted: Arc<AtomicBool>,
) -> anyhow::Result<Trained> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let started_at = now_ms();
    let run_file = out.join("run.json");
    let mut record = RunFile {
        spec,
        status: RunStatus::Running,
        started_at,
        finished_at: None,
        error: None,
        steps: 0,
        last_loss: None,
    };
    write_json(&run_file, &record)?;

    let metrics_path = out.join("metrics.jsonl");
    let metrics = open_lines(&metrics_path, resume)?;
    let memorization = match spec.eval.memorization {
        Some(_) => Some(open_lines(&out.join("memorization.jsonl"), resume)?),
        None => None,
    };
    let mut observer = CliObserver {
        bar: step_bar(spec.total_steps()),
        metrics: std::io::BufWriter::new(metrics),
        memorization,
        write_error: None,
        interrupted,
        steps: 0,
        last_loss: None,
    };
    let checkpoint = out.join("checkpoint.safetensors");
    let spec_for_job = spec.clone().into_valid()?;
    let (result, mut observer) = tokio::task::spawn_blocking(move || {
        let device = sslab_engine::default_device();
        let result =
            sslab_engine::train::start(&spec_for_job, resume, &device, &checkpoint, &mut observer);
        (result, observer)
    })
    .await?;
    observer.bar.finish_and_clear();
    let _ = observer.metrics.flush();
    record.steps = observer.steps;
    record.last_loss = observer.last_loss;
    record.finished_at = Some(now_ms());

    let mut evaluations = Vec::new();
    if let Some(e) = observer.write_error.take() {
        record.status = RunStatus::Failed;
        record.error = Some(format!("{e} (in {})", out.display()));
    } else {
        match result {
            Ok(Outcome::Finished {
                evaluations: rows,
                last_loss,
            }) => {
                record.status = RunStatus::Succeeded;
                record.last_loss = Some(last_loss);
                write_json(&out.join("evaluations.json"), &rows)?;
                evaluations = rows;
            }
            Ok(Outcome::Stopped { step }) => {
                record.status = RunStatus::Cancelled;
                record.steps = step;
            }
            Err(e) => {
                record.status = RunStatus::Failed;
                record.error = Some(e.to_string());
            }
        }
    }
    write_json(&run_file, &record)?;
    Ok(Trained {
        status: record.status,
        evaluations,
        steps: record.steps,
        last_loss: record.last_loss,
        error: record.error,
    })
}

pub fn print_table(rows: &[Evaluation]) {
    println!(
        "{:<10} {:<8} {:<12} {:>8}",
        "layer", "probe", "metric", "value"
    );
    for e in rows {
        println!(
            "{:<10} {:<8} {:<12} {:>8.4}",
            e.layer, e.probe, e.metric, e.value
        );
    }
}

#[derive(serde::Deserialize)]
struct RunFileIn {
    spec: RunSpec,
    status: RunStatus,
}

/// The spec and final weights of a run folder `sslab train` finished.
pub fn finished_run(run_dir: &Path) -> anyhow::Result<(RunSpec, PathBuf)> {
    let run_file = run_dir.join("run.json");
    let text = std::fs::read_to_string(&run_file).with_context(|| {
        format!(
            "cannot read {}; is this a folder `sslab train` wrote?",
            run_file.display()
        )
    })?;
    let run: RunFileIn = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a run file", run_file.display()))?;
    if run.status != RunStatus::Succeeded {
        bail!(
            "the run in {} did not succeed ({}); it has no final weights",
            run_dir.display(),
            run.status.as_str()
        );
    }
    let checkpoint = run_dir.join("checkpoint.safetensors");
    if !checkpoint.is_file() {
        bail!("{} is missing", checkpoint.display());
    }
    Ok((run.spec, checkpoint))
}

/// `sslab eval --run DIR --spec FILE`: the run's final weights, a new plan.
/// `registry` is opened only when the plan's `eval.data` names a data set.
pub async fn evaluate<F, R>(
    run_dir: &Path,
    spec_path: &Path,
    out: Option<&Path>,
    registry: F,
) -> anyhow::Result<()>
where
    F: FnOnce() -> R,
    R: Future<Output = anyhow::Result<crate::datasets::Registry>>,
{
    let (spec, checkpoint) = finished_run(run_dir)?;
    let plan = std::fs::read_to_string(spec_path)
        .with_context(|| format!("cannot read the plan {}", spec_path.display()))?;
    let mut request = EvaluationRequest::parse(&plan, true, &spec.layer_names())
        .map_err(|e| anyhow::anyhow!("{}: invalid plan: {e}", spec_path.display()))?;
    if let Some(data) = request
        .eval
        .data
        .as_mut()
        .filter(|d| d.dataset_name().is_some())
    {
        registry()
            .await?
            .resolve_data(data, "eval.data", Owner::DEFAULT_TEAM)
            .await
            .with_context(|| format!("{}", spec_path.display()))?;
    }
    let stem = spec_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plan".into());
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| run_dir.join(format!("evaluations-{stem}.json")));
    let rows = tokio::task::spawn_blocking(move || {
        let spec = spec.into_valid()?;
        let device = sslab_engine::default_device();
        sslab_engine::eval::evaluate_checkpoint(&spec, &checkpoint, &request.eval, &device)
    })
    .await??;
    write_json(&out, &rows)?;
    print_table(&rows);
    println!("wrote {}", out.display());
    Ok(())
}
