//! Decoders: a conditional generator trained on a finished run's
//! representation (`/runs/{id}/decoders`), read with its report and sample
//! grids (`/decoders/{id}`), cancelled.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sslab_shared::api::RunStatus;
use sslab_shared::decoder::{DecoderJob, DecoderKind, DecoderSpec};

use super::authn::JsonText;
use super::{ApiError, ApiResult, AppState, check_may_change, invalid, owner};
use crate::auth::Principal;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/runs/{id}/decoders", post(create).get(list))
        .route("/decoders/{id}", get(read))
        .route("/decoders/{id}/{file}", get(grid))
        .route("/decoders/{id}/cancel", post(cancel))
}

/// A `DecoderSpec` in JSON: the kind (`rcdm` or `infusion`), the run's
/// layers conditioned on (one decoder each), sizes and steps. The run must
/// have succeeded; the decoder learns from its held-out split unless
/// `data` names other images.
#[utoipa::path(
    operation_id = "create_decoder",
    post,
    path = "/runs/{id}/decoders",
    tag = "decoders",
    params(("id" = String, Path, description = "the run's id")),
    request_body(content = Object, description = "a decoder spec (`recipes/infusion-tiny.toml` in JSON)"),
    responses((status = 201, description = "queued", body = sslab_shared::decoder::DecoderJob), (status = 404, description = "no such run, or another team's", body = sslab_shared::api::ErrorBody), (status = 409, description = "the run has not succeeded", body = sslab_shared::api::ErrorBody), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn create(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    JsonText(body): JsonText,
) -> ApiResult<Response> {
    let mut spec = DecoderSpec::from_json(&body).map_err(ApiError::InvalidSpec)?;
    let run = super::runs::find(&state, &p, &id).await?;
    if run.status != RunStatus::Succeeded {
        return Err(ApiError::Conflict(format!(
            "run `{}` is {}; a decoder needs a run that succeeded",
            run.id,
            run.status.as_str()
        )));
    }
    let names = run.spec.layer_names();
    for (i, l) in spec.layers.iter().enumerate() {
        if !names.contains(l) {
            return Err(invalid(
                &format!("layers[{i}]"),
                format!(
                    "run `{}` has no layer `{l}`; it has {}",
                    run.id,
                    names.join(", ")
                ),
            ));
        }
    }
    let run_size = run.spec.data.image_size();
    let size = spec.image_size.unwrap_or(run_size);
    if run_size != 0 && (size > run_size || run_size % size != 0) {
        return Err(invalid(
            "image_size",
            format!("{size} px does not divide the run's {run_size} px images"),
        ));
    }
    if spec.kind == DecoderKind::Rcdm && run_size != 0 {
        spec.rcdm
            .check_image_size(size)
            .map_err(ApiError::InvalidSpec)?;
    }
    if let Some(data) = &mut spec.data {
        super::check_server_data(&state, &p, data, "data")?;
        state.datasets.resolve_data(data, "data", p.team()).await?;
    }
    if spec.name.is_empty() {
        spec.name = format!("{}-{}", run.spec.name, spec.kind.as_str());
    }
    // Any worker can train it, unless it reads a server folder (the run's
    // data or its own): only the server's own workers read those.
    let on_server = |d: &sslab_shared::spec::DataSpec| d.server_path().is_some();
    let requires = if on_server(&run.spec.data) || spec.data.as_ref().is_some_and(on_server) {
        crate::store::SERVER_DATA
    } else {
        ""
    };
    let job = state
        .store
        .create_decoder(&run.id, &spec, &owner(&p), requires)
        .await?;
    state.wake_workers();
    Ok(super::created(
        true,
        format!("/api/v1/decoders/{}", job.id),
        job,
    ))
}

#[utoipa::path(
    operation_id = "list_run_decoders",
    get,
    path = "/runs/{id}/decoders",
    tag = "decoders",
    params(("id" = String, Path, description = "the run's id")),
    responses((status = 200, description = "the run's decoders, newest first", body = Vec<sslab_shared::decoder::DecoderJob>), (status = 404, description = "no such run, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn list(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<DecoderJob>>> {
    let run = super::runs::find(&state, &p, &id).await?;
    Ok(Json(state.store.run_decoders(&run.id).await?))
}

async fn find(state: &AppState, p: &Principal, id: &str) -> ApiResult<DecoderJob> {
    state
        .store
        .decoder(id)
        .await?
        .filter(|j| super::visible(p, &j.team))
        .ok_or_else(|| ApiError::NotFound(format!("no decoder with id `{id}`")))
}

/// The job with its progress, and its report once it has succeeded.
#[utoipa::path(
    operation_id = "get_decoder",
    get,
    path = "/decoders/{id}",
    tag = "decoders",
    params(("id" = String, Path, description = "the decoder's id")),
    responses((status = 200, description = "OK", body = sslab_shared::decoder::DecoderJob), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn read(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<DecoderJob>> {
    Ok(Json(find(&state, &p, &id).await?))
}

/// `samples.png` (rows: held-out images; the image, then each layer's
/// samples) or `interpolation.png` (per layer, samples from representations
/// between two images), once the decoder has succeeded.
#[utoipa::path(
    operation_id = "decoder_grid",
    get,
    path = "/decoders/{id}/{file}",
    tag = "decoders",
    params(("id" = String, Path, description = "the decoder's id"), ("file" = String, Path, description = "`samples.png` or `interpolation.png`")),
    responses((status = 200, description = "the grid", body = Vec<u8>, content_type = "image/png"), (status = 404, description = "not found, another team's, or not drawn yet", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn grid(
    State(state): State<AppState>,
    p: Principal,
    Path((id, file)): Path<(String, String)>,
) -> ApiResult<Response> {
    let job = find(&state, &p, &id).await?;
    if file != "samples.png" && file != "interpolation.png" {
        return Err(ApiError::NotFound(format!(
            "no `{file}`; a decoder has samples.png and interpolation.png"
        )));
    }
    if job.status != RunStatus::Succeeded {
        return Err(ApiError::NotFound(format!(
            "decoder `{id}` is {}; its grids are drawn when it succeeds",
            job.status.as_str()
        )));
    }
    let path = state.artifacts.decoder_dir(&id).join(&file);
    state.artifacts.need(&path).await?;
    let png = tokio::fs::read(&path)
        .await
        .map_err(|e| ApiError::NotFound(format!("{file} of decoder `{id}` is missing: {e}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        png,
    )
        .into_response())
}

#[utoipa::path(
    operation_id = "cancel_decoder",
    post,
    path = "/decoders/{id}/cancel",
    tag = "decoders",
    params(("id" = String, Path, description = "the decoder's id")),
    responses((status = 200, description = "OK", body = sslab_shared::decoder::DecoderJob), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 409, description = "it has already ended", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn cancel(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<DecoderJob>> {
    let job = find(&state, &p, &id).await?;
    check_may_change(&p, job.created_by.as_deref(), "this decoder")?;
    if job.status.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "decoder `{id}` has already ended ({})",
            job.status.as_str()
        )));
    }
    state
        .store
        .cancel_decoder(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no decoder with id `{id}`")))
}
