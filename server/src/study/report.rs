//! A study's report from its stored results: each finding's figure per seed,
//! its mean ± std, and the verdict against the paper's expected sign. The
//! API and `sslab study` both call [`report`], so the verdict always
//! follows what is stored.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sslab_shared::api::{Evaluation, RunStatus};
use sslab_shared::audit::SnapshotReport;
use sslab_shared::cka::CkaResult;
use sslab_shared::study::{
    Expect, Finding, FindingSpec, Measure, SeriesPoint, StudyItem, StudyReport, StudySpec,
};
use sslab_shared::sweep::{canonical_path, short_path, value_label, value_number};

/// What a study's parts have stored.
#[derive(Debug, Default, Clone)]
pub struct Results {
    pub runs: Vec<(StudyItem, Vec<Evaluation>)>,
    pub audits: Vec<(StudyItem, Vec<SnapshotReport>)>,
    pub cka: Vec<(StudyItem, Option<CkaResult>)>,
}

impl Results {
    pub fn items(&self) -> Vec<StudyItem> {
        self.runs
            .iter()
            .map(|(i, _)| i.clone())
            .chain(self.audits.iter().map(|(i, _)| i.clone()))
            .chain(self.cka.iter().map(|(i, _)| i.clone()))
            .collect()
    }
}

pub fn report(spec: &StudySpec, results: &Results) -> StudyReport {
    let items = results.items();
    let problems = items
        .iter()
        .filter(|i| i.status != RunStatus::Succeeded)
        .map(|i| {
            let what = match i.status {
                RunStatus::Queued | RunStatus::Running => "has not finished".to_string(),
                other => match &i.error {
                    Some(e) => format!("{}: {e}", other.as_str()),
                    None => other.as_str().to_string(),
                },
            };
            format!("{} `{}` ({}) {what}", i.kind, i.name, i.part)
        })
        .collect();
    StudyReport {
        study: spec.name.clone(),
        paper: spec.paper.clone(),
        question: spec.question.clone(),
        claim: spec.claim.clone(),
        findings: spec
            .findings
            .iter()
            .map(|f| finding(spec, f, results))
            .collect(),
        runs: items,
        problems,
    }
}

/// Values per axis point (in axis order) and seed.
struct Table {
    /// (label, number) of each axis value; one unnamed point without an axis.
    points: Vec<(String, Option<f64>)>,
    values: Vec<BTreeMap<u64, Vec<f64>>>,
}

impl Table {
    fn new() -> Self {
        Table {
            points: Vec::new(),
            values: Vec::new(),
        }
    }

    fn push(&mut self, x: &Value, seed: u64, v: f64) {
        let label = value_label(x);
        let i = match self.points.iter().position(|(l, _)| *l == label) {
            Some(i) => i,
            None => {
                self.points.push((label, value_number(x)));
                self.values.push(BTreeMap::new());
                self.points.len() - 1
            }
        };
        self.values[i].entry(seed).or_default().push(v);
    }

    /// Points ascending when every one is a number, else in first-seen order;
    /// several values of one seed at one point averaged.
    fn finish(self) -> Vec<(String, BTreeMap<u64, f64>)> {
        let mut rows: Vec<((String, Option<f64>), BTreeMap<u64, f64>)> = self
            .points
            .into_iter()
            .zip(self.values.into_iter().map(|m| {
                m.into_iter()
                    .map(|(s, xs)| (s, xs.iter().sum::<f64>() / xs.len() as f64))
                    .collect()
            }))
            .collect();
        if rows.iter().all(|((_, n), _)| n.is_some()) {
            rows.sort_by(|a, b| a.0.1.unwrap_or(0.0).total_cmp(&b.0.1.unwrap_or(0.0)));
        }
        rows.into_iter().map(|((l, _), m)| (l, m)).collect()
    }
}

/// Whether a part's axis values include every value of `at` (paths canonical).
pub fn matches(values: &Map<String, Value>, at: &Map<String, Value>) -> bool {
    at.iter().all(|(path, want)| {
        let got = values.get(&canonical_path(path));
        got == Some(want)
            || got
                .is_some_and(|g| value_number(g).is_some() && value_number(g) == value_number(want))
    })
}

/// `sweeps`, `audits` or `cka`: what kind of part a measure reads.
fn part_kind(m: &Measure) -> &str {
    m.part.split_once('.').map_or("", |(k, _)| k)
}

fn part_key(m: &Measure) -> &str {
    m.part.split_once('.').map_or("", |(_, k)| k)
}

/// Reads a measure: per point of `across` (one point without) and seed.
/// `Err` says by name why nothing could be read.
fn read(
    m: &Measure,
    across: Option<&str>,
    results: &Results,
) -> Result<Vec<(String, BTreeMap<u64, f64>)>, String> {
    let mut table = Table::new();
    let across = across.map(canonical_path);
    let none = Value::String(String::new());
    let x_of = |values: &Map<String, Value>| match &across {
        Some(a) => values.get(a).cloned(),
        None => Some(none.clone()),
    };
    let kind = part_kind(m);
    let mut candidates = 0;
    match kind {
        "sweeps" => {
            for (item, evals) in results.runs.iter().filter(|(i, _)| i.part == m.part) {
                if item.status != RunStatus::Succeeded || !matches(&item.values, &m.at) {
                    continue;
                }
                candidates += 1;
                let Some(x) = x_of(&item.values) else {
                    continue;
                };
                if let Some(e) = evals
                    .iter()
                    .filter(|e| e.job_id.is_none())
                    .find(|e| e.layer == m.layer && format!("{}.{}", e.probe, e.metric) == m.metric)
                {
                    table.push(&x, item.seed, e.value);
                }
            }
        }
        "audits" => {
            for (item, snapshots) in results.audits.iter().filter(|(i, _)| i.part == m.part) {
                if item.status != RunStatus::Succeeded || !matches(&item.values, &m.at) {
                    continue;
                }
                candidates += 1;
                let picked: Vec<(Value, &SnapshotReport)> = if across.as_deref() == Some("epoch") {
                    snapshots
                        .iter()
                        .map(|s| (Value::from(s.epoch), s))
                        .collect()
                } else {
                    let Some(x) = x_of(&item.values) else {
                        continue;
                    };
                    snapshots.last().map(|s| (x, s)).into_iter().collect()
                };
                for (x, s) in picked {
                    if let Some(v) = audit_value(s, &m.metric, m.fraction) {
                        table.push(&x, item.seed, v);
                    }
                }
            }
        }
        "cka" => {
            for (item, result) in results.cka.iter().filter(|(i, _)| i.part == m.part) {
                if item.status != RunStatus::Succeeded {
                    continue;
                }
                candidates += 1;
                let Some(r) = result else { continue };
                let i = r.a.layers.iter().position(|l| *l == m.layer);
                let j = r.b.layers.iter().position(|l| *l == m.layer);
                if let Some(v) = i.zip(j).and_then(|(i, j)| r.matrix.get(i)?.get(j)) {
                    table.push(&none, item.seed, *v);
                }
            }
        }
        _ => return Err(format!("`{}` is not a part of this study", m.part)),
    }
    let rows = table.finish();
    if rows.is_empty() {
        let at = if m.at.is_empty() {
            String::new()
        } else {
            format!(
                " at {}",
                m.at.iter()
                    .map(|(k, v)| format!("{k}={}", value_label(v)))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        };
        return Err(if candidates == 0 {
            format!("no succeeded part of {}{at} yet", m.part)
        } else {
            format!(
                "no succeeded part of {}{at} has `{}`{}",
                m.part,
                m.metric,
                if m.layer.is_empty() {
                    String::new()
                } else {
                    format!(" at layer `{}`", m.layer)
                }
            )
        });
    }
    Ok(rows)
}

fn audit_value(s: &SnapshotReport, metric: &str, fraction: f64) -> Option<f64> {
    if metric == "knn_target" {
        return Some(s.knn_target);
    }
    let p = s
        .curve
        .iter()
        .find(|p| (p.fraction - fraction).abs() < 1e-9)?;
    match metric {
        "gap" => Some(p.target_top1 - p.reference_top1),
        "target" => Some(p.target_top1),
        "reference" => Some(p.reference_top1),
        _ => None,
    }
}

/// Mean and sample standard deviation (none for fewer than two values).
fn mean_std(xs: &[f64]) -> (f64, Option<f64>) {
    let (mean, std) = crate::sweep::mean_std(xs);
    (mean, (xs.len() >= 2).then_some(std))
}

/// What a measure reads, for a chart's side; `with_part` names its part
/// too, where the two sides read different parts.
fn label(m: &Measure, with_part: bool) -> String {
    let mut out = match part_kind(m) {
        "audits" if m.metric == "knn_target" => "kNN of the target".to_string(),
        "audits" => format!("{} top-1 @{}%", m.metric, (m.fraction * 100.0).round()),
        "cka" => format!("CKA {}", m.layer),
        _ => format!("{} {}", m.layer, m.metric),
    };
    if with_part {
        out = format!("{}: {out}", part_key(m));
    }
    let paths: Vec<&str> = m.at.keys().map(String::as_str).collect();
    for (k, v) in &m.at {
        out.push_str(&format!(" {}={}", short_path(k, &paths), value_label(v)));
    }
    out
}

fn no_data(f: &FindingSpec, why: String) -> Finding {
    Finding {
        name: f.name.clone(),
        claim: f.claim.clone(),
        ours: None,
        std: None,
        n: 0,
        agrees: None,
        verdict: "no data".into(),
        detail: why,
        expect: f.expect,
        tolerance: f.tolerance,
        series: Vec::new(),
        axis: f.across.clone().unwrap_or_default(),
    }
}

fn finding(spec: &StudySpec, f: &FindingSpec, results: &Results) -> Finding {
    let across = f.across.as_deref();
    let of = match read(&f.of, across, results) {
        Ok(t) => t,
        Err(why) => return no_data(f, why),
    };
    let minus = match &f.minus {
        Some(m) => match read(m, across, results) {
            Ok(t) => Some(t),
            Err(why) => return no_data(f, why),
        },
        None => None,
    };
    // The figure per point and seed: `of`, less `minus` of the same seed.
    let base = f.baseline.unwrap_or(0.0);
    let d: Vec<(String, BTreeMap<u64, f64>)> = match &minus {
        None => of
            .iter()
            .map(|(x, seeds)| {
                (
                    x.clone(),
                    seeds.iter().map(|(s, v)| (*s, v - base)).collect(),
                )
            })
            .collect(),
        Some(minus) => of
            .iter()
            .filter_map(|(x, seeds)| {
                let other = &minus.iter().find(|(y, _)| y == x)?.1;
                let diff: BTreeMap<u64, f64> = seeds
                    .iter()
                    .filter_map(|(s, v)| Some((*s, v - other.get(s)?)))
                    .collect();
                Some((x.clone(), diff))
            })
            .collect(),
    };
    let mut notes = Vec::new();
    let effects: Vec<f64> = if across.is_some() {
        if d.len() < 2 {
            return no_data(
                f,
                format!(
                    "{} has figures at only {} value(s) of `{}`; a trend needs two",
                    f.of.part,
                    d.len(),
                    across.unwrap_or_default()
                ),
            );
        }
        let (first, last) = (&d[0], &d[d.len() - 1]);
        notes.push(format!("from {} to {}", first.0, last.0));
        last.1
            .iter()
            .filter_map(|(s, v)| Some(v - first.1.get(s)?))
            .collect()
    } else {
        if d.len() > 1 {
            notes.push(format!(
                "pooled over {} points; pin them with `at`",
                d.len()
            ));
        }
        let mut per_seed: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for (_, seeds) in &d {
            for (s, v) in seeds {
                per_seed.entry(*s).or_default().push(*v);
            }
        }
        per_seed
            .values()
            .map(|xs| xs.iter().sum::<f64>() / xs.len() as f64)
            .collect()
    };
    if effects.is_empty() {
        return no_data(
            f,
            format!(
                "no seed has both figures ({} and {})",
                label(&f.of, true),
                f.minus.as_ref().map(|m| label(m, true)).unwrap_or_default()
            ),
        );
    }
    let series = if across.is_some() {
        d.iter()
            .map(|(x, seeds)| point(x.clone(), seeds.values().copied().collect()))
            .collect()
    } else {
        let apart = f.minus.as_ref().is_some_and(|m| m.part != f.of.part);
        let side = |m: &Measure, t: &[(String, BTreeMap<u64, f64>)]| {
            point(
                label(m, apart),
                t.iter().flat_map(|(_, s)| s.values().copied()).collect(),
            )
        };
        let mut out = vec![side(&f.of, &of)];
        if let (Some(m), Some(t)) = (&f.minus, &minus) {
            out.push(side(m, t));
        }
        if let Some(b) = f.baseline {
            out.push(point("baseline".into(), vec![b]));
        }
        out
    };
    let (mean, std) = mean_std(&effects);
    let n = effects.len();
    if std.is_none() {
        notes.push(format!(
            "one seed only ({}): no std, so seed noise cannot be ruled out",
            seeds_of(spec, &f.of)
        ));
    }
    let (verdict, agrees) = verdict(f.expect, f.tolerance, mean, std, n);
    let expected = match f.expect {
        Expect::Positive => "above 0".to_string(),
        Expect::Negative => "below 0".to_string(),
        Expect::Small => format!("within ±{}", f.tolerance),
    };
    let spread = std.map_or(String::new(), |s| format!(" ± {s:.4}"));
    let mut detail =
        format!("{verdict}: {mean:+.4}{spread} over {n} seed(s), the paper's sign is {expected}");
    if !notes.is_empty() {
        detail.push_str(&format!(" ({})", notes.join("; ")));
    }
    Finding {
        name: f.name.clone(),
        claim: f.claim.clone(),
        ours: Some(mean),
        std,
        n,
        agrees: Some(agrees),
        verdict: verdict.into(),
        detail,
        expect: f.expect,
        tolerance: f.tolerance,
        series,
        axis: across.map(canonical_path).unwrap_or_default(),
    }
}

fn point(label: String, xs: Vec<f64>) -> SeriesPoint {
    let (mean, std) = mean_std(&xs);
    SeriesPoint {
        label,
        mean,
        std: std.unwrap_or(0.0),
        n: xs.len(),
    }
}

/// The part's seeds as a person reads them, e.g. `sweeps.main has seeds [5]`.
fn seeds_of(spec: &StudySpec, m: &Measure) -> String {
    let key = part_key(m);
    let seeds = match part_kind(m) {
        "sweeps" => spec.sweeps.get(key).map(|s| s.run_seeds()),
        "audits" => spec.audits.get(key).map(|a| a.run_seeds()),
        "cka" => spec
            .cka
            .get(key)
            .and_then(|c| spec.sweeps.get(&c.a.sweep))
            .map(|s| s.run_seeds()),
        _ => None,
    };
    match seeds {
        Some(s) => format!("{} has seeds {s:?}", m.part),
        None => m.part.clone(),
    }
}

/// The verdict word and whether it agrees. An effect is clear of seed noise
/// when |mean| exceeds two standard errors.
fn verdict(
    expect: Expect,
    tolerance: f64,
    mean: f64,
    std: Option<f64>,
    n: usize,
) -> (&'static str, bool) {
    let sem2 = std.map(|s| 2.0 * s / (n as f64).sqrt());
    let clear = |x: f64| sem2.is_some_and(|e| x > e);
    match expect {
        Expect::Positive | Expect::Negative => {
            let signed = if expect == Expect::Positive {
                mean
            } else {
                -mean
            };
            if signed > 0.0 && clear(signed) {
                ("agrees", true)
            } else if signed < 0.0 && clear(-signed) {
                ("disagrees", false)
            } else {
                ("inconclusive", false)
            }
        }
        Expect::Small => {
            if mean.abs() <= tolerance {
                ("agrees", true)
            } else if clear(mean.abs() - tolerance) {
                ("disagrees", false)
            } else {
                ("inconclusive", false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sslab_shared::audit::{CurvePoint, FourWay};

    fn spec() -> StudySpec {
        StudySpec::from_toml(
            r#"
name = "t"
[sweeps.main]
seeds = [1, 2, 3]
[[sweeps.main.axes]]
path = "epochs"
values = [2, 8]
[sweeps.main.base.projector]
dims = "32-16"
[audits.size]
path = "split.per_class"
values = [5, 20]
seeds = [1, 2]
[audits.size.base.run.schedule]
epochs = 4
[[findings]]
name = "gap"
claim = "backbone above projector"
of = { part = "sweeps.main", at = { epochs = 8 }, layer = "backbone", metric = "knn.top1" }
minus = { part = "sweeps.main", at = { epochs = 8 }, layer = "proj.1", metric = "knn.top1" }
expect = "positive"
[[findings]]
name = "trend"
claim = "rises with epochs"
of = { part = "sweeps.main", layer = "backbone", metric = "knn.top1" }
across = "epochs"
expect = "positive"
[[findings]]
name = "memorization falls with size"
claim = "less with more images"
of = { part = "audits.size", metric = "gap" }
across = "split.per_class"
expect = "negative"
[[findings]]
name = "linear"
claim = "no linear probe ran"
of = { part = "sweeps.main", at = { epochs = 8 }, layer = "backbone", metric = "linear.top1" }
expect = "small"
tolerance = 0.1
"#,
        )
        .unwrap()
    }

    fn eval(layer: &str, value: f64) -> Evaluation {
        Evaluation {
            layer: layer.into(),
            probe: "knn".into(),
            metric: "top1".into(),
            value,
            settings: Value::Null,
            job_id: None,
        }
    }

    fn item(kind: &str, part: &str, seed: u64, path: &str, x: i64, status: RunStatus) -> StudyItem {
        let mut values = Map::new();
        values.insert(path.into(), Value::from(x));
        StudyItem {
            kind: kind.into(),
            part: part.into(),
            id: format!("{part}-{x}-{seed}"),
            name: format!("{kind} {x} seed={seed}"),
            status,
            seed,
            values,
            error: (status == RunStatus::Failed).then(|| "out of memory".into()),
        }
    }

    fn snapshot(gap: f64) -> SnapshotReport {
        SnapshotReport {
            epoch: 4,
            knn_target: 0.5,
            knn_reference: 0.5,
            curve: vec![CurvePoint {
                fraction: 0.2,
                target_top1: 0.3 + gap,
                target_top5: 0.9,
                reference_top1: 0.3,
                reference_top5: 0.9,
            }],
            four_way: FourWay::default(),
            per_class: Vec::new(),
        }
    }

    fn results() -> Results {
        let mut r = Results::default();
        for seed in 1..=3u64 {
            let jitter = seed as f64 * 0.01;
            for (epochs, backbone, proj) in [(2, 0.50, 0.45), (8, 0.70, 0.55)] {
                r.runs.push((
                    item(
                        "run",
                        "sweeps.main",
                        seed,
                        "schedule.epochs",
                        epochs,
                        RunStatus::Succeeded,
                    ),
                    vec![
                        eval("backbone", backbone + jitter),
                        eval("proj.1", proj - jitter),
                    ],
                ));
            }
        }
        for seed in 1..=2u64 {
            for (per_class, gap) in [(5, 0.2), (20, 0.05 + seed as f64 * 0.01)] {
                r.audits.push((
                    item(
                        "audit",
                        "audits.size",
                        seed,
                        "split.per_class",
                        per_class,
                        RunStatus::Succeeded,
                    ),
                    vec![snapshot(gap)],
                ));
            }
        }
        r
    }

    #[test]
    fn verdicts_follow_the_stored_figures() {
        let spec = spec();
        let mut r = results();
        let report = report(&spec, &r);
        let gap = &report.findings[0];
        assert_eq!(gap.verdict, "agrees", "{}", gap.detail);
        assert!((gap.ours.unwrap() - 0.19).abs() < 1e-9);
        assert_eq!(gap.n, 3);
        assert_eq!(gap.series.len(), 2);
        let trend = &report.findings[1];
        assert_eq!(trend.verdict, "agrees");
        assert!((trend.ours.unwrap() - 0.2).abs() < 1e-9);
        assert_eq!(
            trend
                .series
                .iter()
                .map(|p| p.label.as_str())
                .collect::<Vec<_>>(),
            ["2", "8"]
        );
        let audit = &report.findings[2];
        assert_eq!(audit.verdict, "agrees", "{}", audit.detail);
        assert!(audit.ours.unwrap() < -0.1);
        // A metric no run has: said by name, the rest still rendered.
        let linear = &report.findings[3];
        assert_eq!(linear.verdict, "no data");
        assert_eq!(linear.agrees, None);
        assert!(linear.detail.contains("`linear.top1`"), "{}", linear.detail);

        // Change the stored figures: the projector now wins, and the verdict follows.
        for (item, evals) in &mut r.runs {
            if item.values["schedule.epochs"] == 8 {
                for e in evals.iter_mut().filter(|e| e.layer == "proj.1") {
                    e.value = 0.95;
                }
            }
        }
        let report2 = super::report(&spec, &r);
        assert_eq!(report2.findings[0].verdict, "disagrees");
        assert_eq!(report2.findings[0].agrees, Some(false));
    }

    #[test]
    fn failed_parts_and_single_seeds_are_named() {
        let spec = spec();
        let mut r = results();
        // Seeds 2 and 3 of the long runs failed: one seed is left.
        for (item, evals) in &mut r.runs {
            if item.seed > 1 && item.values["schedule.epochs"] == 8 {
                item.status = RunStatus::Failed;
                item.error = Some("loss is NaN".into());
                evals.clear();
            }
        }
        let report = report(&spec, &r);
        assert_eq!(report.problems.len(), 2);
        assert!(
            report.problems[0].contains("loss is NaN"),
            "{:?}",
            report.problems
        );
        let gap = &report.findings[0];
        assert_eq!(gap.n, 1);
        assert_eq!(gap.std, None);
        assert_eq!(gap.verdict, "inconclusive");
        assert!(gap.detail.contains("one seed only"), "{}", gap.detail);
        // Everything failed: no data, by name.
        for (item, _) in &mut r.runs {
            item.status = RunStatus::Failed;
        }
        let report = super::report(&spec, &r);
        assert_eq!(report.findings[0].verdict, "no data");
        assert!(report.findings[0].detail.contains("sweeps.main"));
        assert_eq!(report.findings[2].verdict, "agrees");
    }

    #[test]
    fn small_effects_agree_within_tolerance() {
        assert_eq!(
            verdict(Expect::Small, 0.05, 0.01, Some(0.02), 3),
            ("agrees", true)
        );
        assert_eq!(
            verdict(Expect::Small, 0.05, 0.3, Some(0.01), 3),
            ("disagrees", false)
        );
        assert_eq!(
            verdict(Expect::Small, 0.05, 0.08, Some(0.2), 3),
            ("inconclusive", false)
        );
        assert_eq!(
            verdict(Expect::Positive, 0.0, 0.1, Some(0.5), 3),
            ("inconclusive", false)
        );
        assert_eq!(
            verdict(Expect::Negative, 0.0, -0.1, Some(0.01), 3),
            ("agrees", true)
        );
        assert_eq!(
            verdict(Expect::Positive, 0.0, 0.1, None, 1),
            ("inconclusive", false)
        );
    }
}
