//! A run's tags, note, archive flag and delete, on its page.

use leptos::prelude::*;
use leptos::task::spawn_local;
use pulldown_cmark::{CowStr, Event, Parser, Tag, html};
use sslab_shared::api::Run;
use sslab_shared::labels::{RunUpdate, check_tag};

use crate::api;
use crate::confirm::DeleteButton;

/// Markdown as HTML with nothing active: raw HTML is shown as text, and
/// links and images keep only http(s), mailto and same-site addresses.
pub fn safe_markdown(text: &str) -> String {
    let safe_url = |url: CowStr<'static>| -> CowStr<'static> {
        let u = url.trim().to_ascii_lowercase();
        let ok = ["http://", "https://", "mailto:"]
            .iter()
            .any(|s| u.starts_with(s))
            || (u.starts_with('/') && !u.starts_with("//"))
            || u.starts_with('#');
        if ok { url } else { CowStr::Borrowed("#") }
    };
    let events = Parser::new(text).map(|e| match e {
        Event::Html(s) | Event::InlineHtml(s) => Event::Text(s),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: safe_url(dest_url.into_static()),
            title,
            id,
        }),
        Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Image {
            link_type,
            dest_url: safe_url(dest_url.into_static()),
            title,
            id,
        }),
        other => other,
    });
    let mut out = String::new();
    html::push_html(&mut out, events);
    out
}

#[component]
pub fn RunLabels(run: ReadSignal<Option<Run>>, set_run: WriteSignal<Option<Run>>) -> impl IntoView {
    let (error, set_error) = signal(None::<String>);
    let id = move || run.with(|r| r.as_ref().map(|r| r.id.clone()).unwrap_or_default());
    let send = move |update: RunUpdate| {
        let id = id();
        spawn_local(async move {
            match api::patch::<Run>(&format!("/runs/{id}"), &update).await {
                Ok(r) => {
                    set_error.set(None);
                    set_run.set(Some(r));
                }
                Err(e) => set_error.set(Some(e.to_string())),
            }
        });
    };
    let tags = move || run.with(|r| r.as_ref().map(|r| r.tags.clone()).unwrap_or_default());
    let new_tag = RwSignal::new(String::new());
    let add_tag = move || {
        let text = new_tag.get_untracked();
        match check_tag(&text) {
            Err(e) => set_error.set(Some(e)),
            Ok(t) => {
                let mut all = tags();
                if !all.contains(&t) {
                    all.push(t);
                }
                new_tag.set(String::new());
                send(RunUpdate {
                    tags: Some(all),
                    ..RunUpdate::default()
                });
            }
        }
    };
    let editing = RwSignal::new(false);
    let draft = RwSignal::new(String::new());
    let archived = move || run.with(|r| r.as_ref().is_some_and(|r| r.archived));
    view! {
        <section id="run-labels">
            <div class="bar tags">
                {move || tags().into_iter().map(|t| {
                    let gone = t.clone();
                    view! {
                        <span class="chip tag" data-tag=t.clone()>
                            <a href=format!("/runs?tag={}&archived=all", api::query_value(&t))>{t.clone()}</a>
                            <button class="secondary tag-remove" title="Remove this tag" on:click=move |_| {
                                send(RunUpdate {
                                    tags: Some(tags().into_iter().filter(|x| *x != gone).collect()),
                                    ..RunUpdate::default()
                                });
                            }>"×"</button>
                        </span>
                    }
                }).collect_view()}
                <input id="tag-input" placeholder="add a tag…" prop:value=move || new_tag.get()
                    on:input=move |ev| new_tag.set(event_target_value(&ev))
                    on:keydown=move |ev| if ev.key() == "Enter" { add_tag() }/>
                <button class="secondary" id="tag-add" on:click=move |_| add_tag()>"Tag"</button>
                {move || archived().then(|| view! { <span class="chip" id="archived-badge">"archived"</span> })}
                <button class="secondary" id="archive" on:click=move |_| send(RunUpdate {
                    archived: Some(!archived()),
                    ..RunUpdate::default()
                })>{move || if archived() { "Unarchive" } else { "Archive" }}</button>
                <DeleteButton id="delete-run".to_string() path=format!("/runs/{}", id())
                    what="this run, its metrics, evaluations, log and checkpoint".to_string()
                    after="/runs".to_string()/>
            </div>
            {move || error.get().map(|e| view! { <p class="error" id="labels-error">{e}</p> })}
            <div class="note">
                {move || if editing.get() {
                    view! {
                        <textarea id="note-input" rows="6" prop:value=move || draft.get()
                            on:input=move |ev| draft.set(event_target_value(&ev))></textarea>
                        <div class="bar">
                            <button id="note-save" on:click=move |_| {
                                editing.set(false);
                                send(RunUpdate { note: Some(draft.get_untracked()), ..RunUpdate::default() });
                            }>"Save note"</button>
                            <button class="secondary" on:click=move |_| editing.set(false)>"Cancel"</button>
                        </div>
                    }.into_any()
                } else {
                    let note = run.with(|r| r.as_ref().map(|r| r.note.clone()).unwrap_or_default());
                    view! {
                        <div id="run-note" class="markdown" inner_html=safe_markdown(&note)></div>
                        <button class="secondary" id="note-edit" on:click=move |_| {
                            draft.set(run.with_untracked(|r| r.as_ref().map(|r| r.note.clone()).unwrap_or_default()));
                            editing.set(true);
                        }>{if note.is_empty() { "Add a note" } else { "Edit note" }}</button>
                    }.into_any()
                }}
            </div>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::safe_markdown;

    #[test]
    fn notes_render_with_nothing_active() {
        let html = safe_markdown(
            "# Baseline\n\n<script>alert(1)</script>\n\n**lr** 0.3 <img src=x onerror=alert(2)>",
        );
        assert!(html.contains("<h1>Baseline</h1>"), "{html}");
        assert!(html.contains("<strong>lr</strong>"), "{html}");
        assert!(
            !html.contains("<script") && !html.contains("<img"),
            "{html}"
        );
        assert!(html.contains("&lt;script&gt;"), "{html}");
        let links = safe_markdown(
            "[a](javascript:alert(1)) [b](https://example.org) [c](/runs/x) ![i](data:text/html,x)",
        );
        assert!(
            !html.contains("javascript") && !links.contains("javascript:"),
            "{links}"
        );
        assert!(!links.contains("data:"), "{links}");
        assert!(
            links.contains("href=\"https://example.org\"") && links.contains("href=\"/runs/x\""),
            "{links}"
        );
    }
}
