//! `sslab decode --run DIR --spec FILE --out DIR2`: trains a conditional
//! generator on a finished run's representation and writes what it draws:
//! `samples.png`, `interpolation.png` and `decoder.json`.

use std::path::Path;

use anyhow::Context;
use sslab_shared::decoder::DecoderSpec;
use sslab_shared::spec::DataSpec;

use super::train::{finished_run, write_json};
use crate::store::Owner;

pub async fn run<F, R>(
    run_dir: &Path,
    spec_path: &Path,
    out: &Path,
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
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let job_spec = spec.clone();
    let decoded = tokio::task::spawn_blocking(move || {
        let device = sslab_engine::default_device();
        let mut last_tenth = usize::MAX;
        sslab_engine::generate::decode::decode(&run, &checkpoint, &job_spec, &device, &mut |p| {
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
            true
        })
    })
    .await??;
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
    println!("wrote {}", file.display());
    Ok(())
}
