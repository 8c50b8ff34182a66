//! A ViT's attention against depth: each block's mean attention distance
//! and attention entropy, per head and averaged (the `attention` rows).

use leptos::prelude::*;
use sslab_shared::api::Evaluation;

use crate::chart::ChartFrame;
use crate::probes::COLOURS;

const W: f64 = 320.0;
const H: f64 = 220.0;
const PAD: f64 = 40.0;

/// The block index of `blocks.I.attn`.
fn block(layer: &str) -> Option<usize> {
    layer
        .strip_prefix("blocks.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// One metric against depth: a thin line per head, a thick one for the mean,
/// and a dashed line at `reference` (uniform attention's entropy).
#[component]
fn DepthChart(
    id: &'static str,
    title: String,
    points: Vec<(usize, f64, Vec<f64>)>,
    reference: Option<f64>,
) -> impl IntoView {
    let blocks = points.iter().map(|p| p.0).max().unwrap_or(0).max(1);
    let top = points
        .iter()
        .flat_map(|p| p.2.iter().copied().chain([p.1]))
        .chain(reference)
        .fold(1e-9, f64::max)
        * 1.1;
    let x = move |b: usize| PAD + b as f64 / blocks as f64 * (W - 2.0 * PAD);
    let y = move |v: f64| PAD + (1.0 - v / top) * (H - 2.0 * PAD);
    let line = |values: Vec<(usize, f64)>| {
        values
            .iter()
            .map(|&(b, v)| format!("{:.1},{:.1}", x(b), y(v)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let heads = points.first().map_or(0, |p| p.2.len());
    let head_lines = (0..heads)
        .map(|h| {
            let pts = line(points.iter().map(|p| (p.0, p.2[h])).collect());
            view! { <polyline class="head-line" points=pts stroke=COLOURS[(h + 1) % COLOURS.len()] stroke-opacity="0.45" fill="none" stroke-width="1"/> }
        })
        .collect_view();
    let mean = line(points.iter().map(|p| (p.0, p.1)).collect());
    let y_ticks = [0.0, top / 2.2, top / 1.1]
        .into_iter()
        .map(|v| (y(v), format!("{v:.1}")))
        .collect();
    let x_ticks = points.iter().map(|p| (x(p.0), p.0.to_string())).collect();
    view! {
        <ChartFrame id=id width=W height=H pad=PAD data_points=points.len() data_lines=heads
            y_ticks=y_ticks x_ticks=x_ticks title=title x_label="block">
            {reference.map(|r| view! {
                <line class="reference" x1=PAD x2=W - PAD y1=y(r) y2=y(r) stroke="#7f8c8d" stroke-dasharray="4 3"/>
            })}
            {head_lines}
            <polyline class="mean-line" points=mean stroke=COLOURS[0] fill="none" stroke-width="2.2"/>
        </ChartFrame>
    }
}

/// The two charts, or nothing when the run has no attention rows (not a ViT).
#[component]
pub fn AttentionCharts(rows: Vec<Evaluation>) -> impl IntoView {
    let series = |metric: &str| {
        let mut points: Vec<(usize, f64, Vec<f64>)> = rows
            .iter()
            .filter(|e| e.probe == "attention" && e.metric == metric && e.job_id.is_none())
            .filter_map(|e| {
                let heads = e.settings["per_head"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
                    .unwrap_or_default();
                Some((block(&e.layer)?, e.value, heads))
            })
            .collect();
        points.sort_by_key(|p| p.0);
        points
    };
    let (distance, entropy) = (series("mean_distance"), series("entropy"));
    if distance.is_empty() {
        return None;
    }
    let uniform = rows
        .iter()
        .find(|e| e.probe == "attention" && e.metric == "entropy")
        .and_then(|e| e.settings["uniform_entropy"].as_f64());
    Some(view! {
        <h3>"Attention by depth"</h3>
        <p class="help">"How far each block's heads look (mean distance to the patches attended, in pixels) and how spread their attention is (entropy; the dashed line is uniform attention). Thin lines: heads; thick: their mean."</p>
        <div class="bar">
            <DepthChart id="attention-distance" title="mean attention distance (px)".into() points=distance reference=None/>
            <DepthChart id="attention-entropy" title="attention entropy (nats)".into() points=entropy reference=uniform/>
        </div>
    })
}
