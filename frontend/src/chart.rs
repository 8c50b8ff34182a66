//! A small SVG line chart of the training loss.

use leptos::prelude::*;
use sslab_shared::api::MetricPoint;

const W: f64 = 640.0;
const H: f64 = 220.0;
const PAD: f64 = 36.0;

/// Loss against step; the x axis spans the whole run so progress shows.
#[component]
pub fn LossChart(
    /// Metrics received so far, oldest first.
    points: ReadSignal<Vec<MetricPoint>>,
    /// Steps in the whole run.
    #[prop(into)]
    total_steps: Signal<i64>,
) -> impl IntoView {
    let geometry = move || {
        points.with(|pts| {
            let total = total_steps
                .get()
                .max(pts.last().map(|p| p.step).unwrap_or(1))
                .max(1) as f64;
            let (lo, hi) = pts
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                    (lo.min(p.loss), hi.max(p.loss))
                });
            let span = if hi > lo { hi - lo } else { 1.0 };
            let line = pts
                .iter()
                .map(|p| {
                    let x = PAD + (p.step as f64 / total) * (W - 2.0 * PAD);
                    let y = PAD + (1.0 - (p.loss - lo) / span) * (H - 2.0 * PAD);
                    format!("{x:.1},{y:.1}")
                })
                .collect::<Vec<_>>()
                .join(" ");
            (line, pts.len(), lo, hi)
        })
    };
    view! {
        <svg id="loss-chart" class="chart" viewBox=format!("0 0 {W} {H}")
            data-points=move || geometry().1.to_string()>
            <rect x=PAD y=PAD width=W - 2.0 * PAD height=H - 2.0 * PAD class="frame"/>
            <polyline class="loss" points=move || geometry().0/>
            <text x=PAD y=PAD - 8.0 class="label">
                {move || {
                    let (_, n, lo, hi) = geometry();
                    if n == 0 { "loss: waiting for the first step".to_string() } else { format!("loss {hi:.3} … {lo:.3}") }
                }}
            </text>
            <text x=W - PAD y=H - 10.0 class="label" text-anchor="end">"step"</text>
        </svg>
    }
}
