//! The runs list: status, method, backbone, progress and key numbers.

use leptos::prelude::*;
use leptos_router::components::A;

use super::{opt_num, status_class, time_text};
use crate::api;

#[component]
pub fn RunsPage() -> impl IntoView {
    let (tick, set_tick) = signal(0u32);
    // Refresh while the page is open, so statuses move on their own.
    let handle = set_interval_with_handle(
        move || set_tick.update(|t| *t += 1),
        std::time::Duration::from_secs(2),
    )
    .ok();
    on_cleanup(move || {
        if let Some(h) = handle {
            h.clear();
        }
    });
    let runs = LocalResource::new(move || {
        tick.track();
        api::list_runs()
    });
    view! {
        <div class="bar">
            <h1>"Runs"</h1>
            <a href="/runs/new" class="button" id="new-run">"New run"</a>
        </div>
        <Transition fallback=|| view! { <p>"Loading runs…"</p> }>
            {move || runs.get().map(|res| match res {
                Err(e) => view! { <p class="error">{e.to_string()}</p> }.into_any(),
                Ok(page) if page.items.is_empty() => view! {
                    <p class="empty">"No runs yet. " <A href="/runs/new">"Launch the first one"</A> "."</p>
                }.into_any(),
                Ok(page) => view! {
                    <table id="runs-table">
                        <thead><tr>
                            <th>"Run"</th><th>"Status"</th><th>"Method"</th><th>"Backbone"</th>
                            <th>"Progress"</th><th>"Loss"</th><th>"kNN @ backbone"</th><th>"Created"</th>
                        </tr></thead>
                        <tbody>
                            {page.items.into_iter().map(|r| view! {
                                <tr>
                                    <td><A href=format!("/runs/{}", r.id)>{r.name.clone()}</A></td>
                                    <td><span class=status_class(r.status)>{r.status.as_str()}</span></td>
                                    <td>{r.method.clone()}</td>
                                    <td>{r.backbone.clone()}</td>
                                    <td>{format!("{}/{}", r.step, r.total_steps)}</td>
                                    <td>{opt_num(r.last_loss, 4)}</td>
                                    <td>{opt_num(r.knn_backbone, 3)}</td>
                                    <td>{time_text(r.created_at)}</td>
                                </tr>
                            }).collect_view()}
                        </tbody>
                    </table>
                }.into_any(),
            })}
        </Transition>
    }
}
