//! Calls to the sslab REST API. The session cookie authorizes them; every
//! state-changing call also sends the session's CSRF token, and a 401
//! sends the visitor to the sign-in page.

use std::cell::RefCell;

use gloo_net::http::{Request, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use sslab_shared::RunSpec;
use sslab_shared::api::{ErrorBody, Run};

/// An API failure in words, with the offending spec field when there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiFailure {
    pub message: String,
    pub field: Option<String>,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiFailure {}

fn network(e: impl std::fmt::Display) -> ApiFailure {
    ApiFailure {
        message: format!("cannot reach the server: {e}"),
        field: None,
    }
}

thread_local! {
    static CSRF: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Remembers the session's CSRF token (from `GET /session`).
pub fn set_csrf(token: Option<String>) {
    CSRF.with(|c| *c.borrow_mut() = token);
}

/// Adds the CSRF header; asks for the session first when a change comes
/// before the page has loaded it.
async fn with_csrf(request: RequestBuilder) -> RequestBuilder {
    let mut token = CSRF.with(|c| c.borrow().clone());
    if token.is_none()
        && let Ok(resp) = Request::get("/api/v1/session").send().await
        && let Ok(me) = resp.json::<sslab_shared::auth::Me>().await
    {
        set_csrf(me.csrf.clone());
        token = me.csrf;
    }
    match token {
        Some(token) => request.header("x-csrf-token", &token),
        None => request,
    }
}

/// The sign-in page, with the page to come back to.
pub fn go_to_sign_in() {
    let Some(window) = web_sys::window() else {
        return;
    };
    let location = window.location();
    let here = location.pathname().unwrap_or_default();
    if here == "/signin" {
        return;
    }
    let search = location.search().unwrap_or_default();
    let back = query_value(&format!("{here}{search}"));
    let _ = location.set_href(&format!("/signin?next={back}"));
}

async fn decode<T: DeserializeOwned>(resp: Response) -> Result<T, ApiFailure> {
    if resp.status() == 401 {
        go_to_sign_in();
    }
    if resp.ok() {
        return resp.json::<T>().await.map_err(|e| ApiFailure {
            message: format!("unexpected answer from the server: {e}"),
            field: None,
        });
    }
    let status = resp.status();
    match resp.json::<ErrorBody>().await {
        Ok(body) => Err(ApiFailure {
            message: body.error.message,
            field: body.error.field,
        }),
        Err(_) => Err(ApiFailure {
            message: format!("the server answered {status}"),
            field: None,
        }),
    }
}

pub async fn get<T: DeserializeOwned>(path: &str) -> Result<T, ApiFailure> {
    let resp = Request::get(&format!("/api/v1{path}"))
        .send()
        .await
        .map_err(network)?;
    decode(resp).await
}

/// POSTs `body` as JSON (or nothing) and decodes the answer.
pub async fn post<T: DeserializeOwned>(
    path: &str,
    body: Option<&impl serde::Serialize>,
) -> Result<T, ApiFailure> {
    let request = with_csrf(Request::post(&format!("/api/v1{path}"))).await;
    let resp = match body {
        Some(b) => {
            let text = serde_json::to_string(b).map_err(|e| ApiFailure {
                message: e.to_string(),
                field: None,
            })?;
            request
                .header("content-type", "application/json")
                .body(text)
                .map_err(network)?
                .send()
                .await
        }
        None => request.send().await,
    }
    .map_err(network)?;
    decode(resp).await
}

/// PATCHes `body` as JSON and decodes the answer.
pub async fn patch<T: DeserializeOwned>(
    path: &str,
    body: &impl serde::Serialize,
) -> Result<T, ApiFailure> {
    let text = serde_json::to_string(body).map_err(|e| ApiFailure {
        message: e.to_string(),
        field: None,
    })?;
    let resp = with_csrf(Request::patch(&format!("/api/v1{path}")))
        .await
        .header("content-type", "application/json")
        .body(text)
        .map_err(network)?
        .send()
        .await
        .map_err(network)?;
    decode(resp).await
}

/// POSTs a file as the raw body (an upload) and decodes the answer.
pub async fn upload<T: DeserializeOwned>(path: &str, file: web_sys::File) -> Result<T, ApiFailure> {
    let resp = with_csrf(Request::post(&format!("/api/v1{path}")))
        .await
        .header("content-type", "application/octet-stream")
        .body(wasm_bindgen::JsValue::from(file))
        .map_err(network)?
        .send()
        .await
        .map_err(network)?;
    decode(resp).await
}

/// Sends a change whose answer has no body (204); an error answer is decoded.
async fn send_empty(request: RequestBuilder, body: Option<String>) -> Result<(), ApiFailure> {
    let request = with_csrf(request).await;
    let resp = match body {
        Some(text) => {
            request
                .header("content-type", "application/json")
                .body(text)
                .map_err(network)?
                .send()
                .await
        }
        None => request.send().await,
    }
    .map_err(network)?;
    if resp.ok() {
        return Ok(());
    }
    decode::<serde_json::Value>(resp).await.map(|_| ())
}

/// DELETEs `path`.
pub async fn delete(path: &str) -> Result<(), ApiFailure> {
    send_empty(Request::delete(&format!("/api/v1{path}")), None).await
}

/// POSTs nothing.
pub async fn post_empty(path: &str) -> Result<(), ApiFailure> {
    send_empty(Request::post(&format!("/api/v1{path}")), None).await
}

/// POSTs `body` as JSON.
pub async fn post_json_empty(path: &str, body: &impl serde::Serialize) -> Result<(), ApiFailure> {
    let text = serde_json::to_string(body).map_err(|e| ApiFailure {
        message: e.to_string(),
        field: None,
    })?;
    send_empty(Request::post(&format!("/api/v1{path}")), Some(text)).await
}

/// Text safe inside a query string value.
pub fn query_value(text: &str) -> String {
    js_sys::encode_uri_component(text).into()
}

/// Queues `spec` in `project` of the team.
pub async fn create_run(spec: &RunSpec, project: &str) -> Result<Run, ApiFailure> {
    post(
        &format!("/runs?project={}", query_value(project)),
        Some(spec),
    )
    .await
}

pub async fn cancel_run(id: &str) -> Result<Run, ApiFailure> {
    post(&format!("/runs/{id}/cancel"), None::<&()>).await
}
