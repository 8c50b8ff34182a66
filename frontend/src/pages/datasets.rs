//! The data set registry: every registered data set with its splits,
//! classes, hash and sample thumbnails, and a form that uploads an archive.

use leptos::html::Input;
use leptos::prelude::*;
use leptos::task::spawn_local;
use sslab_shared::dataset::{DataFormat, Dataset};

use super::time_text;
use crate::api;
use crate::confirm::DeleteButton;

fn splits_text(d: &Dataset) -> String {
    d.splits
        .iter()
        .map(|s| format!("{} {}", s.name, s.images))
        .collect::<Vec<_>>()
        .join(" · ")
}

fn classes_text(d: &Dataset) -> String {
    let shown: Vec<&str> = d.classes.iter().take(6).map(String::as_str).collect();
    let more = d.classes.len().saturating_sub(shown.len());
    if more > 0 {
        format!(
            "{} classes: {} … (+{more})",
            d.classes.len(),
            shown.join(", ")
        )
    } else {
        format!("{} classes: {}", d.classes.len(), shown.join(", "))
    }
}

#[component]
pub fn DatasetsPage() -> impl IntoView {
    let (version, set_version) = signal(0u32);
    let datasets = LocalResource::new(move || {
        version.track();
        api::get::<Vec<Dataset>>("/datasets")
    });
    view! {
        <div class="bar"><h1>"Data sets"</h1></div>
        <UploadForm on_done=move || set_version.update(|v| *v += 1)/>
        <Transition fallback=|| view! { <p>"Loading data sets…"</p> }>
            {move || datasets.get().map(|res| match res {
                Err(e) => view! { <p class="error">{e.to_string()}</p> }.into_any(),
                Ok(list) if list.is_empty() => view! {
                    <p class="empty">"No data sets are registered yet. Upload an archive above, or run "
                        <code>"sslab data import PATH --format folder --name NAME"</code>" on the server."</p>
                }.into_any(),
                Ok(list) => view! {
                    <table id="datasets-table">
                        <thead><tr>
                            <th>"Name"</th><th>"Format"</th><th>"Images"</th><th>"Classes"</th>
                            <th>"Samples"</th><th>"Hash"</th><th>"Registered"</th>
                        </tr></thead>
                        <tbody>
                            {list.into_iter().map(|d| {
                                let hash_short = d.hash.trim_start_matches("sha256:").chars().take(12).collect::<String>();
                                view! {
                                    <tr id=format!("dataset-{}", d.name)>
                                        <td><strong>{d.name.clone()}</strong><br/>
                                            <small>{d.origin.clone()}</small></td>
                                        <td>{d.format.as_str()}" · "{d.image_size}" px"
                                            {(d.boxed_images > 0).then(|| format!(" · {} boxed", d.boxed_images))}</td>
                                        <td>{splits_text(&d)}</td>
                                        <td>{classes_text(&d)}</td>
                                        <td><img class="samples" alt=format!("samples of {}", d.name)
                                            src=format!("/api/v1/datasets/{}/samples.png", d.name)/></td>
                                        <td><code title=d.hash.clone()>{hash_short}</code></td>
                                        <td>{time_text(d.created_at)}
                                            <DeleteButton id=format!("delete-dataset-{}", d.name)
                                                path=format!("/datasets/{}", api::query_value(&d.name))
                                                what=format!("data set {} and its stored files", d.name)
                                                on_done=Callback::new(move |_| set_version.update(|v| *v += 1))/>
                                            {(!d.skipped.is_empty()).then(|| view! {
                                                <details><summary>{format!("{} files skipped", d.skipped.len())}</summary>
                                                    <ul>{d.skipped.iter().map(|s| view! { <li>{s.clone()}</li> }).collect_view()}</ul>
                                                </details>
                                            })}</td>
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

/// Name, format, image size and an archive file; posts the file as the body.
#[component]
fn UploadForm(on_done: impl Fn() + Copy + 'static) -> impl IntoView {
    let (name, set_name) = signal(String::new());
    let (format, set_format) = signal("folder".to_string());
    let (size, set_size) = signal("32".to_string());
    let (status, set_status) = signal(None::<Result<String, String>>);
    let (busy, set_busy) = signal(false);
    let file_input = NodeRef::<Input>::new();
    let submit = move |_| {
        let Some(file) = file_input
            .get()
            .and_then(|i| i.files())
            .and_then(|f| f.get(0))
        else {
            set_status.set(Some(Err("choose a tar, tar.gz or zip archive".into())));
            return;
        };
        let query = format!(
            "name={}&format={}&image_size={}",
            api::query_value(&name.get_untracked()),
            format.get_untracked(),
            api::query_value(&size.get_untracked())
        );
        set_busy.set(true);
        set_status.set(Some(Ok(format!("uploading {} bytes…", file.size()))));
        spawn_local(async move {
            let result = api::upload::<Dataset>(&format!("/datasets/upload?{query}"), file).await;
            set_busy.set(false);
            match result {
                Ok(d) => {
                    set_status.set(Some(Ok(format!(
                        "registered `{}`: {} images in {} classes",
                        d.name,
                        d.splits.iter().map(|s| s.images).sum::<usize>(),
                        d.classes.len()
                    ))));
                    on_done();
                }
                Err(e) => set_status.set(Some(Err(e.message))),
            }
        });
    };
    view! {
        <form class="upload" id="upload-form" on:submit=move |ev| { ev.prevent_default(); submit(()); }>
            <label>"Name "<input id="upload-name" prop:value=name
                on:input=move |ev| set_name.set(event_target_value(&ev))/></label>
            <label>"Format "<select id="upload-format" on:change=move |ev| set_format.set(event_target_value(&ev))>
                {DataFormat::ALL.iter().map(|f| view! { <option value=f.as_str()>{f.as_str()}</option> }).collect_view()}
            </select></label>
            <label>"Image size "<input id="upload-size" size="4" prop:value=size
                on:input=move |ev| set_size.set(event_target_value(&ev))/></label>
            <label>"Archive "<input id="upload-file" type="file" accept=".tar,.tgz,.gz,.zip" node_ref=file_input/></label>
            <button id="upload-submit" type="submit" disabled=busy>"Upload"</button>
            {move || status.get().map(|s| match s {
                Ok(m) => view! { <p class="ok" id="upload-status">{m}</p> }.into_any(),
                Err(m) => view! { <p class="error" id="upload-status">{m}</p> }.into_any(),
            })}
        </form>
    }
}
