//! Joint-embedding against reconstruction, block by block:
//! `cargo run -p sslab-engine --release --example cka_families [-- OUT.svg]`.
//! Trains SimCLR, VICReg, DINO and MAE (each its tiny recipe's method and
//! settings) on the same ViT and data (`recipes/mae-tiny.toml`'s), then
//! prints the linear CKA of every pair at every block (after attention and
//! after the MLP) and at the representation, the mean over joint-embedding
//! pairs against the mean over pairs with MAE, the family's dendrogram at
//! the representation, each run's mean attention distance and entropy per
//! block, and writes the pairs × depth heatmap as SVG (default
//! `docs/cka-families.svg`).

use std::fmt::Write as _;
use std::path::Path;

use sslab_engine::train::{Control, Observer, Outcome, StepMetrics, train};
use sslab_engine::{cka, data};
use sslab_shared::RunSpec;
use sslab_shared::spec::ProbeKind;

const METHODS: [&str; 4] = ["simclr", "vicreg", "dino", "mae"];

struct Quiet;

impl Observer for Quiet {
    fn on_step(&mut self, m: &StepMetrics) -> Control {
        if m.step == m.total_steps {
            eprintln!("  loss {:.4} after {} steps", m.loss, m.step);
        }
        Control::Continue
    }
}

fn recipe(name: &str) -> RunSpec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../recipes/{name}-tiny.toml"));
    RunSpec::from_toml(&std::fs::read_to_string(&path).expect("a tiny recipe"))
        .expect("a valid recipe")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: no other thread has started.
    unsafe { sslab_engine::prepare_process() };
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cka-families.svg").into());
    let base = recipe("mae");
    let device = sslab_engine::default_device();
    let dir = std::env::temp_dir().join(format!("sslab-cka-families-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut runs = Vec::new();
    for m in METHODS {
        let mut spec = recipe(m);
        // One backbone, one data set, one length for every method.
        spec.backbone = base.backbone.clone();
        spec.data = base.data.clone();
        spec.schedule = base.schedule.clone();
        spec.eval.memorization = None;
        if !spec.eval.probes.contains(&ProbeKind::Attention) {
            spec.eval.probes.push(ProbeKind::Attention);
        }
        let valid = spec.clone().into_valid()?;
        let splits = data::load(&valid.data)?;
        let ckpt = dir.join(format!("{m}.safetensors"));
        let started = std::time::Instant::now();
        eprintln!(
            "training {m} on a ViT ({} blocks, width {})",
            spec.backbone.depth, spec.backbone.width
        );
        let Outcome::Finished { evaluations, .. } =
            train(&valid, &splits, &device, &ckpt, &mut Quiet)?
        else {
            return Err(format!("{m} stopped").into());
        };
        let knn = evaluations
            .iter()
            .find(|e| e.layer == "backbone" && e.probe == "knn" && e.metric == "top1")
            .map_or(f64::NAN, |e| e.value);
        eprintln!(
            "  {:.0} s, backbone kNN top-1 {knn:.3}",
            started.elapsed().as_secs_f64()
        );
        let attention: Vec<(String, f64)> = evaluations
            .iter()
            .filter(|e| e.probe == "attention")
            .map(|e| (format!("{} {}", e.layer, e.metric), e.value))
            .collect();
        runs.push((m, spec, ckpt, knn, attention));
    }
    // The blocks and the representation: the names every run shares.
    let names: Vec<String> = base
        .block_names()
        .into_iter()
        .chain(["backbone".to_string()])
        .collect();
    let mut pairs = Vec::new();
    for i in 0..runs.len() {
        for j in i + 1..runs.len() {
            let pick = |spec: &RunSpec| -> Vec<usize> {
                let all = spec.cka_layer_names();
                names
                    .iter()
                    .map(|n| all.iter().position(|a| a == n).unwrap())
                    .collect()
            };
            let (a, b) = (&runs[i], &runs[j]);
            let (pa, pb) = (pick(&a.1), pick(&b.1));
            let (m, _) = cka::compare_runs(&run(a, &pa), &run(b, &pb), &base.data, None, &device)?;
            // The same depth on both sides: the matrix's diagonal.
            let diagonal: Vec<f64> = (0..names.len()).map(|k| m[k][k]).collect();
            pairs.push((
                format!("{}–{}", a.0, b.0),
                a.0 != "mae" && b.0 != "mae",
                diagonal,
            ));
        }
    }
    println!(
        "backbone kNN top-1: {}",
        runs.iter()
            .map(|r| format!("{} {:.3}", r.0, r.3))
            .collect::<Vec<_>>()
            .join(", ")
    );
    print!("{:<16}", "pair");
    for n in &names {
        print!(" {:>14}", n);
    }
    println!();
    for (label, _, d) in &pairs {
        print!("{label:<16}");
        for v in d {
            print!(" {v:>14.3}");
        }
        println!();
    }
    let mean = |joint: bool, k: usize| {
        let v: Vec<f64> = pairs
            .iter()
            .filter(|p| p.1 == joint)
            .map(|p| p.2[k])
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    print!("{:<16}", "joint vs joint");
    for k in 0..names.len() {
        print!(" {:>14.3}", mean(true, k));
    }
    println!();
    print!("{:<16}", "joint vs mae");
    for k in 0..names.len() {
        print!(" {:>14.3}", mean(false, k));
    }
    println!();
    // The family at the representation: which runs learned alike.
    let backbone = |spec: &RunSpec| {
        vec![
            spec.cka_layer_names()
                .iter()
                .position(|a| a == "backbone")
                .unwrap(),
        ]
    };
    let picks: Vec<Vec<usize>> = runs.iter().map(|r| backbone(&r.1)).collect();
    let family: Vec<cka::Run> = runs.iter().zip(&picks).map(|(r, p)| run(r, p)).collect();
    let (m, _) = cka::family(&family, &base.data, None, &device)?;
    let (merges, order) = cka::average_linkage(&m);
    let name = |k: usize| -> String {
        let mut leaves = vec![k];
        while leaves.iter().any(|&l| l >= runs.len()) {
            leaves = leaves
                .iter()
                .flat_map(|&l| match l.checked_sub(runs.len()) {
                    Some(i) => vec![merges[i].left, merges[i].right],
                    None => vec![l],
                })
                .collect();
        }
        let names: Vec<&str> = leaves.iter().map(|&l| runs[l].0).collect();
        format!("{{{}}}", names.join(", "))
    };
    println!(
        "family at the representation, dendrogram order: {}",
        order
            .iter()
            .map(|&k| runs[k].0)
            .collect::<Vec<_>>()
            .join(", ")
    );
    for mg in &merges {
        println!(
            "  merge {} + {} at 1 − CKA = {:.3}",
            name(mg.left),
            name(mg.right),
            mg.distance
        );
    }
    println!("attention per block (mean distance in px / entropy in nats):");
    for r in &runs {
        let value = |key: String| {
            r.4.iter()
                .find(|(k, _)| *k == key)
                .map_or(f64::NAN, |(_, v)| *v)
        };
        let cells: Vec<String> = (0..base.backbone.depth)
            .map(|b| {
                format!(
                    "{:.2} / {:.2}",
                    value(format!("blocks.{b}.attn mean_distance")),
                    value(format!("blocks.{b}.attn entropy"))
                )
            })
            .collect();
        println!("  {:<8} {}", r.0, cells.join("   "));
    }
    std::fs::write(&out, heatmap(&names, &pairs))?;
    println!("wrote {out}");
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// Method, spec, checkpoint, backbone kNN top-1, attention rows by name.
type Trained = (
    &'static str,
    RunSpec,
    std::path::PathBuf,
    f64,
    Vec<(String, f64)>,
);

fn run<'a>(r: &'a Trained, layers: &'a [usize]) -> cka::Run<'a> {
    cka::Run {
        label: r.0,
        spec: &r.1,
        checkpoint: r.2.as_path(),
        layers,
    }
}

/// Pairs (rows) × depth (columns), white at 0 to blue at 1.
fn heatmap(names: &[String], pairs: &[(String, bool, Vec<f64>)]) -> String {
    let (cell, left, top) = (36.0, 120.0, 110.0);
    let (w, h) = (
        left + names.len() as f64 * cell + 10.0,
        top + pairs.len() as f64 * cell + 10.0,
    );
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n"
    );
    for (k, n) in names.iter().enumerate() {
        let x = left + k as f64 * cell + cell / 2.0;
        let _ = writeln!(
            s,
            "<text x=\"{x}\" y=\"{}\" transform=\"rotate(-55 {x} {})\">{n}</text>",
            top - 6.0,
            top - 6.0
        );
    }
    for (r, (label, _, d)) in pairs.iter().enumerate() {
        let y = top + r as f64 * cell;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{label}</text>",
            left - 6.0,
            y + cell / 2.0 + 4.0
        );
        for (k, v) in d.iter().enumerate() {
            let t = v.clamp(0.0, 1.0);
            let c = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
            let x = left + k as f64 * cell;
            let fill = if t > 0.55 { "#fff" } else { "#1d232b" };
            let _ = writeln!(
                s,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{cell}\" height=\"{cell}\" fill=\"rgb({},{},{})\" stroke=\"#fff\"/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"9\" fill=\"{fill}\">{v:.2}</text>",
                c(255.0, 36.0),
                c(255.0, 87.0),
                c(255.0, 197.0),
                x + cell / 2.0,
                y + cell / 2.0 + 3.0
            );
        }
    }
    s.push_str("</svg>\n");
    s
}
