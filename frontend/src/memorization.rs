//! The memorization monitor on a run page: top-1 of the background-crop
//! attack on canaries (trained on) and held-out images (never trained on)
//! over the epochs, and the `dejavu_gap` between them.

use leptos::prelude::*;
use sslab_shared::api::MemorizationPoint;

use crate::chart::{ChartFrame, Outline};

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
    let (target, reference) = (path(|p| p.canary_top1), path(|p| p.heldout_top1));
    view! {
        <ChartFrame id="memorization-chart" width=w height=h pad=pad outline=Outline::Axes
            data_points=points.len() x_label="epoch"
            title=format!("top-1 of the crop attack (axis to {top:.2})") title_gap=10.0>
            <polyline class="target" points=target/>
            <polyline class="reference" points=reference/>
            {dots}
            {ticks}
        </ChartFrame>
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
