//! Export jobs: `POST /runs/{id}/export` and `POST /audits/{id}/export`
//! queue a finished run's or audit's demo bundle; `GET /exports/{id}`
//! follows it; `POST /demos {"export": id}` publishes it.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use sslab_shared::api::RunStatus;
use sslab_shared::demo::{Export, ExportOptions, ExportSource};

use super::authn::JsonText;
use super::{ApiError, ApiResult, AppState, owner};
use crate::auth::Principal;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/runs/{id}/export", post(export_run))
        .route("/audits/{id}/export", post(export_audit))
        .route("/exports/{id}", get(read))
}

fn options(body: &str) -> ApiResult<ExportOptions> {
    if body.trim().is_empty() {
        return Ok(ExportOptions::default());
    }
    sslab_shared::error::from_json(body).map_err(ApiError::InvalidSpec)
}

fn finished(status: RunStatus, what: &str) -> ApiResult<()> {
    if status != RunStatus::Succeeded {
        return Err(ApiError::Conflict(format!(
            "{what} is {}; only a finished one can be exported",
            status.as_str()
        )));
    }
    Ok(())
}

async fn queue(
    state: &AppState,
    p: &Principal,
    source: ExportSource,
    id: &str,
    options: &ExportOptions,
) -> ApiResult<Response> {
    let job = state
        .store
        .create_export(source, id, options, &owner(p))
        .await?;
    state.wake_workers();
    Ok(super::created(
        true,
        format!("/api/v1/exports/{}", job.id),
        job,
    ))
}

/// A finished run's encoder as a demo bundle: its held-out split is the
/// public set; `{"f16", "layer"}` are optional.
#[utoipa::path(
    operation_id = "export_run",
    post,
    path = "/runs/{id}/export",
    tag = "demos",
    params(("id" = String, Path, description = "the run's id")),
    request_body(content = sslab_shared::demo::ExportOptions, description = "optional", content_type = "application/json"),
    responses((status = 201, description = "queued", body = sslab_shared::demo::Export), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 409, description = "the run has not succeeded", body = sslab_shared::api::ErrorBody), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn export_run(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    JsonText(body): JsonText,
) -> ApiResult<Response> {
    let run = super::runs::find(&state, &p, &id).await?;
    let opts = options(&body)?;
    finished(run.status, &format!("run {id}"))?;
    if let Some(layer) = &opts.layer
        && !run.spec.layer_names().contains(layer)
    {
        return Err(ApiError::InvalidSpec(sslab_shared::SpecError::new(
            "layer",
            format!(
                "the run has no layer `{layer}`; it has {}",
                run.spec.layer_names().join(", ")
            ),
        )));
    }
    queue(&state, &p, ExportSource::Run, &run.id, &opts).await
}

/// A finished audit's target and reference as a demo bundle, with its
/// public set and attacked images; `{"f16"}` is optional.
#[utoipa::path(
    operation_id = "export_audit",
    post,
    path = "/audits/{id}/export",
    tag = "demos",
    params(("id" = String, Path, description = "the audit's id")),
    request_body(content = sslab_shared::demo::ExportOptions, description = "optional", content_type = "application/json"),
    responses((status = 201, description = "queued", body = sslab_shared::demo::Export), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 409, description = "the audit has not succeeded", body = sslab_shared::api::ErrorBody), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn export_audit(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    JsonText(body): JsonText,
) -> ApiResult<Response> {
    let audit = super::audits::find(&state, &p, &id).await?;
    let opts = options(&body)?;
    if opts.layer.is_some() {
        return Err(ApiError::InvalidSpec(sslab_shared::SpecError::new(
            "layer",
            "an audit's bundle uses the audit's own layer (attack.embedding)",
        )));
    }
    finished(audit.status, &format!("audit {id}"))?;
    queue(&state, &p, ExportSource::Audit, &audit.id, &opts).await
}

pub(super) async fn find(state: &AppState, p: &Principal, id: &str) -> ApiResult<Export> {
    state
        .store
        .export(id)
        .await?
        .filter(|e| super::visible(p, &e.team))
        .ok_or_else(|| ApiError::NotFound(format!("no export with id `{id}`")))
}

#[utoipa::path(
    operation_id = "get_export",
    get,
    path = "/exports/{id}",
    tag = "demos",
    params(("id" = String, Path, description = "the export's id")),
    responses((status = 200, description = "OK", body = sslab_shared::demo::Export), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn read(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Export>> {
    Ok(Json(find(&state, &p, &id).await?))
}
