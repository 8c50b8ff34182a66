//! `sslab train` and `sslab sweep`: a recipe in, the run's files out; bad
//! recipes refused with a message that names the field.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn sslab(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sslab"))
        .args(args)
        .output()
        .expect("run sslab")
}

fn train(spec: &Path, out: &Path) -> std::process::Output {
    sslab(&[
        "train",
        "--spec",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}

fn audit(spec: &Path, out: &Path) -> std::process::Output {
    sslab(&[
        "audit",
        "--spec",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}

fn eval(run: &Path, plan: &Path) -> std::process::Output {
    sslab(&[
        "eval",
        "--run",
        run.to_str().unwrap(),
        "--spec",
        plan.to_str().unwrap(),
    ])
}

const TINY: &str = r#"
name = "cli-tiny"
seed = 2
[data]
source = "scenes"
classes = 3
train_images = 48
test_images = 24
[backbone]
width = 8
[projector]
dims = "32-16"
[optimizer]
batch_size = 16
[schedule]
epochs = 2
"#;

#[test]
fn train_writes_the_run_files() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("run.toml");
    std::fs::write(&spec, TINY).unwrap();
    let out = dir.path().join("out");
    let res = train(&spec, &out);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );

    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["spec"]["name"], "cli-tiny");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let steps: Vec<i64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["step"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (1..=6).collect::<Vec<_>>());
    let evals: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("evaluations.json")).unwrap())
            .unwrap();
    let rows: Vec<(&str, &str, &str)> = evals
        .iter()
        .map(|e| {
            (
                e["layer"].as_str().unwrap(),
                e["probe"].as_str().unwrap(),
                e["metric"].as_str().unwrap(),
            )
        })
        .collect();
    for layer in ["backbone", "proj.0", "proj.1"] {
        for (probe, metric) in [
            ("knn", "top1"),
            ("linear", "top1"),
            ("lowshot", "top1_1shot"),
            ("rankme", "rank"),
        ] {
            assert!(
                rows.contains(&(layer, probe, metric)),
                "{layer} {probe} {metric} missing: {rows:?}"
            );
        }
    }
    assert!(
        std::fs::metadata(out.join("checkpoint.safetensors"))
            .unwrap()
            .len()
            > 1000
    );

    // Evaluated again, at one layer, on other data, without retraining.
    let plan = dir.path().join("transfer.toml");
    let text = "[eval]\nprobes = [\"linear\"]\nlayers = [\"backbone\"]\n\
                [eval.data]\nsource = \"scenes\"\nclasses = 4\ntrain_images = 40\ntest_images = 20\nseed = 8\n";
    std::fs::write(&plan, text).unwrap();
    let res = eval(&out, &plan);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let text = std::fs::read_to_string(out.join("evaluations-transfer.json")).unwrap();
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0]["layer"].as_str(), rows[0]["probe"].as_str()),
        (Some("backbone"), Some("linear"))
    );
    // The training's own rows are kept.
    assert!(out.join("evaluations.json").exists());
    std::fs::write(&plan, "[eval]\nlayers = [\"head\"]\n").unwrap();
    let res = eval(&out, &plan);
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("eval.layers"));
}

#[test]
fn a_recipe_alone_trains_into_runs_by_its_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("run.toml"),
        TINY.replace("name = \"cli-tiny\"", "name = \"cli tiny/2\""),
    )
    .unwrap();
    let on = |device: &str| {
        Command::new(env!("CARGO_BIN_EXE_sslab"))
            .args(["train", "run.toml"])
            .env("SSLAB_DEVICE", device)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    // A device this build cannot open, or no device at all, is refused
    // before anything is written.
    for (device, says) in [
        ("cuda:3", "needs a CUDA build"),
        ("gpu0", "is not a device"),
    ] {
        let res = on(device);
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success(), "{device}");
        assert!(err.contains("SSLAB_DEVICE") && err.contains(says), "{err}");
        assert!(!dir.path().join("runs").exists(), "{device}");
    }
    // `sslab worker` reads the variable as its own list, one slot per
    // device, and names a bad entry as its `--device`.
    let res = Command::new(env!("CARGO_BIN_EXE_sslab"))
        .args(["worker", "--server", "http://127.0.0.1:9", "--token", "t"])
        .env("SSLAB_DEVICE", "cpu,gpu0")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(
        err.contains("--device") && err.contains("`gpu0` is not a device"),
        "{err}"
    );
    let res = on("cpu");
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let out = dir.path().join("runs/cli-tiny-2");
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["status"], "succeeded");
    assert!(out.join("checkpoint.safetensors").exists());
}

#[test]
fn bad_recipes_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bad.toml");
    std::fs::write(&spec, TINY.replace("width = 8", "width = 8\nwidht = 9")).unwrap();
    let out = dir.path().join("out");
    let res = train(&spec, &out);
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("backbone.widht") && err.contains("unknown field"),
        "{err}"
    );
    assert!(!out.exists(), "nothing is written for a refused spec");

    std::fs::write(&spec, TINY.replace("epochs = 2", "epochs = 0")).unwrap();
    let err = String::from_utf8_lossy(&train(&spec, &out).stderr).into_owned();
    assert!(err.contains("schedule.epochs"), "{err}");

    let missing = dir.path().join("nope.toml");
    let res = train(&missing, &out);
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("cannot read the spec"));
}

#[test]
fn an_unusable_data_folder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-folder");
    std::fs::write(&file, "x").unwrap();
    let res = Command::new(env!("CARGO_BIN_EXE_sslab"))
        .args(["migrate", "--data-dir", file.to_str().unwrap()])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("cannot create the data folder") && err.contains("not-a-folder"),
        "{err}"
    );
}

const TINY_SWEEP: &str = r#"
name = "cli-sweep"
seeds = [1, 2]
[[axes]]
path = "projector.dims"
values = ["32-8", "32-16"]
[base.data]
source = "scenes"
classes = 3
train_images = 48
test_images = 24
[base.backbone]
width = 8
[base.optimizer]
batch_size = 16
[base.schedule]
epochs = 1
[base.eval]
probes = ["knn", "rankme"]
"#;

fn sweep(spec: &Path, out: &Path) -> std::process::Output {
    sslab(&[
        "sweep",
        "--spec",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}

#[test]
fn sweep_runs_every_point_and_writes_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("sweep.toml");
    std::fs::write(&spec, TINY_SWEEP).unwrap();
    let out = dir.path().join("out");
    let res = sweep(&spec, &out);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    // One folder per run, each a complete `sslab train` folder.
    let mut folders: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    assert_eq!(
        folders,
        [
            "000-dims=32-8-seed=1",
            "001-dims=32-8-seed=2",
            "002-dims=32-16-seed=1",
            "003-dims=32-16-seed=2"
        ]
    );
    for f in &folders {
        assert!(out.join(f).join("checkpoint.safetensors").is_file());
    }
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "run_id,name,status,projector.dims,seed,layer,knn.top1,rankme.rank"
    );
    // Four runs × three layers (backbone, proj.0, proj.1).
    assert_eq!(lines.len(), 1 + 4 * 3, "{csv}");
    assert!(lines[1].starts_with(
        "000-dims=32-8-seed=1,cli-sweep: dims=32-8 seed=1,succeeded,32-8,1,backbone,"
    ));
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(stdout.contains("[4/4]"), "{stdout}");
}

#[test]
fn bad_sweeps_are_refused_before_any_run() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("sweep.toml");
    let out = dir.path().join("out");
    for (text, words) in [
        (
            TINY_SWEEP.replace("projector.dims", "projector.dimz"),
            "axes[0].path",
        ),
        (
            TINY_SWEEP.replace("\"32-16\"", "\"32-x\""),
            "axes[0].values[1]",
        ),
        (
            TINY_SWEEP.replace("seeds = [1, 2]", "seeds = [1, 2]\nmode = \"grd\""),
            "mode",
        ),
    ] {
        std::fs::write(&spec, text).unwrap();
        let res = sweep(&spec, &out);
        assert!(!res.status.success());
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(
            err.contains(words) && err.contains("invalid sweep"),
            "{err}"
        );
        assert!(!out.exists(), "nothing is written for a refused sweep");
    }
    std::fs::write(&spec, TINY_SWEEP).unwrap();
    let res2 = sslab(&[
        "sweep",
        "--spec",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-runs",
        "3",
    ]);
    assert!(!res2.status.success());
    let err = String::from_utf8_lossy(&res2.stderr);
    assert!(err.contains("4 runs") && err.contains("cap of 3"), "{err}");
    assert!(!out.exists());
}

/// A CIFAR-10 binary folder as the format lays it out: one label byte, then
/// the red, green and blue 32×32 planes, per record.
fn write_cifar10(dir: &Path, per_file: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (k, f) in (1..=5)
        .map(|i| format!("data_batch_{i}.bin"))
        .chain(["test_batch.bin".to_string()])
        .enumerate()
    {
        let mut bytes = Vec::new();
        for i in 0..per_file {
            let label = (i % 10) as u8;
            bytes.push(label);
            // Each class its own colour, with a little noise.
            for c in 0..3usize {
                for p in 0..1024usize {
                    let base = (label as usize * 25 + c * 60) % 256;
                    bytes.push(((base + (p * 7 + i * 13 + k) % 17) % 256) as u8);
                }
            }
        }
        std::fs::write(dir.join(f), bytes).unwrap();
    }
}

#[test]
fn train_reads_a_cifar10_folder_and_names_a_truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cifar");
    write_cifar10(&data, 20);
    let recipe = format!(
        r#"
name = "cifar-tiny"
[data]
source = "cifar10"
path = "{}"
[backbone]
width = 8
[projector]
dims = "32-16"
[optimizer]
batch_size = 20
[schedule]
epochs = 1
[eval]
probes = ["knn"]
"#,
        data.display()
    );
    let spec = dir.path().join("cifar.toml");
    std::fs::write(&spec, &recipe).unwrap();
    let out = dir.path().join("out");
    let res = train(&spec, &out);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let evals: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("evaluations.json")).unwrap())
            .unwrap();
    assert_eq!(evals.as_array().unwrap().len(), 3, "kNN at three layers");

    let f = data.join("data_batch_3.bin");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 10]).unwrap();
    let res = train(&spec, &dir.path().join("out2"));
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("data_batch_3.bin") && err.contains("truncated"),
        "{err}"
    );
}

/// Ctrl-C after the first checkpoint, then `--resume`: every step is logged
/// once and the probes read exactly what a run never stopped reads.
#[test]
fn an_interrupted_run_resumes_to_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("run.toml");
    std::fs::write(&spec, TINY.replace("epochs = 2", "epochs = 30")).unwrap();
    let straight = dir.path().join("straight");
    assert!(train(&spec, &straight).status.success());

    let out = dir.path().join("stopped");
    let child = Command::new(env!("CARGO_BIN_EXE_sslab"))
        .args(["train", "--spec", spec.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !out.join("checkpoint.safetensors").exists() {
        assert!(started.elapsed().as_secs() < 300, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let stopped = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&stopped.stderr);
    assert!(!stopped.status.success(), "the run finished before Ctrl-C");
    assert!(err.contains("--resume"), "{err}");

    // Another spec cannot continue this run.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, TINY.replace("epochs = 2", "epochs = 31")).unwrap();
    let res = sslab(&[
        "train",
        "--spec",
        other.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--resume",
    ]);
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("spec differs"));

    let res = sslab(&[
        "train",
        "--spec",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--resume",
    ]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let steps: Vec<u64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (1..=90).collect::<Vec<u64>>());
    let evals = |d: &Path| std::fs::read_to_string(d.join("evaluations.json")).unwrap();
    assert_eq!(evals(&out), evals(&straight));
}

const AUDIT: &str = r#"
name = "cli-audit"
snapshots = [1]
[split]
per_class = 6
[attack]
k = 10
[run]
seed = 3
[run.data]
source = "scenes"
classes = 3
train_images = 90
test_images = 30
[run.backbone]
width = 8
[run.projector]
dims = "32-16"
[run.optimizer]
batch_size = 12
[run.schedule]
epochs = 2
"#;

#[test]
fn audit_writes_the_report_and_one_row_per_attacked_image() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("audit.toml");
    std::fs::write(&spec, AUDIT).unwrap();
    let out = dir.path().join("out");
    let res = audit(&spec, &out);
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(stdout.contains("epoch    2: top-1 target"), "{stdout}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("audit.json")).unwrap()).unwrap();
    let split = &report["split"];
    assert_eq!(split["a_only"], 18);
    assert_eq!(split["b_only"], 18);
    assert_eq!(split["public"], 90 - 36);
    let snapshots = report["snapshots"].as_array().unwrap();
    assert_eq!(snapshots.len(), 2);
    assert_eq!(snapshots[1]["epoch"], 2);
    assert_eq!(snapshots[1]["curve"].as_array().unwrap().len(), 11);
    let counts = &snapshots[1]["four_way"];
    let total: u64 = ["correlated", "memorized", "forgotten", "unassociated"]
        .iter()
        .map(|k| counts[k].as_u64().unwrap())
        .sum();
    let attacked = split["attacked_a"].as_u64().unwrap() + split["attacked_b"].as_u64().unwrap();
    assert_eq!(total, attacked);
    let csv = std::fs::read_to_string(out.join("examples.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("image,set,label,class,crop_x0"));
    assert_eq!(lines.len() as u64, 1 + attacked);
    assert!(lines[1..].iter().all(|l| l.ends_with("correlated")
        || l.ends_with("memorized")
        || l.ends_with("forgotten")
        || l.ends_with("unassociated")));

    // The audit as a demo bundle: both models, the public set, the attacked
    // images with their verdicts, memorized first.
    let bundle = dir.path().join("bundle");
    let export = |args: &[&str]| {
        let mut all = vec!["export", "--out", bundle.to_str().unwrap()];
        all.extend_from_slice(args);
        sslab(&all)
    };
    let res = export(&["--audit", out.to_str().unwrap(), "--f16"]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["kind"], "audit");
    assert_eq!(manifest["models"].as_array().unwrap().len(), 2);
    assert_eq!(manifest["models"][0]["dtype"], "f16");
    assert_eq!(manifest["public"]["count"], 90 - 36);
    assert_eq!(manifest["layer"], "proj.1");
    let images = manifest["images"].as_array().unwrap();
    assert_eq!(images.len() as u64, attacked.min(24));
    let memorized = counts["memorized"].as_u64().unwrap() as usize;
    assert!(
        images[..memorized.min(images.len())]
            .iter()
            .all(|i| i["verdict"] == "memorized")
    );
    for f in manifest["files"].as_array().unwrap() {
        let len = std::fs::metadata(bundle.join(f["path"].as_str().unwrap()))
            .unwrap()
            .len();
        assert_eq!(f["bytes"], len);
    }
    let err =
        String::from_utf8_lossy(&export(&["--audit", out.to_str().unwrap()]).stderr).into_owned();
    assert!(err.contains("is not empty"), "{err}");
    let err =
        String::from_utf8_lossy(&export(&["--run", out.to_str().unwrap()]).stderr).into_owned();
    assert!(err.contains("run.json"), "{err}");

    // Bad specs are refused by field, before anything trains.
    std::fs::write(&spec, AUDIT.replace("snapshots = [1]", "snapshots = [9]")).unwrap();
    let err = String::from_utf8_lossy(&audit(&spec, &out).stderr).into_owned();
    assert!(
        err.contains("snapshots") && err.contains("epoch 9"),
        "{err}"
    );
    std::fs::write(
        &spec,
        AUDIT
            .replace("source = \"scenes\"", "source = \"cifar10\"\npath = \"/x\"")
            .replace("classes = 3\ntrain_images = 90\ntest_images = 30\n", ""),
    )
    .unwrap();
    let err = String::from_utf8_lossy(&audit(&spec, &out).stderr).into_owned();
    assert!(
        err.contains("run.data.source") && err.contains("boxes"),
        "{err}"
    );
}

/// A folder of three classes (a coloured square on a noisy background) with
/// `boxes.csv`; the last image of each class has no row.
fn write_boxed_folder(root: &Path) {
    let mut csv = String::from("file,x0,y0,x1,y1\n");
    let mut noise = 12345u32;
    for (c, colour) in [[220u8, 30, 30], [30, 200, 40], [40, 60, 220]]
        .iter()
        .enumerate()
    {
        for i in 0..16u32 {
            let (x0, y0) = ((i * 7) % 14, (i * 5) % 14);
            let img = image::RgbImage::from_fn(32, 32, |x, y| {
                if (x0..x0 + 14).contains(&x) && (y0..y0 + 14).contains(&y) {
                    image::Rgb(*colour)
                } else {
                    noise = noise.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    let v = 90 + (noise >> 26) as u8;
                    image::Rgb([v, v, v])
                }
            });
            let file = format!("class{c}/{i:02}.png");
            std::fs::create_dir_all(root.join(format!("class{c}"))).unwrap();
            img.save(root.join(&file)).unwrap();
            if i < 15 {
                csv += &format!("{file},{x0},{y0},{},{}\n", x0 + 14, y0 + 14);
            }
        }
    }
    std::fs::write(root.join("boxes.csv"), csv).unwrap();
}

#[test]
fn audit_runs_on_an_image_folder_with_boxes_csv() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_boxed_folder(&data);
    let spec = dir.path().join("audit.toml");
    std::fs::write(
        &spec,
        format!(
            r#"
[split]
per_class = 4
[attack]
k = 5
[run.data]
source = "folder"
path = "{}"
image_size = 32
test_fraction = 0.25
[run.backbone]
width = 8
[run.projector]
dims = "32-16"
[run.optimizer]
batch_size = 8
[run.schedule]
epochs = 1
"#,
            data.display()
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let res = audit(&spec, &out);
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("audit.json")).unwrap()).unwrap();
    let split = &report["split"];
    assert_eq!(split["a_only"], 12, "{split}");
    assert_eq!(split["b_only"], 12);
    // Images without a row are dealt out as unboxed: shared by A and B or public.
    assert!(split["public"].as_u64().unwrap() > 0);
    let attacked = split["attacked_a"].as_u64().unwrap() + split["attacked_b"].as_u64().unwrap();
    assert!(attacked > 0, "{split}");
    assert_eq!(
        report["class_names"],
        serde_json::json!(["class0", "class1", "class2"])
    );
}

/// `sslab data import` registers a folder and an archive in the data
/// folder's registry, `sslab data list` shows them, and `sslab train` runs
/// a recipe that names one.
#[test]
fn data_import_list_and_train_on_a_registered_set() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("sslab-data");
    let folder = dir.path().join("shapes");
    write_boxed_folder(&folder);
    let dd = data_dir.to_str().unwrap();
    let import = |path: &Path, name: &str, format: &str| {
        sslab(&[
            "--data-dir",
            dd,
            "data",
            "import",
            path.to_str().unwrap(),
            "--format",
            format,
            "--name",
            name,
            "--image-size",
            "32",
        ])
    };
    let res = import(&folder, "shapes", "folder");
    let out = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(
        out.contains("registered `shapes`: 3 classes, train 39, test 9, sha256:"),
        "{out}"
    );

    // The same files as a tar.gz archive, unpacked into the data folder.
    let archive = dir.path().join("shapes.tar.gz");
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&archive).unwrap(),
        flate2::Compression::fast(),
    );
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all("shapes", &folder).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    let res = import(&archive, "shapes-copy", "folder");
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );

    let res = import(&folder, "shapes", "folder");
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && err.contains("`shapes` is already registered"),
        "{err}"
    );
    let res = import(&dir.path().join("nothing"), "x", "folder");
    assert!(String::from_utf8_lossy(&res.stderr).contains("nothing"));
    let res = import(&folder, "y", "tiff");
    assert!(String::from_utf8_lossy(&res.stderr).contains("`tiff` is not a format"));

    let res = sslab(&["--data-dir", dd, "data", "list"]);
    let out = String::from_utf8_lossy(&res.stdout);
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(rows[0].starts_with("name"), "{out}");
    assert!(
        out.contains("shapes-copy") && out.contains("folder"),
        "{out}"
    );
    assert!(rows[2].contains("train 39, test 9"), "{out}");

    let spec = dir.path().join("run.toml");
    std::fs::write(
        &spec,
        r#"
[data]
source = "dataset"
name = "shapes-copy"
[backbone]
kind = "tiny_cnn"
width = 8
[projector]
dims = "32-16"
[optimizer]
batch_size = 12
[schedule]
epochs = 1
[eval]
knn_k = 5
"#,
    )
    .unwrap();
    let out_dir = dir.path().join("run");
    let res = sslab(&[
        "--data-dir",
        dd,
        "train",
        "--spec",
        spec.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("run.json")).unwrap()).unwrap();
    assert!(
        run["spec"]["data"]["registered"]["hash"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
}

/// `sslab cka`: a run against itself is 1 on the diagonal; two runs give a
/// layer × layer matrix in [0, 1]; a layer that does not exist, runs on
/// other data and a too-small minibatch are refused by name.
#[test]
fn cka_compares_two_runs_layer_by_layer() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("run.toml");
    std::fs::write(&spec, TINY).unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    assert!(train(&spec, &a).status.success());
    std::fs::write(&spec, TINY.replace("seed = 2", "seed = 9")).unwrap();
    assert!(train(&spec, &b).status.success());
    let cka = |args: &[&str]| {
        let mut all = vec![
            "cka",
            "--a",
            a.to_str().unwrap(),
            "--out",
            dir.path().to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        sslab(&all)
    };
    let read = || -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("cka.json")).unwrap())
            .unwrap()
    };

    let res = cka(&["--b", a.to_str().unwrap()]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let same = read();
    assert_eq!(
        same["a"]["layers"],
        serde_json::json!(["block0", "block1", "block2", "backbone", "proj.0", "proj.1"])
    );
    assert_eq!(same["settings"]["kind"], "linear");
    assert_eq!(same["settings"]["images"], 24);
    for i in 0..6 {
        let v = same["matrix"][i][i].as_f64().unwrap();
        assert!((v - 1.0).abs() < 1e-6, "{same}");
    }
    // The tiny CNN's last block, pooled, is its backbone output.
    let v = same["matrix"][2][3].as_f64().unwrap();
    assert!((v - 1.0).abs() < 1e-6, "{same}");

    let res = cka(&[
        "--b",
        b.to_str().unwrap(),
        "--layers-b",
        "backbone,proj.1",
        "--minibatch",
        "8",
    ]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let other = read();
    assert_eq!(
        other["b"]["layers"],
        serde_json::json!(["backbone", "proj.1"])
    );
    assert_eq!(other["settings"]["kind"], "minibatch");
    let m = other["matrix"].as_array().unwrap();
    assert_eq!((m.len(), m[0].as_array().unwrap().len()), (6, 2));
    for v in m.iter().flat_map(|r| r.as_array().unwrap()) {
        let v = v.as_f64().unwrap();
        assert!((-0.5..=1.0 + 1e-9).contains(&v), "{other}");
    }

    let res = cka(&["--b", b.to_str().unwrap(), "--layers-a", "proj.7"]);
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("no layer `proj.7`") && err.contains("block2, backbone, proj.0, proj.1"),
        "{err}"
    );

    let c = dir.path().join("c");
    std::fs::write(&spec, TINY.replace("classes = 3", "classes = 4")).unwrap();
    assert!(train(&spec, &c).status.success());
    let res = cka(&["--b", c.to_str().unwrap()]);
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("different data"));

    let res = cka(&["--b", b.to_str().unwrap(), "--minibatch", "2"]);
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("at least 4"));
}

/// An infusion decoder on a tiny run: samples drawn from held-out images'
/// representations carry their class (a kNN on that representation says
/// so at least twice as often as chance), differ from each other, and land
/// in the files. The objects always wear their class's colour, so a
/// decoder that keeps what the representation holds draws it.
#[test]
fn decode_draws_samples_that_carry_the_class() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("run.toml");
    let run_toml = TINY
        .replace(
            "classes = 3",
            "classes = 5\nclass_colour = 1.0\nbackground_correlation = 0.0",
        )
        .replace("train_images = 48", "train_images = 400")
        .replace("test_images = 24", "test_images = 400")
        .replace("width = 8", "width = 16")
        .replace("epochs = 2", "epochs = 8");
    std::fs::write(&spec, run_toml).unwrap();
    let run = dir.path().join("run");
    let res = train(&spec, &run);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );

    let decoder = dir.path().join("decoder.toml");
    let decoder_toml = r#"
kind = "infusion"
layers = ["proj.1"]
image_size = 16
held_out_per_class = 8
steps = 250
batch = 32
lr = 0.003
samples = 3
[infusion]
steps = 4
channels = 16
blocks = 1
"#;
    std::fs::write(&decoder, decoder_toml).unwrap();
    let out = dir.path().join("decoded");
    let decode = |spec: &Path, run: &Path| {
        sslab(&[
            "decode",
            "--run",
            run.to_str().unwrap(),
            "--spec",
            spec.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let res = decode(&decoder, &run);
    let said = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("decoder.json")).unwrap()).unwrap();
    assert_eq!(report["kind"], "infusion");
    assert_eq!(report["image_size"], 16);
    assert_eq!(report["held_out_images"], 40);
    assert_eq!(report["train_images"], 360);
    let layer = &report["layers"][0];
    assert_eq!(layer["layer"], "proj.1");
    let accuracy = layer["conditioning_accuracy"].as_f64().unwrap();
    let chance = layer["chance"].as_f64().unwrap();
    assert!((chance - 0.2).abs() < 1e-9, "{report}");
    assert!(
        accuracy >= 2.0 * chance,
        "{accuracy} against chance {chance}: {said}"
    );
    let diversity = layer["sample_diversity"].as_f64().unwrap();
    let real = layer["real_pair_distance"].as_f64().unwrap();
    assert!(diversity > 0.0 && real > 0.0, "{report}");
    let loss = layer["loss"].as_array().unwrap();
    let at = |i: usize| loss[i]["loss"].as_f64().unwrap();
    assert!(at(loss.len() - 1) < at(0), "{report}");
    // Rows: held-out images, one per class first (5), the rest to 8; each
    // 32 px cell: the image, then three samples with a gap.
    let grid = image::load_from_memory(&std::fs::read(out.join("samples.png")).unwrap()).unwrap();
    assert_eq!((grid.width(), grid.height()), (32 + 6 + 3 * 32, 8 * 32));
    assert!(out.join("interpolation.png").is_file());
    // Its training state goes once it ends: nothing is left to resume.
    assert!(!out.join("state").exists());
    let mut args: Vec<&str> = vec!["decode", "--run", run.to_str().unwrap()];
    args.extend(["--spec", decoder.to_str().unwrap(), "--out"]);
    args.extend([out.to_str().unwrap(), "--resume"]);
    let res = sslab(&args);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && err.contains("no decoder to resume"),
        "{err}"
    );
    // A state saved for another spec is not resumed with this one, and
    // a folder holding a state is not started over unasked; it stays.
    let state = out.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("spec.json"), r#"{"spec": "another"}"#).unwrap();
    std::fs::write(state.join("layer-0.safetensors"), b"saved").unwrap();
    let res = sslab(&args);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && err.contains("saved for another run or spec"),
        "{err}"
    );
    let res = decode(&decoder, &run);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && err.contains("pass --resume"),
        "{err}"
    );
    assert!(state.join("layer-0.safetensors").is_file());
    std::fs::remove_dir_all(&state).unwrap();

    // Bad input: named by field or by run.
    let bad = |toml: &str, wanted: &str| {
        std::fs::write(&decoder, toml).unwrap();
        let res = decode(&decoder, &run);
        assert!(!res.status.success(), "{toml}");
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(err.contains(wanted), "{toml}: {err}");
    };
    bad(
        "kind = \"rcdm\"\n[rcdm]\nsample_steps = 0",
        "rcdm.sample_steps",
    );
    bad("layers = [\"proj.7\"]", "no layer `proj.7`");
    bad(
        "image_size = 12",
        "image_size: 12 px does not divide the run's 32 px",
    );
    bad("[infusion]\nsteps = 0", "infusion.steps");
    std::fs::write(&decoder, decoder_toml).unwrap();
    let unfinished = dir.path().join("unfinished");
    std::fs::create_dir_all(&unfinished).unwrap();
    let run_json = std::fs::read_to_string(run.join("run.json"))
        .unwrap()
        .replace("\"succeeded\"", "\"failed\"");
    std::fs::write(unfinished.join("run.json"), run_json).unwrap();
    let res = decode(&decoder, &unfinished);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && err.contains("did not succeed"),
        "{err}"
    );
}
