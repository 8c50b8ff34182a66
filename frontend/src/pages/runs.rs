//! The runs list: filtered (project, name, status, tag, archived) and paged
//! on the server, the filters kept in the URL, refreshed while open; pick
//! runs to compare, or to tag, move, archive or delete together.

use leptos::prelude::*;
use leptos_router::components::A;
use leptos_router::hooks::{use_navigate, use_query_map};
use sslab_shared::api::{Page, Run, RunStatus};

use super::{opt_num, status_class, time_text};
use crate::api;

const PAGE_SIZE: usize = 50;

#[component]
pub fn RunsPage() -> impl IntoView {
    let query = use_query_map();
    let initial = |key: &str| query.with_untracked(|q| q.get(key)).unwrap_or_default();
    let project = RwSignal::new(initial("project"));
    let name = RwSignal::new(initial("q"));
    let status = RwSignal::new(initial("status"));
    let sweep = RwSignal::new(initial("sweep"));
    let tag = RwSignal::new(initial("tag"));
    // "" hides archived runs (the API's default), "all" shows them too.
    let archived = RwSignal::new(initial("archived"));
    // Tokens of the pages before the current one; the last is the current start.
    let pages = RwSignal::new(Vec::<String>::new());
    let picked = RwSignal::new(Vec::<String>::new());
    let (tick, set_tick) = signal(0u32);
    // Refresh while the page is open, so statuses move on their own.
    super::every_two_seconds(move || set_tick.update(|t| *t += 1));
    let filters = move || {
        vec![
            ("project", project.get()),
            ("q", name.get()),
            ("status", status.get()),
            ("sweep", sweep.get()),
            ("tag", tag.get()),
            ("archived", archived.get()),
        ]
    };
    crate::projects::keep_in_url(filters);
    let runs = LocalResource::new(move || {
        tick.track();
        let mut url = format!("/runs?page_size={PAGE_SIZE}");
        for (key, value) in filters() {
            if !value.trim().is_empty() {
                url.push_str(&format!("&{key}={}", api::query_value(value.trim())));
            }
        }
        if let Some(token) = pages.get().last() {
            url.push_str(&format!("&page_token={}", api::query_value(token)));
        }
        async move { api::get::<Page<Run>>(&url).await }
    });
    let reset = move || pages.set(Vec::new());
    let navigate = use_navigate();
    let compare = move |_| {
        let ids = picked.get_untracked().join(",");
        let project = project.get_untracked();
        let place = if project.is_empty() {
            String::new()
        } else {
            format!("&project={}", api::query_value(&project))
        };
        navigate(&format!("/compare?runs={ids}{place}"), Default::default());
    };
    let refresh = Callback::new(move |()| {
        picked.set(Vec::new());
        set_tick.update(|t| *t += 1);
    });
    view! {
        <div class="bar">
            <h1>"Runs"</h1>
            <button id="compare-selected" class="secondary" on:click=compare
                disabled=move || picked.with(|p| p.len() < 2)>
                {move || format!("Compare selected ({})", picked.with(Vec::len))}
            </button>
            <a href="/runs/new" class="button" id="new-run">"New run"</a>
        </div>
        <div class="bar filters">
            <crate::projects::ProjectSelect id="filter-project" value=project any=true
                on_pick=Callback::new(move |_| reset())/>
            <input id="filter-q" placeholder="name contains…" prop:value=move || name.get()
                on:input=move |ev| { name.set(event_target_value(&ev)); reset(); }/>
            <select id="filter-status" on:change=move |ev| { status.set(event_target_value(&ev)); reset(); }>
                <option value="" selected=move || status.get().is_empty()>"any status"</option>
                {RunStatus::ALL.into_iter().map(|s| view! {
                    <option value=s.as_str() selected=move || status.get() == s.as_str()>{s.as_str()}</option>
                }).collect_view()}
            </select>
            <input id="filter-tag" placeholder="tag…" prop:value=move || tag.get()
                on:input=move |ev| { tag.set(event_target_value(&ev)); reset(); }/>
            <label class="check">
                <input type="checkbox" id="show-archived" prop:checked=move || archived.get() == "all"
                    on:change=move |ev| {
                        archived.set(if event_target_checked(&ev) { "all".into() } else { String::new() });
                        reset();
                    }/>
                " archived too"
            </label>
            {move || (!sweep.get().is_empty()).then(|| view! {
                <span class="chip">"sweep " {sweep.get()}
                    <button class="secondary" id="clear-sweep" on:click=move |_| { sweep.set(String::new()); reset(); }>"×"</button>
                </span>
            })}
        </div>
        <crate::bulk::BulkBar picked=picked done=refresh/>
        <Transition fallback=|| view! { <p>"Loading runs…"</p> }>
            {move || runs.get().map(|res| match res {
                Err(e) => view! { <p class="error">{e.to_string()}</p> }.into_any(),
                Ok(page) if page.items.is_empty() && pages.with(Vec::is_empty) => view! {
                    <p class="empty">"No runs match. " <A href="/runs/new">"Launch one"</A> "."</p>
                }.into_any(),
                Ok(page) => {
                    let next = page.next_page_token.clone();
                    view! {
                        <table id="runs-table">
                            <thead><tr>
                                <th></th><th>"Run"</th><th>"Status"</th><th>"Method"</th><th>"Backbone"</th>
                                <th>"Progress"</th><th>"Loss"</th><th>"kNN @ backbone"</th><th>"Sweep"</th><th>"Project"</th><th>"Created"</th>
                            </tr></thead>
                            <tbody>
                                {page.items.into_iter().map(|r| {
                                    let id = r.id.clone();
                                    let checked = picked.with_untracked(|p| p.contains(&id));
                                    view! {
                                        <tr>
                                            <td><input type="checkbox" class="pick" data-run=r.id.clone() prop:checked=checked
                                                on:change=move |ev| {
                                                    let on = event_target_checked(&ev);
                                                    let id = id.clone();
                                                    picked.update(|p| {
                                                        p.retain(|x| *x != id);
                                                        if on { p.push(id) }
                                                    });
                                                }/></td>
                                            <td>
                                                <A href=format!("/runs/{}", r.id)>{r.name.clone()}</A>
                                                {r.archived.then(|| view! { <span class="chip">"archived"</span> })}
                                                {r.tags.iter().map(|t| {
                                                    let (label, data, pick) = (t.clone(), t.clone(), t.clone());
                                                    view! {
                                                        <button class="chip tag" data-tag=data
                                                            on:click=move |_| { tag.set(pick.clone()); reset(); }>{label}</button>
                                                    }
                                                }).collect_view()}
                                            </td>
                                            <td><span class=status_class(r.status)>{r.status.as_str()}</span></td>
                                            <td>{r.method.clone()}</td>
                                            <td>{r.backbone.clone()}</td>
                                            <td>{format!("{}/{}", r.step, r.total_steps)}</td>
                                            <td>{opt_num(r.last_loss, 4)}</td>
                                            <td>{opt_num(r.knn_backbone, 3)}</td>
                                            <td>{r.sweep_id.clone().map(|s| view! { <A href=format!("/sweeps/{s}")>"sweep"</A> })}</td>
                                            <td>{
                                                let (label, pick) = (r.project.clone(), r.project.clone());
                                                view! { <button class="chip project" on:click=move |_| { project.set(pick.clone()); reset(); }>{label}</button> }
                                            }</td>
                                            <td>{time_text(r.created_at)}</td>
                                        </tr>
                                    }
                                }).collect_view()}
                            </tbody>
                        </table>
                        <div class="bar pager">
                            {move || (!pages.with(Vec::is_empty)).then(|| view! {
                                <button class="secondary" id="newer" on:click=move |_| pages.update(|p| { p.pop(); })>"← Newer"</button>
                            })}
                            {next.map(|t| view! {
                                <button class="secondary" id="older" on:click=move |_| pages.update(|p| p.push(t.clone()))>"Older →"</button>
                            })}
                        </div>
                    }.into_any()
                }
            })}
        </Transition>
    }
}
