//! The workers that serve the team: the server's own and those on other
//! machines (`sslab worker`), with their device, version, current runs and
//! last heartbeat; a team admin drains one before taking its machine away.

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::components::A;
use sslab_shared::worker::WorkerInfo;

use super::time_text;
use crate::api;

/// "12 s ago", from the worker's last heartbeat; `now` in ms.
fn seen_text(last_seen: i64, now: i64) -> String {
    let secs = ((now - last_seen) / 1000).max(0);
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        _ => format!("{} h ago", secs / 3600),
    }
}

#[component]
pub fn WorkersPage() -> impl IntoView {
    let (version, set_version) = signal(0u32);
    let (error, set_error) = signal(None::<String>);
    let workers = LocalResource::new(move || {
        version.track();
        api::get::<Vec<WorkerInfo>>("/workers")
    });
    // Heartbeats move on: look again now and then.
    super::every_two_seconds(move || set_version.update(|v| *v += 1));
    let drain = move |id: String| {
        spawn_local(async move {
            match api::post_empty(&format!("/workers/{id}/drain")).await {
                Ok(()) => {
                    set_error.set(None);
                    set_version.update(|v| *v += 1);
                }
                Err(e) => set_error.set(Some(e.to_string())),
            }
        })
    };
    view! {
        <div class="bar"><h1>"Workers"</h1></div>
        <p class="hint">"Start one on any machine with "
            <code>"sslab worker --server URL --token TOKEN [--device cuda:0,cuda:1]"</code>
            " and a worker token ("<A href="/tokens">"Tokens"</A>")."</p>
        {move || error.get().map(|e| view! { <p class="error" id="workers-error">{e}</p> })}
        <Transition fallback=|| view! { <p>"Loading workers…"</p> }>
            {move || workers.get().map(|res| match res {
                Err(e) => view! { <p class="error">{e.to_string()}</p> }.into_any(),
                Ok(list) if list.is_empty() => view! {
                    <p class="empty">"No worker serves this team yet."</p>
                }.into_any(),
                Ok(list) => {
                    let now = js_sys::Date::now() as i64;
                    view! {
                        <table id="workers-table">
                            <thead><tr>
                                <th>"Worker"</th><th>"Host"</th><th>"Device"</th><th>"Version"</th>
                                <th>"Running"</th><th>"Last heartbeat"</th><th>"Registered"</th><th></th>
                            </tr></thead>
                            <tbody>
                                {list.into_iter().map(|w| {
                                    let id = w.id.clone();
                                    let scope = match &w.team { Some(_) => "team", None => "site-wide" };
                                    view! {
                                        <tr id=format!("worker-{}", w.id)>
                                            <td><code>{w.id.clone()}</code><br/>
                                                <small>{format!("{} · {scope}", w.kind)}</small></td>
                                            <td>{w.host.clone()}</td>
                                            <td>{format!("{} · {} slot{}", w.device, w.slots, if w.slots == 1 { "" } else { "s" })}</td>
                                            <td>{w.version.clone()}</td>
                                            <td class="current">{if w.current.is_empty() && w.jobs.is_empty() {
                                                view! { <span class="muted">"idle"</span> }.into_any()
                                            } else {
                                                view! {
                                                    {w.current.clone().into_iter().map(|r| view! {
                                                        <A href=format!("/runs/{r}")>{r}</A>" "
                                                    }).collect_view()}
                                                    {w.jobs.clone().into_iter().map(|j| {
                                                        let label = format!("{} {}", j.kind, j.id);
                                                        match (j.kind.as_str(), j.run) {
                                                            ("audit", _) => view! { <A href=format!("/audits/{}", j.id)>{label}</A>" " }.into_any(),
                                                            (_, Some(run)) => view! { <A href=format!("/runs/{run}")>{label}</A>" " }.into_any(),
                                                            _ => view! { <span>{label}" "</span> }.into_any(),
                                                        }
                                                    }).collect_view()}
                                                }.into_any()
                                            }}</td>
                                            <td>{seen_text(w.last_seen, now)}</td>
                                            <td>{time_text(w.registered_at)}</td>
                                            <td>{if w.draining {
                                                view! { <span class="muted">"draining"</span> }.into_any()
                                            } else {
                                                view! { <button class="drain" on:click=move |_| drain(id.clone())>"Drain"</button> }.into_any()
                                            }}</td>
                                        </tr>
                                    }
                                }).collect_view()}
                            </tbody>
                        </table>
                    }.into_any()
                }
            })}
        </Transition>
    }
}
