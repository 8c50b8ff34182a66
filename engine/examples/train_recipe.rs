//! Trains a recipe with the engine alone and prints kNN per layer, before and
//! after training: `cargo run -p sslab-engine --release --example train_recipe -- recipes/simclr-tiny.toml`
//! (a spec in JSON works too, by its extension).

use std::path::Path;

use sslab_engine::train::{Control, Observer, Outcome, StepMetrics, train};
use sslab_engine::{data, eval, model};
use sslab_shared::RunSpec;

struct Print;

impl Observer for Print {
    fn on_step(&mut self, m: &StepMetrics) -> Control {
        if m.step.is_multiple_of(10) || m.step == m.total_steps {
            eprintln!(
                "step {}/{} epoch {} loss {:.4} lr {:.2e} {:.0} img/s, {:.0}% waiting for data",
                m.step,
                m.total_steps,
                m.epoch,
                m.loss,
                m.lr,
                m.images_per_sec,
                100.0 * m.data_wait
            );
        }
        Control::Continue
    }

    fn on_memorization(&mut self, p: &sslab_shared::api::MemorizationPoint) {
        eprintln!(
            "epoch {}: dejavu_gap {:+.3} (canaries {:.3}, held out {:.3}; most confident 20 %: {:+.3})",
            p.epoch, p.dejavu_gap, p.canary_top1, p.heldout_top1, p.dejavu_gap_confident
        );
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: no other thread has started.
    unsafe { sslab_engine::prepare_process() };
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: train_recipe RECIPE.toml")?;
    let text = std::fs::read_to_string(&path)?;
    let spec = if path.ends_with(".json") {
        RunSpec::from_json(&text)?
    } else {
        RunSpec::from_toml(&text)?
    }
    .into_valid()?;
    let device = sslab_engine::default_device();
    let splits = data::load(&spec.data)?;
    let (untrained, _) = model::build(&spec, &device)?;
    for e in eval::evaluate(&untrained, &splits, &spec.eval, spec.seed, &device)? {
        println!(
            "untrained {} {} {} {:.3}",
            e.layer, e.probe, e.metric, e.value
        );
    }
    let started = std::time::Instant::now();
    let ck = std::env::temp_dir().join("sslab-train-recipe.safetensors");
    if let Outcome::Finished { evaluations, .. } =
        train(&spec, &splits, &device, Path::new(&ck), &mut Print)?
    {
        for e in evaluations {
            println!(
                "trained {} {} {} {:.3}",
                e.layer, e.probe, e.metric, e.value
            );
        }
    }
    println!("{:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
