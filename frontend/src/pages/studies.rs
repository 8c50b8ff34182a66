//! Studies: the papers' findings reproduced. The list of the team's studies
//! and the shipped ones to start in one click; a study's page with each
//! finding's figure, verdict and chart, computed from the stored results,
//! and links to every run, audit and comparison.

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::components::A;
use leptos_router::hooks::{use_navigate, use_params_map};
use sslab_shared::api::{Page, Recipe, StatusCounts};
use sslab_shared::study::{Finding, Study, StudyItem, StudyReport};

use super::{every_two_seconds, status_class, time_text};
use crate::api;

fn progress(c: &StatusCounts, parts: usize) -> String {
    let mut text = format!("{} of {parts} done", c.succeeded);
    if c.running > 0 {
        text.push_str(&format!(", {} running", c.running));
    }
    if c.failed + c.cancelled > 0 {
        text.push_str(&format!(", {} failed or cancelled", c.failed + c.cancelled));
    }
    text
}

/// Finished: nothing queued or running, and every part created (a
/// comparison whose run failed never is).
fn finished(s: &Study) -> bool {
    let c = &s.counts;
    c.queued + c.running == 0 && (c.total() as usize >= s.parts || c.failed + c.cancelled > 0)
}

#[component]
pub fn StudiesPage() -> impl IntoView {
    let (tick, set_tick) = signal(0u32);
    every_two_seconds(move || set_tick.update(|t| *t += 1));
    let studies = LocalResource::new(move || {
        tick.track();
        api::get::<Page<Study>>("/studies?page_size=100")
    });
    let shipped = LocalResource::new(|| api::get::<Vec<Recipe>>("/recipes"));
    let (error, set_error) = signal(None::<String>);
    let navigate = use_navigate();
    let start = move |spec: serde_json::Value, micro: bool| {
        let navigate = navigate.clone();
        spawn_local(async move {
            let url = format!("/studies?micro={micro}");
            match api::post::<Study>(&url, Some(&spec)).await {
                Ok(s) => navigate(&format!("/studies/{}", s.id), Default::default()),
                Err(e) => set_error.set(Some(e.to_string())),
            }
        });
    };
    view! {
        <div class="bar"><h1>"Studies"</h1></div>
        <p class="hint">"A study runs the sweeps, audits and CKA comparisons that test one of the papers' claims, and gives each finding a verdict computed from the stored results: mean ± std over seeds, and whether the sign agrees with the paper."</p>
        {move || error.get().map(|e| view! { <p class="error" id="studies-error">{e}</p> })}
        <Transition fallback=|| view! { <p>"Loading studies…"</p> }>
            {move || studies.get().map(|res| match res {
                Err(e) => view! { <p class="error">{e.to_string()}</p> }.into_any(),
                Ok(page) if page.items.is_empty() => view! {
                    <p class="empty">"No study yet: start a shipped one below."</p>
                }.into_any(),
                Ok(page) => view! {
                    <table id="studies-table">
                        <thead><tr><th>"Study"</th><th>"Paper"</th><th>"Progress"</th><th>"Created"</th></tr></thead>
                        <tbody>
                            {page.items.into_iter().map(|s| view! {
                                <tr>
                                    <td><A href=format!("/studies/{}", s.id)>{s.name.clone()}</A></td>
                                    <td>{s.paper.clone()}</td>
                                    <td>{progress(&s.counts, s.parts)}</td>
                                    <td>{time_text(s.created_at)}</td>
                                </tr>
                            }).collect_view()}
                        </tbody>
                    </table>
                }.into_any(),
            })}
        </Transition>
        <h2>"Shipped studies"</h2>
        <p class="hint">"recipes/studies/: each sized for a 2-core CPU in minutes; the -gpu variants for a few minutes on one GPU. "
            <em>"Micro"</em>" runs every part at a toy size to check the study end to end; its figures mean nothing."</p>
        <Transition fallback=|| view! { <p>"Loading…"</p> }>
            {move || shipped.get().map(|res| {
                let list: Vec<Recipe> = res.unwrap_or_default().into_iter().filter(|r| r.kind == "study").collect();
                view! {
                    <table id="shipped-studies">
                        <tbody>
                            {list.into_iter().map(|r| {
                                let (full, micro) = (r.spec.clone(), r.spec.clone());
                                let (start_full, start_micro) = (start.clone(), start.clone());
                                view! {
                                    <tr>
                                        <td><strong>{r.name.clone()}</strong></td>
                                        <td class="description">{r.description.clone()}</td>
                                        <td>
                                            <button class="start-study" data-study=r.name.clone()
                                                on:click=move |_| start_full(full.clone(), false)>"Run"</button>" "
                                            <button class="start-micro" data-study=r.name.clone()
                                                on:click=move |_| start_micro(micro.clone(), true)>"Micro"</button>
                                        </td>
                                    </tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table>
                }
            })}
        </Transition>
    }
}

fn figure(f: &Finding) -> String {
    match (f.ours, f.std) {
        (Some(m), Some(s)) => format!("{m:+.4} ± {s:.4}"),
        (Some(m), None) => format!("{m:+.4}"),
        _ => "—".into(),
    }
}

fn part_link(item: &StudyItem) -> AnyView {
    let name = item.name.clone();
    match item.kind.as_str() {
        "run" => {
            let href = format!("/runs/{}", item.id);
            view! { <A href=href>{name}</A> }.into_any()
        }
        "audit" => {
            let href = format!("/audits/{}", item.id);
            view! { <A href=href>{name}</A> }.into_any()
        }
        _ => view! { <span>{name}</span> }.into_any(),
    }
}

#[component]
fn FindingView(id: String, index: usize, f: Finding) -> impl IntoView {
    let verdict = f.verdict.replace(' ', "-");
    view! {
        <section class="finding" data-verdict=f.verdict.clone()>
            <h3>{f.name.clone()}" "<span class=format!("verdict verdict-{verdict}")>{f.verdict.clone()}</span></h3>
            <p class="claim">"Paper: "{f.claim.clone()}</p>
            <p class="detail">{f.detail.clone()}</p>
            <img class="finding-chart" alt=format!("chart of {}", f.name)
                src=format!("/api/v1/studies/{id}/charts/finding-{}.png?n={}", index + 1, f.n)/>
        </section>
    }
}

#[component]
pub fn StudyPage() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.with(|p| p.get("id").unwrap_or_default());
    let (tick, set_tick) = signal(0u32);
    let done = RwSignal::new(false);
    every_two_seconds(move || {
        if !done.get_untracked() {
            set_tick.update(|t| *t += 1)
        }
    });
    let study = LocalResource::new(move || {
        tick.track();
        let id = id();
        async move { api::get::<Study>(&format!("/studies/{id}")).await }
    });
    let report = LocalResource::new(move || {
        tick.track();
        let id = id();
        async move { api::get::<StudyReport>(&format!("/studies/{id}/report")).await }
    });
    Effect::new(move |_| {
        if let Some(Ok(s)) = study.get() {
            done.set(finished(&s));
        }
    });
    let (error, set_error) = signal(None::<String>);
    let cancel = move |_| {
        let id = id();
        spawn_local(async move {
            match api::post::<Study>(&format!("/studies/{id}/cancel"), None::<&()>).await {
                Ok(_) => set_tick.update(|t| *t += 1),
                Err(e) => set_error.set(Some(e.to_string())),
            }
        });
    };
    view! {
        {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
        <Transition fallback=|| view! { <p>"Loading the study…"</p> }>
            {move || study.get().map(|res| match res {
                Err(e) => view! { <p class="error">{e.to_string()}</p> }.into_any(),
                Ok(s) => view! {
                    <div class="bar">
                        <h1 id="study-name">{s.name.clone()}</h1>
                        <span id="study-progress">{progress(&s.counts, s.parts)}</span>
                        {(!finished(&s)).then(|| view! { <button id="cancel-study" on:click=cancel>"Cancel"</button> })}
                    </div>
                    <p>{s.paper.clone()}</p>
                    <p class="question"><strong>"Question. "</strong>{s.question.clone()}</p>
                    <p class="claim"><strong>"The paper's claim. "</strong>{s.claim.clone()}</p>
                    <p><a href=format!("/api/v1/studies/{}/report.md", s.id)>"report.md"</a>" · "
                        <a href=format!("/api/v1/studies/{}/report", s.id)>"report.json"</a></p>
                }.into_any(),
            })}
        </Transition>
        <Transition fallback=|| view! { <p>"Computing the report…"</p> }>
            {move || report.get().map(|res| match res {
                Err(e) => view! { <p class="error">{e.to_string()}</p> }.into_any(),
                Ok(r) => {
                    let id = id();
                    view! {
                        <table id="findings">
                            <thead><tr><th>"Finding"</th><th>"Ours"</th><th>"Seeds"</th><th>"Verdict"</th></tr></thead>
                            <tbody>
                                {r.findings.iter().map(|f| view! {
                                    <tr>
                                        <td>{f.name.clone()}</td>
                                        <td>{figure(f)}</td>
                                        <td>{f.n}</td>
                                        <td><span class=status_class_for(f)>{f.verdict.clone()}</span></td>
                                    </tr>
                                }).collect_view()}
                            </tbody>
                        </table>
                        {r.findings.into_iter().enumerate().map(|(i, f)| view! {
                            <FindingView id=id.clone() index=i f=f/>
                        }).collect_view()}
                        {(!r.problems.is_empty()).then(|| view! {
                            <h2>"Problems"</h2>
                            <ul id="study-problems">{r.problems.iter().map(|p| view! { <li>{p.clone()}</li> }).collect_view()}</ul>
                        })}
                        <h2>"Parts"</h2>
                        <table id="study-parts">
                            <thead><tr><th>"Kind"</th><th>"Part"</th><th>"Name"</th><th>"Status"</th><th>"Seed"</th></tr></thead>
                            <tbody>
                                {r.runs.iter().map(|item| view! {
                                    <tr>
                                        <td>{item.kind.clone()}</td>
                                        <td>{item.part.clone()}</td>
                                        <td>{part_link(item)}</td>
                                        <td><span class=status_class(item.status)>{item.status.as_str()}</span></td>
                                        <td>{item.seed}</td>
                                    </tr>
                                }).collect_view()}
                            </tbody>
                        </table>
                    }.into_any()
                }
            })}
        </Transition>
    }
}

fn status_class_for(f: &Finding) -> String {
    format!("verdict verdict-{}", f.verdict.replace(' ', "-"))
}
