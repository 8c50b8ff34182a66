//! The sweeps list, and a sweep: each metric against each swept axis per
//! layer (mean ± std over seeds), parallel coordinates, a sortable table.

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::components::A;
use leptos_router::hooks::use_params_map;
use serde_json::Value;
use sslab_shared::api::{Page, StatusCounts, Sweep, SweepRun, SweepSummary};
use sslab_shared::sweep::value_label;

use super::{every_two_seconds, opt_num, status_class, time_text};
use crate::api;
use crate::confirm::DeleteButton;
use crate::labels::{Labels, LabelsEditor, ListFilter, ListFilterBar, label_chips};
use crate::probes::{axes as probe_axes, column_name, layer_depth};
use crate::sweep_chart::{AxisChart, ParallelCoordinates};

fn counts_text(c: &StatusCounts) -> String {
    let mut parts = vec![format!("{} runs", c.total())];
    for (n, word) in [
        (c.succeeded, "succeeded"),
        (c.running, "running"),
        (c.queued, "queued"),
        (c.failed, "failed"),
        (c.cancelled, "cancelled"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {word}"));
        }
    }
    parts.join(" · ")
}

#[component]
pub fn SweepsPage() -> impl IntoView {
    let (tick, set_tick) = signal(0u32);
    every_two_seconds(move || set_tick.update(|t| *t += 1));
    let filter = ListFilter::from_url();
    let sweeps = LocalResource::new(move || {
        tick.track();
        let url = format!("/sweeps?page_size=100{}", filter.query());
        async move { api::get::<Page<Sweep>>(&url).await }
    });
    view! {
        <div class="bar">
            <h1>"Sweeps"</h1>
            <a href="/sweeps/new" class="button" id="new-sweep">"New sweep"</a>
        </div>
        <ListFilterBar filter=filter/>
        <Transition fallback=|| view! { <p>"Loading sweeps…"</p> }>
            {move || sweeps.get().map(|res| match res {
                Err(e) => view! { <p class="error">{e.to_string()}</p> }.into_any(),
                Ok(page) if page.items.is_empty() => view! {
                    <p class="empty">"No sweeps yet. Start one from a run's page, or "
                        <A href="/sweeps/new">"from the defaults"</A>"."</p>
                }.into_any(),
                Ok(page) => view! {
                    <table id="sweeps-table">
                        <thead><tr><th>"Sweep"</th><th>"Axes"</th><th>"Runs"</th><th>"Created"</th></tr></thead>
                        <tbody>
                            {page.items.into_iter().map(|s| {
                                let axes = s.spec.swept_axes().map(|a| a.path.clone()).collect::<Vec<_>>().join(", ");
                                view! {
                                    <tr data-sweep=s.id.clone()>
                                        <td><A href=format!("/sweeps/{}", s.id)>{s.name.clone()}</A>
                                            " "{label_chips(&s.tags, s.archived)}</td>
                                        <td>{axes}</td>
                                        <td>{counts_text(&s.counts)}</td>
                                        <td>{time_text(s.created_at)}</td>
                                    </tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table>
                }.into_any(),
            })}
        </Transition>
    }
}

/// A table cell's text and the number it sorts by.
fn cell(run: &SweepRun, column: &Column) -> (String, Option<f64>) {
    match column {
        Column::Name => (run.name.clone(), None),
        Column::Status => (run.status.as_str().to_string(), None),
        Column::Axis(a) => {
            let v = run.values.get(a).cloned().unwrap_or(Value::Null);
            (value_label(&v), sslab_shared::sweep::value_number(&v))
        }
        Column::Seed => (run.seed.to_string(), Some(run.seed as f64)),
        Column::Metric(layer, probe, metric) => {
            let v = run
                .evaluations
                .iter()
                .find(|e| &e.layer == layer && &e.probe == probe && &e.metric == metric)
                .map(|e| e.value);
            (opt_num(v, 3), v)
        }
        Column::Loss => (opt_num(run.last_loss, 4), run.last_loss),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Column {
    Name,
    Status,
    Axis(String),
    Seed,
    Metric(String, String, String),
    Loss,
}

impl Column {
    fn title(&self) -> String {
        match self {
            Column::Name => "Run".into(),
            Column::Status => "Status".into(),
            Column::Axis(a) => a.clone(),
            Column::Seed => "Seed".into(),
            Column::Metric(l, p, m) => {
                format!("{} @ {l}", column_name(&(p.clone(), m.clone())))
            }
            Column::Loss => "Final loss".into(),
        }
    }
}

#[component]
fn SweepTable(
    runs: Vec<SweepRun>,
    axes: Vec<String>,
    probe: String,
    metric: String,
) -> impl IntoView {
    let mut layers: Vec<String> = runs
        .iter()
        .flat_map(|r| &r.evaluations)
        .map(|e| e.layer.clone())
        .collect();
    layers.sort_by_key(|l| layer_depth(l));
    layers.dedup();
    let mut columns = vec![Column::Name, Column::Status];
    columns.extend(axes.iter().cloned().map(Column::Axis));
    columns.push(Column::Seed);
    columns.extend(
        layers
            .iter()
            .map(|l| Column::Metric(l.clone(), probe.clone(), metric.clone())),
    );
    columns.push(Column::Loss);
    let sort = RwSignal::new((None::<usize>, true));
    let columns = StoredValue::new(columns);
    let runs = StoredValue::new(runs);
    let rows = move || {
        let (by, ascending) = sort.get();
        let mut rows = runs.get_value();
        if let Some(c) = by {
            let col = columns.with_value(|cs| cs[c].clone());
            rows.sort_by(|a, b| {
                let (ta, na) = cell(a, &col);
                let (tb, nb) = cell(b, &col);
                let ord = match (na, nb) {
                    (Some(x), Some(y)) => x.total_cmp(&y),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => ta.cmp(&tb),
                };
                if ascending { ord } else { ord.reverse() }
            });
        }
        rows
    };
    view! {
        <table id="sweep-table">
            <thead><tr>
                {columns.get_value().into_iter().enumerate().map(|(i, c)| {
                    let arrow = move || match sort.get() {
                        (Some(j), true) if j == i => " ▲",
                        (Some(j), false) if j == i => " ▼",
                        _ => "",
                    };
                    view! {
                        <th class="sortable" data-column=i.to_string()
                            on:click=move |_| sort.update(|(by, asc)| {
                                if *by == Some(i) { *asc = !*asc } else { *by = Some(i); *asc = true }
                            })>
                            {c.title()}{arrow}
                        </th>
                    }
                }).collect_view()}
            </tr></thead>
            <tbody>
                {move || rows().into_iter().map(|r| {
                    let cells = columns.get_value().into_iter().map(|c| {
                        let (text, _) = cell(&r, &c);
                        match c {
                            Column::Name => view! { <td><A href=format!("/runs/{}", r.id)>{text}</A></td> }.into_any(),
                            Column::Status => view! { <td><span class=status_class(r.status)>{text}</span></td> }.into_any(),
                            Column::Metric(..) | Column::Loss | Column::Seed => view! { <td class="num">{text}</td> }.into_any(),
                            Column::Axis(_) => view! { <td>{text}</td> }.into_any(),
                        }
                    }).collect_view();
                    view! { <tr data-run=r.id.clone()>{cells}</tr> }
                }).collect_view()}
            </tbody>
        </table>
    }
}

#[component]
pub fn SweepPage() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.with(|p| p.get("id").unwrap_or_default());
    let (tick, set_tick) = signal(0u32);
    // Poll until every run has ended.
    let done = RwSignal::new(false);
    every_two_seconds(move || {
        if !done.get_untracked() {
            set_tick.update(|t| *t += 1)
        }
    });
    let summary = LocalResource::new(move || {
        tick.track();
        let id = id();
        async move { api::get::<SweepSummary>(&format!("/sweeps/{id}/summary")).await }
    });
    // Kept apart from the polled summary, so that a poll does not
    // rebuild the editor under a note being written.
    let labels = RwSignal::new(None::<Labels>);
    Effect::new(move |_| {
        if let Some(Ok(s)) = summary.get() {
            done.set(s.sweep.counts.is_done());
            labels.set(Some(Labels::new(
                &s.sweep.project,
                &s.sweep.tags,
                &s.sweep.note,
                s.sweep.archived,
            )));
        }
    });
    let has_labels = Memo::new(move |_| labels.with(Option::is_some));
    let metric = RwSignal::new(("knn".to_string(), "top1".to_string()));
    let (action_error, set_action_error) = signal(None::<String>);
    let act = move |what: &'static str| {
        let id = id();
        spawn_local(async move {
            match api::post::<Sweep>(&format!("/sweeps/{id}/{what}"), None::<&()>).await {
                Ok(_) => {
                    set_action_error.set(None);
                    done.set(false);
                    set_tick.update(|t| *t += 1);
                }
                Err(e) => set_action_error.set(Some(e.to_string())),
            }
        });
    };
    view! {
        {move || action_error.get().map(|e| view! { <p class="error">{e}</p> })}
        <Transition fallback=|| view! { <p>"Loading the sweep…"</p> }>
            {move || summary.get().map(|res| match res {
                Err(e) => view! { <p class="error">{e.to_string()}</p> }.into_any(),
                Ok(s) => render_summary(s, id(), metric, act).into_any(),
            })}
        </Transition>
        {move || has_labels.get().then(|| view! {
            <LabelsEditor path=format!("/sweeps/{}", id()) list="/sweeps"
                current=Signal::derive(move || labels.get().unwrap_or_default())
                on_saved=Callback::new(move |s: Sweep| labels.set(Some(Labels::new(&s.project, &s.tags, &s.note, s.archived))))/>
        })}
    }
}

fn render_summary(
    s: SweepSummary,
    id: String,
    metric: RwSignal<(String, String)>,
    act: impl Fn(&'static str) + Copy + Send + Sync + 'static,
) -> impl IntoView {
    let c = &s.sweep.counts;
    let left_out = c.failed + c.cancelled;
    let unfinished = c.queued + c.running;
    let excluded = (left_out > 0 || unfinished > 0).then(|| {
        let mut parts = Vec::new();
        if left_out > 0 {
            parts.push(format!(
                "{left_out} run{} left out of the means ({} failed, {} cancelled)",
                if left_out == 1 { "" } else { "s" },
                c.failed,
                c.cancelled
            ));
        }
        if unfinished > 0 {
            parts.push(format!("{unfinished} not finished yet"));
        }
        view! { <p class="meta" id="sweep-excluded">{parts.join("; ")}"."</p> }
    });
    // The (probe, metric) choices, in the probe table's order.
    let evals: Vec<_> = s.runs.iter().flat_map(|r| r.evaluations.clone()).collect();
    let (_, choices) = probe_axes(&evals);
    let (probe, metric_name) = metric.get();
    let label = column_name(&(probe.clone(), metric_name.clone()));
    let charts = s
        .axes
        .iter()
        .map(|axis| {
            let rows: Vec<_> = s
                .aggregates
                .iter()
                .filter(|a| &a.axis == axis && a.probe == probe && a.metric == metric_name)
                .cloned()
                .collect();
            view! {
                <h3>{axis.clone()}</h3>
                {if rows.is_empty() {
                    view! { <p class="meta">"No run has succeeded yet; the chart fills in as runs finish."</p> }.into_any()
                } else {
                    view! { <AxisChart axis=axis.clone() rows=rows metric_label=label.clone()/> }.into_any()
                }}
            }
        })
        .collect_view();
    let succeeded: Vec<SweepRun> = s
        .runs
        .iter()
        .filter(|r| r.status == sslab_shared::api::RunStatus::Succeeded)
        .cloned()
        .collect();
    view! {
        <div class="bar">
            <h1>{s.sweep.name.clone()}</h1>
            {(!c.is_done()).then(|| view! {
                <button id="sweep-cancel" class="secondary" on:click=move |_| act("cancel")>"Cancel sweep"</button>
            })}
            {(left_out > 0).then(|| view! {
                <button id="sweep-requeue" class="secondary" on:click=move |_| act("requeue")>"Re-queue failed and cancelled"</button>
            })}
            {c.is_done().then(|| view! {
                <DeleteButton id="delete-sweep".to_string() path=format!("/sweeps/{}", s.sweep.id)
                    what=format!("this sweep and its {} runs with their files", s.runs.len())
                    after="/sweeps".to_string()/>
            })}
        </div>
        <p class="meta" id="sweep-counts">{counts_text(c)}</p>
        {excluded}
        <section>
            <div class="bar controls">
                <h2>"Metric against each axis, per layer"</h2>
                <label>"Metric "
                    <select id="sweep-metric" on:change=move |ev| {
                        let v = event_target_value(&ev);
                        if let Some((p, m)) = v.split_once('/') {
                            metric.set((p.to_string(), m.to_string()));
                        }
                    }>
                        {choices.iter().map(|(p, m)| {
                            let key = format!("{p}/{m}");
                            let selected = *p == probe && *m == metric_name;
                            view! { <option value=key selected=selected>{column_name(&(p.clone(), m.clone()))}</option> }
                        }).collect_view()}
                    </select>
                </label>
                <a href=format!("/api/v1/sweeps/{id}/summary?format=csv") id="sweep-export-csv">"CSV"</a>
                <a href=format!("/api/v1/sweeps/{id}/summary") id="sweep-export-json">"JSON"</a>
                <a href=format!("/?sweep={id}")>"Runs"</a>
            </div>
            {charts}
        </section>
        <section>
            <h2>"Parallel coordinates"</h2>
            {if succeeded.is_empty() {
                view! { <p class="meta">"Drawn once runs succeed."</p> }.into_any()
            } else {
                view! { <ParallelCoordinates axes=s.axes.clone() runs=succeeded probe=probe.clone() metric=metric_name.clone()/> }.into_any()
            }}
        </section>
        <section>
            <h2>"Runs"</h2>
            <SweepTable runs=s.runs.clone() axes=s.axes.clone() probe=probe.clone() metric=metric_name.clone()/>
        </section>
        <section>
            <h2>"Sweep spec"</h2>
            <pre id="sweep-spec">{serde_json::to_string_pretty(&s.sweep.spec).unwrap_or_default()}</pre>
        </section>
    }
}
