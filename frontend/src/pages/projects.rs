//! The team's projects: what each holds, a form for a new one, and delete
//! for empty ones.

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::components::A;
use sslab_shared::project::{DEFAULT_PROJECT, NewProject, Project};

use super::time_text;
use crate::api::{self, ApiFailure};
use crate::confirm::DeleteButton;

#[component]
pub fn ProjectsPage() -> impl IntoView {
    let (tick, set_tick) = signal(0u32);
    let projects = LocalResource::new(move || {
        tick.track();
        api::get::<Vec<Project>>("/projects")
    });
    let reload = Callback::new(move |()| set_tick.update(|t| *t += 1));
    let name = RwSignal::new(String::new());
    let description = RwSignal::new(String::new());
    let (failure, set_failure) = signal(None::<ApiFailure>);
    let create = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let body = NewProject {
            name: name.get_untracked(),
            description: description.get_untracked(),
        };
        spawn_local(async move {
            match api::post::<Project>("/projects", Some(&body)).await {
                Ok(_) => {
                    set_failure.set(None);
                    name.set(String::new());
                    description.set(String::new());
                    reload.run(());
                }
                Err(e) => set_failure.set(Some(e)),
            }
        });
    };
    view! {
        <h1>"Projects"</h1>
        <form id="new-project" class="bar" on:submit=create>
            <input id="project-name" placeholder="name: letters, digits, - _ ." prop:value=move || name.get()
                on:input=move |ev| name.set(event_target_value(&ev))/>
            <input id="project-description" placeholder="what it is for" prop:value=move || description.get()
                on:input=move |ev| description.set(event_target_value(&ev))/>
            <button type="submit" id="project-create">"New project"</button>
        </form>
        {move || failure.get().map(|f| view! { <p class="error" id="project-error">{f.to_string()}</p> })}
        <Transition fallback=|| view! { <p>"Loading projects…"</p> }>
            {move || projects.get().map(|res| match res {
                Err(e) => view! { <p class="error">{e.to_string()}</p> }.into_any(),
                Ok(list) => view! {
                    <table id="projects-table">
                        <thead><tr>
                            <th>"Project"</th><th>"Description"</th><th>"Runs"</th><th>"Sweeps"</th>
                            <th>"Audits"</th><th>"Created"</th><th></th>
                        </tr></thead>
                        <tbody>
                            {list.into_iter().map(|p| {
                                let q = api::query_value(&p.name);
                                let empty = p.runs + p.sweeps + p.audits == 0;
                                let deletable = empty && p.name != DEFAULT_PROJECT;
                                let delete = deletable.then(|| view! {
                                    <DeleteButton id=format!("delete-project-{}", p.name)
                                        path=format!("/projects/{q}")
                                        what=format!("project {}", p.name)
                                        on_done=reload/>
                                });
                                let label = p.name.clone();
                                let (runs, sweeps, audits) = (p.runs, p.sweeps, p.audits);
                                view! {
                                    <tr data-project=p.name.clone()>
                                        <td><A href=format!("/runs?project={q}")>{label}</A></td>
                                        <td>{p.description.clone()}</td>
                                        <td><A href=format!("/runs?project={q}")>{runs}</A></td>
                                        <td><A href=format!("/sweeps?project={q}")>{sweeps}</A></td>
                                        <td><A href=format!("/audits?project={q}")>{audits}</A></td>
                                        <td>{(p.created_at > 0).then(|| time_text(p.created_at))}</td>
                                        <td>{delete}</td>
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
