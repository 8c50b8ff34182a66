//! Sweep charts: one metric against one swept axis with a line per layer
//! (mean ± std over seeds), and parallel coordinates over every run.

use leptos::prelude::*;
use serde_json::Value;
use sslab_shared::api::{AxisAggregate, SweepRun};
use sslab_shared::sweep::{value_label, value_number};

use crate::chart::{ChartFrame, Outline};
use crate::probes::{COLOURS, column_name, layer_depth};

const W: f64 = 680.0;
const H: f64 = 260.0;
const PAD: f64 = 46.0;
const LEGEND: f64 = 90.0;

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

/// Where each value of an axis sits, in [0, 1]: by number (log or linear)
/// when every value has one, else evenly in first-seen order.
pub fn positions(values: &[Value], log: bool) -> Vec<f64> {
    let numbers: Option<Vec<f64>> = values
        .iter()
        .map(|v| value_number(v).filter(|x| !log || *x > 0.0))
        .collect();
    let n = values.len();
    match numbers {
        Some(xs) if n > 1 => {
            let t: Vec<f64> = xs
                .iter()
                .map(|x| if log { x.log10() } else { *x })
                .collect();
            let (lo, hi) = t
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
                    (a.min(*x), b.max(*x))
                });
            if hi > lo {
                t.iter().map(|x| (x - lo) / (hi - lo)).collect()
            } else {
                vec![0.5; n]
            }
        }
        _ if n > 1 => (0..n).map(|i| i as f64 / (n - 1) as f64).collect(),
        _ => vec![0.5; n],
    }
}

/// Whether a log scale suits these values: all positive numbers spanning
/// a factor of 8 or more.
pub fn suits_log(values: &[Value]) -> bool {
    let xs: Option<Vec<f64>> = values.iter().map(value_number).collect();
    match xs {
        Some(xs) if xs.len() > 1 && xs.iter().all(|x| *x > 0.0) => {
            let lo = xs.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = xs.iter().cloned().fold(0.0, f64::max);
            hi / lo >= 8.0
        }
        _ => false,
    }
}

/// The DOM id of an axis chart: `projector.dims` → `sweep-chart-projector-dims`.
pub fn chart_id(axis: &str) -> String {
    format!("sweep-chart-{}", axis.replace(['.', '_'], "-"))
}

/// One metric against one axis: a line per layer, a point per axis value,
/// error bars of ± one standard deviation over the runs pooled there.
#[component]
pub fn AxisChart(
    axis: String,
    /// The aggregates of this axis for one (probe, metric).
    rows: Vec<AxisAggregate>,
    log_x: bool,
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
    let pos = positions(&values, log_x);
    let x = move |p: f64| PAD + 10.0 + p * (W - 2.0 * PAD - LEGEND - 20.0);
    let (lo, hi) = rows
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), r| {
            (a.min(r.mean - r.std), b.max(r.mean + r.std))
        });
    let (lo, hi) = if hi > lo {
        let pad = (hi - lo) * 0.08;
        (lo - pad, hi + pad)
    } else {
        (lo - 0.5, hi + 0.5)
    };
    let y = move |v: f64| PAD + (1.0 - (v - lo) / (hi - lo)) * (H - 2.0 * PAD);
    let total_points = rows.len();
    let series = layers
        .iter()
        .enumerate()
        .map(|(k, layer)| {
            let colour = COLOURS[k % COLOURS.len()];
            let mut pts: Vec<(f64, &AxisAggregate)> = rows
                .iter()
                .filter(|r| &r.layer == layer)
                .filter_map(|r| {
                    let i = values.iter().position(|v| *v == r.value)?;
                    Some((pos[i], r))
                })
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let line = pts
                .iter()
                .map(|(p, r)| format!("{:.1},{:.1}", x(*p), y(r.mean)))
                .collect::<Vec<_>>()
                .join(" ");
            let marks = pts
                .iter()
                .map(|(p, r)| {
                    let title = format!(
                        "{layer} at {} = {}: {:.4} ± {:.4} (n = {})",
                        axis,
                        value_label(&r.value),
                        r.mean,
                        r.std,
                        r.n
                    );
                    view! {
                        <line class="errbar" x1=x(*p) x2=x(*p) y1=y(r.mean - r.std) y2=y(r.mean + r.std) stroke=colour/>
                        <circle class="pt" cx=x(*p) cy=y(r.mean) r="4" fill=colour
                            data-layer=layer.clone() data-value=value_label(&r.value) data-mean=r.mean.to_string()>
                            <title>{title}</title>
                        </circle>
                    }
                })
                .collect_view();
            view! {
                <g class="series" data-layer=layer.clone()>
                    <polyline points=line stroke=colour fill="none" stroke-width="2"/>
                    {marks}
                    <text x=W - PAD - LEGEND + 12.0 y=PAD + 14.0 * k as f64 class="legend" fill=colour>{layer.clone()}</text>
                </g>
            }
        })
        .collect_view();
    let y_ticks = [lo, (lo + hi) / 2.0, hi]
        .into_iter()
        .map(|v| (y(v), format!("{v:.3}")))
        .collect::<Vec<_>>();
    let x_ticks = values
        .iter()
        .zip(&pos)
        .map(|(v, p)| (x(*p), value_label(v)))
        .collect::<Vec<_>>();
    let scale = if log_x { " (log scale)" } else { "" };
    view! {
        <ChartFrame id=chart_id(&axis) class="sweep-chart" width=W height=H pad=PAD legend=LEGEND
            data_points=total_points data_layers=layers.len() y_ticks=y_ticks x_ticks=x_ticks
            title=format!("{metric_label} against {axis}{scale}, mean ± std") title_gap=10.0>
            {series}
        </ChartFrame>
    }
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
            let pos = positions(&seen, false);
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
