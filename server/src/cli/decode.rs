//! `sslab decode --run DIR --spec FILE --out DIR2`: trains a conditional
//! generator on a finished run's representation and writes what it draws:
//! `samples.png`, `interpolation.png` and `decoder.json`. Its training
//! state is kept in `DIR2/state` until it ends, so that Ctrl-C and then
//! `--resume` carry on where it was saved.

use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::Context;
use sslab_shared::decoder::DecoderSpec;
use sslab_shared::spec::DataSpec;

use super::train::{finished_run, interrupt_flag, write_json};
use crate::store::Owner;

pub async fn run<F, R>(
    run_dir: &Path,
    spec_path: &Path,
    out: &Path,
    resume: bool,
    registry: F,
) -> anyhow::Result<()>
where
    F: FnOnce() -> R,
    R: Future<Output = anyhow::Result<crate::datasets::Registry>>,
{
    let text = std::fs::read_to_string(spec_path)
        .with_context(|| format!("cannot read {}", spec_path.display()))?;
    let mut spec = DecoderSpec::from_toml(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", spec_path.display()))?;
    let (run, checkpoint) = finished_run(run_dir)?;
    if let Some(data @ DataSpec::Dataset { .. }) = spec.data.as_mut() {
        registry()
            .await?
            .resolve_data(data, "data", Owner::DEFAULT_TEAM)
            .await?;
    }
    if spec.name.is_empty() {
        spec.name = format!("{}-{}", run.name, spec.kind.as_str());
    }
    let state = out.join("state");
    match (state.exists(), resume) {
        (true, false) => anyhow::bail!(
            "{} holds an interrupted decoder; pass --resume to carry on, or delete it to start over",
            state.display()
        ),
        (false, true) => anyhow::bail!("{} holds no decoder to resume", state.display()),
        _ => {}
    }
    // What the state was saved for: a resume with another spec or run
    // would not end where the first attempt was going.
    let run_path = run_dir
        .canonicalize()
        .unwrap_or_else(|_| run_dir.to_path_buf());
    let saved_for = serde_json::json!({"run": run_path, "spec": spec});
    let saved_for_file = state.join("spec.json");
    if resume {
        let earlier: serde_json::Value = std::fs::read_to_string(&saved_for_file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        if earlier != saved_for {
            anyhow::bail!(
                "{} was saved for another run or spec ({}); resume with those, or delete it to start over",
                state.display(),
                saved_for_file.display()
            );
        }
    } else {
        std::fs::create_dir_all(&state)
            .with_context(|| format!("cannot create {}", state.display()))?;
        write_json(&saved_for_file, &saved_for)?;
    }
    let job_spec = spec.clone();
    let interrupted = interrupt_flag();
    let stop = interrupted.clone();
    let thread_state = state.clone();
    let decoded = tokio::task::spawn_blocking(move || {
        let device = sslab_engine::default_device();
        let mut last_tenth = usize::MAX;
        let state = Some(thread_state.as_path());
        sslab_engine::generate::decode::decode(
            &run,
            &checkpoint,
            &job_spec,
            &device,
            state,
            &mut |p| {
                let tenth = p.step * 10 / p.steps.max(1);
                if tenth != last_tenth {
                    last_tenth = tenth;
                    println!(
                        "decoder {}/{} ({}): step {}/{} loss {:.4}",
                        p.layer + 1,
                        p.layers,
                        job_spec.layers[p.layer],
                        p.step,
                        p.steps,
                        p.loss
                    );
                }
                !stop.load(Ordering::Relaxed)
            },
        )
    })
    .await?;
    let decoded = match decoded {
        Ok(d) => d,
        Err(_) if interrupted.load(Ordering::Relaxed) => anyhow::bail!(
            "interrupted; its state is in {} (`--resume` carries on)",
            state.display()
        ),
        Err(e) => {
            // Kept when any training was saved: `--resume` can carry on
            // once what stopped it is fixed (a full disk, say).
            if !saved_training(&state) {
                let _ = std::fs::remove_dir_all(&state);
            }
            return Err(e.into());
        }
    };
    for l in &decoded.report.layers {
        println!(
            "{}: conditioning accuracy {:.3} (chance {:.3}), sample diversity {:.3} (two real images of a class: {:.3})",
            l.layer, l.conditioning_accuracy, l.chance, l.sample_diversity, l.real_pair_distance
        );
    }
    for (name, bytes) in decoded.files() {
        let file = out.join(name);
        std::fs::write(&file, bytes).with_context(|| format!("cannot write {}", file.display()))?;
    }
    let file = out.join("decoder.json");
    write_json(&file, &decoded.report)?;
    std::fs::remove_dir_all(&state)
        .with_context(|| format!("cannot remove {}", state.display()))?;
    println!("wrote {}", file.display());
    Ok(())
}

/// Whether `state` holds any decoder's saved training.
fn saved_training(state: &Path) -> bool {
    std::fs::read_dir(state).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
    })
}
