//! A finished run's files and its re-evaluations: the probe plan edited as
//! TOML and queued (`POST /runs/{id}/evaluate`), each job's status, and its
//! rows beside training's.

use leptos::prelude::*;
use leptos::task::spawn_local;
use sslab_shared::api::{Evaluation, EvaluationJob, EvaluationRequest, Run, RunFile, RunStatus};

use crate::api;
use crate::pages::{every_two_seconds, status_class, time_text};
use crate::probes::ProbeTable;

/// Bytes for people: `1.4 MiB`.
pub fn size_text(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// The run's files; asked for again when `version` moves.
#[component]
pub fn RunFiles(id: String, #[prop(into)] version: Signal<u32>) -> impl IntoView {
    let files = LocalResource::new(move || {
        version.track();
        let id = id.clone();
        async move { api::get::<Vec<RunFile>>(&format!("/runs/{id}/files")).await }
    });
    view! {
        <Transition fallback=|| ()>
            {move || files.get().map(|res| match res {
                Err(e) => view! { <p class="error">{e.to_string()}</p> }.into_any(),
                Ok(list) => view! {
                    <table id="run-files">
                        <thead><tr><th>"File"</th><th>"Size"</th><th>"Holds"</th></tr></thead>
                        <tbody>
                            {list.into_iter().map(|f| view! {
                                <tr data-file=f.name.clone()>
                                    <td><a href=f.url.clone() download=f.name.clone()>{f.name.clone()}</a></td>
                                    <td class="num" data-bytes=f.bytes>{size_text(f.bytes)}</td>
                                    <td>{f.description.clone()}</td>
                                </tr>
                            }).collect_view()}
                        </tbody>
                    </table>
                }.into_any(),
            })}
        </Transition>
    }
}

/// The plan editor and the run's re-evaluation jobs, each with its rows.
#[component]
pub fn Reevaluate(run: Run) -> impl IntoView {
    let id = StoredValue::new(run.id.clone());
    let layers = StoredValue::new(run.spec.layer_names());
    let plan = RwSignal::new(
        EvaluationRequest {
            eval: run.spec.eval.clone(),
        }
        .to_toml(),
    );
    let (error, set_error) = signal(None::<String>);
    let (tick, set_tick) = signal(0u32);
    let jobs = LocalResource::new(move || {
        tick.track();
        let id = id.get_value();
        async move { api::get::<Vec<EvaluationJob>>(&format!("/runs/{id}/evaluation-jobs")).await }
    });
    // Poll while a job is queued or running.
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
        let text = plan.get_untracked();
        // Checked here first, with the field named, as the server checks it.
        let request = match EvaluationRequest::parse(&text, true, &layers.get_value()) {
            Ok(r) => r,
            Err(e) => {
                set_error.set(Some(e.to_string()));
                return;
            }
        };
        let id = id.get_value();
        spawn_local(async move {
            match api::post::<EvaluationJob>(&format!("/runs/{id}/evaluate"), Some(&request)).await
            {
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
        <details id="reevaluate">
            <summary>"Re-evaluate with another probe plan"</summary>
            <p class="meta">"The `[eval]` table of the spec: probes, layers, data. The final weights are evaluated again; nothing is retrained."</p>
            <textarea id="eval-plan" rows="12" prop:value=move || plan.get()
                on:input=move |ev| plan.set(event_target_value(&ev))></textarea>
            <div class="bar">
                <button id="eval-submit" on:click=submit>"Re-evaluate"</button>
            </div>
            {move || error.get().map(|e| view! { <p class="error" id="eval-error">{e}</p> })}
        </details>
        <Transition fallback=|| ()>
            {move || jobs.get().and_then(|r| r.ok()).filter(|j| !j.is_empty()).map(|list| view! {
                <div id="evaluation-jobs">
                    {list.into_iter().map(|job| view! { <JobRows job=job/> }).collect_view()}
                </div>
            })}
        </Transition>
    }
}

/// One re-evaluation: its status line and, once it succeeded, its rows.
#[component]
fn JobRows(job: EvaluationJob) -> impl IntoView {
    let rows = LocalResource::new({
        let (run, jid, done) = (
            job.run_id.clone(),
            job.id.clone(),
            job.status == RunStatus::Succeeded,
        );
        move || {
            let (run, jid) = (run.clone(), jid.clone());
            async move {
                if !done {
                    return None;
                }
                api::get::<Vec<Evaluation>>(&format!("/runs/{run}/evaluations?job={jid}"))
                    .await
                    .ok()
            }
        }
    });
    let probes = job
        .request
        .eval
        .probes
        .iter()
        .map(|p| p.name().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let table_id = format!("probe-table-{}", job.id);
    view! {
        <section class="evaluation-job" data-job=job.id.clone() data-status=job.status.as_str()>
            <h3>
                "Re-evaluation " <code>{job.id.chars().take(8).collect::<String>()}</code> " "
                <span class=status_class(job.status)>{job.status.as_str()}</span>
            </h3>
            <p class="meta">{format!("{probes} · queued {}", time_text(job.created_at))}</p>
            {job.error.clone().map(|e| view! { <p class="error">{e}</p> })}
            <Transition fallback=|| ()>
                {move || rows.get().flatten().map(|r| view! { <ProbeTable rows=r id=table_id.clone()/> })}
            </Transition>
        </section>
    }
}
