//! Calls to the sslab REST API.

use gloo_net::http::{Request, Response};
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

async fn decode<T: DeserializeOwned>(resp: Response) -> Result<T, ApiFailure> {
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
    let request = Request::post(&format!("/api/v1{path}"));
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

/// POSTs a file as the raw body (an upload) and decodes the answer.
pub async fn upload<T: DeserializeOwned>(path: &str, file: web_sys::File) -> Result<T, ApiFailure> {
    let resp = Request::post(&format!("/api/v1{path}"))
        .header("content-type", "application/octet-stream")
        .body(wasm_bindgen::JsValue::from(file))
        .map_err(network)?
        .send()
        .await
        .map_err(network)?;
    decode(resp).await
}

/// Text safe inside a query string value.
pub fn query_value(text: &str) -> String {
    js_sys::encode_uri_component(text).into()
}

pub async fn create_run(spec: &RunSpec) -> Result<Run, ApiFailure> {
    post("/runs", Some(spec)).await
}

pub async fn cancel_run(id: &str) -> Result<Run, ApiFailure> {
    post(&format!("/runs/{id}/cancel"), None::<&()>).await
}
