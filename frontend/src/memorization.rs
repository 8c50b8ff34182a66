//! The memorization monitor on a run page: top-1 of the background-crop
//! attack on canaries (trained on) and held-out images (never trained on)
//! over the epochs, and the `dejavu_gap` between them.

use leptos::prelude::*;
use sslab_shared::api::MemorizationPoint;

#[component]
pub fn MemorizationChart(
    /// Readings so far, by epoch.
    points: Vec<MemorizationPoint>,
    /// Epochs of the whole run.
    epochs: i64,
) -> impl IntoView {
    let (w, h, pad) = (520.0, 220.0, 36.0);
    let top = points
        .iter()
        .flat_map(|p| [p.canary_top1, p.heldout_top1])
        .fold(0.1f64, f64::max)
        .min(1.0);
    let span = epochs.max(1) as f64;
    let x = move |e: i64| pad + e as f64 / span * (w - 2.0 * pad);
    let y = move |v: f64| h - pad - v / top * (h - 2.0 * pad);
    let path = |f: fn(&MemorizationPoint) -> f64| {
        points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.epoch), y(f(p))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let dots = points
        .iter()
        .flat_map(|p| {
            [
                ("target", p.canary_top1, p.epoch),
                ("reference", p.heldout_top1, p.epoch),
            ]
        })
        .map(|(class, v, e)| {
            view! { <circle class=class cx=format!("{:.1}", x(e)) cy=format!("{:.1}", y(v)) r="3"/> }
        })
        .collect_view();
    let ticks = points
        .iter()
        .map(|p| {
            view! { <text x=format!("{:.1}", x(p.epoch)) y=(h - pad + 14.0).to_string() text-anchor="middle">{p.epoch}</text> }
        })
        .collect_view();
    view! {
        <svg class="chart" id="memorization-chart" data-points=points.len().to_string()
            viewBox=format!("0 0 {w} {h}") width=w.to_string() height=h.to_string()>
            <line class="axis" x1=pad.to_string() y1=(h - pad).to_string() x2=(w - pad).to_string() y2=(h - pad).to_string()/>
            <line class="axis" x1=pad.to_string() y1=pad.to_string() x2=pad.to_string() y2=(h - pad).to_string()/>
            <text x=(w / 2.0).to_string() y=(h - 6.0).to_string() text-anchor="middle">"epoch"</text>
            <text x="4" y=(pad - 10.0).to_string()>{format!("top-1 of the crop attack (axis to {top:.2})")}</text>
            <polyline class="target" points=path(|p| p.canary_top1)/>
            <polyline class="reference" points=path(|p| p.heldout_top1)/>
            {dots}
            {ticks}
        </svg>
        <p class="legend"><span class="swatch target"></span>"canaries (trained on) "
            <span class="swatch reference"></span>"held out (never trained on)"</p>
    }
}

/// The readings as a table, newest last.
#[component]
pub fn MemorizationTable(points: Vec<MemorizationPoint>) -> impl IntoView {
    view! {
        <table id="memorization-table">
            <thead><tr>
                <th>"epoch"</th><th>"canaries top-1"</th><th>"held out top-1"</th>
                <th>"dejavu_gap"</th><th>"gap, most confident 20 %"</th>
            </tr></thead>
            <tbody>
                {points.into_iter().map(|p| view! {
                    <tr>
                        <td>{p.epoch}</td>
                        <td>{format!("{:.3} ({})", p.canary_top1, p.canaries)}</td>
                        <td>{format!("{:.3} ({})", p.heldout_top1, p.heldout)}</td>
                        <td class="gap">{format!("{:+.3}", p.dejavu_gap)}</td>
                        <td>{format!("{:+.3}", p.dejavu_gap_confident)}</td>
                    </tr>
                }).collect_view()}
            </tbody>
        </table>
    }
}
