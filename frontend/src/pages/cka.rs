//! The CKA section of the Compare page: a CKA job of the first two runs
//! compared (or one run against itself), drawn as a layer × layer heatmap.

use leptos::prelude::*;
use sslab_shared::api::{Run, RunStatus};
use sslab_shared::cka::{CkaJob, CkaRequest, CkaResult};

use super::every_two_seconds;
use crate::api;

const CELL: f64 = 34.0;
const LEFT: f64 = 90.0;
const TOP: f64 = 70.0;

/// White (0) to the accent blue (1).
fn colour(v: f64) -> String {
    let t = v.clamp(0.0, 1.0);
    let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    format!(
        "rgb({},{},{})",
        mix(255.0, 36.0),
        mix(255.0, 87.0),
        mix(255.0, 197.0)
    )
}

/// The matrix as coloured cells with the value on hover; rows are the first
/// run's layers, columns the second's.
#[component]
fn Heatmap(r: CkaResult) -> impl IntoView {
    let (rows, cols) = (r.a.layers.len(), r.b.layers.len());
    let (w, h) = (
        LEFT + cols as f64 * CELL + 10.0,
        TOP + rows as f64 * CELL + 10.0,
    );
    let cells = r
        .matrix
        .iter()
        .enumerate()
        .flat_map(|(i, row)| {
            let (la, lb) = (r.a.layers[i].clone(), r.b.layers.clone());
            row.iter().enumerate().map(move |(j, &v)| {
                let (x, y) = (LEFT + j as f64 * CELL, TOP + i as f64 * CELL);
                let text_fill = if v > 0.55 { "#fff" } else { "#1d232b" };
                view! {
                    <g class="cka-cell" data-value=format!("{v:.4}")>
                        <title>{format!("{la} × {}: {v:.4}", lb[j])}</title>
                        <rect x=x y=y width=CELL height=CELL fill=colour(v) stroke="#fff"/>
                        <text x=x + CELL / 2.0 y=y + CELL / 2.0 + 4.0 text-anchor="middle" font-size="10" fill=text_fill>
                            {format!("{v:.2}")}
                        </text>
                    </g>
                }
            })
        })
        .collect_view();
    let row_labels = r
        .a
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| view! {
            <text class="label" x=LEFT - 6.0 y=TOP + i as f64 * CELL + CELL / 2.0 + 4.0 text-anchor="end">{l.clone()}</text>
        })
        .collect_view();
    let col_labels = r
        .b
        .layers
        .iter()
        .enumerate()
        .map(|(j, l)| {
            let x = LEFT + j as f64 * CELL + CELL / 2.0;
            view! {
                <text class="label" x=x y=TOP - 6.0 transform=format!("rotate(-45 {x} {})", TOP - 6.0)>{l.clone()}</text>
            }
        })
        .collect_view();
    view! {
        <svg id="cka-heatmap" class="chart" viewBox=format!("0 0 {w} {h}") style=format!("max-width:{w}px")
            data-rows=rows.to_string() data-cols=cols.to_string()>
            {row_labels}{col_labels}{cells}
        </svg>
        <p class="meta">{format!(
            "Rows: {} ({}); columns: {} ({}). {} CKA on {} test images.",
            r.a.name, r.a.run, r.b.name, r.b.run, r.settings.kind, r.settings.images
        )}</p>
    }
}

#[component]
pub fn CkaSection(runs: Vec<Run>) -> impl IntoView {
    let done: Vec<&Run> = runs
        .iter()
        .filter(|r| r.status == RunStatus::Succeeded)
        .collect();
    let request = CkaRequest {
        a: done.first().map(|r| r.id.clone()).unwrap_or_default(),
        b: done.get(1).map(|r| r.id.clone()),
        ..CkaRequest::default()
    };
    let possible = !done.is_empty();
    let job = RwSignal::new(None::<CkaJob>);
    let error = RwSignal::new(None::<String>);
    let start = move |_| {
        let request = request.clone();
        leptos::task::spawn_local(async move {
            error.set(None);
            match api::post::<CkaJob>("/cka", Some(&request)).await {
                Ok(j) => job.set(Some(j)),
                Err(e) => error.set(Some(e.to_string())),
            }
        });
    };
    every_two_seconds(move || {
        let Some(j) = job.get_untracked() else { return };
        if j.status.is_terminal() {
            return;
        }
        leptos::task::spawn_local(async move {
            match api::get::<CkaJob>(&format!("/cka/{}", j.id)).await {
                Ok(j) => job.set(Some(j)),
                Err(e) => error.set(Some(e.to_string())),
            }
        });
    });
    view! {
        <p class="help">"Centred kernel alignment of every layer of the first two finished runs (or of one run with itself) on their held-out images: 1 where two layers hold the same information up to rotation and scale."</p>
        <button id="cka-start" on:click=start disabled=!possible>"Compute CKA"</button>
        {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
        {move || job.get().map(|j| match (j.status, j.result) {
            (RunStatus::Succeeded, Some(r)) => view! { <Heatmap r=r/> }.into_any(),
            (RunStatus::Failed, _) => view! { <p class="error" id="cka-error">{j.error.unwrap_or_default()}</p> }.into_any(),
            (s, _) => view! { <p class="meta" id="cka-status">{format!("CKA job {}: {}", j.id, s.as_str())}</p> }.into_any(),
        })}
    }
}
