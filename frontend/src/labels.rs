//! Tags, a markdown note and the archive flag of a run, sweep or audit, on
//! its page.

use leptos::prelude::*;
use leptos::task::spawn_local;
use pulldown_cmark::{CowStr, Event, Parser, Tag, html};
use sslab_shared::labels::{LabelUpdate, check_tag};

use crate::api;

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

/// The labels an editor shows: a run's, a sweep's or an audit's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Labels {
    pub project: String,
    pub tags: Vec<String>,
    pub note: String,
    pub archived: bool,
}

impl Labels {
    pub fn new(project: &str, tags: &[String], note: &str, archived: bool) -> Labels {
        Labels {
            project: project.to_string(),
            tags: tags.to_vec(),
            note: note.to_string(),
            archived,
        }
    }
}

/// The project, tag and archived filters of a sweeps or audits list, kept
/// in the page's URL (`?project=…&tag=…&archived=all`, as the tag chips link).
#[derive(Clone, Copy)]
pub struct ListFilter {
    pub project: RwSignal<String>,
    pub tag: RwSignal<String>,
    pub all: RwSignal<bool>,
}

impl ListFilter {
    /// Started from the page's URL, and kept there.
    pub fn from_url() -> ListFilter {
        let query = leptos_router::hooks::use_query_map();
        let initial = |key: &str| query.with_untracked(|q| q.get(key)).unwrap_or_default();
        let filter = ListFilter {
            project: RwSignal::new(initial("project")),
            tag: RwSignal::new(initial("tag")),
            all: RwSignal::new(initial("archived") == "all"),
        };
        crate::projects::keep_in_url(move || filter.pairs());
        filter
    }

    fn pairs(self) -> Vec<(&'static str, String)> {
        vec![
            ("project", self.project.get()),
            ("tag", self.tag.get()),
            (
                "archived",
                if self.all.get() {
                    "all".into()
                } else {
                    String::new()
                },
            ),
        ]
    }

    /// The list request's query parameters, each starting with `&`.
    pub fn query(self) -> String {
        self.pairs()
            .into_iter()
            .filter(|(_, v)| !v.trim().is_empty())
            .map(|(k, v)| format!("&{k}={}", api::query_value(v.trim())))
            .collect()
    }
}

#[component]
pub fn ListFilterBar(filter: ListFilter) -> impl IntoView {
    view! {
        <div class="bar filters">
            <crate::projects::ProjectSelect id="filter-project" value=filter.project any=true/>
            <input id="filter-tag" placeholder="tag…" prop:value=move || filter.tag.get()
                on:input=move |ev| filter.tag.set(event_target_value(&ev))/>
            <label>
                <input type="checkbox" id="show-archived" prop:checked=move || filter.all.get()
                    on:change=move |ev| filter.all.set(event_target_checked(&ev))/>
                " archived too"
            </label>
        </div>
    }
}

/// A list row's archived mark and tag chips.
pub fn label_chips(tags: &[String], archived: bool) -> impl IntoView + use<> {
    view! {
        {archived.then(|| view! { <span class="chip">"archived"</span> })}
        {tags.iter().map(|t| view! { <span class="chip tag" data-tag=t.clone()>{t.clone()}</span> }).collect_view()}
    }
}

/// Tags, note and archive of one object. `path` is where its `PATCH` goes
/// (`/sweeps/{id}`), `list` the list its tag chips filter (`/sweeps`), and
/// `on_saved` gets the object the server sends back.
#[component]
pub fn LabelsEditor<T>(
    path: String,
    list: &'static str,
    current: Signal<Labels>,
    on_saved: Callback<T>,
) -> impl IntoView
where
    T: serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (error, set_error) = signal(None::<String>);
    let path = StoredValue::new(path);
    let send = move |update: LabelUpdate| {
        let path = path.get_value();
        spawn_local(async move {
            match api::patch::<T>(&path, &update).await {
                Ok(saved) => {
                    set_error.set(None);
                    on_saved.run(saved);
                }
                Err(e) => set_error.set(Some(e.to_string())),
            }
        });
    };
    let tags = move || current.with(|l| l.tags.clone());
    let new_tag = RwSignal::new(String::new());
    let add_tag = move || {
        let text = new_tag.get_untracked();
        match check_tag(&text) {
            Err(e) => set_error.set(Some(e)),
            Ok(t) => {
                let mut all = current.with_untracked(|l| l.tags.clone());
                if !all.contains(&t) {
                    all.push(t);
                }
                new_tag.set(String::new());
                send(LabelUpdate {
                    tags: Some(all),
                    ..LabelUpdate::default()
                });
            }
        }
    };
    let editing = RwSignal::new(false);
    let draft = RwSignal::new(String::new());
    let archived = move || current.with(|l| l.archived);
    let project = RwSignal::new(current.with_untracked(|l| l.project.clone()));
    Effect::new(move |_| project.set(current.with(|l| l.project.clone())));
    let move_to = Callback::new(move |to: String| {
        send(LabelUpdate {
            project: Some(to),
            ..LabelUpdate::default()
        })
    });
    view! {
        <section id="labels">
            <div class="bar">
                <label for="move-project">"Project "</label>
                <crate::projects::ProjectSelect id="move-project" value=project on_pick=move_to/>
            </div>
            <div class="bar tags">
                {move || tags().into_iter().map(|t| {
                    let gone = t.clone();
                    view! {
                        <span class="chip tag" data-tag=t.clone()>
                            <a href=format!("{list}?tag={}&archived=all", api::query_value(&t))>{t.clone()}</a>
                            <button class="secondary tag-remove" title="Remove this tag" on:click=move |_| {
                                send(LabelUpdate {
                                    tags: Some(tags().into_iter().filter(|x| *x != gone).collect()),
                                    ..LabelUpdate::default()
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
                <button class="secondary" id="archive" on:click=move |_| send(LabelUpdate {
                    archived: Some(!archived()),
                    ..LabelUpdate::default()
                })>{move || if archived() { "Unarchive" } else { "Archive" }}</button>
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
                                send(LabelUpdate { note: Some(draft.get_untracked()), ..LabelUpdate::default() });
                            }>"Save note"</button>
                            <button class="secondary" on:click=move |_| editing.set(false)>"Cancel"</button>
                        </div>
                    }.into_any()
                } else {
                    let note = current.with(|l| l.note.clone());
                    view! {
                        <div id="note" class="markdown" inner_html=safe_markdown(&note)></div>
                        <button class="secondary" id="note-edit" on:click=move |_| {
                            draft.set(current.with_untracked(|l| l.note.clone()));
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
