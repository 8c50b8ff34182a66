//! The project picker every list, form and page shares, and keeping a
//! list's filters in its URL.

use leptos::prelude::*;
use leptos_router::NavigateOptions;
use leptos_router::hooks::use_navigate;
use sslab_shared::project::Project;

use crate::api;

/// A `<select id=…>` of the team's projects bound to `value`; with `any`,
/// a first choice "all projects" (the empty value).
#[component]
pub fn ProjectSelect(
    id: &'static str,
    value: RwSignal<String>,
    #[prop(optional)] any: bool,
    /// Called with the new choice, after `value` is set.
    #[prop(optional)]
    on_pick: Option<Callback<String>>,
) -> impl IntoView {
    let projects = LocalResource::new(|| api::get::<Vec<Project>>("/projects"));
    let names = move || {
        let mut names: Vec<String> = projects
            .get()
            .and_then(|r| r.ok())
            .map(|list| list.into_iter().map(|p| p.name).collect())
            .unwrap_or_else(|| vec![sslab_shared::project::DEFAULT_PROJECT.to_string()]);
        // A project named in the URL but not (yet) listed still shows.
        let current = value.get();
        if !current.is_empty() && !names.contains(&current) {
            names.push(current);
        }
        names
    };
    view! {
        <select id=id title="project" on:change=move |ev| {
            let v = event_target_value(&ev);
            value.set(v.clone());
            if let Some(f) = on_pick { f.run(v) }
        }>
            {any.then(|| view! { <option value="" selected=move || value.get().is_empty()>"all projects"</option> })}
            {move || names().into_iter().map(|n| {
                let (v, label, this) = (n.clone(), n.clone(), n);
                view! { <option value=v selected=move || value.get() == this>{label}</option> }
            }).collect_view()}
        </select>
    }
}

/// Keeps the page's query string at `query()` (replacing, not adding
/// history) as the filters change, so that a reload or a shared link shows
/// the same list. `query` gives `key=value` pairs, empty values left out.
pub fn keep_in_url(query: impl Fn() -> Vec<(&'static str, String)> + 'static) {
    let navigate = use_navigate();
    Effect::new(move |_| {
        let parts: Vec<String> = query()
            .into_iter()
            .filter(|(_, v)| !v.trim().is_empty())
            .map(|(k, v)| format!("{k}={}", api::query_value(v.trim())))
            .collect();
        let Some((path, search)) = web_sys::window()
            .and_then(|w| w.location().pathname().ok().zip(w.location().search().ok()))
        else {
            return;
        };
        let wanted = if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        };
        if search != wanted {
            let url = format!("{path}{wanted}");
            navigate(
                &url,
                NavigateOptions {
                    replace: true,
                    scroll: false,
                    ..Default::default()
                },
            );
        }
    });
}
