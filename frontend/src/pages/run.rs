//! A run: live loss chart over server-sent events, status, cancel, tags,
//! note, archive and delete, the
//! memorization monitor's readings, and the kNN accuracy of every layer once
//! evaluated.

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::hooks::use_params_map;
use send_wrapper::SendWrapper;
use sslab_shared::api::{Evaluation, MemorizationPoint, MetricPoint, Run, events};
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::{EventSource, MessageEvent};

use super::{status_class, time_text};
use crate::api;
use crate::attention::AttentionCharts;
use crate::chart::LossChart;
use crate::confirm::DeleteButton;
use crate::decoders::Decoders;
use crate::labels::{Labels, LabelsEditor};
use crate::memorization::{MemorizationChart, MemorizationTable};
use crate::probes::{GuillotineChart, ProbeTable};
use crate::reevaluate::{Reevaluate, RunFiles};
use crate::system::{SystemCharts, ThroughputCharts};

/// Opens the run's event stream and feeds the signals; closes it on unmount.
fn subscribe(
    id: &str,
    set_run: WriteSignal<Option<Run>>,
    set_points: WriteSignal<Vec<MetricPoint>>,
    set_evals: WriteSignal<Option<Vec<Evaluation>>>,
    set_error: WriteSignal<Option<String>>,
) {
    let Ok(source) = EventSource::new(&format!("/api/v1/runs/{id}/events")) else {
        set_error.set(Some("this browser cannot open an event stream".into()));
        return;
    };
    let on_metric = Closure::<dyn Fn(MessageEvent)>::new(move |e: MessageEvent| {
        if let Some(p) = e
            .data()
            .as_string()
            .and_then(|d| serde_json::from_str::<MetricPoint>(&d).ok())
        {
            set_points.update(|v| v.push(p));
        }
    });
    let on_status = Closure::<dyn Fn(MessageEvent)>::new(move |e: MessageEvent| {
        if let Some(r) = e
            .data()
            .as_string()
            .and_then(|d| serde_json::from_str::<Run>(&d).ok())
        {
            set_run.set(Some(r));
        }
    });
    let closer = source.clone();
    let on_evals = Closure::<dyn Fn(MessageEvent)>::new(move |e: MessageEvent| {
        if let Some(v) = e
            .data()
            .as_string()
            .and_then(|d| serde_json::from_str::<Vec<Evaluation>>(&d).ok())
        {
            set_evals.set(Some(v));
        }
        // The run has ended: nothing more will come, so do not reconnect.
        closer.close();
    });
    let _ =
        source.add_event_listener_with_callback(events::METRIC, on_metric.as_ref().unchecked_ref());
    let _ =
        source.add_event_listener_with_callback(events::STATUS, on_status.as_ref().unchecked_ref());
    let _ = source
        .add_event_listener_with_callback(events::EVALUATIONS, on_evals.as_ref().unchecked_ref());
    let keep = SendWrapper::new((source, on_metric, on_status, on_evals));
    on_cleanup(move || {
        let (source, ..) = &*keep;
        source.close();
    });
}

#[component]
pub fn RunPage() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.with(|p| p.get("id").unwrap_or_default());
    let (run, set_run) = signal(None::<Run>);
    let (points, set_points) = signal(Vec::<MetricPoint>::new());
    let (evals, set_evals) = signal(None::<Vec<Evaluation>>);
    let (error, set_error) = signal(None::<String>);
    Effect::new(move |_| {
        let id = id();
        set_points.set(Vec::new());
        set_evals.set(None);
        spawn_local({
            let id = id.clone();
            async move {
                match api::get::<Run>(&format!("/runs/{id}")).await {
                    Ok(r) => set_run.set(Some(r)),
                    Err(e) => set_error.set(Some(e.to_string())),
                }
            }
        });
        subscribe(&id, set_run, set_points, set_evals, set_error);
    });
    let cancel = move |_| {
        let id = id();
        spawn_local(async move {
            match api::cancel_run(&id).await {
                Ok(r) => set_run.set(Some(r)),
                Err(e) => set_error.set(Some(e.to_string())),
            }
        });
    };
    let total =
        Signal::derive(move || run.with(|r| r.as_ref().map(|r| r.total_steps).unwrap_or(0)));
    let (memorization, set_memorization) = signal(Vec::<MemorizationPoint>::new());
    let monitored = move || {
        run.with(|r| {
            r.as_ref().and_then(|r| {
                r.spec
                    .eval
                    .memorization
                    .as_ref()
                    .map(|_| r.spec.schedule.epochs)
            })
        })
    };
    // Readings come at the end of epochs: ask again when the epoch or the status moves.
    let progress = Memo::new(move |_| {
        (
            id(),
            points.with(|p| p.last().map(|m| m.epoch)),
            run.with(|r| r.as_ref().map(|r| r.status)),
        )
    });
    Effect::new(move |_| {
        let (id, ..) = progress.get();
        if untrack(monitored).is_none() {
            return;
        }
        spawn_local(async move {
            match api::get::<Vec<MemorizationPoint>>(&format!("/runs/{id}/memorization")).await {
                Ok(v) => set_memorization.set(v),
                Err(e) => set_error.set(Some(e.to_string())),
            }
        });
    });
    // The worker's system samples, asked for again as the run moves on.
    let (system, set_system) = signal(Vec::<sslab_shared::api::SystemSample>::new());
    let sampled = Memo::new(move |_| {
        (
            id(),
            points.with(|p| p.last().map(|m| m.step / 50)),
            run.with(|r| r.as_ref().map(|r| r.status)),
        )
    });
    Effect::new(move |_| {
        let (id, ..) = sampled.get();
        spawn_local(async move {
            if let Ok(v) =
                api::get::<Vec<sslab_shared::api::SystemSample>>(&format!("/runs/{id}/system"))
                    .await
            {
                set_system.set(v);
            }
        });
    });
    // The workers' log lines: where it ran, epochs, checkpoints, resumes.
    let (log, set_log) = signal(Vec::<sslab_shared::worker::RunLogLine>::new());
    Effect::new(move |_| {
        let (id, ..) = progress.get();
        spawn_local(async move {
            if let Ok(v) =
                api::get::<Vec<sslab_shared::worker::RunLogLine>>(&format!("/runs/{id}/logs")).await
            {
                set_log.set(v);
            }
        });
    });
    // Who launched it, by name: the team's members are readable by all of it.
    let members = LocalResource::new(|| api::get::<Vec<sslab_shared::auth::Member>>("/members"));
    let launched_by = move |by: Option<String>| {
        let by = by?;
        let name = members
            .get()
            .and_then(|m| m.ok())
            .and_then(|m| m.into_iter().find(|m| m.user_id == by).map(|m| m.name));
        Some(match name {
            Some(n) => format!(" · launched by {n}"),
            None if by.starts_with("token:") => " · launched by a service token".to_string(),
            None => String::new(),
        })
    };
    let has_run = Memo::new(move |_| run.with(Option::is_some));
    let succeeded = Memo::new(move |_| {
        run.with(|r| {
            r.as_ref()
                .is_some_and(|r| r.status == sslab_shared::api::RunStatus::Succeeded)
        })
    });
    // The files are listed again after each epoch and at the end.
    let files_version = Memo::new(move |_| {
        let epoch = points.with(|p| p.last().map_or(0, |m| m.epoch as u32));
        let ended = run.with(|r| r.as_ref().is_some_and(|r| r.status.is_terminal()));
        2 * epoch + ended as u32
    });
    view! {
        {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
        {move || run.get().map(|r| {
            let active = !r.status.is_terminal();
            let by = r.created_by.clone();
            view! {
                <div class="bar">
                    <h1>{r.name.clone()}</h1>
                    <span id="run-status" class=status_class(r.status)>{r.status.as_str()}</span>
                    {(active && !r.cancel_requested).then(|| view! {
                        <button id="cancel" class="secondary" on:click=cancel>"Cancel"</button>
                    })}
                    <a class="button secondary" id="clone-run" href=format!("/runs/new?from={}", r.id)
                        title="a new run with this one's settings">"Clone"</a>
                    {(!active).then(|| view! {
                        <DeleteButton id="delete-run".to_string() path=format!("/runs/{}", r.id)
                            what="this run, its metrics, evaluations, log and checkpoint".to_string()
                            after="/runs".to_string()/>
                    })}
                </div>
                <p class="meta">
                    {format!("{} · {} · created {} · step {}/{} · epoch {}",
                        r.method, r.backbone, time_text(r.created_at), r.step, r.total_steps, r.epoch + 1)}
                    <span id="launched-by">{move || launched_by(by.clone()).unwrap_or_default()}</span>
                </p>
                {r.error.clone().map(|e| view! { <p class="error" id="run-error">{e}</p> })}
            }
        })}
        {move || has_run.get().then(|| view! {
            <LabelsEditor path=format!("/runs/{}", id()) list="/runs"
                current=Signal::derive(move || run.with(|r| r.as_ref()
                    .map(|r| Labels::new(&r.project, &r.tags, &r.note, r.archived)).unwrap_or_default()))
                on_saved=Callback::new(move |r: sslab_shared::api::Run| set_run.set(Some(r)))/>
        })}
        <section>
            <h2>"Training loss"</h2>
            <LossChart points=points total_steps=total/>
            <p class="meta" id="step-line">{move || points.with(|p| p.last().map(|m| {
                let online = m.online_probe_acc.map(|a| format!(" · online probe {a:.3}")).unwrap_or_default();
                // Over the last 20 steps: one step's wait is noise.
                let waits: Vec<f64> = p.iter().rev().take(20).filter_map(|m| m.data_wait).collect();
                let wait = if waits.is_empty() { String::new() } else {
                    format!(" · {:.0}% of step time waiting for data", 100.0 * waits.iter().sum::<f64>() / waits.len() as f64)
                };
                format!("step {} · loss {:.4} · lr {:.2e} · {:.0} images/s{wait}{online}", m.step, m.loss, m.lr, m.images_per_sec)
            }).unwrap_or_default())}</p>
        </section>
        <section id="run-system">
            <div class="bar">
                <h2>"System and throughput"</h2>
                <a href=move || format!("/api/v1/runs/{}/system", id())>"JSON"</a>
            </div>
            <SystemCharts samples=system/>
            <ThroughputCharts points=points/>
        </section>
        <details id="run-log">
            <summary>{move || format!("Log ({} lines)", log.with(Vec::len))}</summary>
            <pre>{move || log.with(|lines| lines.iter().map(|l| {
                format!("{} #{} {}\n", time_text(l.at), l.attempt, l.text)
            }).collect::<String>())}</pre>
        </details>
        {move || monitored().map(|epochs| view! {
            <section id="memorization">
                <div class="bar">
                    <h2>"Memorization (déjà vu)"</h2>
                    <a href=move || format!("/api/v1/runs/{}/memorization", id())>"JSON"</a>
                </div>
                <p class="meta">"Background crops of training images (canaries) and of images kept out of training are labelled by their nearest training images; a canary accuracy above the held-out one means the model has learned its training images' objects from their backgrounds."</p>
                {move || {
                    let v = memorization.get();
                    if v.is_empty() {
                        view! { <p class="meta">"No reading yet: the first comes after the monitor's first epochs."</p> }.into_any()
                    } else {
                        let last = v.last().map(|p| format!("dejavu_gap {:+.3} after epoch {}", p.dejavu_gap, p.epoch)).unwrap_or_default();
                        view! {
                            <p id="dejavu-gap">{last}</p>
                            <MemorizationChart points=v.clone() epochs=epochs as i64/>
                            <MemorizationTable points=v/>
                        }.into_any()
                    }
                }}
            </section>
        })}
        <section>
            <div class="bar">
                <h2>"Probes at every layer"</h2>
                <a href=move || format!("/api/v1/runs/{}/evaluations?format=csv", id()) id="export-csv">"CSV"</a>
                <a href=move || format!("/api/v1/runs/{}/evaluations", id())>"JSON"</a>
            </div>
            {move || match evals.get() {
                None => view! { <p class="meta">"Evaluated when training ends."</p> }.into_any(),
                Some(v) if v.is_empty() => view! { <p class="meta">"No evaluations: the run did not finish."</p> }.into_any(),
                Some(v) => view! {
                    <ProbeTable rows=v.clone()/>
                    <GuillotineChart rows=v.clone()/>
                    <AttentionCharts rows=v/>
                }.into_any(),
            }}
            {move || succeeded.get().then(|| run.get_untracked().map(|r| view! { <Reevaluate run=r/> }))}
        </section>
        {move || succeeded.get().then(|| run.get_untracked().map(|r| view! { <Decoders run=r/> }))}
        <section id="files">
            <h2>"Files"</h2>
            {move || has_run.get().then(|| view! {
                <RunFiles id=id() version=files_version/>
            })}
        </section>
        <section>
            <h2>"Sweep from this run"</h2>
            <p class="meta">"Start a study around this run's spec; the values are editable before launch."</p>
            <div class="bar presets">
                {sslab_shared::sweep::Preset::ALL.into_iter().map(|p| view! {
                    <a class="button secondary" id=format!("sweep-{}", p.name())
                        href=move || format!("/sweeps/new?from={}&preset={}", id(), p.name())>{p.title()}</a>
                }).collect_view()}
                {move || run.with(|r| r.as_ref().and_then(|r| r.sweep_id.clone())).map(|s| view! {
                    <a href=format!("/sweeps/{s}") id="run-sweep">"Part of a sweep"</a>
                })}
            </div>
        </section>
        <section>
            <h2>"Spec"</h2>
            <pre id="run-spec">{move || run.with(|r| r.as_ref().map(|r| r.spec.to_toml()).unwrap_or_default())}</pre>
        </section>
    }
}
