//! Sweep charts: one metric against one swept axis with a line per layer
//! (mean ± std over seeds, drawn by `plot`), and parallel coordinates over every run.

use leptos::prelude::*;
use serde_json::Value;
use sslab_shared::api::{AxisAggregate, SweepRun};
use sslab_shared::sweep::{value_label, value_number};

use crate::chart::{ChartFrame, Outline};
use crate::plot::{Plot, PlotSpec, Series};
use crate::probes::{COLOURS, column_name, layer_depth};

const W: f64 = 680.0;
const H: f64 = 260.0;
const PAD: f64 = 46.0;

/// The values in first-seen order, each once.
pub fn distinct<'a>(values: impl IntoIterator<Item = &'a Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for v in values {
        if !out.contains(v) {
            out.push(v.clone());
        }
    }
    out
}

/// Where each value of an axis sits, in [0, 1]: by number when every
/// value has one, else evenly in first-seen order.
pub fn positions(values: &[Value]) -> Vec<f64> {
    let numbers: Option<Vec<f64>> = values.iter().map(value_number).collect();
    let n = values.len();
    match numbers {
        Some(xs) if n > 1 => {
            let (lo, hi) = xs
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
                    (a.min(*x), b.max(*x))
                });
            if hi > lo {
                xs.iter().map(|x| (x - lo) / (hi - lo)).collect()
            } else {
                vec![0.5; n]
            }
        }
        _ if n > 1 => (0..n).map(|i| i as f64 / (n - 1) as f64).collect(),
        _ => vec![0.5; n],
    }
}

/// The DOM id of an axis chart: `projector.dims` → `sweep-chart-projector-dims`.
pub fn chart_id(axis: &str) -> String {
    format!("sweep-chart-{}", axis.replace(['.', '_'], "-"))
}

/// One metric against one axis: a line per layer, a point per axis value
/// (evenly spaced, in first-seen order), error bars of ± one standard
/// deviation over the runs pooled there.
#[component]
pub fn AxisChart(
    axis: String,
    /// The aggregates of this axis for one (probe, metric).
    rows: Vec<AxisAggregate>,
    /// Shown on the y axis.
    metric_label: String,
) -> impl IntoView {
    let values = distinct(rows.iter().map(|r| &r.value));
    let mut layers: Vec<String> = Vec::new();
    for r in &rows {
        if !layers.contains(&r.layer) {
            layers.push(r.layer.clone());
        }
    }
    layers.sort_by_key(|l| layer_depth(l));
    let series = layers
        .iter()
        .map(|layer| {
            let mut cells: Vec<(f64, f64, f64)> = rows
                .iter()
                .filter(|r| &r.layer == layer)
                .filter_map(|r| {
                    let i = values.iter().position(|v| *v == r.value)?;
                    Some((i as f64, r.mean, r.std))
                })
                .collect();
            cells.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series {
                name: layer.clone(),
                points: cells.iter().map(|c| (c.0, c.1)).collect(),
                spread: cells.iter().map(|c| c.2).collect(),
            }
        })
        .collect();
    let spec = PlotSpec {
        id: chart_id(&axis),
        title: format!("{metric_label} against {axis}, mean ± std over seeds"),
        x_label: axis.clone(),
        y_label: metric_label,
        series,
        categories: Some(values.iter().map(value_label).collect()),
        marks: true,
        height: 280,
        ..PlotSpec::default()
    };
    view! { <Plot spec=spec/> }
}

/// Every succeeded run as a line across the swept axes, the seed, and the
/// chosen metric at each layer; each axis scaled to its own range.
#[component]
pub fn ParallelCoordinates(
    axes: Vec<String>,
    runs: Vec<SweepRun>,
    probe: String,
    metric: String,
) -> impl IntoView {
    let mut layers: Vec<String> = runs
        .iter()
        .flat_map(|r| &r.evaluations)
        .filter(|e| e.probe == probe && e.metric == metric)
        .map(|e| e.layer.clone())
        .collect();
    layers.sort_by_key(|l| layer_depth(l));
    layers.dedup();
    // Each dimension: its label and one raw value per run.
    let mut dims: Vec<(String, Vec<Option<Value>>)> = axes
        .iter()
        .map(|a| {
            (
                a.clone(),
                runs.iter().map(|r| r.values.get(a).cloned()).collect(),
            )
        })
        .collect();
    dims.push((
        "seed".into(),
        runs.iter().map(|r| Some(Value::from(r.seed))).collect(),
    ));
    for l in &layers {
        let vals = runs
            .iter()
            .map(|r| {
                r.evaluations
                    .iter()
                    .find(|e| &e.layer == l && e.probe == probe && e.metric == metric)
                    .map(|e| Value::from(e.value))
            })
            .collect();
        let name = column_name(&(probe.clone(), metric.clone()));
        dims.push((format!("{name} @ {l}"), vals));
    }
    let n = dims.len().max(2);
    // Wide side margins: the axis labels are centred on the first and last axes.
    let x = move |i: usize| 80.0 + i as f64 / (n - 1) as f64 * (W - 160.0);
    let y = move |t: f64| PAD + (1.0 - t) * (H - 2.0 * PAD);
    // Scale each dimension: distinct values placed by `positions`.
    let scaled: Vec<Vec<Option<f64>>> = dims
        .iter()
        .map(|(_, vals)| {
            let seen = distinct(vals.iter().flatten());
            let pos = positions(&seen);
            vals.iter()
                .map(|v| {
                    let v = v.as_ref()?;
                    seen.iter().position(|d| d == v).map(|i| pos[i])
                })
                .collect()
        })
        .collect();
    let first_axis: Vec<Value> = dims
        .first()
        .map(|(_, v)| distinct(v.iter().flatten()))
        .unwrap_or_default();
    let lines = runs
        .iter()
        .enumerate()
        .map(|(r, run)| {
            let points = scaled
                .iter()
                .enumerate()
                .filter_map(|(i, col)| col[r].map(|t| format!("{:.1},{:.1}", x(i), y(t))))
                .collect::<Vec<_>>()
                .join(" ");
            let group = dims
                .first()
                .and_then(|(_, v)| v[r].as_ref())
                .and_then(|v| first_axis.iter().position(|d| d == v))
                .unwrap_or(0);
            let colour = COLOURS[group % COLOURS.len()];
            view! {
                <polyline class="run-line" points=points stroke=colour fill="none" stroke-width="1.5" opacity="0.8">
                    <title>{run.name.clone()}</title>
                </polyline>
            }
        })
        .collect_view();
    let axes_view = dims
        .iter()
        .enumerate()
        .map(|(i, (label, vals))| {
            let shown: Vec<String> = vals.iter().flatten().map(value_label).collect();
            let numeric: Vec<f64> = vals.iter().flatten().filter_map(value_number).collect();
            let (lo, hi) = if numeric.len() == shown.len() && !numeric.is_empty() {
                let lo = numeric.iter().cloned().fold(f64::INFINITY, f64::min);
                let hi = numeric.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                (short(lo), short(hi))
            } else {
                (
                    shown.first().cloned().unwrap_or_default(),
                    shown.last().cloned().unwrap_or_default(),
                )
            };
            view! {
                <line class="pc-axis" x1=x(i) x2=x(i) y1=PAD y2=H - PAD stroke="#9aa3ad"/>
                <text x=x(i) y=PAD - 18.0 class="label" text-anchor="middle">{label.clone()}</text>
                <text x=x(i) y=PAD - 6.0 class="label" text-anchor="middle">{hi}</text>
                <text x=x(i) y=H - PAD + 14.0 class="label" text-anchor="middle">{lo}</text>
            }
        })
        .collect_view();
    view! {
        <ChartFrame id="parallel-coords" width=W height=H pad=PAD outline=Outline::Bare data_runs=runs.len()>
            {lines}
            {axes_view}
        </ChartFrame>
    }
}

fn short(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e9 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}
