//! The first 20 losses of every tiny recipe, against the figures in
//! `tests/data/recipe_losses.json`: a restructuring of the spec, the methods
//! or the training loop must not move a single bit of them.
//!
//! The figures depend on the matrix kernels the CPU selects and on the
//! number of threads; on a machine that differs from the one that recorded
//! them, they are compared to 1e-3 relative instead of bit for bit.
//! `SSLAB_RECORD_LOSSES=1` rewrites the file (only for a deliberate change
//! of the numbers, said so in the commit).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sslab_engine::train::{self, Control, Observer, StepMetrics};
use sslab_shared::RunSpec;

const STEPS: usize = 20;

const RECIPES: [&str; 12] = [
    "barlow", "byol", "dino", "mae", "mocov3", "msn", "pmsn", "simclr", "simmim", "simsiam",
    "swav", "vicreg",
];

#[derive(Serialize, Deserialize)]
struct Recorded {
    /// The CPU features and thread count the figures were taken with.
    machine: String,
    /// For reading; a JSON parser may round them by an ulp.
    losses: BTreeMap<String, Vec<f64>>,
    /// The same losses as `f64::to_bits`, for the exact comparison.
    bits: BTreeMap<String, Vec<u64>>,
}

struct FirstSteps(Vec<f64>);

impl Observer for FirstSteps {
    fn on_step(&mut self, m: &StepMetrics) -> Control {
        self.0.push(m.loss);
        if self.0.len() >= STEPS {
            Control::Stop
        } else {
            Control::Continue
        }
    }
}

fn machine() -> String {
    let mut features = vec![std::env::consts::ARCH.to_string()];
    #[cfg(target_arch = "x86_64")]
    for (name, on) in [
        ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ("avx2", std::arch::is_x86_feature_detected!("avx2")),
        ("fma", std::arch::is_x86_feature_detected!("fma")),
    ] {
        if on {
            features.push(name.to_string());
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{} threads={threads}", features.join("+"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn first_losses(recipe: &str) -> Vec<f64> {
    let path = root().join(format!("recipes/{recipe}-tiny.toml"));
    let text = std::fs::read_to_string(&path).expect("the recipe is there");
    let spec = RunSpec::from_toml(&text)
        .and_then(RunSpec::into_valid)
        .expect("the recipe parses");
    let splits = sslab_engine::data::load(&spec.data).expect("the scenes generate");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut seen = FirstSteps(Vec::new());
    train::train(
        &spec,
        &splits,
        &candle_core::Device::Cpu,
        &dir.path().join("checkpoint.safetensors"),
        &mut seen,
    )
    .unwrap_or_else(|e| panic!("{recipe}: {e}"));
    assert_eq!(seen.0.len(), STEPS, "{recipe} stopped early");
    seen.0
}

#[test]
fn tiny_recipes_reproduce_their_first_losses() {
    let file = root().join("engine/tests/data/recipe_losses.json");
    let losses: BTreeMap<String, Vec<f64>> = RECIPES
        .iter()
        .map(|r| (r.to_string(), first_losses(r)))
        .collect();
    if std::env::var_os("SSLAB_RECORD_LOSSES").is_some() {
        let bits = losses
            .iter()
            .map(|(r, l)| (r.clone(), l.iter().map(|v| v.to_bits()).collect()))
            .collect();
        let recorded = Recorded {
            machine: machine(),
            losses,
            bits,
        };
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let text = serde_json::to_string_pretty(&recorded).unwrap();
        std::fs::write(&file, text + "\n").unwrap();
        return;
    }
    let text = std::fs::read_to_string(&file).expect("recorded losses");
    let recorded: Recorded = serde_json::from_str(&text).expect("the file parses");
    let exact = recorded.machine == machine();
    if !exact {
        eprintln!(
            "recorded on `{}`, running on `{}`: comparing to 1e-3 relative",
            recorded.machine,
            machine()
        );
    }
    assert_eq!(
        recorded.bits.keys().collect::<Vec<_>>(),
        losses.keys().collect::<Vec<_>>()
    );
    for (recipe, want) in &recorded.bits {
        let got = &losses[recipe];
        for (step, (&w, g)) in want.iter().zip(got).enumerate() {
            let w = f64::from_bits(w);
            if exact {
                assert_eq!(
                    w.to_bits(),
                    g.to_bits(),
                    "{recipe} step {}: {g} ≠ {w}",
                    step + 1
                );
            } else {
                assert!(
                    (w - g).abs() <= 1e-3 * w.abs().max(1e-6),
                    "{recipe} step {}: {g} vs {w}",
                    step + 1
                );
            }
        }
    }
}
