//! What `sslab worker` reports on a decoder job it claimed, under the
//! claim's lease in the `Sslab-Lease` header, as for runs (`workers.rs`):
//! progress (which keeps the lease), the run's weights and data, the grids,
//! and the end.

use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post, put};
use sslab_shared::api::RunStatus;
use sslab_shared::decoder::DecoderJob;
use sslab_shared::worker::{
    ClaimedDecoder, DECODER_FILES, DecoderEnd, DecoderProgress, HeartbeatAnswer, StoredFile,
};

use super::authn::JsonText;
use super::workers::{
    check_ended, checkpoint_file, data_tar, hand_back, keep_upload, lease_in, lost_job, parse,
    recorded, serves, stream_file,
};
use super::{ApiError, ApiResult, AppState};
use crate::auth::Principal;
use crate::store::{Claimant, JobKind, Lease};

pub(super) fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/worker/decoders/{id}/progress", post(decoder_progress))
        .route("/worker/decoders/{id}/checkpoint", get(decoder_checkpoint))
        .route("/worker/decoders/{id}/data/{hash}", get(decoder_data))
        .route(
            "/worker/decoders/{id}/files/{file}",
            put(decoder_upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/worker/decoders/{id}/end", post(decoder_end))
        .route("/worker/decoders/{id}/release", post(decoder_release))
}

/// The oldest queued decoder job this worker can run, with its run and the
/// hash of the run's weights. One whose run did not succeed or lost its
/// weights fails at once, naming the run.
pub(super) async fn claim_decoder(
    state: &AppState,
    claimant: Claimant<'_>,
) -> ApiResult<Option<ClaimedDecoder>> {
    loop {
        let Some((job, lease)) = state
            .store
            .claim_next_decoder(claimant, crate::worker::lease_ms())
            .await?
        else {
            return Ok(None);
        };
        let run = state
            .store
            .run(&job.run)
            .await?
            .filter(|r| r.status == RunStatus::Succeeded);
        let file = match &run {
            Some(_) => checkpoint_file(state, &job.run).await?,
            None => None,
        };
        let (Some(run), Some(checkpoint)) = (run, file) else {
            let why = format!("run {} has no stored final weights to decode", job.run);
            state
                .store
                .finish_decoder(&lease, RunStatus::Failed, Some(&why), None)
                .await?;
            continue;
        };
        tracing::info!(decoder = %job.id, run = %job.run, worker = %claimant.id, "decoder job claimed");
        return Ok(Some(ClaimedDecoder {
            id: job.id,
            spec: job.spec,
            run,
            checkpoint,
            lease: lease.token,
            lease_ms: crate::worker::lease_ms(),
        }));
    }
}

/// The decoder job a report is about and the lease it shows, which must be
/// the job's current one.
async fn held_decoder(
    state: &AppState,
    p: &Principal,
    id: &str,
    headers: &HeaderMap,
) -> ApiResult<(DecoderJob, Lease)> {
    let job = state
        .store
        .decoder(id)
        .await?
        .filter(|j| serves(p, Some(&j.team)))
        .ok_or_else(|| ApiError::NotFound(format!("no decoder with id `{id}`")))?;
    let lease = lease_in(state, JobKind::Decoder, id, headers).await?;
    Ok((job, lease))
}

/// Where a held decoder job is; keeps its lease and says whether a cancel
/// was asked.
#[utoipa::path(
    operation_id = "decoder_progress",
    post,
    path = "/worker/decoders/{id}/progress",
    tag = "workers",
    params(("id" = String, Path, description = "the decoder job's id"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    request_body = DecoderProgress,
    responses((status = 200, description = "recorded; the lease is extended", body = HeartbeatAnswer), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn decoder_progress(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> ApiResult<Json<HeartbeatAnswer>> {
    let (job, lease) = held_decoder(&state, &p, &id, &headers).await?;
    let at: DecoderProgress = parse(&body)?;
    if !(0..=job.total_steps).contains(&at.step) {
        return Err(ApiError::InvalidSpec(sslab_shared::SpecError::new(
            "step",
            format!("0 to the job's {} steps", job.total_steps),
        )));
    }
    match state
        .store
        .decoder_progress(
            &lease,
            at.step,
            at.loss.unwrap_or(f64::NAN),
            crate::worker::lease_ms(),
        )
        .await?
    {
        Some(cancel) => Ok(Json(HeartbeatAnswer { cancel })),
        None => Err(lost_job(JobKind::Decoder, &id)),
    }
}

/// The final weights of the run a held decoder job decodes.
#[utoipa::path(
    operation_id = "decoder_checkpoint",
    get,
    path = "/worker/decoders/{id}/checkpoint",
    tag = "workers",
    params(("id" = String, Path, description = "the decoder job's id"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    responses((status = 200, description = "safetensors weights", body = Vec<u8>, content_type = "application/octet-stream"), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, the weights are gone, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn decoder_checkpoint(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (job, _) = held_decoder(&state, &p, &id, &headers).await?;
    let missing = || ApiError::NotFound(format!("run {} has no stored final weights", job.run));
    stream_file(&state, &state.artifacts.checkpoint(&job.run), missing).await
}

/// A registered data set a held decoder job reads (its run's, or its own),
/// as for runs.
#[utoipa::path(
    operation_id = "decoder_data",
    get,
    path = "/worker/decoders/{id}/data/{hash}",
    tag = "workers",
    params(("id" = String, Path, description = "the decoder job's id"), ("hash" = String, Path, description = "the data set's content hash, hex digits"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    responses((status = 200, description = "a tar of the data set's folder", body = Vec<u8>, content_type = "application/x-tar"), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 404, description = "the job reads no such data set, or its files are gone", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn decoder_data(
    State(state): State<AppState>,
    p: Principal,
    Path((id, hash)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (job, _) = held_decoder(&state, &p, &id, &headers).await?;
    let run = state.store.run(&job.run).await?;
    let reads = [run.as_ref().map(|r| &r.spec.data), job.spec.data.as_ref()];
    data_tar(
        &state,
        &format!("decoder job `{id}`"),
        &hash,
        reads.into_iter().flatten(),
    )
    .await
}

/// Stores one of a held decoder job's grids.
#[utoipa::path(
    operation_id = "upload_decoder_file",
    put,
    path = "/worker/decoders/{id}/files/{file}",
    tag = "workers",
    params(("id" = String, Path, description = "the decoder job's id"), ("file" = String, Path, description = "`samples.png` or `interpolation.png`"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    request_body(content = Vec<u8>, content_type = "image/png"),
    responses((status = 200, description = "stored", body = StoredFile), (status = 409, description = "the lease is not held; nothing stored", body = sslab_shared::api::ErrorBody), (status = 400, description = "not a decoder file, or the body broke off", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn decoder_upload(
    State(state): State<AppState>,
    p: Principal,
    Path((id, file)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<StoredFile>> {
    let (_, lease) = held_decoder(&state, &p, &id, &headers).await?;
    if !DECODER_FILES.contains(&file.as_str()) {
        return Err(ApiError::BadRequest(format!(
            "`{file}` is not a decoder file: {}",
            DECODER_FILES.join(" or ")
        )));
    }
    let target = state.artifacts.decoder_dir(&id).join(&file);
    let still_held = async {
        Ok(state
            .store
            .lease_of(JobKind::Decoder, &id, &lease.token)
            .await?
            .is_some())
    };
    let (bytes, sha256) = keep_upload(&state, body, &target, still_held, || {
        lost_job(JobKind::Decoder, &id)
    })
    .await?;
    Ok(Json(StoredFile {
        name: file,
        bytes,
        sha256,
    }))
}

/// A held decoder job's end, with its report when it succeeded; its grids
/// must have been stored before.
#[utoipa::path(
    operation_id = "decoder_end",
    post,
    path = "/worker/decoders/{id}/end",
    tag = "workers",
    params(("id" = String, Path, description = "the decoder job's id"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    request_body = DecoderEnd,
    responses((status = 204, description = "recorded"), (status = 409, description = "the lease is not held; nothing recorded", body = sslab_shared::api::ErrorBody), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn decoder_end(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> ApiResult<StatusCode> {
    let (_, lease) = held_decoder(&state, &p, &id, &headers).await?;
    let end: DecoderEnd = parse(&body)?;
    check_ended(end.status)?;
    let report = match (end.status, &end.report) {
        (RunStatus::Succeeded, None) => {
            return Err(ApiError::InvalidSpec(sslab_shared::SpecError::new(
                "report",
                "a succeeded decoder job sends its report",
            )));
        }
        (RunStatus::Succeeded, Some(report)) => Some(report),
        _ => None,
    };
    if report.is_some() {
        for file in DECODER_FILES {
            let path = state.artifacts.decoder_dir(&id).join(file);
            if !state.artifacts.fetch(&path).await? {
                return Err(ApiError::InvalidSpec(sslab_shared::SpecError::new(
                    "status",
                    format!("a succeeded decoder job stores its {file} first"),
                )));
            }
        }
    }
    let ok = state
        .store
        .finish_decoder(&lease, end.status, end.error.as_deref(), report)
        .await?;
    recorded(ok, JobKind::Decoder, &id)
}

/// Hands a held decoder job back to the queue (the worker is stopping); it
/// starts over.
#[utoipa::path(
    operation_id = "decoder_release",
    post,
    path = "/worker/decoders/{id}/release",
    tag = "workers",
    params(("id" = String, Path, description = "the decoder job's id"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    request_body = sslab_shared::worker::RunRelease,
    responses((status = 204, description = "queued again (or failed after too many attempts)"), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn decoder_release(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> ApiResult<StatusCode> {
    let (_, lease) = held_decoder(&state, &p, &id, &headers).await?;
    hand_back(&state, &lease, &body).await
}
