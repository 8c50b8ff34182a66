//! The header's search box: runs, sweeps, audits and data sets by id,
//! name or tag (`GET /search`), as the visitor types.

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::hooks::use_navigate;
use sslab_shared::labels::SearchHit;

use crate::api;

#[component]
pub fn SearchBox() -> impl IntoView {
    let text = RwSignal::new(String::new());
    let (hits, set_hits) = signal(None::<Result<Vec<SearchHit>, String>>);
    let navigate = use_navigate();
    let look_up = move |q: String| {
        if q.trim().is_empty() {
            set_hits.set(None);
            return;
        }
        spawn_local(async move {
            let found =
                api::get::<Vec<SearchHit>>(&format!("/search?q={}", api::query_value(q.trim())))
                    .await
                    .map_err(|e| e.message);
            // A slower answer to an older query must not replace a newer one.
            if text.get_untracked() == q {
                set_hits.set(Some(found));
            }
        });
    };
    let close = move || {
        text.set(String::new());
        set_hits.set(None);
    };
    let open_first = move || {
        let first = hits.with_untracked(|h| {
            h.as_ref()
                .and_then(|h| h.as_ref().ok())
                .and_then(|h| h.first().map(|h| h.kind.page(&h.id)))
        });
        if let Some(page) = first {
            close();
            navigate(&page, Default::default());
        }
    };
    view! {
        <div class="search">
            <input id="search-input" type="search" placeholder="Search runs, sweeps, audits, data…"
                prop:value=move || text.get()
                on:input=move |ev| {
                    let q = event_target_value(&ev);
                    text.set(q.clone());
                    look_up(q);
                }
                on:keydown=move |ev| match ev.key().as_str() {
                    "Enter" => open_first(),
                    "Escape" => close(),
                    _ => {}
                }/>
            {move || hits.get().map(|found| view! {
                <ul id="search-results" class="search-results">
                    {match found {
                        Err(e) => view! { <li class="error">{e}</li> }.into_any(),
                        Ok(h) if h.is_empty() => view! { <li class="meta" id="search-none">"Nothing found."</li> }.into_any(),
                        Ok(h) => h.into_iter().map(|h| {
                            let page = h.kind.page(&h.id);
                            let short = h.id.chars().take(10).collect::<String>();
                            view! {
                                <li>
                                    <a href=page data-kind=h.kind.as_str() data-id=h.id.clone()
                                        on:click=move |_| close()>
                                        <span class="chip">{h.kind.as_str()}</span>
                                        " "{h.name.clone()}" "
                                        <code class="meta">{short}</code>
                                        {h.status.map(|s| view! { <span class="meta">" · "{s.as_str()}</span> })}
                                        {h.archived.then(|| view! { <span class="meta">" · archived"</span> })}
                                        {h.tags.into_iter().map(|t| view! { <span class="chip tag">{t}</span> }).collect_view()}
                                    </a>
                                </li>
                            }
                        }).collect_view().into_any(),
                    }}
                </ul>
            })}
        </div>
    }
}
