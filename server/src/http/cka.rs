//! `/cka`: CKA jobs, two finished runs of the team compared layer by layer
//! on the same images: create, read (with the matrix once done), cancel.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use sslab_shared::api::{Run, RunStatus};
use sslab_shared::cka::{CkaJob, CkaRequest, FAMILY_MAX};

use super::authn::JsonText;
use super::{ApiError, ApiResult, AppState, check_may_change, invalid, owner};
use crate::auth::Principal;
use crate::cka_job::{family_layer, layer_indices};

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/cka", post(create))
        .route("/cka/{id}", get(read))
        .route("/cka/{id}/cancel", post(cancel))
}

/// `{"a", "b"?, "layers_a"?, "layers_b"?, "minibatch"?, "data"?}`: runs
/// that have succeeded, layers by name, and the images (default: the runs'
/// own data, which must be the same). Or a family, `{"runs": […],
/// "layer"?, "minibatch"?, "data"?}`: every run against every other at one
/// layer, with a dendrogram that orders them.
#[utoipa::path(
    operation_id = "create_cka",
    post,
    path = "/cka",
    tag = "cka",
    request_body = sslab_shared::cka::CkaRequest,
    responses((status = 201, description = "queued", body = sslab_shared::cka::CkaJob), (status = 404, description = "a run is not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 409, description = "a run has not succeeded", body = sslab_shared::api::ErrorBody), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn create(
    State(state): State<AppState>,
    p: Principal,
    JsonText(body): JsonText,
) -> ApiResult<Response> {
    let mut req: CkaRequest =
        sslab_shared::error::from_json(&body).map_err(ApiError::InvalidSpec)?;
    if req.minibatch.is_some_and(|b| b < 4) {
        return Err(invalid(
            "minibatch",
            "minibatch CKA takes batches of at least 4 images",
        ));
    }
    let runs = match &req.runs {
        Some(ids) => family_runs(&state, &p, &req, ids).await?,
        None => pair_runs(&state, &p, &req).await?,
    };
    match &mut req.data {
        Some(data) => {
            super::check_server_data(&state, &p, data, "data")?;
            state.datasets.resolve_data(data, "data", p.team()).await?;
        }
        None => {
            if let Some(other) = runs
                .iter()
                .find(|r| r.spec.data.resolved() != runs[0].spec.data.resolved())
            {
                return Err(invalid(
                    "data",
                    format!(
                        "runs `{}` and `{}` were trained on different data; name the images to compare them on",
                        runs[0].id, other.id
                    ),
                ));
            }
        }
    }
    let reads_server =
        crate::cka_job::job_data(&req, &runs).is_some_and(|d| d.server_path().is_some());
    let requires = if reads_server {
        crate::store::SERVER_DATA
    } else {
        ""
    };
    let job = state.store.create_cka(&req, &owner(&p), requires).await?;
    state.wake_workers();
    Ok(super::created(true, format!("/api/v1/cka/{}", job.id), job))
}

fn check_succeeded(run: &Run) -> ApiResult<()> {
    if run.status != RunStatus::Succeeded {
        return Err(ApiError::Conflict(format!(
            "run `{}` is {}; only a run that succeeded has final weights to compare",
            run.id,
            run.status.as_str()
        )));
    }
    Ok(())
}

/// A pair's two runs (`b` is `a` when left out), with their layers checked.
async fn pair_runs(state: &AppState, p: &Principal, req: &CkaRequest) -> ApiResult<Vec<Run>> {
    if req.a.trim().is_empty() {
        return Err(invalid(
            "a",
            "name the first run's id (or a family in `runs`)",
        ));
    }
    if req.layer.is_some() {
        return Err(invalid(
            "layer",
            "`layer` is a family's; a pair takes `layers_a` and `layers_b`",
        ));
    }
    let a = super::runs::find(state, p, &req.a).await?;
    let b = match req.b.as_deref() {
        Some(id) => super::runs::find(state, p, id).await?,
        None => a.clone(),
    };
    check_succeeded(&a)?;
    check_succeeded(&b)?;
    layer_indices(&a, req.layers_a.as_deref()).map_err(|e| invalid("layers_a", e))?;
    layer_indices(&b, req.layers_b.as_deref()).map_err(|e| invalid("layers_b", e))?;
    Ok(vec![a, b])
}

/// A family's runs: 2 to `FAMILY_MAX` distinct ones that all have `layer`.
async fn family_runs(
    state: &AppState,
    p: &Principal,
    req: &CkaRequest,
    ids: &[String],
) -> ApiResult<Vec<Run>> {
    if !req.a.is_empty() || req.b.is_some() || req.layers_a.is_some() || req.layers_b.is_some() {
        return Err(invalid(
            "runs",
            "a family names its runs in `runs` alone; leave out `a`, `b`, `layers_a` and `layers_b`",
        ));
    }
    if !(2..=FAMILY_MAX).contains(&ids.len()) {
        return Err(invalid(
            "runs",
            format!("a family has 2 to {FAMILY_MAX} runs, got {}", ids.len()),
        ));
    }
    if let Some(twice) = ids
        .iter()
        .enumerate()
        .find(|(i, id)| ids[..*i].contains(id))
    {
        return Err(invalid("runs", format!("run `{}` is named twice", twice.1)));
    }
    let layer = family_layer(req);
    let mut runs = Vec::new();
    for id in ids {
        let run = super::runs::find(state, p, id).await?;
        check_succeeded(&run)?;
        layer_indices(&run, Some(std::slice::from_ref(&layer))).map_err(|e| invalid("layer", e))?;
        runs.push(run);
    }
    Ok(runs)
}

async fn find(state: &AppState, p: &Principal, id: &str) -> ApiResult<CkaJob> {
    state
        .store
        .cka(id)
        .await?
        .filter(|j| super::visible(p, &j.team))
        .ok_or_else(|| ApiError::NotFound(format!("no CKA job with id `{id}`")))
}

/// The job, with `result` (both sides' layers, the matrix with `a`'s layers
/// as rows, the settings) once it has succeeded; a family job has `family`
/// (the runs, their matrix, the dendrogram's merges and leaf order).
#[utoipa::path(
    operation_id = "get_cka",
    get,
    path = "/cka/{id}",
    tag = "cka",
    params(("id" = String, Path, description = "the CKA job's id")),
    responses((status = 200, description = "OK", body = sslab_shared::cka::CkaJob), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn read(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<CkaJob>> {
    Ok(Json(find(&state, &p, &id).await?))
}

#[utoipa::path(
    operation_id = "cancel_cka",
    post,
    path = "/cka/{id}/cancel",
    tag = "cka",
    params(("id" = String, Path, description = "the CKA job's id")),
    responses((status = 200, description = "OK", body = sslab_shared::cka::CkaJob), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 409, description = "it has already ended", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn cancel(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<CkaJob>> {
    let job = find(&state, &p, &id).await?;
    check_may_change(&p, job.created_by.as_deref(), "this CKA job")?;
    if job.status.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "CKA job `{id}` has already ended ({})",
            job.status.as_str()
        )));
    }
    state
        .store
        .cancel_cka(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no CKA job with id `{id}`")))
}
