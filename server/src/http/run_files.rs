//! A run's files, for its page and for scripts: the checkpoint, the spec
//! as TOML, metrics and evaluations as CSV and JSON, the system samples
//! and the log, each with its size and download address.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use sslab_shared::api::{Run, RunFile};

use super::runs::find;
use super::{ApiResult, AppState};
use crate::auth::Principal;

/// Every step a run can have.
const ALL_STEPS: usize = 10_000_000;

fn attachment(name: &str, content_type: &str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("API bodies serialise")
}

/// What each file holds, in the order the page lists them, sized by
/// rendering it; what the run has none of is left out.
async fn files(state: &AppState, run: &Run) -> ApiResult<Vec<RunFile>> {
    let id = &run.id;
    let api = format!("/api/v1/runs/{id}");
    let mut out = Vec::new();
    let mut add = |name: String, description: &str, bytes: u64, url: String| {
        out.push(RunFile {
            name,
            description: description.to_string(),
            bytes,
            url,
        })
    };
    let checkpoint = state.artifacts.checkpoint(id);
    if let Some(bytes) = state.artifacts.size(&checkpoint).await? {
        add(
            format!("{id}.safetensors"),
            "the final weights (safetensors), or the last epoch's while it trains",
            bytes,
            format!("{api}/checkpoint"),
        );
    }
    add(
        format!("{id}.toml"),
        "the spec, as TOML: `sslab train --spec` runs it again",
        run.spec.to_toml().len() as u64,
        format!("{api}/spec.toml"),
    );
    let metrics = state.store.metrics(id, 0, ALL_STEPS).await?;
    if !metrics.is_empty() {
        add(
            format!("{id}-metrics.csv"),
            "loss, learning rate, images/s, data wait and online probe per step",
            crate::csv::metrics(&metrics).len() as u64,
            format!("{api}/metrics.csv"),
        );
    }
    let evaluations = state.store.evaluations(id, None).await?;
    if !evaluations.is_empty() {
        add(
            format!("{id}-evaluations.csv"),
            "every probe at every layer, training's and re-evaluations'",
            crate::csv::evaluations(id, &evaluations).len() as u64,
            format!("{api}/evaluations?format=csv"),
        );
        add(
            format!("{id}-evaluations.json"),
            "the same rows as JSON, with each probe's settings",
            json_text(&evaluations).len() as u64,
            format!("{api}/evaluations"),
        );
    }
    let system = state.store.system_samples(id).await?;
    if !system.is_empty() {
        add(
            format!("{id}-system.json"),
            "CPU, memory and GPU samples taken while it trained",
            json_text(&system).len() as u64,
            format!("{api}/system"),
        );
    }
    Ok(out)
}

/// The run's files with their sizes and download addresses.
#[utoipa::path(
    operation_id = "run_files",
    get,
    path = "/runs/{id}/files",
    tag = "runs",
    params(("id" = String, Path, description = "the run's id")),
    responses((status = 200, description = "OK", body = Vec<sslab_shared::api::RunFile>), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
pub(super) async fn list(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<RunFile>>> {
    let run = find(&state, &p, &id).await?;
    Ok(Json(files(&state, &run).await?))
}

/// The run's spec as TOML, as `sslab train --spec` reads it.
#[utoipa::path(
    operation_id = "run_spec_toml",
    get,
    path = "/runs/{id}/spec.toml",
    tag = "runs",
    params(("id" = String, Path, description = "the run's id")),
    responses((status = 200, description = "the spec", body = String, content_type = "application/toml"), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
pub(super) async fn spec(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let run = find(&state, &p, &id).await?;
    Ok(attachment(
        &format!("{id}.toml"),
        "application/toml; charset=utf-8",
        run.spec.to_toml(),
    ))
}

/// Every step's metrics as CSV.
#[utoipa::path(
    operation_id = "run_metrics_csv",
    get,
    path = "/runs/{id}/metrics.csv",
    tag = "runs",
    params(("id" = String, Path, description = "the run's id")),
    responses((status = 200, description = "one row per step", body = String, content_type = "text/csv"), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
pub(super) async fn metrics_csv(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    find(&state, &p, &id).await?;
    let points = state.store.metrics(&id, 0, ALL_STEPS).await?;
    Ok(attachment(
        &format!("{id}-metrics.csv"),
        "text/csv; charset=utf-8",
        crate::csv::metrics(&points),
    ))
}

pub fn router() -> axum::Router<AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/runs/{id}/files", get(list))
        .route("/runs/{id}/spec.toml", get(spec))
        .route("/runs/{id}/metrics.csv", get(metrics_csv))
}
