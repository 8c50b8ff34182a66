//! `SweepSpec`: a base `RunSpec` and axes over any of its fields. A sweep
//! expands into runs that share a sweep id; grid sweeps take every
//! combination, random sweeps draw points from a seed.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::SpecError;
use crate::rng::Rng;
use crate::spec::RunSpec;

/// The most runs one sweep may expand to unless the server or CLI is told otherwise.
pub const DEFAULT_MAX_RUNS: usize = 200;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SweepSpec {
    /// Shown in lists and prefixed to the name of every run.
    pub name: String,
    pub mode: SweepMode,
    /// Random mode: how many points to draw.
    pub samples: usize,
    /// Random mode: seeds the draw of the points (not the runs).
    pub sweep_seed: u64,
    /// Every point runs once per seed (the run's `seed`); empty: the base's.
    /// The sweep page averages over them (mean ± std).
    pub seeds: Vec<u64>,
    pub axes: Vec<SweepAxis>,
    /// The run every point starts from.
    pub base: RunSpec,
}

impl Default for SweepSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            mode: SweepMode::Grid,
            samples: 8,
            sweep_seed: 0,
            seeds: Vec::new(),
            axes: Vec::new(),
            base: RunSpec::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepMode {
    /// Every combination of the axes' values.
    Grid,
    /// `samples` points, each axis drawn from its values or its range.
    Random,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepAxis {
    /// Dotted path of a `RunSpec` field: `projector.dims`,
    /// `backbone.last_block_width`, `method.temperature`, `schedule.epochs`
    /// (or `epochs`), `optimizer.lr` (or `lr`), `seed`, …
    pub path: String,
    #[serde(default)]
    pub values: Vec<Value>,
    /// Random mode only: draw from [min, max] instead of `values`.
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    /// Draw log-uniformly (learning rates, temperatures).
    #[serde(default)]
    pub log: bool,
    /// Round the draw to an integer (widths, epochs).
    #[serde(default)]
    pub integer: bool,
}

/// One run of an expanded sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// Axis path → value (seed excluded).
    pub values: Map<String, Value>,
    pub seed: u64,
    pub spec: RunSpec,
}

/// Short names for the paths people sweep most.
const ALIASES: [(&str, &str); 5] = [
    ("epochs", "schedule.epochs"),
    ("lr", "optimizer.lr"),
    ("batch_size", "optimizer.batch_size"),
    ("temperature", "method.temperature"),
    ("weight_decay", "optimizer.weight_decay"),
];

/// The full path an axis names.
pub fn canonical_path(path: &str) -> String {
    let p = path.trim();
    ALIASES
        .iter()
        .find(|(short, _)| *short == p)
        .map(|(_, full)| full.to_string())
        .unwrap_or_else(|| p.to_string())
}

/// A value as a person reads it: strings without quotes.
pub fn value_label(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "default".into(),
        other => other.to_string(),
    }
}

/// Where a value sits on a numeric axis: numbers as they are, projector
/// specs such as "256-128" by their output width.
pub fn value_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().rsplit('-').next()?.trim().parse().ok(),
        _ => None,
    }
}

/// Every leaf of a JSON document as (dotted path, value), for spec diffs.
pub fn flatten(value: &Value) -> Vec<(String, Value)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, child) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, child, out);
                }
            }
            _ => out.push((prefix.to_string(), v.clone())),
        }
    }
    let mut out = Vec::new();
    walk("", value, &mut out);
    out
}

impl SweepSpec {
    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        let spec: SweepSpec = crate::error::from_json(text)?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let spec: SweepSpec = crate::error::from_toml(text)?;
        spec.validate()?;
        Ok(spec)
    }

    /// The seeds every point runs with.
    pub fn run_seeds(&self) -> Vec<u64> {
        if let Some(axis) = self.axes.iter().find(|a| canonical_path(&a.path) == "seed") {
            return axis.values.iter().filter_map(Value::as_u64).collect();
        }
        if self.seeds.is_empty() {
            vec![self.base.seed]
        } else {
            self.seeds.clone()
        }
    }

    /// The axes other than `seed`.
    pub fn swept_axes(&self) -> impl Iterator<Item = &SweepAxis> {
        self.axes
            .iter()
            .filter(|a| canonical_path(&a.path) != "seed")
    }

    /// How many runs the sweep expands to, without expanding it (saturating).
    pub fn run_count(&self) -> usize {
        let points = match self.mode {
            SweepMode::Grid => self
                .swept_axes()
                .fold(1usize, |n, a| n.saturating_mul(a.values.len())),
            // Seeds alone: one point, however many samples.
            SweepMode::Random if self.swept_axes().next().is_none() => 1,
            SweepMode::Random => self.samples,
        };
        points.saturating_mul(self.run_seeds().len())
    }

    /// Checks everything but the expanded specs (see `expand`).
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |field: String, msg: String| Err(SpecError::new(field, msg));
        if self.name.len() > 120 {
            return bad("name".into(), "must be at most 120 characters".into());
        }
        self.base
            .validate()
            .map_err(|e| SpecError::new(format!("base.{}", e.field), e.message))?;
        let base =
            serde_json::to_value(&self.base).map_err(|e| SpecError::new("base", e.to_string()))?;
        let mut seen = Vec::new();
        for (i, axis) in self.axes.iter().enumerate() {
            let field = |f: &str| format!("axes[{i}].{f}");
            let path = canonical_path(&axis.path);
            if path.is_empty() {
                return bad(
                    field("path"),
                    "name a field, e.g. \"projector.dims\"".into(),
                );
            }
            if let Some(other) = seen.iter().find(|p: &&String| {
                **p == path
                    || p.starts_with(&format!("{path}."))
                    || path.starts_with(&format!("{p}."))
            }) {
                let msg = if *other == path {
                    format!("`{path}` is swept twice")
                } else {
                    format!("`{path}` overlaps the axis `{other}`; sweep one or the other")
                };
                return bad(field("path"), msg);
            }
            seen.push(path.clone());
            if path == "name" {
                return bad(
                    field("path"),
                    "run names follow the sweep's points; sweep another field".into(),
                );
            }
            if lookup(&base, &path).is_none() {
                return bad(
                    field("path"),
                    format!(
                        "a run spec has no field `{path}`; paths look like projector.dims, backbone.last_block_width, method.temperature, schedule.epochs"
                    ),
                );
            }
            if path == "seed" {
                if !self.seeds.is_empty() {
                    return bad(
                        field("path"),
                        "give the seeds either as `seeds` or as a `seed` axis, not both".into(),
                    );
                }
                if axis.values.is_empty() || axis.values.iter().any(|v| v.as_u64().is_none()) {
                    return bad(
                        field("values"),
                        "seeds must be non-negative integers".into(),
                    );
                }
                continue;
            }
            let has_range = axis.min.is_some() || axis.max.is_some();
            match self.mode {
                SweepMode::Grid => {
                    if has_range {
                        return bad(
                            field("min"),
                            "a grid sweep takes `values`; ranges are for mode = \"random\"".into(),
                        );
                    }
                    if axis.values.is_empty() {
                        return bad(
                            field("values"),
                            format!("give at least one value for `{path}`"),
                        );
                    }
                }
                SweepMode::Random => match (axis.min, axis.max) {
                    (None, None) if axis.values.is_empty() => {
                        return bad(
                            field("values"),
                            format!("give values, or min and max, for `{path}`"),
                        );
                    }
                    (None, None) => {}
                    (Some(_), _) | (_, Some(_)) if !axis.values.is_empty() => {
                        return bad(field("values"), "give values or a range, not both".into());
                    }
                    (Some(lo), Some(hi)) => {
                        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                            return bad(field("max"), format!("need min < max, got {lo} and {hi}"));
                        }
                        if axis.log && lo <= 0.0 {
                            return bad(
                                field("min"),
                                format!("a log range needs min > 0, got {lo}"),
                            );
                        }
                    }
                    _ => return bad(field("max"), "a range needs both min and max".into()),
                },
            }
            if axis.values.len() > 1000 {
                return bad(field("values"), "at most 1000 values per axis".into());
            }
        }
        if self.swept_axes().next().is_none() && self.run_seeds().len() < 2 {
            return bad(
                "axes".into(),
                "sweep at least one field, or give two or more seeds".into(),
            );
        }
        if self.mode == SweepMode::Random && !(1..=100_000).contains(&self.samples) {
            return bad(
                "samples".into(),
                format!("must be between 1 and 100000, got {}", self.samples),
            );
        }
        let mut seeds = self.run_seeds();
        seeds.sort_unstable();
        if seeds.windows(2).any(|w| w[0] == w[1]) {
            return bad("seeds".into(), "a seed is repeated".into());
        }
        Ok(())
    }

    /// Every run of the sweep, points in order (the first axis outermost),
    /// each point once per seed. A value that makes an invalid run is refused
    /// with the axis and the run spec's own message.
    pub fn expand(&self, max_runs: usize) -> Result<Vec<SweepPoint>, SpecError> {
        self.validate()?;
        let count = self.run_count();
        if count > max_runs {
            return Err(SpecError::new(
                "axes",
                format!("this sweep expands to {count} runs, more than the cap of {max_runs}"),
            ));
        }
        let base =
            serde_json::to_value(&self.base).map_err(|e| SpecError::new("base", e.to_string()))?;
        let axes: Vec<(usize, &SweepAxis)> = self
            .axes
            .iter()
            .enumerate()
            .filter(|(_, a)| canonical_path(&a.path) != "seed")
            .collect();
        // Each point: for every axis, (axis index, value index or none for a draw, value).
        let mut points: Vec<Vec<(usize, Option<usize>, Value)>> = Vec::new();
        match self.mode {
            SweepMode::Grid => {
                points.push(Vec::new());
                for &(i, axis) in &axes {
                    points = points
                        .into_iter()
                        .flat_map(|p| {
                            axis.values.iter().enumerate().map(move |(j, v)| {
                                let mut q = p.clone();
                                q.push((i, Some(j), v.clone()));
                                q
                            })
                        })
                        .collect();
                }
            }
            SweepMode::Random => {
                let mut rng = Rng::new(self.sweep_seed);
                let samples = if axes.is_empty() { 1 } else { self.samples };
                for _ in 0..samples {
                    let point = axes
                        .iter()
                        .map(|&(i, axis)| {
                            if axis.values.is_empty() {
                                (i, None, draw(axis, &mut rng))
                            } else {
                                let j = rng.below(axis.values.len());
                                (i, Some(j), axis.values[j].clone())
                            }
                        })
                        .collect();
                    points.push(point);
                }
            }
        }
        let mut out = Vec::with_capacity(count);
        for point in points {
            let mut doc = base.clone();
            let mut ordered = Vec::new();
            for (i, _, v) in &point {
                let path = canonical_path(&self.axes[*i].path);
                if let Some(slot) = lookup_mut(&mut doc, &path) {
                    *slot = v.clone();
                }
                ordered.push((path, v.clone()));
            }
            let values: Map<String, Value> = ordered.iter().cloned().collect();
            let spec = to_spec(doc).map_err(|e| {
                let field = match guilty_axis(&point, &self.axes, &e) {
                    Some((i, Some(j))) => format!("axes[{i}].values[{j}]"),
                    Some((i, None)) => format!("axes[{i}]"),
                    None => "base".into(),
                };
                SpecError::new(field, e.to_string())
            })?;
            for seed in self.run_seeds() {
                let mut spec = spec.clone();
                spec.seed = seed;
                spec.name = run_name(&self.name, &ordered, seed);
                out.push(SweepPoint {
                    values: values.clone(),
                    seed,
                    spec,
                });
            }
        }
        Ok(out)
    }
}

/// Which axis value made a spec invalid: the one whose path the error names,
/// else the first axis.
fn guilty_axis(
    point: &[(usize, Option<usize>, Value)],
    axes: &[SweepAxis],
    err: &SpecError,
) -> Option<(usize, Option<usize>)> {
    point
        .iter()
        .find(|(i, _, _)| {
            let p = canonical_path(&axes[*i].path);
            err.field == p || err.field.starts_with(&format!("{p}."))
        })
        .or(point.first())
        .map(|(i, j, _)| (*i, *j))
}

fn to_spec(doc: Value) -> Result<RunSpec, SpecError> {
    let spec: RunSpec = crate::error::from_value(doc)?;
    spec.validate()?;
    Ok(spec)
}

fn draw(axis: &SweepAxis, rng: &mut Rng) -> Value {
    let (lo, hi) = (axis.min.unwrap_or(0.0), axis.max.unwrap_or(1.0));
    let x = if axis.log {
        (lo.ln() + (hi.ln() - lo.ln()) * rng.f64()).exp()
    } else {
        lo + (hi - lo) * rng.f64()
    };
    if axis.integer {
        Value::from(x.round() as i64)
    } else {
        // Six significant digits: enough for a knob, short in a run name.
        let rounded: f64 = format!("{x:.6e}").parse().unwrap_or(x);
        Value::from(rounded)
    }
}

pub(crate) fn lookup<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(doc, |v, key| v.as_object()?.get(key))
}

pub(crate) fn lookup_mut<'a>(doc: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.')
        .try_fold(doc, |v, key| v.as_object_mut()?.get_mut(key))
}

/// A path's last segment, or the whole path where another of `paths` ends
/// the same way (`subset.power` beside `method.power`).
pub fn short_path<'a>(path: &'a str, paths: &[&str]) -> &'a str {
    let last = |p: &'a str| p.rsplit('.').next().unwrap_or(p);
    let clash = paths
        .iter()
        .filter(|p| **p != path && p.rsplit('.').next() == Some(last(path)))
        .count();
    if clash > 0 { path } else { last(path) }
}

/// `<sweep>: dims=256-64 seed=1`, by the short name of each path.
fn run_name(sweep: &str, values: &[(String, Value)], seed: u64) -> String {
    let paths: Vec<&str> = values.iter().map(|(p, _)| p.as_str()).collect();
    let mut parts: Vec<String> = values
        .iter()
        .map(|(path, v)| format!("{}={}", short_path(path, &paths), value_label(v)))
        .collect();
    parts.push(format!("seed={seed}"));
    let mut name = if sweep.trim().is_empty() {
        parts.join(" ")
    } else {
        format!("{}: {}", sweep.trim(), parts.join(" "))
    };
    if name.len() > 200 {
        let mut cut = 200;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name
}

/// The sweeps a run page offers, with their value lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// The projector's output width, hidden layers kept.
    ProjectorDim,
    /// The width of the backbone's last block (the representation).
    LastBlockWidth,
    Epochs,
}

impl Preset {
    pub const ALL: [Preset; 3] = [Preset::ProjectorDim, Preset::LastBlockWidth, Preset::Epochs];

    pub fn name(&self) -> &'static str {
        match self {
            Preset::ProjectorDim => "projector_dim",
            Preset::LastBlockWidth => "last_block_width",
            Preset::Epochs => "epochs",
        }
    }

    pub fn title(&self) -> &'static str {
        match self {
            Preset::ProjectorDim => "Projector dimension sweep",
            Preset::LastBlockWidth => "Last-block width sweep",
            Preset::Epochs => "Epochs sweep",
        }
    }

    pub fn parse(text: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == text)
    }

    /// A sweep around `base`: five widths a factor two apart centred on the
    /// base's own, or a quarter to twice its epochs; three seeds.
    pub fn sweep(&self, base: &RunSpec) -> SweepSpec {
        let doubling = |centre: usize| -> Vec<usize> {
            [centre / 4, centre / 2, centre, centre * 2, centre * 4]
                .into_iter()
                .filter(|&w| w >= 8)
                .collect()
        };
        let (path, values): (&str, Vec<Value>) = match self {
            Preset::ProjectorDim => {
                let (hidden, out) = match base.projector.dims.as_slice().split_last() {
                    Some((out, hidden)) => (hidden.to_vec(), *out),
                    None => (Vec::new(), 128),
                };
                let prefix: String = hidden.iter().map(|h| format!("{h}-")).collect();
                let values = doubling(out)
                    .into_iter()
                    .map(|d| Value::from(format!("{prefix}{d}")))
                    .collect();
                ("projector.dims", values)
            }
            Preset::LastBlockWidth => {
                let values = doubling(base.backbone.output_dim())
                    .into_iter()
                    .map(Value::from)
                    .collect();
                ("backbone.last_block_width", values)
            }
            Preset::Epochs => {
                let e = base.schedule.epochs.max(1);
                // Never shorter than the warm-up, never past the epoch limit.
                let shortest = (base.schedule.warmup_epochs.ceil() as usize).max(1);
                let mut values: Vec<usize> = [e / 4, e / 2, e, e.saturating_mul(2)]
                    .into_iter()
                    .filter(|&x| x >= shortest && x <= 10_000)
                    .collect();
                values.dedup();
                (
                    "schedule.epochs",
                    values.into_iter().map(Value::from).collect(),
                )
            }
        };
        let base_name = if base.name.trim().is_empty() {
            "sweep".to_string()
        } else {
            base.name.trim().chars().take(60).collect()
        };
        let mut base = base.clone();
        base.name = String::new();
        SweepSpec {
            name: format!("{base_name} {}", self.name().replace('_', " ")),
            seeds: (0..3).map(|i| base.seed.saturating_add(i)).collect(),
            axes: vec![SweepAxis {
                path: path.into(),
                values,
                min: None,
                max: None,
                log: false,
                integer: false,
            }],
            base,
            ..SweepSpec::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn axis(path: &str, values: Vec<Value>) -> SweepAxis {
        SweepAxis {
            path: path.into(),
            values,
            min: None,
            max: None,
            log: false,
            integer: false,
        }
    }

    fn grid(axes: Vec<SweepAxis>) -> SweepSpec {
        SweepSpec {
            name: "s".into(),
            axes,
            ..SweepSpec::default()
        }
    }

    #[test]
    fn grid_size_is_the_product_of_the_axes_times_the_seeds() {
        let mut s = grid(vec![
            axis(
                "projector.dims",
                vec![json!("64-32"), json!("64-64"), json!("64-128")],
            ),
            axis("backbone.last_block_width", vec![json!(32), json!(64)]),
            axis(
                "temperature",
                vec![json!(0.1), json!(0.2), json!(0.5), json!(1.0)],
            ),
        ]);
        s.seeds = vec![0, 1];
        assert_eq!(s.run_count(), 3 * 2 * 4 * 2);
        let runs = s.expand(1000).unwrap();
        assert_eq!(runs.len(), 48);
        // First axis outermost, seeds innermost.
        assert_eq!(runs[0].spec.projector.dims, "64-32");
        assert_eq!(runs[0].seed, 0);
        assert_eq!(runs[1].seed, 1);
        assert_eq!(runs[47].spec.projector.dims, "64-128");
        assert_eq!(runs[47].spec.backbone.last_block_width, Some(64));
        let crate::spec::MethodSpec::Simclr(crate::spec::SimclrSpec { temperature: t, .. }) =
            runs[47].spec.method
        else {
            panic!("the base method is SimCLR");
        };
        assert_eq!(t, 1.0);
        assert_eq!(runs[47].values["method.temperature"], json!(1.0));
        assert_eq!(
            runs[3].spec.name,
            "s: dims=64-32 last_block_width=32 temperature=0.2 seed=1"
        );
        let mut names: Vec<_> = runs.iter().map(|r| r.spec.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 48, "run names are distinct");
    }

    #[test]
    fn seed_axis_and_epochs_alias() {
        let s = grid(vec![
            axis("epochs", vec![json!(1), json!(2)]),
            axis("seed", vec![json!(5), json!(6), json!(7)]),
        ]);
        let runs = s.expand(100).unwrap();
        assert_eq!(runs.len(), 6);
        assert_eq!(runs[0].spec.schedule.epochs, 1);
        assert_eq!(
            runs.iter().map(|r| r.seed).collect::<Vec<_>>(),
            [5, 6, 7, 5, 6, 7]
        );
        assert!(!runs[0].values.contains_key("seed"));
    }

    #[test]
    fn random_sweeps_reproduce_from_their_seed() {
        let mut s = grid(vec![
            SweepAxis {
                min: Some(1e-4),
                max: Some(1e-1),
                log: true,
                ..axis("lr", vec![])
            },
            axis("projector.dims", vec![json!("32-16"), json!("32-64")]),
            SweepAxis {
                min: Some(1.0),
                max: Some(4.0),
                integer: true,
                ..axis("schedule.epochs", vec![])
            },
        ]);
        s.mode = SweepMode::Random;
        s.samples = 20;
        let a = s.expand(100).unwrap();
        assert_eq!(a.len(), 20);
        assert_eq!(a, s.expand(100).unwrap());
        for p in &a {
            assert!((1e-4..=1e-1).contains(&p.spec.optimizer.lr));
            assert!((1..=4).contains(&p.spec.schedule.epochs));
        }
        let dims: Vec<_> = a.iter().map(|p| p.spec.projector.dims.clone()).collect();
        assert!(
            dims.contains(&"32-16".parse().unwrap()) && dims.contains(&"32-64".parse().unwrap())
        );
        s.sweep_seed = 1;
        assert_ne!(a, s.expand(100).unwrap());
    }

    #[test]
    fn bad_sweeps_name_the_field() {
        let cases: Vec<(SweepSpec, &str, &str)> = vec![
            (
                grid(vec![axis("projector.dimz", vec![json!("1")])]),
                "axes[0].path",
                "no field `projector.dimz`",
            ),
            (
                grid(vec![axis("projector.dims", vec![])]),
                "axes[0].values",
                "at least one value",
            ),
            (
                grid(vec![axis(
                    "projector.dims",
                    vec![json!("64-32"), json!("64-x")],
                )]),
                "axes[0].values[1]",
                "not a layer width",
            ),
            (
                grid(vec![axis("backbone.last_block_width", vec![json!("wide")])]),
                "axes[0].values[0]",
                "invalid type",
            ),
            (
                grid(vec![axis("temperature", vec![json!(0.5), json!(-1.0)])]),
                "axes[0].values[1]",
                "must be in (0, 10]",
            ),
            (grid(vec![]), "axes", "sweep at least one field"),
            (
                grid(vec![
                    axis("lr", vec![json!(0.1)]),
                    axis("optimizer.lr", vec![json!(0.2)]),
                ]),
                "axes[1].path",
                "swept twice",
            ),
            (
                grid(vec![
                    axis("projector.dims", vec![json!("8-4")]),
                    axis("projector", vec![json!({"dims": "8-8"})]),
                ]),
                "axes[1].path",
                "overlaps the axis `projector.dims`",
            ),
        ];
        for (spec, field, message) in cases {
            let err = spec.expand(1000).unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(err.message.contains(message), "{err}");
        }
    }

    #[test]
    fn a_random_sweep_of_seeds_alone_runs_each_seed_once() {
        let mut s = grid(vec![]);
        s.mode = SweepMode::Random;
        s.samples = 8;
        s.seeds = vec![1, 2];
        assert_eq!(s.run_count(), 2);
        let runs = s.expand(100).unwrap();
        assert_eq!(runs.iter().map(|r| r.seed).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn over_the_cap_is_refused_with_the_count() {
        let values: Vec<Value> = (1..=30).map(|e| json!(e)).collect();
        let mut s = grid(vec![axis("epochs", values)]);
        s.seeds = vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        let err = s.expand(200).unwrap_err();
        assert!(err.message.contains("300 runs"), "{err}");
        assert!(err.message.contains("cap of 200"), "{err}");
    }

    #[test]
    fn parses_toml_and_json_with_field_paths() {
        let text = r#"
            name = "proj"
            seeds = [0, 1]
            [[axes]]
            path = "projector.dims"
            values = ["64-32", "64-64"]
            [base.schedule]
            epochs = 1
        "#;
        let s = SweepSpec::from_toml(text).unwrap();
        assert_eq!(s.run_count(), 4);
        assert_eq!(s.base.schedule.epochs, 1);
        let err = SweepSpec::from_toml("[[axes]]\npath = \"epochs\"\nvalues = [1]\nvalue = 2\n")
            .unwrap_err();
        assert_eq!(err.field, "axes[0].value");
        assert!(err.message.contains("unknown field `value`"), "{err}");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(SweepSpec::from_json(&json).unwrap(), s);
        let err = SweepSpec::from_json(r#"{"base": {"schedule": {"epochs": 0}}, "seeds": [1, 2]}"#)
            .unwrap_err();
        assert_eq!(err.field, "base.schedule.epochs");
    }

    #[test]
    fn presets_sweep_around_the_base() {
        let mut base = RunSpec::default();
        base.projector.dims = "256-128".parse().unwrap();
        let s = Preset::ProjectorDim.sweep(&base);
        assert_eq!(
            s.axes[0].values,
            vec![
                json!("256-32"),
                json!("256-64"),
                json!("256-128"),
                json!("256-256"),
                json!("256-512")
            ]
        );
        assert_eq!(s.run_count(), 15);
        s.expand(DEFAULT_MAX_RUNS).unwrap();
        let w = Preset::LastBlockWidth.sweep(&base);
        assert_eq!(
            w.axes[0].values,
            vec![json!(32), json!(64), json!(128), json!(256), json!(512)]
        );
        let e = Preset::Epochs.sweep(&base);
        assert_eq!(
            e.axes[0].values,
            vec![json!(5), json!(10), json!(20), json!(40)]
        );
        assert_eq!(value_number(&json!("256-64")), Some(64.0));
        assert_eq!(value_number(&json!(0.5)), Some(0.5));
    }

    #[test]
    fn flatten_lists_every_leaf() {
        let leaves = flatten(&json!({"a": {"b": 1, "c": [1, 2]}, "d": null}));
        assert_eq!(
            leaves,
            vec![
                ("a.b".to_string(), json!(1)),
                ("a.c".to_string(), json!([1, 2])),
                ("d".to_string(), Value::Null)
            ]
        );
    }
}
