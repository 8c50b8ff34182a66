//! A déjà vu audit from a spec, printing each snapshot: `cargo run -p
//! sslab-engine --release --example dejavu -- recipes/dejavu-tiny.toml`.
//! With the default recipe it shows the paper's trend on a laptop CPU: the
//! target's edge over the reference on background crops grows with epochs
//! while the full-image kNN accuracy levels off.

use sslab_engine::dejavu::{AuditObserver, Model};
use sslab_engine::train::{Control, StepMetrics};
use sslab_shared::audit::{AuditSpec, SnapshotReport};

struct Print;

impl AuditObserver for Print {
    fn on_step(&mut self, model: Model, m: &StepMetrics) -> Control {
        if m.step.is_multiple_of(200) {
            eprintln!(
                "{model:?} step {}/{} loss {:.4}",
                m.step, m.total_steps, m.loss
            );
        }
        Control::Continue
    }

    fn on_snapshot(&mut self, s: &SnapshotReport) {
        let at = |f: f64| {
            s.curve
                .iter()
                .find(|p| (p.fraction - f).abs() < 1e-9)
                .expect("fraction")
        };
        println!(
            "epoch {:>4}  kNN {:.3}/{:.3}  top-1 target {:.3} reference {:.3} gap {:+.3}  most confident 20 %: {:.3} vs {:.3} gap {:+.3}  memorized {} forgotten {} correlated {}",
            s.epoch,
            s.knn_target,
            s.knn_reference,
            at(1.0).target_top1,
            at(1.0).reference_top1,
            at(1.0).target_top1 - at(1.0).reference_top1,
            at(0.2).target_top1,
            at(0.2).reference_top1,
            at(0.2).target_top1 - at(0.2).reference_top1,
            s.four_way.memorized,
            s.four_way.forgotten,
            s.four_way.correlated
        );
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: no other thread has started.
    unsafe { sslab_engine::prepare_process() };
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "recipes/dejavu-tiny.toml".into());
    let spec = AuditSpec::from_toml(&std::fs::read_to_string(&path)?)?;
    let dir = std::env::temp_dir().join("sslab-dejavu-example");
    std::fs::create_dir_all(&dir)?;
    let started = std::time::Instant::now();
    let report =
        sslab_engine::dejavu::run(&spec, &sslab_engine::default_device(), &dir, &mut Print)?;
    let s = &report.split;
    println!(
        "A-only {} B-only {} shared {} public {}; attacked {} + {}; skipped {:?}",
        s.a_only, s.b_only, s.shared, s.public, s.attacked_a, s.attacked_b, s.skipped
    );
    println!("{:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
