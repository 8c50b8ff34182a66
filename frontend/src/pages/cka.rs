//! The CKA section of the Compare page: a CKA job of the first two runs
//! compared (or one run against itself), drawn as a layer × layer heatmap;
//! and the family of all the finished runs at the representation, as a
//! matrix sorted by its dendrogram.

use leptos::prelude::*;
use sslab_shared::api::{Run, RunStatus};
use sslab_shared::cka::{CkaFamily, CkaJob, CkaRequest, CkaResult};

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
/// One matrix cell at (x, y): its colour, value and hover `title`;
/// `rows_cols` are the family's run ids (none for a pair's layers).
fn cell(
    x: f64,
    y: f64,
    v: f64,
    title: String,
    rows_cols: Option<(String, String)>,
) -> impl IntoView {
    let text_fill = if v > 0.55 { "#fff" } else { "#1d232b" };
    let (row, col) = rows_cols.unzip();
    view! {
        <g class="cka-cell" data-value=format!("{v:.4}") data-row=row data-col=col>
            <title>{title}</title>
            <rect x=x y=y width=CELL height=CELL fill=colour(v) stroke="#fff"/>
            <text x=x + CELL / 2.0 y=y + CELL / 2.0 + 4.0 text-anchor="middle" font-size="10" fill=text_fill>
                {format!("{v:.2}")}
            </text>
        </g>
    }
}

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
                cell(x, y, v, format!("{la} × {}: {v:.4}", lb[j]), None)
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

/// The family's matrix with rows and columns in the dendrogram's order,
/// the dendrogram drawn to the left of the rows.
#[component]
fn FamilyView(f: CkaFamily) -> impl IntoView {
    const TREE: f64 = 110.0;
    const NAMES: f64 = 130.0;
    let n = f.order.len();
    let left = TREE + NAMES;
    let (w, h) = (left + n as f64 * CELL + 10.0, TOP + n as f64 * CELL + 10.0);
    // Where each run sits along the sorted axis.
    let mut slot = vec![0usize; n];
    for (pos, &run) in f.order.iter().enumerate() {
        slot[run] = pos;
    }
    let centre = |pos: usize| TOP + pos as f64 * CELL + CELL / 2.0;
    let cells = f
        .order
        .iter()
        .enumerate()
        .flat_map(|(i, &ri)| {
            let (f, order) = (f.clone(), f.order.clone());
            order.into_iter().enumerate().map(move |(j, rj)| {
                let v = f.matrix[ri][rj];
                let (x, y) = (left + j as f64 * CELL, TOP + i as f64 * CELL);
                let title = format!("{} × {}: {v:.4}", f.runs[ri].name, f.runs[rj].name);
                cell(
                    x,
                    y,
                    v,
                    title,
                    Some((f.runs[ri].run.clone(), f.runs[rj].run.clone())),
                )
            })
        })
        .collect_view();
    let names = f
        .order
        .iter()
        .enumerate()
        .map(|(pos, &r)| {
            let name = f.runs[r].name.clone();
            let x = left + pos as f64 * CELL + CELL / 2.0;
            view! {
                <text class="label family-row" x=left - 6.0 y=centre(pos) + 4.0 text-anchor="end">{name.clone()}</text>
                <text class="label" x=x y=TOP - 6.0 transform=format!("rotate(-45 {x} {})", TOP - 6.0)>{name}</text>
            }
        })
        .collect_view();
    // Each cluster's (x, y): leaves at the tree's right edge, a merge at its
    // distance to the left, halfway between its two children.
    let top = f.merges.iter().map(|m| m.distance).fold(1e-9, f64::max);
    let x_at = |d: f64| TREE - 6.0 - (d / top).clamp(0.0, 1.0) * (TREE - 16.0);
    let mut at: Vec<(f64, f64)> = (0..n).map(|r| (x_at(0.0), centre(slot[r]))).collect();
    let mut links = Vec::new();
    for m in &f.merges {
        let ((xl, yl), (xr, yr)) = (at[m.left], at[m.right]);
        let x = x_at(m.distance);
        links.push(format!("M{xl:.1},{yl:.1}H{x:.1}V{yr:.1}H{xr:.1}"));
        at.push((x, (yl + yr) / 2.0));
    }
    let tree = links
        .into_iter()
        .map(|d| view! { <path class="dendrogram-link" d=d fill="none" stroke="#5b6675" stroke-width="1.5"/> })
        .collect_view();
    let order = f
        .order
        .iter()
        .map(|&r| f.runs[r].run.clone())
        .collect::<Vec<_>>()
        .join(",");
    let layer = f
        .runs
        .first()
        .and_then(|s| s.layers.first().cloned())
        .unwrap_or_default();
    view! {
        <svg id="cka-family" class="chart" viewBox=format!("0 0 {w} {h}") style=format!("max-width:{w}px")
            data-order=order data-merges=f.merges.len().to_string()>
            {tree}{names}{cells}
        </svg>
        <p class="meta">{format!(
            "CKA at `{layer}` between every pair of runs, sorted by average-linkage clustering on 1 − CKA: runs that learned alike sit together. {} CKA on {} test images.",
            f.settings.kind, f.settings.images
        )}</p>
    }
}

/// Posts `request` as a CKA job into `job`; `poll` follows it until it
/// ends.
fn start_job(job: RwSignal<Option<CkaJob>>, error: RwSignal<Option<String>>, request: CkaRequest) {
    leptos::task::spawn_local(async move {
        error.set(None);
        match api::post::<CkaJob>("/cka", Some(&request)).await {
            Ok(j) => job.set(Some(j)),
            Err(e) => error.set(Some(e.to_string())),
        }
    });
}

fn poll(job: RwSignal<Option<CkaJob>>, error: RwSignal<Option<String>>) {
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
}

fn job_state(j: CkaJob, id: &'static str) -> AnyView {
    match j.status {
        RunStatus::Failed => view! { <p class="error" id=format!("{id}-error")>{j.error.unwrap_or_default()}</p> }.into_any(),
        s => view! { <p class="meta" id=format!("{id}-status")>{format!("CKA job {}: {}", j.id, s.as_str())}</p> }.into_any(),
    }
}

#[component]
pub fn CkaSection(runs: Vec<Run>) -> impl IntoView {
    let done: Vec<&Run> = runs
        .iter()
        .filter(|r| r.status == RunStatus::Succeeded)
        .collect();
    let pair = CkaRequest {
        a: done.first().map(|r| r.id.clone()).unwrap_or_default(),
        b: done.get(1).map(|r| r.id.clone()),
        ..CkaRequest::default()
    };
    let family = CkaRequest {
        runs: Some(done.iter().map(|r| r.id.clone()).collect()),
        ..CkaRequest::default()
    };
    let (possible, family_possible) = (!done.is_empty(), done.len() >= 2);
    let family_label = format!("Family of {} runs", done.len());
    let (job, error) = (RwSignal::new(None::<CkaJob>), RwSignal::new(None::<String>));
    let (family_job, family_error) = (RwSignal::new(None::<CkaJob>), RwSignal::new(None::<String>));
    poll(job, error);
    poll(family_job, family_error);
    view! {
        <p class="help">"Centred kernel alignment of every layer of the first two finished runs (or of one run with itself) on their held-out images: 1 where two layers hold the same information up to rotation and scale."</p>
        <button id="cka-start" on:click=move |_| start_job(job, error, pair.clone()) disabled=!possible>"Compute CKA"</button>
        {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
        {move || job.get().map(|j| match (j.status, j.result.clone()) {
            (RunStatus::Succeeded, Some(r)) => view! { <Heatmap r=r/> }.into_any(),
            _ => job_state(j, "cka"),
        })}
        <h3>"Family"</h3>
        <p class="help">"Every finished run against every other at the representation, ordered by a dendrogram of 1 − CKA: which runs learned alike."</p>
        <button id="cka-family-start" on:click=move |_| start_job(family_job, family_error, family.clone()) disabled=!family_possible>{family_label}</button>
        {move || family_error.get().map(|e| view! { <p class="error">{e}</p> })}
        {move || family_job.get().map(|j| match (j.status, j.family.clone()) {
            (RunStatus::Succeeded, Some(f)) => view! { <FamilyView f=f/> }.into_any(),
            _ => job_state(j, "cka-family"),
        })}
    }
}
