//! `StudySpec`: one of the papers' findings as something the platform runs.
//! A study names a question and the paper's claim, the sweeps, déjà vu
//! audits and CKA comparisons that answer it, and the findings: which
//! stored figures to compare and which sign the paper expects. The verdicts
//! are computed from the stored results each time the report is read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::api::RunStatus;
use crate::audit::AuditSpec;
use crate::error::SpecError;
use crate::sweep::{SweepSpec, canonical_path, lookup, lookup_mut, value_label};

/// The most runs, audits and comparisons one study may hold.
pub const MAX_PARTS: usize = 200;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StudySpec {
    pub name: String,
    /// The paper the claim is from, e.g. `arXiv:2206.13378`.
    pub paper: String,
    pub question: String,
    /// The paper's claim in its own terms, with its figures.
    pub claim: String,
    /// Sweeps by key; a finding names one as `sweeps.KEY`.
    pub sweeps: BTreeMap<String, SweepSpec>,
    /// Series of déjà vu audits by key (`audits.KEY`).
    pub audits: BTreeMap<String, AuditSeries>,
    /// CKA comparisons between the runs of two sweeps (`cka.KEY`).
    pub cka: BTreeMap<String, CkaPair>,
    pub findings: Vec<FindingSpec>,
    /// A smaller version of every part, to check the study end to end in
    /// seconds (`sslab study --micro`); its figures mean nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub micro: Option<MicroSpec>,
}

/// Audits that differ in one field (or only in their seed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSeries {
    /// Dotted path of an audit spec field, e.g. `split.per_class`; empty:
    /// the audits differ only in their seed.
    pub path: String,
    pub values: Vec<Value>,
    /// Every value is audited once per seed (the run's `run.seed`).
    pub seeds: Vec<u64>,
    pub base: AuditSpec,
}

/// One audit of a series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditPoint {
    /// Axis path → value (empty for a seed-only series).
    pub values: Map<String, Value>,
    pub seed: u64,
    pub spec: AuditSpec,
}

/// The runs of sweep `a.sweep` at `a.at` against those of `b.sweep` at
/// `b.at`, paired by seed, compared layer by layer on the first run's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CkaPair {
    pub a: RunGroup,
    pub b: RunGroup,
    /// Layer names both runs have (`backbone`, `proj.0`, blocks); default
    /// the backbone's output.
    #[serde(default = "default_layers")]
    pub layers: Vec<String>,
}

fn default_layers() -> Vec<String> {
    vec!["backbone".into()]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunGroup {
    /// A key of `sweeps`.
    pub sweep: String,
    /// Axis values the runs have (`{ "method.name" = "simclr" }`); empty: all.
    #[serde(default)]
    pub at: Map<String, Value>,
}

/// A figure of the study and what the paper expects of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindingSpec {
    pub name: String,
    /// What the paper says of this figure.
    pub claim: String,
    /// The figure, per seed.
    pub of: Measure,
    /// Subtracted seed by seed: the figure becomes a difference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minus: Option<Measure>,
    /// A constant subtracted instead, e.g. chance (1 / classes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    /// An axis (a swept path, or `epoch` for an audit's snapshots): the
    /// effect is the figure at its largest value minus at its smallest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub across: Option<String>,
    pub expect: Expect,
    /// `expect = "small"`: the largest |effect| that agrees.
    #[serde(default)]
    pub tolerance: f64,
}

/// Which stored figure: a probe of a sweep's runs, a déjà vu figure of an
/// audit series, or a CKA value of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measure {
    /// `sweeps.KEY`, `audits.KEY` or `cka.KEY`.
    pub part: String,
    /// Axis values the figure is read at; the seeds are never pinned.
    #[serde(default)]
    pub at: Map<String, Value>,
    /// Sweeps: the probed layer (`backbone`, `proj.0`, …); CKA: the layer
    /// compared. Audits read their attack's embedding and leave it empty.
    #[serde(default)]
    pub layer: String,
    /// Sweeps: `probe.metric` (`knn.top1`, `linear.top1`, `rankme.rank`, …).
    /// Audits: `gap` (target minus reference top-1 over the most confident
    /// `fraction`), `target`, `reference`, `knn_target`. CKA: `cka`.
    pub metric: String,
    /// Audits: the most confident fraction read (0.05, 0.2 or 1).
    #[serde(default = "default_fraction")]
    pub fraction: f64,
}

fn default_fraction() -> f64 {
    0.2
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// The effect is above zero.
    Positive,
    Negative,
    /// |effect| ≤ `tolerance`: the paper finds no real difference.
    Small,
}

/// Smaller parts for `--micro`: every run spec (a sweep's base, an audit's
/// run) gets `run`'s values, every audit `audit`'s, and an axis named in
/// `axes` takes those values instead, one for one (a finding that pins the
/// third value pins the third micro value).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MicroSpec {
    pub run: Map<String, Value>,
    pub audit: Map<String, Value>,
    pub axes: Map<String, Value>,
    /// Seeds for every part; empty keeps the study's.
    pub seeds: Vec<u64>,
}

/// A stored study, as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Study {
    pub id: String,
    pub name: String,
    pub paper: String,
    pub question: String,
    pub claim: String,
    pub created_at: i64,
    pub team: String,
    pub created_by: Option<String>,
    pub project: String,
    /// Runs, audits and CKA comparisons by status; comparisons count once
    /// queued, after their runs finish.
    pub counts: crate::api::StatusCounts,
    /// Runs, audits and comparisons the study holds when complete.
    pub parts: usize,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub spec: StudySpec,
}

/// The report of a study: the findings, their verdicts, and every part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StudyReport {
    pub study: String,
    pub paper: String,
    pub question: String,
    pub claim: String,
    pub findings: Vec<Finding>,
    /// Every run, audit and CKA comparison of the study.
    pub runs: Vec<StudyItem>,
    /// Parts that did not succeed, by name (the findings leave them out).
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Finding {
    pub name: String,
    pub claim: String,
    /// Mean effect over seeds; none when no seed has the figures.
    pub ours: Option<f64>,
    /// Sample standard deviation over seeds; none with fewer than two.
    pub std: Option<f64>,
    /// Seeds the effect was measured on.
    pub n: usize,
    /// Whether our figure agrees with the paper; none without a figure.
    pub agrees: Option<bool>,
    /// `agrees`, `disagrees`, `inconclusive` (right sign, within seed noise)
    /// or `no data`.
    pub verdict: String,
    /// The verdict in a sentence, with what is missing by name.
    pub detail: String,
    pub expect: Expect,
    pub tolerance: f64,
    /// What the chart shows: the figure per axis value (`across`), or each
    /// side of the difference.
    pub series: Vec<SeriesPoint>,
    /// The axis of `series` (`across`), or empty for sides.
    pub axis: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SeriesPoint {
    pub label: String,
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

/// A run, audit or CKA comparison of a study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StudyItem {
    /// `run`, `audit` or `cka`.
    pub kind: String,
    /// `sweeps.KEY`, `audits.KEY` or `cka.KEY`.
    pub part: String,
    pub id: String,
    pub name: String,
    pub status: RunStatus,
    pub seed: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub values: Map<String, Value>,
    pub error: Option<String>,
}

fn check_key(key: &str, field: &str) -> Result<(), SpecError> {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if key.is_empty() || key.len() > 40 || !key.chars().all(ok) {
        return Err(SpecError::new(
            field,
            format!("`{key}` is not a key: 1–40 letters, digits, `-` or `_`"),
        ));
    }
    Ok(())
}

impl StudySpec {
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let spec: StudySpec = crate::error::from_toml(text)?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        let spec: StudySpec = crate::error::from_json(text)?;
        spec.validate()?;
        Ok(spec)
    }

    /// How many runs, audits and comparisons the study holds.
    pub fn part_count(&self) -> usize {
        let runs: usize = self.sweeps.values().map(SweepSpec::run_count).sum();
        let audits: usize = self.audits.values().map(AuditSeries::count).sum();
        let cka: usize = self
            .cka
            .values()
            .map(|c| {
                self.sweeps
                    .get(&c.a.sweep)
                    .map_or(0, |s| s.run_seeds().len())
            })
            .sum();
        runs + audits + cka
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |field: String, msg: String| Err(SpecError::new(field, msg));
        if self.name.trim().is_empty() || self.name.len() > 120 {
            return bad(
                "name".into(),
                "give the study a name of 1–120 characters".into(),
            );
        }
        if self.sweeps.is_empty() && self.audits.is_empty() {
            return bad(
                "sweeps".into(),
                "a study needs at least one sweep or audit series".into(),
            );
        }
        for (key, sweep) in &self.sweeps {
            check_key(key, &format!("sweeps.{key}"))?;
            sweep
                .validate()
                .map_err(|e| SpecError::new(format!("sweeps.{key}.{}", e.field), e.message))?;
        }
        for (key, series) in &self.audits {
            check_key(key, &format!("audits.{key}"))?;
            series.validate(&format!("audits.{key}"))?;
        }
        for (key, pair) in &self.cka {
            check_key(key, &format!("cka.{key}"))?;
            for (side, group) in [("a", &pair.a), ("b", &pair.b)] {
                let field = format!("cka.{key}.{side}");
                let Some(sweep) = self.sweeps.get(&group.sweep) else {
                    return bad(
                        format!("{field}.sweep"),
                        format!("no sweep `{}` in this study", group.sweep),
                    );
                };
                let axes = sweep_axes(sweep);
                check_at(&group.at, &axes, &format!("{field}.at"))?;
                let layers = sweep.base.cka_layer_names();
                if let Some(l) = pair.layers.iter().find(|l| !layers.contains(l)) {
                    return bad(
                        format!("cka.{key}.layers"),
                        format!(
                            "the runs of sweep `{}` have no layer `{l}`; they have {}",
                            group.sweep,
                            layers.join(", ")
                        ),
                    );
                }
            }
            if pair.layers.is_empty() {
                return bad(
                    format!("cka.{key}.layers"),
                    "name at least one layer".into(),
                );
            }
        }
        if self.findings.is_empty() {
            return bad(
                "findings".into(),
                "a study needs at least one finding".into(),
            );
        }
        for (i, f) in self.findings.iter().enumerate() {
            let field = |s: &str| format!("findings[{i}].{s}");
            if f.name.trim().is_empty() {
                return bad(field("name"), "give the finding a name".into());
            }
            let axes = self.check_measure(&f.of, &field("of"))?;
            if let Some(minus) = &f.minus {
                self.check_measure(minus, &field("minus"))?;
            }
            if f.minus.is_some() && f.baseline.is_some() {
                return bad(
                    field("baseline"),
                    "subtract `minus` or a `baseline`, not both".into(),
                );
            }
            if f.baseline.is_some_and(|b| !b.is_finite()) {
                return bad(field("baseline"), "must be a finite number".into());
            }
            if let Some(across) = &f.across {
                let across = canonical_path(across);
                if !axes.contains(&across) {
                    return bad(
                        field("across"),
                        format!(
                            "`{}` has no axis `{across}`; its axes are {}",
                            f.of.part,
                            if axes.is_empty() {
                                "none".to_string()
                            } else {
                                axes.join(", ")
                            }
                        ),
                    );
                }
                if f.of.at.keys().any(|k| canonical_path(k) == across) {
                    return bad(
                        field("of.at"),
                        format!("`{across}` is the axis the finding runs across; do not pin it"),
                    );
                }
            }
            if f.expect == Expect::Small && !(f.tolerance > 0.0 && f.tolerance.is_finite()) {
                return bad(
                    field("tolerance"),
                    "expect = \"small\" needs a tolerance above 0".into(),
                );
            }
        }
        if self.part_count() > MAX_PARTS {
            return bad(
                "sweeps".into(),
                format!(
                    "this study holds {} runs, audits and comparisons, more than {MAX_PARTS}",
                    self.part_count()
                ),
            );
        }
        Ok(())
    }

    /// Checks a measure; returns the axes of its part.
    fn check_measure(&self, m: &Measure, field: &str) -> Result<Vec<String>, SpecError> {
        let bad = |f: &str, msg: String| Err(SpecError::new(format!("{field}.{f}"), msg));
        let (kind, key) = m.part.split_once('.').unwrap_or(("", ""));
        let axes = match kind {
            "sweeps" => {
                let Some(sweep) = self.sweeps.get(key) else {
                    return bad("part", format!("no sweep `{key}` in this study"));
                };
                let Some((probe, metric)) = m.metric.split_once('.') else {
                    return bad(
                        "metric",
                        format!(
                            "a sweep's figure is `probe.metric`, e.g. knn.top1; got `{}`",
                            m.metric
                        ),
                    );
                };
                if probe.is_empty() || metric.is_empty() {
                    return bad("metric", format!("`{}` is not `probe.metric`", m.metric));
                }
                let layers = sweep.base.layer_names();
                if !layers.contains(&m.layer) {
                    return bad(
                        "layer",
                        format!(
                            "the runs of sweep `{key}` have no layer `{}`; they have {}",
                            m.layer,
                            layers.join(", ")
                        ),
                    );
                }
                sweep_axes(sweep)
            }
            "audits" => {
                let Some(series) = self.audits.get(key) else {
                    return bad("part", format!("no audit series `{key}` in this study"));
                };
                if !AUDIT_METRICS.contains(&m.metric.as_str()) {
                    return bad(
                        "metric",
                        format!(
                            "an audit's figure is one of {}; got `{}`",
                            AUDIT_METRICS.join(", "),
                            m.metric
                        ),
                    );
                }
                if !crate::audit::FRACTIONS
                    .iter()
                    .any(|f| (f - m.fraction).abs() < 1e-9)
                {
                    return bad(
                        "fraction",
                        format!(
                            "the audit reports the fractions {:?}; got {}",
                            crate::audit::FRACTIONS,
                            m.fraction
                        ),
                    );
                }
                let mut axes = vec!["epoch".to_string()];
                if !series.path.is_empty() {
                    axes.push(canonical_path(&series.path));
                }
                axes
            }
            "cka" => {
                let Some(pair) = self.cka.get(key) else {
                    return bad("part", format!("no CKA comparison `{key}` in this study"));
                };
                if m.metric != "cka" {
                    return bad(
                        "metric",
                        format!("a comparison's figure is `cka`; got `{}`", m.metric),
                    );
                }
                if !pair.layers.contains(&m.layer) {
                    return bad(
                        "layer",
                        format!(
                            "comparison `{key}` compares {}; not `{}`",
                            pair.layers.join(", "),
                            m.layer
                        ),
                    );
                }
                Vec::new()
            }
            _ => {
                return bad(
                    "part",
                    format!(
                        "`{}` is not `sweeps.KEY`, `audits.KEY` or `cka.KEY`",
                        m.part
                    ),
                );
            }
        };
        check_at(&m.at, &axes, &format!("{field}.at"))?;
        Ok(axes)
    }

    /// The study at its `micro` size; itself when it has none.
    pub fn micro(&self) -> Result<StudySpec, SpecError> {
        let Some(micro) = &self.micro else {
            return Ok(self.clone());
        };
        let mut out = self.clone();
        out.micro = None;
        // (path, value at full size, value at micro size): findings and
        // comparisons that pin a value follow it.
        let mut moved: Vec<(String, Value, Value)> = Vec::new();
        let mut swap = |path: &str,
                        values: &mut Vec<Value>,
                        field: &str|
         -> Result<(), SpecError> {
            let path = canonical_path(path);
            let Some(new) = micro
                .axes
                .iter()
                .find(|(k, _)| canonical_path(k) == path)
                .map(|(_, v)| v)
            else {
                return Ok(());
            };
            let Value::Array(new) = new else {
                return Err(SpecError::new(
                    field,
                    format!("micro.axes.{path} must be a list"),
                ));
            };
            if new.len() != values.len() {
                return Err(SpecError::new(
                    field,
                    format!(
                        "micro.axes gives {} values for `{path}`, the study {}; give as many, in the same order",
                        new.len(),
                        values.len()
                    ),
                ));
            }
            for (old, new) in values.iter().zip(new) {
                moved.push((path.clone(), old.clone(), new.clone()));
            }
            *values = new.clone();
            Ok(())
        };
        for (key, sweep) in &mut out.sweeps {
            let field = format!("micro (sweeps.{key})");
            sweep.base = patched(&sweep.base, &micro.run, &field)?;
            for axis in &mut sweep.axes {
                swap(&axis.path, &mut axis.values, &field)?;
            }
            if !micro.seeds.is_empty() {
                sweep.seeds = micro.seeds.clone();
            }
        }
        for (key, series) in &mut out.audits {
            let field = format!("micro (audits.{key})");
            series.base.run = patched(&series.base.run, &micro.run, &field)?;
            series.base = patched(&series.base, &micro.audit, &field)?;
            let path = series.path.clone();
            swap(&path, &mut series.values, &field)?;
            if !micro.seeds.is_empty() {
                series.seeds = micro.seeds.clone();
            }
        }
        let follow = |at: &mut Map<String, Value>| {
            for (path, v) in at.iter_mut() {
                let path = canonical_path(path);
                if let Some((_, _, new)) = moved.iter().find(|(p, old, _)| *p == path && old == v) {
                    *v = new.clone();
                }
            }
        };
        for f in &mut out.findings {
            follow(&mut f.of.at);
            if let Some(m) = &mut f.minus {
                follow(&mut m.at);
            }
        }
        for pair in out.cka.values_mut() {
            follow(&mut pair.a.at);
            follow(&mut pair.b.at);
        }
        out.validate()
            .map_err(|e| SpecError::new(format!("micro: {}", e.field), e.message))?;
        Ok(out)
    }
}

/// The figures an audit series offers.
pub const AUDIT_METRICS: [&str; 4] = ["gap", "target", "reference", "knn_target"];

/// A sweep's swept paths (seed excluded), canonical.
fn sweep_axes(sweep: &SweepSpec) -> Vec<String> {
    sweep
        .swept_axes()
        .map(|a| canonical_path(&a.path))
        .collect()
}

fn check_at(at: &Map<String, Value>, axes: &[String], field: &str) -> Result<(), SpecError> {
    for path in at.keys() {
        if !axes.contains(&canonical_path(path)) {
            return Err(SpecError::new(
                field,
                format!(
                    "`{path}` is not an axis here; the axes are {}",
                    if axes.is_empty() {
                        "none".to_string()
                    } else {
                        axes.join(", ")
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// `doc` with the dotted paths of `values` set; a path it lacks is an error.
fn patched<T: Serialize + serde::de::DeserializeOwned>(
    doc: &T,
    values: &Map<String, Value>,
    field: &str,
) -> Result<T, SpecError> {
    let mut json = serde_json::to_value(doc).map_err(|e| SpecError::new(field, e.to_string()))?;
    for (path, v) in values {
        let path = canonical_path(path);
        match lookup_mut(&mut json, &path) {
            Some(slot) => *slot = v.clone(),
            None => {
                return Err(SpecError::new(field, format!("there is no field `{path}`")));
            }
        }
    }
    crate::error::from_value(json).map_err(|e| SpecError::new(field, e.to_string()))
}

impl AuditSeries {
    pub fn count(&self) -> usize {
        self.values.len().max(1) * self.seeds.len().max(1)
    }

    /// The seeds every value is audited with; empty `seeds`: the run's own.
    pub fn run_seeds(&self) -> Vec<u64> {
        if self.seeds.is_empty() {
            vec![self.base.run.seed]
        } else {
            self.seeds.clone()
        }
    }

    pub fn validate(&self, field: &str) -> Result<(), SpecError> {
        self.expand()
            .map(|_| ())
            .map_err(|e| SpecError::new(format!("{field}.{}", e.field), e.message))
    }

    /// Every audit of the series, values outermost, each once per seed.
    pub fn expand(&self) -> Result<Vec<AuditPoint>, SpecError> {
        if self.base.runs.is_some() {
            return Err(SpecError::new(
                "base.runs",
                "a study's audits train their own models; leave `runs` out",
            ));
        }
        self.base
            .validate()
            .map_err(|e| SpecError::new(format!("base.{}", e.field), e.message))?;
        let base =
            serde_json::to_value(&self.base).map_err(|e| SpecError::new("base", e.to_string()))?;
        let path = canonical_path(&self.path);
        let values: Vec<Option<&Value>> = if path.is_empty() {
            if !self.values.is_empty() {
                return Err(SpecError::new("path", "values need a path to set"));
            }
            vec![None]
        } else {
            if lookup(&base, &path).is_none() {
                return Err(SpecError::new(
                    "path",
                    format!(
                        "an audit spec has no field `{path}`; e.g. split.per_class, run.schedule.epochs"
                    ),
                ));
            }
            if self.values.is_empty() {
                return Err(SpecError::new(
                    "values",
                    format!("give values for `{path}`"),
                ));
            }
            self.values.iter().map(Some).collect()
        };
        let mut seeds = self.run_seeds();
        seeds.sort_unstable();
        if seeds.windows(2).any(|w| w[0] == w[1]) {
            return Err(SpecError::new("seeds", "a seed is repeated"));
        }
        let mut out = Vec::new();
        for (j, value) in values.into_iter().enumerate() {
            let mut doc = base.clone();
            let mut point = Map::new();
            if let Some(v) = value {
                if let Some(slot) = lookup_mut(&mut doc, &path) {
                    *slot = v.clone();
                }
                point.insert(path.clone(), v.clone());
            }
            let spec: AuditSpec = crate::error::from_value(doc)
                .and_then(|s: AuditSpec| s.validate().map(|_| s))
                .map_err(|e| SpecError::new(format!("values[{j}]"), e.to_string()))?;
            for &seed in &self.run_seeds() {
                let mut spec = spec.clone();
                spec.run.seed = seed;
                let mut name = spec.name.trim().to_string();
                for (p, v) in &point {
                    let short = p.rsplit('.').next().unwrap_or(p);
                    name.push_str(&format!(" {short}={}", value_label(v)));
                }
                spec.name = format!("{} seed={seed}", name.trim());
                out.push(AuditPoint {
                    values: point.clone(),
                    seed,
                    spec,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STUDY: &str = r#"
name = "guillotine"
paper = "arXiv:2206.13378"
question = "Is the backbone a better representation than the projector output?"
claim = "Reading the backbone adds about 20 points at 100 epochs."

[sweeps.epochs]
seeds = [1, 2]
[[sweeps.epochs.axes]]
path = "epochs"
values = [1, 2]
[sweeps.epochs.base.data]
source = "scenes"
classes = 3
train_images = 96
test_images = 30
[sweeps.epochs.base.projector]
dims = "32-16"
[sweeps.epochs.base.optimizer]
batch_size = 16

[[findings]]
name = "backbone beats projector"
claim = "+20 points"
of = { part = "sweeps.epochs", at = { epochs = 2 }, layer = "backbone", metric = "knn.top1" }
minus = { part = "sweeps.epochs", at = { epochs = 2 }, layer = "proj.1", metric = "knn.top1" }
expect = "positive"

[micro]
run = { "data.train_images" = 64 }
axes = { epochs = [1, 3] }
seeds = [4, 5, 6]
"#;

    #[test]
    fn parses_validates_and_shrinks() {
        let spec = StudySpec::from_toml(STUDY).unwrap();
        assert_eq!(spec.part_count(), 4);
        let micro = spec.micro().unwrap();
        let sweep = &micro.sweeps["epochs"];
        assert_eq!(sweep.base.data.train_images(), 64);
        assert_eq!(sweep.axes[0].values, vec![Value::from(1), Value::from(3)]);
        assert_eq!(sweep.seeds, vec![4, 5, 6]);
        assert!(micro.micro.is_none());
        assert_eq!(micro.findings[0].of.at["epochs"], Value::from(3));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "layer = \"backbone\", metric = \"knn.top1\" }\nminus",
                "layer = \"proj.7\", metric = \"knn.top1\" }\nminus",
                "findings[0].of.layer",
            ),
            (
                "part = \"sweeps.epochs\", at = { epochs = 2 }, layer = \"backbone\"",
                "part = \"sweeps.nope\", at = { epochs = 2 }, layer = \"backbone\"",
                "findings[0].of.part",
            ),
            (
                "expect = \"positive\"",
                "expect = \"small\"",
                "findings[0].tolerance",
            ),
            (
                "at = { epochs = 2 }, layer = \"backbone\"",
                "at = { lr = 2 }, layer = \"backbone\"",
                "findings[0].of.at",
            ),
            (
                "\"data.train_images\" = 64",
                "\"data.nope\" = 64",
                "micro (sweeps.epochs)",
            ),
        ];
        for (from, to, field) in cases {
            let text = STUDY.replacen(from, to, 1);
            let err = StudySpec::from_toml(&text)
                .and_then(|s| s.micro())
                .unwrap_err();
            assert!(err.field.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn audit_series_expand_per_value_and_seed() {
        let mut base = AuditSpec::default();
        base.name = "trend".into();
        base.run.schedule.epochs = 4;
        base.snapshots = vec![2];
        let series = AuditSeries {
            path: "split.per_class".into(),
            values: vec![Value::from(5), Value::from(10)],
            seeds: vec![1, 2],
            base,
        };
        let points = series.expand().unwrap();
        assert_eq!(points.len(), 4);
        assert_eq!(points[1].spec.split.per_class, 5);
        assert_eq!(points[1].spec.run.seed, 2);
        assert_eq!(points[2].spec.split.per_class, 10);
        assert_eq!(points[3].spec.name, "trend per_class=10 seed=2");
        let mut bad = series.clone();
        bad.values = vec![Value::from(0)];
        let err = bad.expand().unwrap_err();
        assert_eq!(err.field, "values[0]");
        assert!(err.message.contains("per_class"), "{err}");
    }
}
