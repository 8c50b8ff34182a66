//! The guillotine view of a run: every probe at every layer, as a table and
//! as accuracy against depth (arXiv:2206.13378).

use leptos::prelude::*;
use sslab_shared::api::Evaluation;

use crate::chart::{ChartFrame, accuracy_by_layer_ticks};

const PROBE_ORDER: [&str; 4] = ["knn", "linear", "lowshot", "rankme"];
pub const COLOURS: [&str; 8] = [
    "#2457c5", "#c0392b", "#1c7a3c", "#8e44ad", "#d68910", "#16a085", "#7f8c8d", "#b03a7a",
];

/// Sorts layers by depth: the backbone, then proj.0, proj.1, …
pub fn layer_depth(layer: &str) -> i64 {
    if layer == "backbone" {
        -1
    } else {
        layer
            .trim_start_matches("proj.")
            .parse()
            .unwrap_or(i64::MAX)
    }
}

/// Layers in depth order and the (probe, metric) columns present; the
/// attention rows (per block) have their own charts.
pub fn axes(rows: &[Evaluation]) -> (Vec<String>, Vec<(String, String)>) {
    let mut layers: Vec<String> = Vec::new();
    let mut columns: Vec<(String, String)> = Vec::new();
    for e in rows.iter().filter(|e| e.probe != "attention") {
        if !layers.contains(&e.layer) {
            layers.push(e.layer.clone());
        }
        let key = (e.probe.clone(), e.metric.clone());
        if !columns.contains(&key) {
            columns.push(key);
        }
    }
    layers.sort_by_key(|l| layer_depth(l));
    let rank = |p: &str| {
        PROBE_ORDER
            .iter()
            .position(|x| *x == p)
            .unwrap_or(PROBE_ORDER.len())
    };
    // Low-shot metrics in shot order: 1, 2, 5 shots, then fractions.
    let shots = |m: &str| {
        m.trim_start_matches("top1_")
            .trim_end_matches("shot")
            .parse::<f64>()
            .unwrap_or(1e9)
    };
    columns.sort_by(|a, b| {
        rank(&a.0)
            .cmp(&rank(&b.0))
            .then(shots(&a.1).total_cmp(&shots(&b.1)))
            .then(a.1.cmp(&b.1))
    });
    (layers, columns)
}

pub fn value(rows: &[Evaluation], layer: &str, col: &(String, String)) -> Option<f64> {
    rows.iter()
        .find(|e| e.layer == layer && e.probe == col.0 && e.metric == col.1)
        .map(|e| e.value)
}

pub fn column_name(col: &(String, String)) -> String {
    match (col.0.as_str(), col.1.as_str()) {
        (p, "top1") => p.to_string(),
        ("rankme", _) => "RankMe".into(),
        (p, m) => format!("{p} {}", m.trim_start_matches("top1_")),
    }
}

/// Layer × probe table; the best layer of each column is marked.
#[component]
pub fn ProbeTable(
    rows: Vec<Evaluation>,
    /// The table's DOM id.
    #[prop(default = "probe-table".to_string())]
    id: String,
) -> impl IntoView {
    let (layers, columns) = axes(&rows);
    let best: Vec<Option<String>> = columns
        .iter()
        .map(|c| {
            layers
                .iter()
                .filter_map(|l| value(&rows, l, c).map(|v| (l.clone(), v)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(l, _)| l)
        })
        .collect();
    view! {
        <table id=id class="probe-table">
            <thead><tr>
                <th>"Layer"</th>
                {columns.iter().map(|c| view! { <th>{column_name(c)}</th> }).collect_view()}
            </tr></thead>
            <tbody>
                {layers.iter().map(|l| view! {
                    <tr>
                        <td>{l.clone()}</td>
                        {columns.iter().zip(&best).map(|(c, b)| {
                            let v = value(&rows, l, c);
                            let text = match (v, c.0.as_str()) {
                                (Some(v), "rankme") => format!("{v:.1}"),
                                (Some(v), _) => format!("{v:.3}"),
                                (None, _) => "—".into(),
                            };
                            let is_best = b.as_deref() == Some(l.as_str());
                            view! { <td class="num" class:best=is_best>{text}</td> }
                        }).collect_view()}
                    </tr>
                }).collect_view()}
            </tbody>
        </table>
    }
}

const W: f64 = 640.0;
const H: f64 = 240.0;
const PAD: f64 = 40.0;

/// Accuracy against depth, one line per accuracy probe.
#[component]
pub fn GuillotineChart(rows: Vec<Evaluation>) -> impl IntoView {
    let (layers, columns) = axes(&rows);
    let columns: Vec<_> = columns.into_iter().filter(|c| c.0 != "rankme").collect();
    let n = layers.len().max(2) - 1;
    let x = move |i: usize| PAD + i as f64 / n as f64 * (W - 2.0 * PAD - 90.0);
    let y = |v: f64| PAD + (1.0 - v) * (H - 2.0 * PAD);
    let lines = columns
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let points = layers
                .iter()
                .enumerate()
                .filter_map(|(i, l)| value(&rows, l, c).map(|v| format!("{:.1},{:.1}", x(i), y(v))))
                .collect::<Vec<_>>()
                .join(" ");
            let colour = COLOURS[k % COLOURS.len()];
            let label_y = PAD + 14.0 * k as f64;
            view! {
                <polyline class="probe-line" points=points stroke=colour fill="none" stroke-width="2"/>
                <text x=W - PAD - 80.0 y=label_y class="legend" fill=colour>{column_name(c)}</text>
            }
        })
        .collect_view();
    let (y_ticks, x_ticks) = accuracy_by_layer_ticks(&layers, x, y);
    view! {
        <ChartFrame id="guillotine-chart" width=W height=H pad=PAD legend=90.0
            data_lines=columns.len() y_ticks=y_ticks x_ticks=x_ticks
            title="top-1 accuracy by layer (deeper →)" title_gap=10.0>
            {lines}
        </ChartFrame>
    }
}
