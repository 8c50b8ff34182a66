//! `sslab study --spec FILE --out DIR`: every sweep run, audit and CKA
//! comparison of a study on this machine, one after another, then
//! `DIR/report.json`, `DIR/report.md` and `DIR/charts/`. `--micro` runs
//! the study's `[micro]` size to check it end to end. Run again on the same
//! folder, it keeps every part already finished with the same spec (an
//! interrupted study picks up where it stopped) and reads the report again
//! from the stored files.

use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::Context;
use serde_json::Map;
use sslab_shared::api::RunStatus;
use sslab_shared::audit::AuditReport;
use sslab_shared::cka::CkaResult;
use sslab_shared::study::{StudyItem, StudySpec};

use crate::cli::train::{folder_safe, interrupt_flag, train_into, write_json};
use crate::study::report::{Results, report};

/// A part finished earlier with the same spec: its stored result.
fn stored<T: serde::de::DeserializeOwned>(file: &Path) -> Option<T> {
    serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()
}

/// The evaluations of a run folder that succeeded with exactly `spec`.
fn stored_run(
    dir: &Path,
    spec: &sslab_shared::RunSpec,
) -> Option<Vec<sslab_shared::api::Evaluation>> {
    #[derive(serde::Deserialize)]
    struct RunFile {
        spec: sslab_shared::RunSpec,
        status: RunStatus,
    }
    let run: RunFile = stored(&dir.join("run.json"))?;
    (run.status == RunStatus::Succeeded && run.spec == *spec)
        .then(|| stored(&dir.join("evaluations.json")))
        .flatten()
}

pub fn read_study_spec(path: &Path) -> anyhow::Result<StudySpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the study {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        StudySpec::from_json(&text)
    } else {
        StudySpec::from_toml(&text)
    }
    .map_err(|e| anyhow::anyhow!("{}: invalid study: {e}", path.display()))
}

pub async fn run(spec_path: &Path, out: &Path, micro: bool) -> anyhow::Result<()> {
    let mut spec = read_study_spec(spec_path)?;
    if micro {
        spec = spec
            .micro()
            .map_err(|e| anyhow::anyhow!("{}: {e}", spec_path.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_json(&out.join("study.json"), &spec)?;
    let interrupted = interrupt_flag();
    let total = spec.part_count();
    let mut done = 0;
    let mut results = Results::default();
    // Runs trained by this invocation: a comparison stored before them is stale.
    let mut fresh = std::collections::HashSet::new();
    let stopped = || interrupted.load(Ordering::Relaxed);

    'parts: for (key, sweep) in &spec.sweeps {
        let part = format!("sweeps.{key}");
        let points = sweep
            .expand(sslab_shared::study::MAX_PARTS)
            .map_err(|e| anyhow::anyhow!("{part}: {e}"))?;
        for (i, point) in points.iter().enumerate() {
            if stopped() {
                break 'parts;
            }
            done += 1;
            let folder = format!("sweeps/{key}/{}", crate::cli::sweep::folder_name(i, point));
            println!("[{done}/{total}] {part}: {}", point.spec.name);
            let dir = out.join(&folder);
            let (status, error, evaluations) = match stored_run(&dir, &point.spec) {
                Some(evaluations) => {
                    println!("      finished earlier; kept");
                    (RunStatus::Succeeded, None, evaluations)
                }
                None => {
                    fresh.insert(folder.clone());
                    let t = train_into(&point.spec, &dir, false, interrupted.clone()).await?;
                    (t.status, t.error, t.evaluations)
                }
            };
            results.runs.push((
                StudyItem {
                    kind: "run".into(),
                    part: part.clone(),
                    id: folder,
                    name: point.spec.name.clone(),
                    status,
                    seed: point.seed,
                    values: point.values.clone(),
                    error,
                },
                evaluations,
            ));
        }
    }

    'audits: for (key, series) in &spec.audits {
        let part = format!("audits.{key}");
        let points = series
            .expand()
            .map_err(|e| anyhow::anyhow!("{part}: {e}"))?;
        for (i, point) in points.into_iter().enumerate() {
            if stopped() {
                break 'audits;
            }
            done += 1;
            let name = point.spec.name.clone();
            let folder = format!("audits/{key}/{i:03}-{}", folder_safe(&name, "-=._", '_'));
            println!("[{done}/{total}] {part}: {name}");
            let dir = out.join(&folder);
            let earlier =
                stored::<AuditReport>(&dir.join("audit.json")).filter(|r| r.spec == point.spec);
            let outcome = match earlier {
                Some(r) => {
                    println!("      finished earlier; kept");
                    Ok(r)
                }
                None => {
                    crate::cli::audit::audit_into(point.spec, &dir, interrupted.clone()).await?
                }
            };
            let (status, error, snapshots) = match outcome {
                Ok(r) => (RunStatus::Succeeded, None, r.snapshots),
                Err(_) if stopped() => (RunStatus::Cancelled, None, Vec::new()),
                Err(e) => (RunStatus::Failed, Some(e), Vec::new()),
            };
            results.audits.push((
                StudyItem {
                    kind: "audit".into(),
                    part: part.clone(),
                    id: folder,
                    name,
                    status,
                    seed: point.seed,
                    values: point.values,
                    error,
                },
                snapshots,
            ));
        }
    }

    for (key, pair) in &spec.cka {
        if stopped() {
            break;
        }
        let part = format!("cka.{key}");
        let seeds = spec
            .sweeps
            .get(&pair.a.sweep)
            .map(|s| s.run_seeds())
            .unwrap_or_default();
        for seed in seeds {
            done += 1;
            let find = |group: &sslab_shared::study::RunGroup| {
                results.runs.iter().find(|(item, _)| {
                    item.part == format!("sweeps.{}", group.sweep)
                        && item.seed == seed
                        && crate::study::report::matches(&item.values, &group.at)
                })
            };
            let name = format!("{key} seed={seed}");
            println!("[{done}/{total}] {part}: {name}");
            let layers = pair.layers.join(",");
            let folder = format!("cka/{key}/seed={seed}");
            let earlier = stored::<CkaResult>(&out.join(&folder).join("cka.json"));
            let outcome = match (find(&pair.a), find(&pair.b)) {
                (Some((a, _)), Some((b, _)))
                    if a.status == RunStatus::Succeeded && b.status == RunStatus::Succeeded =>
                {
                    let stale = fresh.contains(&a.id) || fresh.contains(&b.id);
                    let (a, b) = (out.join(&a.id), out.join(&b.id));
                    let same = |r: &CkaResult| {
                        !stale
                            && r.a.run == a.display().to_string()
                            && r.b.run == b.display().to_string()
                            && r.a.layers == pair.layers
                            && r.b.layers == pair.layers
                    };
                    match earlier.filter(same) {
                        Some(r) => {
                            println!("      finished earlier; kept");
                            Ok(r)
                        }
                        None => {
                            let side = |dir| crate::cli::cka::Side {
                                dir,
                                layers: Some(&layers),
                            };
                            crate::cli::cka::compare_dirs(side(&a), side(&b), None, None)
                                .await
                                .map_err(|e| format!("{e:#}"))
                        }
                    }
                }
                _ => Err(format!(
                    "no succeeded run of seed {seed} in both sweeps.{} and sweeps.{}",
                    pair.a.sweep, pair.b.sweep
                )),
            };
            let (status, error, result) = match outcome {
                Ok(r) => {
                    let dir = out.join(&folder);
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    write_json(&dir.join("cka.json"), &r)?;
                    (RunStatus::Succeeded, None, Some(r))
                }
                Err(e) => (RunStatus::Failed, Some(e), None),
            };
            results.cka.push((
                StudyItem {
                    kind: "cka".into(),
                    part: part.clone(),
                    id: folder,
                    name,
                    status,
                    seed,
                    values: Map::new(),
                    error,
                },
                result,
            ));
        }
    }

    let report = report(&spec, &results);
    crate::study::write_report(out, &report)?;
    println!();
    for f in &report.findings {
        println!("{:<44} {}", f.name, f.detail);
    }
    for p in &report.problems {
        println!("problem: {p}");
    }
    println!("wrote {}", out.join("report.md").display());
    if stopped() {
        anyhow::bail!("interrupted after {done} of {total} parts; the report holds those");
    }
    Ok(())
}
