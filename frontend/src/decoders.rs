//! A finished run's decoders: a conditional generator trained on the run's
//! representation (`POST /runs/{id}/decoders`), its progress, and once it
//! has succeeded its sample grids beside the numbers that say whether the
//! samples carry their image's class.

use leptos::prelude::*;
use leptos::task::spawn_local;
use sslab_shared::api::{Run, RunStatus};
use sslab_shared::decoder::{DecoderJob, DecoderKind, DecoderSpec};

use crate::api;
use crate::pages::{every_two_seconds, status_class, time_text};

/// The form and the run's decoders, newest first.
#[component]
pub fn Decoders(run: Run) -> impl IntoView {
    let id = StoredValue::new(run.id.clone());
    let layers = run.spec.layer_names();
    // Backbone beside the projector's output: what the projector drops.
    let default_layers: Vec<String> = match layers.last() {
        Some(last) if last != "backbone" => vec!["backbone".into(), last.clone()],
        _ => vec!["backbone".into()],
    };
    let chosen = RwSignal::new(default_layers);
    let kind = RwSignal::new("infusion".to_string());
    let steps = RwSignal::new("300".to_string());
    let (error, set_error) = signal(None::<String>);
    let (tick, set_tick) = signal(0u32);
    let jobs = LocalResource::new(move || {
        tick.track();
        let id = id.get_value();
        async move { api::get::<Vec<DecoderJob>>(&format!("/runs/{id}/decoders")).await }
    });
    every_two_seconds(move || {
        let busy = jobs
            .get_untracked()
            .and_then(|j| j.ok())
            .is_some_and(|j| j.iter().any(|j| !j.status.is_terminal()));
        if busy {
            set_tick.update(|t| *t += 1);
        }
    });
    let submit = move |_| {
        let Ok(steps) = steps.get_untracked().trim().parse::<usize>() else {
            set_error.set(Some("steps: a whole number of optimiser steps".into()));
            return;
        };
        let kind = match kind.get_untracked().as_str() {
            "rcdm" => DecoderKind::Rcdm,
            _ => DecoderKind::Infusion,
        };
        let spec = DecoderSpec {
            kind,
            layers: chosen.get_untracked(),
            steps,
            ..Default::default()
        };
        if let Err(e) = spec.validate() {
            set_error.set(Some(e.to_string()));
            return;
        }
        let id = id.get_value();
        spawn_local(async move {
            match api::post::<DecoderJob>(&format!("/runs/{id}/decoders"), Some(&spec)).await {
                Ok(_) => {
                    set_error.set(None);
                    set_tick.update(|t| *t += 1);
                }
                Err(e) => set_error.set(Some(match e.field {
                    Some(f) => format!("{f}: {}", e.message),
                    None => e.message,
                })),
            }
        });
    };
    view! {
        <section id="decoders">
            <h2>"What the representation holds"</h2>
            <p class="meta">"A decoder learns to draw images from this run's frozen representation, on images the run did not train on. What stays the same across samples of one image is what the layer keeps; a kNN on the same layer then says how often a sample carries its image's class."</p>
            <div class="bar">
                <select id="decoder-kind" on:change=move |ev| kind.set(event_target_value(&ev))>
                    <option value="infusion" selected=true>"Infusion (fast)"</option>
                    <option value="rcdm">"RCDM (diffusion)"</option>
                </select>
                {layers.into_iter().map(|l| {
                    let name = l.clone();
                    let checked = chosen.get_untracked().contains(&l);
                    view! {
                        <label>
                            <input type="checkbox" class="decoder-layer" value=l.clone() checked=checked
                                on:change=move |ev| {
                                    let on = event_target_checked(&ev);
                                    chosen.update(|c| {
                                        c.retain(|x| *x != name);
                                        if on { c.push(name.clone()); }
                                    });
                                }/>
                            {l}
                        </label>
                    }
                }).collect_view()}
                <label>"steps "<input id="decoder-steps" type="number" min="1" prop:value=move || steps.get()
                    on:input=move |ev| steps.set(event_target_value(&ev))/></label>
                <button id="decoder-submit" on:click=submit>"Train a decoder"</button>
            </div>
            {move || error.get().map(|e| view! { <p class="error" id="decoder-error">{e}</p> })}
            <Transition fallback=|| ()>
                {move || jobs.get().and_then(|r| r.ok()).map(|list| {
                    list.into_iter().map(|job| view! { <DecoderView job=job/> }).collect_view()
                })}
            </Transition>
        </section>
    }
}

/// One decoder: status and progress, then its grids and numbers.
#[component]
fn DecoderView(job: DecoderJob) -> impl IntoView {
    let active = !job.status.is_terminal();
    let cancel = {
        let id = job.id.clone();
        move |_| {
            let id = id.clone();
            spawn_local(async move {
                let _ = api::post_empty(&format!("/decoders/{id}/cancel")).await;
            });
        }
    };
    let progress = format!(
        "{} · layers {} · step {}/{}{} · queued {}",
        job.spec.kind.as_str(),
        job.spec.layers.join(", "),
        job.step,
        job.total_steps,
        job.last_loss
            .map(|l| format!(" · loss {l:.4}"))
            .unwrap_or_default(),
        time_text(job.created_at)
    );
    let done = job.status == RunStatus::Succeeded;
    let base = format!("/api/v1/decoders/{}", job.id);
    view! {
        <div class="decoder" data-decoder=job.id.clone() data-status=job.status.as_str()>
            <h3>
                {job.spec.name.clone()} " "
                <span class=status_class(job.status)>{job.status.as_str()}</span>
                {active.then(|| view! { <button class="secondary decoder-cancel" on:click=cancel>"Cancel"</button> })}
            </h3>
            <p class="meta">{progress}</p>
            {job.error.clone().map(|e| view! { <p class="error">{e}</p> })}
            {job.report.clone().filter(|_| done).map(|r| view! {
                <table class="decoder-report">
                    <thead><tr>
                        <th>"Layer"</th><th>"Conditioning accuracy"</th><th>"Chance"</th>
                        <th>"Sample diversity"</th><th>"Two real images of a class"</th>
                    </tr></thead>
                    <tbody>
                        {r.layers.iter().map(|l| view! {
                            <tr data-layer=l.layer.clone()>
                                <td>{l.layer.clone()}</td>
                                <td class="num">{format!("{:.3}", l.conditioning_accuracy)}</td>
                                <td class="num">{format!("{:.3}", l.chance)}</td>
                                <td class="num">{format!("{:.3}", l.sample_diversity)}</td>
                                <td class="num">{format!("{:.3}", l.real_pair_distance)}</td>
                            </tr>
                        }).collect_view()}
                    </tbody>
                </table>
                <p class="meta">{format!(
                    "Each row: a held-out image, then {} samples per layer ({}).",
                    r.settings["samples"].as_u64().unwrap_or(0),
                    r.layers.iter().map(|l| l.layer.clone()).collect::<Vec<_>>().join(" | ")
                )}</p>
                <img class="decoder-samples" src=format!("{base}/samples.png") alt="samples per held-out image"/>
                <p class="meta">"Interpolating between two images' representations, one row per layer:"</p>
                <img class="decoder-interpolation" src=format!("{base}/interpolation.png") alt="interpolation"/>
            })}
        </div>
    }
}
