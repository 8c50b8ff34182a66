//! Runs side by side (`/compare?runs=a,b,…&project=…`): loss curves
//! overlaid, every probe at every layer in one table, and the fields where
//! the specs differ; finished runs of a project can be added.

use leptos::prelude::*;
use leptos_router::components::A;
use leptos_router::hooks::{use_navigate, use_query_map};
use sslab_shared::api::{Comparison, Evaluation, Page, Run};
use sslab_shared::sweep::value_label;

use super::status_class;
use crate::api;
use crate::chart::{ChartFrame, accuracy_by_layer_ticks};
use crate::plot::{Plot, PlotSpec, Series};
use crate::probes::{COLOURS, axes as probe_axes, column_name, value};

const W: f64 = 680.0;
const H: f64 = 240.0;
const PAD: f64 = 40.0;

/// Loss against the fraction of training done, one line per run.
#[component]
fn OverlaidLoss(c: Comparison) -> impl IntoView {
    let series = c
        .runs
        .iter()
        .zip(&c.metrics)
        .map(|(run, pts)| {
            let total = run.total_steps.max(1) as f64;
            Series::new(
                run.name.clone(),
                pts.iter()
                    .map(|p| ((p.step as f64 / total).min(1.0), p.loss))
                    .collect(),
            )
        })
        .collect();
    let spec = PlotSpec {
        id: "compare-loss".into(),
        title: "Loss, one line per run".into(),
        x_label: "fraction of training".into(),
        y_label: "loss".into(),
        series,
        x_span: Some((0.0, 1.0)),
        smoothing: Some(0.0),
        height: 280,
        ..PlotSpec::default()
    };
    view! { <Plot spec=spec/> }
}

/// kNN top-1 against depth, one line per run: the guillotine curves overlaid.
#[component]
fn OverlaidProbes(c: Comparison) -> impl IntoView {
    let all: Vec<Evaluation> = c.evaluations.iter().flatten().cloned().collect();
    let (layers, _) = probe_axes(&all);
    let knn = ("knn".to_string(), "top1".to_string());
    let n = layers.len().max(2) - 1;
    let x = move |i: usize| PAD + i as f64 / n as f64 * (W - 2.0 * PAD);
    let y = |v: f64| PAD + (1.0 - v) * (H - 2.0 * PAD);
    let lines = c
        .evaluations
        .iter()
        .enumerate()
        .map(|(k, rows)| {
            let points = layers
                .iter()
                .enumerate()
                .filter_map(|(i, l)| value(rows, l, &knn).map(|v| format!("{:.1},{:.1}", x(i), y(v))))
                .collect::<Vec<_>>()
                .join(" ");
            let colour = COLOURS[k % COLOURS.len()];
            view! { <polyline class="run-probe" points=points stroke=colour fill="none" stroke-width="2"/> }
        })
        .collect_view();
    let (y_ticks, x_ticks) = accuracy_by_layer_ticks(&layers, x, y);
    view! {
        <ChartFrame id="compare-probe-chart" width=W height=H pad=PAD data_lines=c.runs.len()
            y_ticks=y_ticks x_ticks=x_ticks title="kNN top-1 by layer (deeper →)">
            {lines}
        </ChartFrame>
    }
}

#[component]
pub fn ComparePage() -> impl IntoView {
    let query = use_query_map();
    let ids = move || query.with(|q| q.get("runs").unwrap_or_default());
    let project = RwSignal::new(
        query
            .with_untracked(|q| q.get("project"))
            .unwrap_or_default(),
    );
    crate::projects::keep_in_url(move || vec![("runs", ids()), ("project", project.get())]);
    let data = LocalResource::new(move || {
        let ids = ids();
        async move { api::get::<Comparison>(&format!("/compare?runs={}", api::query_value(&ids))).await }
    });
    // The finished runs of the chosen project, to add to the comparison.
    let candidates = LocalResource::new(move || {
        let mut url = "/runs?status=succeeded&page_size=200".to_string();
        let project = project.get();
        if !project.is_empty() {
            url.push_str(&format!("&project={}", api::query_value(&project)));
        }
        async move { api::get::<Page<Run>>(&url).await }
    });
    let navigate = use_navigate();
    let add = move |id: String| {
        let mut list: Vec<String> = ids()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if !id.is_empty() && !list.contains(&id) {
            list.push(id);
        }
        let project = project.get_untracked();
        let place = if project.is_empty() {
            String::new()
        } else {
            format!("&project={}", api::query_value(&project))
        };
        navigate(
            &format!("/compare?runs={}{place}", list.join(",")),
            Default::default(),
        );
    };
    view! {
        <h1>"Compare runs"</h1>
        <div class="bar filters">
            <crate::projects::ProjectSelect id="compare-project" value=project any=true/>
            <select id="compare-add" on:change=move |ev| add(event_target_value(&ev))>
                <option value="" selected=true>"add a finished run…"</option>
                {move || {
                    let shown = ids();
                    candidates.get().and_then(|r| r.ok()).map(|page| page.items.into_iter()
                        .filter(|r| !shown.split(',').any(|s| s == r.id))
                        .map(|r| view! { <option value=r.id.clone()>{format!("{} ({})", r.name, r.method)}</option> })
                        .collect_view())
                }}
            </select>
        </div>
        <Transition fallback=|| view! { <p>"Loading…"</p> }>
            {move || data.get().map(|res| match res {
                Err(e) => view! { <p class="error">{e.to_string()}</p> }.into_any(),
                Ok(c) => render(c).into_any(),
            })}
        </Transition>
    }
}

fn render(c: Comparison) -> impl IntoView {
    let legend = c
        .runs
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let name = r.name.clone();
            view! {
                <li><span class="swatch" style=format!("background:{}", COLOURS[k % COLOURS.len()])></span>
                    <A href=format!("/runs/{}", r.id)>{name}</A>" "
                    <span class=status_class(r.status)>{r.status.as_str()}</span></li>
            }
        })
        .collect_view();
    // Rows: every (layer, probe, metric) any run has.
    let all: Vec<Evaluation> = c.evaluations.iter().flatten().cloned().collect();
    let (layers, columns) = probe_axes(&all);
    let probe_rows = layers
        .iter()
        .flat_map(|l| columns.iter().map(move |col| (l.clone(), col.clone())))
        .filter(|(l, col)| c.evaluations.iter().any(|e| value(e, l, col).is_some()))
        .map(|(l, col)| {
            let cells = c
                .evaluations
                .iter()
                .map(|e| {
                    let text = value(e, &l, &col)
                        .map(|v| format!("{v:.3}"))
                        .unwrap_or_else(|| "—".into());
                    view! { <td class="num">{text}</td> }
                })
                .collect_view();
            view! { <tr><td>{l.clone()}</td><td>{column_name(&col)}</td>{cells}</tr> }
        })
        .collect_view();
    let run_heads = c
        .runs
        .iter()
        .map(|r| view! { <th>{r.name.clone()}</th> })
        .collect_view();
    let run_heads2 = c
        .runs
        .iter()
        .map(|r| view! { <th>{r.name.clone()}</th> })
        .collect_view();
    let diff = if c.spec_diff.is_empty() {
        view! { <p class="meta" id="spec-diff">"The specs are the same (names aside)."</p> }
            .into_any()
    } else {
        view! {
            <table id="spec-diff">
                <thead><tr><th>"Field"</th>{run_heads2}</tr></thead>
                <tbody>
                    {c.spec_diff.iter().map(|d| view! {
                        <tr><td>{d.path.clone()}</td>
                            {d.values.iter().map(|v| view! { <td>{value_label(v)}</td> }).collect_view()}
                        </tr>
                    }).collect_view()}
                </tbody>
            </table>
        }
        .into_any()
    };
    view! {
        <ul class="legend-list">{legend}</ul>
        <section>
            <h2>"Training loss"</h2>
            <OverlaidLoss c=c.clone()/>
        </section>
        <section>
            <h2>"Probes"</h2>
            <OverlaidProbes c=c.clone()/>
            <table id="compare-probes">
                <thead><tr><th>"Layer"</th><th>"Probe"</th>{run_heads}</tr></thead>
                <tbody>{probe_rows}</tbody>
            </table>
        </section>
        <section>
            <h2>"Representations (CKA)"</h2>
            <super::cka::CkaSection runs=c.runs.clone()/>
        </section>
        <section>
            <h2>"Where the specs differ"</h2>
            {diff}
        </section>
    }
}
