//! What `sslab worker` reports on the jobs other than runs it claims:
//! re-evaluations, déjà vu audits and CKA jobs, each under the claim's
//! lease in the `Sslab-Lease` header, as for runs (`workers.rs`).

use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post, put};
use sslab_shared::api::{Audit, EvaluationJob, Run, RunStatus};
use sslab_shared::worker::{
    AuditEnd, AuditProgress, CkaEnd, ClaimedAudit, ClaimedCka, ClaimedEvaluation, HeartbeatAnswer,
    RunEnd, RunRelease, StoredFile, is_audit_file,
};

use super::authn::JsonText;
use super::workers::{
    check_ended, checkpoint_file, data_tar, hand_back, keep_upload, lease_in, lost_job, parse,
    recorded, renew, serves, stream_file,
};
use super::{ApiError, ApiResult, AppState};
use crate::auth::Principal;
use crate::store::{Claimant, JobKind, Lease};

pub(super) fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            "/worker/evaluations/{id}/heartbeat",
            post(evaluation_heartbeat),
        )
        .route(
            "/worker/evaluations/{id}/checkpoint",
            get(evaluation_checkpoint),
        )
        .route("/worker/evaluations/{id}/data/{hash}", get(evaluation_data))
        .route("/worker/evaluations/{id}/end", post(evaluation_end))
        .route("/worker/evaluations/{id}/release", post(evaluation_release))
        .route("/worker/audits/{id}/progress", post(audit_progress))
        .route(
            "/worker/audits/{id}/checkpoints/{model}",
            get(audit_checkpoint),
        )
        .route("/worker/audits/{id}/data/{hash}", get(audit_data))
        .route(
            "/worker/audits/{id}/files/{file}",
            put(audit_upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/worker/audits/{id}/images/{file}", put(audit_image_upload))
        .route("/worker/audits/{id}/end", post(audit_end))
        .route("/worker/audits/{id}/release", post(audit_release))
        .route("/worker/cka/{id}/heartbeat", post(cka_heartbeat))
        .route("/worker/cka/{id}/checkpoints/{run}", get(cka_checkpoint))
        .route("/worker/cka/{id}/data/{hash}", get(cka_data))
        .route("/worker/cka/{id}/end", post(cka_end))
        .route("/worker/cka/{id}/release", post(cka_release))
}

/// The oldest queued re-evaluation this worker can run, with the hash of
/// the checkpoint it evaluates. A job whose run lost its checkpoint fails
/// at once, naming it.
pub(super) async fn claim_evaluation(
    state: &AppState,
    claimant: Claimant<'_>,
) -> ApiResult<Option<ClaimedEvaluation>> {
    loop {
        let Some((job, lease)) = state
            .store
            .claim_next_evaluation(claimant, crate::worker::lease_ms())
            .await?
        else {
            return Ok(None);
        };
        let run = state.store.run(&job.run_id).await?;
        let checkpoint = match &run {
            Some(run) => checkpoint_file(state, &run.id).await?,
            None => None,
        };
        let (Some(run), Some(checkpoint)) = (run, checkpoint) else {
            let why = format!("run `{}` has no stored checkpoint to evaluate", job.run_id);
            state
                .store
                .finish_evaluation(&job, &lease, RunStatus::Failed, Some(&why), &[])
                .await?;
            continue;
        };
        tracing::info!(job = %job.id, run = %run.id, worker = %claimant.id, "evaluation claimed");
        return Ok(Some(ClaimedEvaluation {
            id: job.id,
            run_id: run.id,
            spec: run.spec,
            request: job.request,
            lease: lease.token,
            lease_ms: crate::worker::lease_ms(),
            checkpoint,
        }));
    }
}

/// The oldest queued audit this worker can run; for one of two finished
/// runs, with the hashes of their weights. One whose runs lost their
/// weights fails at once, naming them.
pub(super) async fn claim_audit(
    state: &AppState,
    claimant: Claimant<'_>,
) -> ApiResult<Option<ClaimedAudit>> {
    loop {
        let Some((audit, lease)) = state
            .store
            .claim_next_audit(claimant, crate::worker::lease_ms())
            .await?
        else {
            return Ok(None);
        };
        let (mut target, mut reference) = (None, None);
        if let Some(runs) = &audit.spec.runs {
            target = checkpoint_file(state, &runs.target).await?;
            reference = checkpoint_file(state, &runs.reference).await?;
            if target.is_none() || reference.is_none() {
                let why = format!(
                    "runs `{}` and `{}` must both have stored weights",
                    runs.target, runs.reference
                );
                state
                    .store
                    .finish_audit(&lease, RunStatus::Failed, Some(&why), None)
                    .await?;
                continue;
            }
        }
        tracing::info!(audit = %audit.id, worker = %claimant.id, "audit claimed");
        return Ok(Some(ClaimedAudit {
            id: audit.id,
            name: audit.name,
            spec: audit.spec,
            lease: lease.token,
            lease_ms: crate::worker::lease_ms(),
            target,
            reference,
        }));
    }
}

/// The oldest queued CKA job this worker can run, with the runs it compares
/// and the hashes of their weights. One whose runs are gone or lost their
/// weights fails at once, naming them.
pub(super) async fn claim_cka(
    state: &AppState,
    claimant: Claimant<'_>,
) -> ApiResult<Option<ClaimedCka>> {
    'jobs: loop {
        let Some((job, lease)) = state
            .store
            .claim_next_cka(claimant, crate::worker::lease_ms())
            .await?
        else {
            return Ok(None);
        };
        let (mut runs, mut checkpoints) = (Vec::new(), Vec::new());
        for id in crate::cka_job::run_ids(&job.request) {
            let run = state
                .store
                .run(&id)
                .await?
                .filter(|r| r.status == RunStatus::Succeeded);
            let file = match &run {
                Some(_) => checkpoint_file(state, &id).await?,
                None => None,
            };
            let (Some(run), Some(file)) = (run, file) else {
                let why = format!("run {id} has no stored final weights to compare");
                state
                    .store
                    .finish_cka(&lease, RunStatus::Failed, Some(&why), None)
                    .await?;
                continue 'jobs;
            };
            runs.push(run);
            checkpoints.push(file);
        }
        tracing::info!(cka = %job.id, worker = %claimant.id, "CKA job claimed");
        return Ok(Some(ClaimedCka {
            id: job.id,
            request: job.request,
            runs,
            checkpoints,
            lease: lease.token,
            lease_ms: crate::worker::lease_ms(),
        }));
    }
}

/// The re-evaluation a report is about, its run, and the lease it shows,
/// which must be the job's current one.
async fn held_evaluation(
    state: &AppState,
    p: &Principal,
    id: &str,
    headers: &HeaderMap,
) -> ApiResult<(EvaluationJob, Run, Lease)> {
    let missing = || ApiError::NotFound(format!("no evaluation job with id `{id}`"));
    let job = state.store.evaluation_job(id).await?.ok_or_else(missing)?;
    let run = state
        .store
        .run(&job.run_id)
        .await?
        .filter(|r| serves(p, Some(&r.team)))
        .ok_or_else(missing)?;
    let lease = lease_in(state, JobKind::Evaluation, id, headers).await?;
    Ok((job, run, lease))
}

/// Keeps a re-evaluation's lease; says whether a cancel was asked.
#[utoipa::path(
    operation_id = "evaluation_heartbeat",
    post,
    path = "/worker/evaluations/{id}/heartbeat",
    tag = "workers",
    params(("id" = String, Path, description = "the evaluation job's id"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    responses((status = 200, description = "the lease is extended", body = HeartbeatAnswer), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn evaluation_heartbeat(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<HeartbeatAnswer>> {
    let (_, _, lease) = held_evaluation(&state, &p, &id, &headers).await?;
    renew(&state, &lease).await
}

/// The final weights of the run a held re-evaluation evaluates, streamed.
#[utoipa::path(
    operation_id = "evaluation_checkpoint",
    get,
    path = "/worker/evaluations/{id}/checkpoint",
    tag = "workers",
    params(("id" = String, Path, description = "the evaluation job's id"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    responses((status = 200, description = "safetensors weights", body = Vec<u8>, content_type = "application/octet-stream"), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn evaluation_checkpoint(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (_, run, _) = held_evaluation(&state, &p, &id, &headers).await?;
    stream_file(&state, &state.artifacts.checkpoint(&run.id), || {
        ApiError::NotFound(format!("run `{}` has no stored checkpoint", run.id))
    })
    .await
}

/// A registered data set a held re-evaluation reads (the run's, or the
/// request's own), by content hash, as a tar of its folder.
#[utoipa::path(
    operation_id = "evaluation_data",
    get,
    path = "/worker/evaluations/{id}/data/{hash}",
    tag = "workers",
    params(("id" = String, Path, description = "the evaluation job's id"), ("hash" = String, Path, description = "the data set's content hash, hex digits"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    responses((status = 200, description = "a tar of the data set's folder", body = Vec<u8>, content_type = "application/x-tar"), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 404, description = "the job reads no such data set, or its files are gone", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn evaluation_data(
    State(state): State<AppState>,
    p: Principal,
    Path((id, hash)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (job, run, _) = held_evaluation(&state, &p, &id, &headers).await?;
    let reads = [
        Some(&run.spec.data),
        run.spec.eval.data.as_ref(),
        job.request.eval.data.as_ref(),
    ];
    data_tar(
        &state,
        &format!("evaluation job `{id}`"),
        &hash,
        reads.into_iter().flatten(),
    )
    .await
}

/// A re-evaluation's end, with its rows when it succeeded.
#[utoipa::path(
    operation_id = "evaluation_end",
    post,
    path = "/worker/evaluations/{id}/end",
    tag = "workers",
    params(("id" = String, Path, description = "the evaluation job's id"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    request_body = RunEnd,
    responses((status = 204, description = "recorded"), (status = 409, description = "the lease is not held; nothing recorded", body = sslab_shared::api::ErrorBody), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn evaluation_end(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> ApiResult<StatusCode> {
    let (job, _, lease) = held_evaluation(&state, &p, &id, &headers).await?;
    let end: RunEnd = parse(&body)?;
    check_ended(end.status)?;
    let rows = match end.status {
        RunStatus::Succeeded => end.evaluations.as_slice(),
        _ => &[],
    };
    let ok = state
        .store
        .finish_evaluation(&job, &lease, end.status, end.error.as_deref(), rows)
        .await?;
    recorded(ok, JobKind::Evaluation, &id)
}

/// Hands a re-evaluation back to the queue (the worker is stopping).
#[utoipa::path(
    operation_id = "evaluation_release",
    post,
    path = "/worker/evaluations/{id}/release",
    tag = "workers",
    params(("id" = String, Path, description = "the evaluation job's id"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    request_body = RunRelease,
    responses((status = 204, description = "queued again (or failed after too many attempts)"), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn evaluation_release(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> ApiResult<StatusCode> {
    let (_, _, lease) = held_evaluation(&state, &p, &id, &headers).await?;
    hand_back(&state, &lease, &body).await
}

/// The audit a report is about and the lease it shows, which must be the
/// audit's current one.
async fn held_audit(
    state: &AppState,
    p: &Principal,
    id: &str,
    headers: &HeaderMap,
) -> ApiResult<(Audit, Lease)> {
    let audit = state
        .store
        .audit(id)
        .await?
        .filter(|a| serves(p, Some(&a.team)))
        .ok_or_else(|| ApiError::NotFound(format!("no audit with id `{id}`")))?;
    let lease = lease_in(state, JobKind::Audit, id, headers).await?;
    Ok((audit, lease))
}

/// Where a held audit is; keeps its lease and says whether a cancel was asked.
#[utoipa::path(
    operation_id = "audit_progress",
    post,
    path = "/worker/audits/{id}/progress",
    tag = "workers",
    params(("id" = String, Path, description = "the audit's id"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    request_body = AuditProgress,
    responses((status = 200, description = "recorded; the lease is extended", body = HeartbeatAnswer), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn audit_progress(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> ApiResult<Json<HeartbeatAnswer>> {
    let (_, lease) = held_audit(&state, &p, &id, &headers).await?;
    let at: AuditProgress = parse(&body)?;
    if !crate::audit_job::STAGES.contains(&at.stage.as_str()) {
        return Err(ApiError::InvalidSpec(sslab_shared::SpecError::new(
            "stage",
            "`target`, `reference`, `decoder-a`, `decoder-b`, or empty before training",
        )));
    }
    match state
        .store
        .audit_progress(
            &lease,
            crate::worker::lease_ms(),
            &at.stage,
            at.step,
            at.total_steps,
        )
        .await?
    {
        Some(cancel) => Ok(Json(HeartbeatAnswer { cancel })),
        None => Err(lost_job(JobKind::Audit, &id)),
    }
}

/// The final weights of one of the two runs a held audit attacks.
#[utoipa::path(
    operation_id = "audit_checkpoint",
    get,
    path = "/worker/audits/{id}/checkpoints/{model}",
    tag = "workers",
    params(("id" = String, Path, description = "the audit's id"), ("model" = String, Path, description = "`target` or `reference`"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    responses((status = 200, description = "safetensors weights", body = Vec<u8>, content_type = "application/octet-stream"), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 404, description = "not an audit of finished runs, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn audit_checkpoint(
    State(state): State<AppState>,
    p: Principal,
    Path((id, model)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (audit, _) = held_audit(&state, &p, &id, &headers).await?;
    let missing = || ApiError::NotFound(format!("audit `{id}` attacks no `{model}` run"));
    let runs = audit.spec.runs.as_ref().ok_or_else(missing)?;
    let run = match model.as_str() {
        "target" => &runs.target,
        "reference" => &runs.reference,
        _ => return Err(missing()),
    };
    stream_file(&state, &state.artifacts.checkpoint(run), missing).await
}

/// A registered data set a held audit trains on, as for runs.
#[utoipa::path(
    operation_id = "audit_data",
    get,
    path = "/worker/audits/{id}/data/{hash}",
    tag = "workers",
    params(("id" = String, Path, description = "the audit's id"), ("hash" = String, Path, description = "the data set's content hash, hex digits"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    responses((status = 200, description = "a tar of the data set's folder", body = Vec<u8>, content_type = "application/x-tar"), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 404, description = "the audit reads no such data set, or its files are gone", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn audit_data(
    State(state): State<AppState>,
    p: Principal,
    Path((id, hash)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (audit, _) = held_audit(&state, &p, &id, &headers).await?;
    let reads = [
        Some(&audit.spec.run.data),
        audit.spec.run.eval.data.as_ref(),
    ];
    data_tar(
        &state,
        &format!("audit `{id}`"),
        &hash,
        reads.into_iter().flatten(),
    )
    .await
}

/// Stores a file of a held audit: the two models' weights, `examples.csv`
/// or `reconstruction.png`.
#[utoipa::path(
    operation_id = "upload_audit_file",
    put,
    path = "/worker/audits/{id}/files/{file}",
    tag = "workers",
    params(("id" = String, Path, description = "the audit's id"), ("file" = String, Path, description = "`target-a.safetensors`, `reference-b.safetensors`, `examples.csv` or `reconstruction.png`"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "stored", body = StoredFile), (status = 409, description = "the lease is not held; nothing stored", body = sslab_shared::api::ErrorBody), (status = 400, description = "not an audit file, or the body broke off", body = sslab_shared::api::ErrorBody), (status = 413, description = "too large", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn audit_upload(
    State(state): State<AppState>,
    p: Principal,
    Path((id, file)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<StoredFile>> {
    keep_audit_file(&state, &p, &id, &headers, body, file).await
}

/// Stores a gallery image `N.png` of a held audit.
#[utoipa::path(
    operation_id = "upload_audit_image",
    put,
    path = "/worker/audits/{id}/images/{file}",
    tag = "workers",
    params(("id" = String, Path, description = "the audit's id"), ("file" = String, Path, description = "`N.png`"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    request_body(content = Vec<u8>, content_type = "image/png"),
    responses((status = 200, description = "stored", body = StoredFile), (status = 409, description = "the lease is not held; nothing stored", body = sslab_shared::api::ErrorBody), (status = 400, description = "not a gallery image name, or the body broke off", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn audit_image_upload(
    State(state): State<AppState>,
    p: Principal,
    Path((id, file)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<StoredFile>> {
    keep_audit_file(&state, &p, &id, &headers, body, format!("images/{file}")).await
}

async fn keep_audit_file(
    state: &AppState,
    p: &Principal,
    id: &str,
    headers: &HeaderMap,
    body: Body,
    path: String,
) -> ApiResult<Json<StoredFile>> {
    let (_, lease) = held_audit(state, p, id, headers).await?;
    if !is_audit_file(&path) {
        return Err(ApiError::BadRequest(format!(
            "`{path}` is not an audit file: target-a.safetensors, reference-b.safetensors, examples.csv, reconstruction.png or images/N.png"
        )));
    }
    let target = state.artifacts.audit_dir(id).join(&path);
    let still_held = async {
        Ok(state
            .store
            .lease_of(JobKind::Audit, id, &lease.token)
            .await?
            .is_some())
    };
    let (bytes, sha256) = keep_upload(state, body, &target, still_held, || {
        lost_job(JobKind::Audit, id)
    })
    .await?;
    Ok(Json(StoredFile {
        name: path,
        bytes,
        sha256,
    }))
}

/// A held audit's end, with its report when it succeeded.
#[utoipa::path(
    operation_id = "audit_end",
    post,
    path = "/worker/audits/{id}/end",
    tag = "workers",
    params(("id" = String, Path, description = "the audit's id"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    request_body = AuditEnd,
    responses((status = 204, description = "recorded"), (status = 409, description = "the lease is not held; nothing recorded", body = sslab_shared::api::ErrorBody), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn audit_end(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> ApiResult<StatusCode> {
    let (_, lease) = held_audit(&state, &p, &id, &headers).await?;
    let end: AuditEnd = parse(&body)?;
    check_ended(end.status)?;
    if end.status == RunStatus::Succeeded && end.report.is_none() {
        return Err(ApiError::InvalidSpec(sslab_shared::SpecError::new(
            "report",
            "a succeeded audit sends its report",
        )));
    }
    let report = match end.status {
        RunStatus::Succeeded => end.report.as_ref(),
        _ => None,
    };
    if report.is_some_and(|r| r.reconstruction.is_some()) {
        let path = state
            .artifacts
            .audit_dir(&id)
            .join(crate::audit_job::RECONSTRUCTION);
        if !state.artifacts.fetch(&path).await? {
            return Err(ApiError::InvalidSpec(sslab_shared::SpecError::new(
                "report.reconstruction",
                "a succeeded audit with reconstructions stores reconstruction.png first",
            )));
        }
    }
    let ok = state
        .store
        .finish_audit(&lease, end.status, end.error.as_deref(), report)
        .await?;
    recorded(ok, JobKind::Audit, &id)
}

/// Hands a held audit back to the queue (the worker is stopping); it starts over.
#[utoipa::path(
    operation_id = "audit_release",
    post,
    path = "/worker/audits/{id}/release",
    tag = "workers",
    params(("id" = String, Path, description = "the audit's id"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    request_body = RunRelease,
    responses((status = 204, description = "queued again (or failed after too many attempts)"), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn audit_release(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> ApiResult<StatusCode> {
    let (_, lease) = held_audit(&state, &p, &id, &headers).await?;
    hand_back(&state, &lease, &body).await
}

/// The CKA job a report is about and the lease it shows, which must be the
/// job's current one.
async fn held_cka(
    state: &AppState,
    p: &Principal,
    id: &str,
    headers: &HeaderMap,
) -> ApiResult<(sslab_shared::cka::CkaJob, Lease)> {
    let job = state
        .store
        .cka(id)
        .await?
        .filter(|j| serves(p, Some(&j.team)))
        .ok_or_else(|| ApiError::NotFound(format!("no CKA job with id `{id}`")))?;
    let lease = lease_in(state, JobKind::Cka, id, headers).await?;
    Ok((job, lease))
}

/// Keeps a CKA job's lease; says whether a cancel was asked.
#[utoipa::path(
    operation_id = "cka_heartbeat",
    post,
    path = "/worker/cka/{id}/heartbeat",
    tag = "workers",
    params(("id" = String, Path, description = "the CKA job's id"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    responses((status = 200, description = "the lease is extended", body = HeartbeatAnswer), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn cka_heartbeat(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<HeartbeatAnswer>> {
    let (_, lease) = held_cka(&state, &p, &id, &headers).await?;
    renew(&state, &lease).await
}

/// The final weights of one of the runs a held CKA job compares.
#[utoipa::path(
    operation_id = "cka_checkpoint",
    get,
    path = "/worker/cka/{id}/checkpoints/{run}",
    tag = "workers",
    params(("id" = String, Path, description = "the CKA job's id"), ("run" = String, Path, description = "one of the compared runs' ids"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    responses((status = 200, description = "safetensors weights", body = Vec<u8>, content_type = "application/octet-stream"), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 404, description = "not a run of this job, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn cka_checkpoint(
    State(state): State<AppState>,
    p: Principal,
    Path((id, run)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (job, _) = held_cka(&state, &p, &id, &headers).await?;
    let missing = || ApiError::NotFound(format!("CKA job `{id}` compares no run `{run}`"));
    if !crate::cka_job::run_ids(&job.request).contains(&run) {
        return Err(missing());
    }
    stream_file(&state, &state.artifacts.checkpoint(&run), missing).await
}

/// A registered data set a held CKA job compares on, as for runs.
#[utoipa::path(
    operation_id = "cka_data",
    get,
    path = "/worker/cka/{id}/data/{hash}",
    tag = "workers",
    params(("id" = String, Path, description = "the CKA job's id"), ("hash" = String, Path, description = "the data set's content hash, hex digits"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    responses((status = 200, description = "a tar of the data set's folder", body = Vec<u8>, content_type = "application/x-tar"), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 404, description = "the job reads no such data set, or its files are gone", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn cka_data(
    State(state): State<AppState>,
    p: Principal,
    Path((id, hash)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (job, _) = held_cka(&state, &p, &id, &headers).await?;
    let mut runs = Vec::new();
    for run in crate::cka_job::run_ids(&job.request) {
        runs.extend(state.store.run(&run).await?);
    }
    let data = crate::cka_job::job_data(&job.request, &runs);
    data_tar(&state, &format!("CKA job `{id}`"), &hash, data.iter()).await
}

/// A held CKA job's end, with its result when it succeeded.
#[utoipa::path(
    operation_id = "cka_end",
    post,
    path = "/worker/cka/{id}/end",
    tag = "workers",
    params(("id" = String, Path, description = "the CKA job's id"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    request_body = CkaEnd,
    responses((status = 204, description = "recorded"), (status = 409, description = "the lease is not held; nothing recorded", body = sslab_shared::api::ErrorBody), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn cka_end(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> ApiResult<StatusCode> {
    let (job, lease) = held_cka(&state, &p, &id, &headers).await?;
    let end: CkaEnd = parse(&body)?;
    check_ended(end.status)?;
    let family_job = job.request.runs.is_some();
    let result = match (end.status, end.pair, end.family) {
        (RunStatus::Succeeded, Some(pair), None) if !family_job => {
            Some(crate::store::CkaOutcome::Pair(pair))
        }
        (RunStatus::Succeeded, None, Some(family)) if family_job => {
            Some(crate::store::CkaOutcome::Family(family))
        }
        (RunStatus::Succeeded, ..) => {
            let field = if family_job { "family" } else { "pair" };
            return Err(ApiError::InvalidSpec(sslab_shared::SpecError::new(
                field,
                format!("a succeeded CKA job of this kind sends `{field}` and nothing else"),
            )));
        }
        _ => None,
    };
    let ok = state
        .store
        .finish_cka(&lease, end.status, end.error.as_deref(), result.as_ref())
        .await?;
    recorded(ok, JobKind::Cka, &id)
}

/// Hands a held CKA job back to the queue (the worker is stopping).
#[utoipa::path(
    operation_id = "cka_release",
    post,
    path = "/worker/cka/{id}/release",
    tag = "workers",
    params(("id" = String, Path, description = "the CKA job's id"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    request_body = RunRelease,
    responses((status = 204, description = "queued again (or failed after too many attempts)"), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn cka_release(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> ApiResult<StatusCode> {
    let (_, lease) = held_cka(&state, &p, &id, &headers).await?;
    hand_back(&state, &lease, &body).await
}
