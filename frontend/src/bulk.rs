//! Actions on the runs picked in the runs list: tag, move to a project,
//! archive, unarchive, delete. Each run is changed by its own request; the
//! bar reports what each refusal said.

use leptos::prelude::*;
use leptos::task::spawn_local;
use sslab_shared::api::Run;
use sslab_shared::labels::{LabelUpdate, check_tag};

use crate::api::{self, ApiFailure};

#[derive(Clone, Copy, PartialEq)]
enum Action {
    Tag,
    Move,
    Archive(bool),
    Delete,
}

impl Action {
    fn done(self) -> &'static str {
        match self {
            Action::Tag => "tagged",
            Action::Move => "moved",
            Action::Archive(true) => "archived",
            Action::Archive(false) => "unarchived",
            Action::Delete => "deleted",
        }
    }
}

async fn apply(action: Action, id: &str, tag: &str, project: &str) -> Result<(), ApiFailure> {
    let path = format!("/runs/{id}");
    let update = match action {
        Action::Delete => return api::delete(&path).await,
        Action::Tag => {
            let run: Run = api::get(&path).await?;
            let mut tags = run.tags;
            if !tags.iter().any(|t| t == tag) {
                tags.push(tag.to_string());
            }
            LabelUpdate {
                tags: Some(tags),
                ..LabelUpdate::default()
            }
        }
        Action::Move => LabelUpdate {
            project: Some(project.to_string()),
            ..LabelUpdate::default()
        },
        Action::Archive(on) => LabelUpdate {
            archived: Some(on),
            ..LabelUpdate::default()
        },
    };
    api::patch::<Run>(&path, &update).await.map(|_| ())
}

/// What happened to `n` runs, with each refusal's reason.
fn report(action: Action, n: usize, refused: &[(String, String)]) -> String {
    let ok = n - refused.len();
    let mut text = format!("{ok} of {n} {}", action.done());
    for (id, why) in refused {
        text.push_str(&format!("; {id}: {why}"));
    }
    text
}

#[component]
pub fn BulkBar(picked: RwSignal<Vec<String>>, done: Callback<()>) -> impl IntoView {
    let tag = RwSignal::new(String::new());
    let project = RwSignal::new(sslab_shared::project::DEFAULT_PROJECT.to_string());
    let confirming = RwSignal::new(false);
    let busy = RwSignal::new(false);
    let (result, set_result) = signal(None::<String>);
    let run = move |action: Action| {
        let tag_text = match action {
            Action::Tag => match check_tag(&tag.get_untracked()) {
                Ok(t) => t,
                Err(e) => return set_result.set(Some(e)),
            },
            _ => String::new(),
        };
        let ids = picked.get_untracked();
        let project = project.get_untracked();
        busy.set(true);
        confirming.set(false);
        spawn_local(async move {
            let mut refused = Vec::new();
            for id in &ids {
                if let Err(e) = apply(action, id, &tag_text, &project).await {
                    refused.push((id.clone(), e.message));
                }
            }
            set_result.set(Some(report(action, ids.len(), &refused)));
            busy.set(false);
            done.run(());
        });
    };
    let controls =
        move || {
            (!picked.with(Vec::is_empty)).then(|| view! {
        <div class="bar bulk" id="bulk">
            <span>{move || format!("{} selected:", picked.with(Vec::len))}</span>
            <input id="bulk-tag" placeholder="tag…" prop:value=move || tag.get()
                on:input=move |ev| tag.set(event_target_value(&ev))/>
            <button class="secondary" id="bulk-tag-add" disabled=move || busy.get()
                on:click=move |_| run(Action::Tag)>"Tag"</button>
            <crate::projects::ProjectSelect id="bulk-project" value=project/>
            <button class="secondary" id="bulk-move" disabled=move || busy.get()
                on:click=move |_| run(Action::Move)>"Move"</button>
            <button class="secondary" id="bulk-archive" disabled=move || busy.get()
                on:click=move |_| run(Action::Archive(true))>"Archive"</button>
            <button class="secondary" id="bulk-unarchive" disabled=move || busy.get()
                on:click=move |_| run(Action::Archive(false))>"Unarchive"</button>
            <button class="secondary danger" id="bulk-delete" disabled=move || busy.get()
                on:click=move |_| confirming.set(true)>"Delete"</button>
        </div>
    })
        };
    view! {
        {controls}
        {move || confirming.get().then(|| view! {
            <div class="confirm" id="bulk-delete-confirm">
                <span>{move || format!(
                    "Delete {} runs with their metrics, evaluations and checkpoints? This cannot be undone.",
                    picked.with(Vec::len)
                )}</span>
                <button class="danger" id="bulk-delete-yes" on:click=move |_| run(Action::Delete)>"Delete for good"</button>
                <button class="secondary" id="bulk-delete-no" on:click=move |_| confirming.set(false)>"Keep them"</button>
            </div>
        })}
        {move || result.get().map(|r| view! { <p class="note" id="bulk-result">{r}</p> })}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_counts_and_names_refusals() {
        assert_eq!(report(Action::Tag, 3, &[]), "3 of 3 tagged");
        assert_eq!(
            report(
                Action::Delete,
                2,
                &[("ab12".into(), "run `ab12` is running".into())]
            ),
            "1 of 2 deleted; ab12: run `ab12` is running"
        );
    }
}
