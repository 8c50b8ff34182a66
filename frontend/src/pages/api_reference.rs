//! The API reference: every operation of the server's OpenAPI document
//! (`/api/v1/openapi.json`), grouped by tag, with its parameters, body and
//! answers.

use leptos::prelude::*;
use serde_json::Value;

use crate::api;

/// One operation of the document.
struct Operation {
    tag: String,
    method: String,
    path: String,
    summary: String,
    params: Vec<String>,
    body: Option<String>,
    responses: Vec<String>,
}

fn operations(doc: &Value) -> Vec<Operation> {
    let mut out = Vec::new();
    let Some(paths) = doc["paths"].as_object() else {
        return out;
    };
    for (path, item) in paths {
        let Some(item) = item.as_object() else {
            continue;
        };
        for (method, op) in item {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            let params = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| format!("{} ({})", text(&p["name"]), text(&p["in"])))
                        .collect()
                })
                .unwrap_or_default();
            let body = op["requestBody"]["content"]
                .as_object()
                .and_then(|c| c.keys().next().cloned());
            let responses = op["responses"]
                .as_object()
                .map(|rs| {
                    rs.iter()
                        .map(|(code, r)| format!("{code} {}", text(&r["description"])))
                        .collect()
                })
                .unwrap_or_default();
            let summary = if op["summary"].is_string() {
                text(&op["summary"])
            } else {
                text(&op["description"])
            };
            out.push(Operation {
                tag: op["tags"][0].as_str().unwrap_or("other").to_string(),
                method: method.to_uppercase(),
                path: path.clone(),
                summary,
                params,
                body,
                responses,
            });
        }
    }
    out.sort_by(|a, b| (&a.tag, &a.path, &a.method).cmp(&(&b.tag, &b.path, &b.method)));
    out
}

#[component]
pub fn ApiReferencePage() -> impl IntoView {
    let doc = LocalResource::new(|| api::get::<Value>("/openapi.json"));
    view! {
        <div class="bar"><h1>"API reference"</h1></div>
        <p>"Every route of "<code>"/api/v1"</code>", from the server's "
            <a href="/api/v1/openapi.json">"OpenAPI document"</a>
            ". Scripts send "<code>"Authorization: Bearer sslab_…"</code>" (make a token under Tokens)."</p>
        <Transition fallback=|| view! { <p>"Loading the document…"</p> }>
            {move || doc.get().map(|res| match res {
                Err(e) => view! { <p class="error">{e.to_string()}</p> }.into_any(),
                Ok(doc) => view! {
                    <table id="api-table">
                        <thead><tr><th>"Tag"</th><th>"Method"</th><th>"Path"</th><th>"What"</th>
                            <th>"Parameters"</th><th>"Body"</th><th>"Answers"</th></tr></thead>
                        <tbody>{operations(&doc).into_iter().map(|op| view! {
                            <tr class="api-op">
                                <td>{op.tag}</td>
                                <td><code>{op.method}</code></td>
                                <td><code>{op.path}</code></td>
                                <td>{op.summary}</td>
                                <td>{op.params.join(", ")}</td>
                                <td>{op.body.unwrap_or_default()}</td>
                                <td><small>{op.responses.join(" · ")}</small></td>
                            </tr>
                        }).collect_view()}</tbody>
                    </table>
                }.into_any(),
            })}
        </Transition>
    }
}
