//! A "Delete" button that asks before it deletes anything.

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::hooks::use_navigate;

use crate::api;

/// Deletes `path` (an API path) once confirmed, then goes to `after` or
/// calls `on_done`. The confirmation's elements are `#{id}-confirm`,
/// `#{id}-yes` and `#{id}-no`; a refusal shows in `#{id}-error`.
#[component]
pub fn DeleteButton(
    id: String,
    path: String,
    /// What goes, in the question: "this run, its metrics, …".
    what: String,
    #[prop(optional)] after: Option<String>,
    #[prop(optional)] on_done: Option<Callback<()>>,
) -> impl IntoView {
    let confirming = RwSignal::new(false);
    let (error, set_error) = signal(None::<String>);
    let navigate = use_navigate();
    let delete = move |_| {
        let (path, after, navigate) = (path.clone(), after.clone(), navigate.clone());
        spawn_local(async move {
            match api::delete(&path).await {
                Ok(()) => {
                    confirming.set(false);
                    if let Some(to) = after {
                        navigate(&to, Default::default());
                    }
                    if let Some(f) = on_done {
                        f.run(());
                    }
                }
                Err(e) => {
                    confirming.set(false);
                    set_error.set(Some(e.to_string()));
                }
            }
        });
    };
    let (confirm_id, yes_id, no_id, error_id) = (
        format!("{id}-confirm"),
        format!("{id}-yes"),
        format!("{id}-no"),
        format!("{id}-error"),
    );
    view! {
        <button class="secondary danger" id=id on:click=move |_| { set_error.set(None); confirming.set(true) }>"Delete"</button>
        {move || confirming.get().then(|| view! {
            <div class="confirm" id=confirm_id.clone()>
                <span>{format!("Delete {what}? This cannot be undone.")}</span>
                <button class="danger" id=yes_id.clone() on:click=delete.clone()>"Delete for good"</button>
                <button class="secondary" id=no_id.clone() on:click=move |_| confirming.set(false)>"Keep it"</button>
            </div>
        })}
        {move || error.get().map(|e| view! { <p class="error" id=error_id.clone()>{e}</p> })}
    }
}
