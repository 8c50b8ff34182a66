//! Workers. `/worker/…` is what `sslab worker` calls with a worker token:
//! register, claim, and report on a claimed run with its lease in the
//! `Sslab-Lease` header (a lease that is no longer held gets 409 and
//! changes nothing). `/workers` is the team's view: list, drain.

use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use sslab_shared::api::{Run, RunStatus};
use sslab_shared::spec::DataSpec;
use sslab_shared::worker::{
    ClaimAnswer, ClaimRequest, ClaimedRun, HeartbeatAnswer, LEASE_HEADER, LogBatch, MetricBatch,
    Registration, RunEnd, RunRelease, RunStart, StoredFile, WorkerInfo, is_run_file,
};
use tokio::io::AsyncWriteExt;

use super::authn::JsonText;
use super::{ApiError, ApiResult, AppState};
use crate::auth::Principal;
use crate::store::{Claimant, JobKind, Lease};

/// The largest file a worker may store for a run.
const MAX_FILE_BYTES: u64 = 16 << 30;

/// Routes for worker tokens only.
pub fn worker_router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/worker/register", post(register))
        .route("/worker/claim", post(claim))
        .route("/worker/runs/{id}/start", post(start))
        .route("/worker/runs/{id}/heartbeat", post(heartbeat))
        .route("/worker/runs/{id}/metrics", post(metrics))
        .route("/worker/runs/{id}/logs", post(logs))
        .route(
            "/worker/runs/{id}/files/{file}",
            get(download).put(upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/worker/runs/{id}/data/{hash}", get(data))
        .route("/worker/runs/{id}/end", post(end))
        .route("/worker/runs/{id}/release", post(release))
        .merge(super::worker_jobs::router())
        .merge(super::worker_decoders::router())
}

/// The team's view of its workers.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/workers", get(list))
        .route("/workers/{id}/drain", post(drain))
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(body: &str) -> ApiResult<T> {
    sslab_shared::error::from_json(body).map_err(ApiError::InvalidSpec)
}

/// Whether a worker of `p`'s scope may see an object of `team`: a team's
/// worker its team's, a site-wide one every team's.
pub(super) fn serves(p: &Principal, team: Option<&str>) -> bool {
    match (&p.team_id, team) {
        (None, _) => true,
        (Some(mine), Some(theirs)) => mine == theirs,
        (Some(_), None) => false,
    }
}

/// Registers the calling worker; another sslab version is refused.
#[utoipa::path(
    operation_id = "register_worker",
    post,
    path = "/worker/register",
    tag = "workers",
    request_body = Registration,
    responses((status = 201, description = "registered", body = WorkerInfo), (status = 409, description = "another sslab version; both are named", body = sslab_shared::api::ErrorBody), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn register(
    State(state): State<AppState>,
    p: Principal,
    JsonText(body): JsonText,
) -> ApiResult<Response> {
    let mut reg: Registration = parse(&body)?;
    // Only the server's own workers read its data folders.
    reg.capabilities.retain(|c| c != crate::store::SERVER_DATA);
    let ours = env!("CARGO_PKG_VERSION");
    if reg.version != ours {
        return Err(ApiError::Conflict(format!(
            "this worker is sslab {}, the server is sslab {ours}: run the same version on both",
            reg.version
        )));
    }
    if reg.slots == 0 || reg.slots > 64 {
        return Err(ApiError::InvalidSpec(sslab_shared::SpecError::new(
            "slots",
            "a worker runs 1 to 64 jobs at once",
        )));
    }
    let id = format!("w-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let info = state
        .store
        .register_worker(&id, p.team_id.as_deref(), &reg, "remote")
        .await?;
    tracing::info!(worker = %id, host = %reg.host, device = %reg.device, "worker registered");
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

/// The calling worker's record, if it is one of this token's team.
async fn own_worker(state: &AppState, p: &Principal, id: &str) -> ApiResult<WorkerInfo> {
    state
        .store
        .worker(id, p.team_id.as_deref())
        .await?
        .filter(|w| w.team == p.team_id)
        .ok_or_else(|| ApiError::NotFound(format!("no worker `{id}`: register first")))
}

/// The oldest queued run this worker can run (its capabilities, its team),
/// or none; `drain` once the worker was told to stop taking work.
#[utoipa::path(
    operation_id = "claim_run",
    post,
    path = "/worker/claim",
    tag = "workers",
    request_body = ClaimRequest,
    responses((status = 200, description = "a claimed run, or none", body = ClaimAnswer), (status = 404, description = "no such worker for this token", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn claim(
    State(state): State<AppState>,
    p: Principal,
    JsonText(body): JsonText,
) -> ApiResult<Json<ClaimAnswer>> {
    let req: ClaimRequest = parse(&body)?;
    let worker = own_worker(&state, &p, &req.worker).await?;
    if state.store.worker_seen(&worker.id).await? == Some(true) {
        return Ok(Json(ClaimAnswer {
            job: None,
            evaluation: None,
            audit: None,
            cka: None,
            decoder: None,
            drain: true,
        }));
    }
    let claimant = Claimant {
        id: &worker.id,
        capabilities: &worker.capabilities,
        team: p.team_id.as_deref(),
    };
    let Some(claim) = state
        .store
        .claim_next(claimant, crate::worker::lease_ms())
        .await?
    else {
        // No run waits: a re-evaluation, else an audit, else a CKA job,
        // else a decoder job.
        let mut answer = ClaimAnswer {
            job: None,
            evaluation: super::worker_jobs::claim_evaluation(&state, claimant).await?,
            audit: None,
            cka: None,
            decoder: None,
            drain: false,
        };
        if answer.evaluation.is_none() {
            answer.audit = super::worker_jobs::claim_audit(&state, claimant).await?;
        }
        if answer.evaluation.is_none() && answer.audit.is_none() {
            answer.cka = super::worker_jobs::claim_cka(&state, claimant).await?;
        }
        if answer.evaluation.is_none() && answer.audit.is_none() && answer.cka.is_none() {
            answer.decoder = super::worker_decoders::claim_decoder(&state, claimant).await?;
        }
        return Ok(Json(answer));
    };
    let files = if claim.lease.attempt > 1 {
        stored_files(&state, &claim.run.id).await?
    } else {
        // A first attempt starts clean (a sweep's requeue removed the
        // stored files of an earlier life).
        let dir = state.artifacts.run_dir(&claim.run.id);
        let _ = tokio::fs::remove_dir_all(&dir).await;
        Vec::new()
    };
    tracing::info!(run = %claim.run.id, worker = %worker.id, attempt = claim.lease.attempt, "run claimed");
    Ok(Json(ClaimAnswer {
        job: Some(ClaimedRun {
            id: claim.run.id,
            name: claim.run.name,
            spec: claim.run.spec,
            lease: claim.lease.token,
            attempt: claim.lease.attempt,
            lease_ms: crate::worker::lease_ms(),
            files,
        }),
        evaluation: None,
        audit: None,
        cka: None,
        decoder: None,
        drain: false,
    }))
}

/// A run's stored final weights with their hash, if it has them.
pub(super) async fn checkpoint_file(state: &AppState, run: &str) -> ApiResult<Option<StoredFile>> {
    stored_file(state, run, "checkpoint.safetensors".into()).await
}

/// The run's stored files with their hashes.
async fn stored_files(state: &AppState, id: &str) -> ApiResult<Vec<StoredFile>> {
    let mut out = Vec::new();
    for name in state.artifacts.list(&state.artifacts.run_dir(id)).await? {
        if is_run_file(&name) {
            out.extend(stored_file(state, id, name).await?);
        }
    }
    Ok(out)
}

/// One stored file of a run with its hash (fetched from the artifact store
/// when this server's cache lacks it); `None` when there is none.
async fn stored_file(state: &AppState, id: &str, name: String) -> ApiResult<Option<StoredFile>> {
    let path = state.artifacts.run_dir(id).join(&name);
    if !state.artifacts.fetch(&path).await? {
        return Ok(None);
    }
    let (bytes, sha256) = tokio::task::spawn_blocking(move || hash_file(&path))
        .await
        .map_err(anyhow::Error::new)??;
    Ok(Some(StoredFile {
        name,
        bytes,
        sha256,
    }))
}

fn hash_file(path: &std::path::Path) -> anyhow::Result<(u64, String)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        hash.update(&buf[..n]);
    }
    Ok((bytes, hex(&hash.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The run a report is about, and the lease it shows, which must be the
/// run's current one: 404 for a run the worker may not see, 409 for a lease
/// it no longer holds.
async fn held(
    state: &AppState,
    p: &Principal,
    id: &str,
    headers: &HeaderMap,
) -> ApiResult<(Run, Lease)> {
    let run = state
        .store
        .run(id)
        .await?
        .filter(|r| serves(p, Some(&r.team)))
        .ok_or_else(|| ApiError::NotFound(format!("no run with id `{id}`")))?;
    let lease = lease_in(state, JobKind::Run, id, headers).await?;
    Ok((run, lease))
}

fn lost(id: &str) -> ApiError {
    lost_job(JobKind::Run, id)
}

/// What a report under a lease that is no longer held gets.
pub(super) fn lost_job(kind: JobKind, id: &str) -> ApiError {
    let what = match kind {
        JobKind::Run => "run",
        JobKind::Evaluation => "evaluation job",
        JobKind::Audit => "audit",
        JobKind::Export => "export",
        JobKind::Cka => "CKA job",
        JobKind::Decoder => "decoder job",
    };
    ApiError::Conflict(format!(
        "{what} `{id}` is not held with this lease: it ended, was cancelled, or went to another worker"
    ))
}

/// The lease a report shows in its `Sslab-Lease` header, which must be job
/// `id`'s current one (409 otherwise); the worker is noted as alive.
pub(super) async fn lease_in(
    state: &AppState,
    kind: JobKind,
    id: &str,
    headers: &HeaderMap,
) -> ApiResult<Lease> {
    let token = headers
        .get(LEASE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::BadRequest("send the claim's lease in the Sslab-Lease header".into())
        })?;
    let lease = state
        .store
        .lease_of(kind, id, token)
        .await?
        .ok_or_else(|| lost_job(kind, id))?;
    if let Some((worker, _)) = token.split_once('#') {
        state.store.worker_seen(worker).await?;
    }
    Ok(lease)
}

/// Renews a held job's lease; says whether a cancel was asked.
pub(super) async fn renew(state: &AppState, lease: &Lease) -> ApiResult<Json<HeartbeatAnswer>> {
    match state
        .store
        .heartbeat(lease, crate::worker::lease_ms())
        .await?
    {
        Some(cancel) => Ok(Json(HeartbeatAnswer { cancel })),
        None => Err(lost_job(lease.kind, &lease.id)),
    }
}

/// Hands a held job back to the queue: its worker is stopping.
pub(super) async fn hand_back(
    state: &AppState,
    lease: &Lease,
    body: &str,
) -> ApiResult<StatusCode> {
    let req: RunRelease = parse(body)?;
    state.store.release(lease, &req.reason).await?;
    state.wake_workers();
    Ok(StatusCode::NO_CONTENT)
}

fn stored(ok: bool, id: &str) -> ApiResult<StatusCode> {
    recorded(ok, JobKind::Run, id)
}

/// A report's answer: stored, or the lease was no longer held.
pub(super) fn recorded(ok: bool, kind: JobKind, id: &str) -> ApiResult<StatusCode> {
    if ok {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(lost_job(kind, id))
    }
}

/// A job's end names how it ended: succeeded, failed or cancelled.
pub(super) fn check_ended(status: RunStatus) -> ApiResult<()> {
    if matches!(status, RunStatus::Queued | RunStatus::Running) {
        return Err(ApiError::InvalidSpec(sslab_shared::SpecError::new(
            "status",
            "a job ends succeeded, failed or cancelled",
        )));
    }
    Ok(())
}

/// The run starts from scratch or after the epochs its checkpoint holds:
/// metrics an earlier attempt stored after them are dropped.
#[utoipa::path(
    operation_id = "start_run",
    post,
    path = "/worker/runs/{id}/start",
    tag = "workers",
    params(("id" = String, Path, description = "the run's id"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    request_body = RunStart,
    responses((status = 204, description = "started"), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn start(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> ApiResult<StatusCode> {
    let (_, lease) = held(&state, &p, &id, &headers).await?;
    let req: RunStart = parse(&body)?;
    stored(
        state
            .store
            .start_run(&lease, req.resumed_epochs as i64)
            .await?,
        &id,
    )
}

/// Keeps the lease for another `lease_ms()`; says whether a cancel was asked.
#[utoipa::path(
    operation_id = "run_heartbeat",
    post,
    path = "/worker/runs/{id}/heartbeat",
    tag = "workers",
    params(("id" = String, Path, description = "the run's id"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    responses((status = 200, description = "the lease is extended", body = HeartbeatAnswer), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn heartbeat(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<HeartbeatAnswer>> {
    let (_, lease) = held(&state, &p, &id, &headers).await?;
    renew(&state, &lease).await
}

/// Step-numbered metrics (and memorization readings): a step already stored
/// is kept as it is, so a batch sent twice stores nothing twice.
#[utoipa::path(
    operation_id = "report_metrics",
    post,
    path = "/worker/runs/{id}/metrics",
    tag = "workers",
    params(("id" = String, Path, description = "the run's id"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    request_body = MetricBatch,
    responses((status = 204, description = "stored"), (status = 409, description = "the lease is not held; nothing stored", body = sslab_shared::api::ErrorBody), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn metrics(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> ApiResult<StatusCode> {
    let (_, lease) = held(&state, &p, &id, &headers).await?;
    let batch: MetricBatch = parse(&body)?;
    if let Some(bad) = batch.points.iter().find(|m| m.step < 1) {
        return Err(ApiError::InvalidSpec(sslab_shared::SpecError::new(
            "points.step",
            format!("steps count from 1, not {}", bad.step),
        )));
    }
    let ok = state.store.add_metrics(&lease, &batch).await?;
    stored(ok, &id)
}

/// Log lines numbered per attempt; a line sent twice is kept once.
#[utoipa::path(
    operation_id = "report_logs",
    post,
    path = "/worker/runs/{id}/logs",
    tag = "workers",
    params(("id" = String, Path, description = "the run's id"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    request_body = LogBatch,
    responses((status = 204, description = "stored"), (status = 409, description = "the lease is not held; nothing stored", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn logs(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> ApiResult<StatusCode> {
    let (_, lease) = held(&state, &p, &id, &headers).await?;
    let mut batch: LogBatch = parse(&body)?;
    for line in &mut batch.lines {
        // One line is a line, not a file.
        if let Some((cut, _)) = line.text.char_indices().nth(4000) {
            line.text.truncate(cut);
        }
    }
    stored(state.store.add_run_logs(&lease, &batch.lines).await?, &id)
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct UploadQuery {
    /// For `checkpoint.safetensors`: the epochs it holds; training states
    /// of other epochs are then removed.
    epochs: Option<u32>,
}

/// Stores a file of the run (its checkpoint, its training state), streamed
/// to the artifact store; the answer carries the stored bytes' SHA-256.
#[utoipa::path(
    operation_id = "upload_run_file",
    put,
    path = "/worker/runs/{id}/files/{file}",
    tag = "workers",
    params(("id" = String, Path, description = "the run's id"), ("file" = String, Path, description = "`checkpoint.safetensors` or `checkpoint.state-N.safetensors`"), ("Sslab-Lease" = String, Header, description = "the claim's lease"), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "stored", body = StoredFile), (status = 409, description = "the lease is not held; nothing stored", body = sslab_shared::api::ErrorBody), (status = 400, description = "not a run file name, or the body broke off", body = sslab_shared::api::ErrorBody), (status = 413, description = "too large", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn upload(
    State(state): State<AppState>,
    p: Principal,
    Path((id, file)): Path<(String, String)>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<StoredFile>> {
    let (_, lease) = held(&state, &p, &id, &headers).await?;
    if !is_run_file(&file) {
        return Err(ApiError::BadRequest(format!(
            "`{file}` is not a run file: checkpoint.safetensors or checkpoint.state-N.safetensors"
        )));
    }
    let dir = state.artifacts.run_dir(&id);
    let target = dir.join(&file);
    let still_held = async { Ok(state.store.run_lease(&id, &lease.token).await?.is_some()) };
    let (bytes, sha256) = keep_upload(&state, body, &target, still_held, || lost(&id)).await?;
    if let (Some(epochs), "checkpoint.safetensors") = (query.epochs, file.as_str()) {
        let keep = format!("checkpoint.state-{epochs}.safetensors");
        for stale in state.artifacts.list(&dir).await? {
            if stale.starts_with("checkpoint.state-") && stale != keep {
                let _ = state.artifacts.remove(&dir.join(&stale)).await;
            }
        }
    }
    Ok(Json(StoredFile {
        name: file,
        bytes,
        sha256,
    }))
}

/// Receives a body into `target` through a partial file beside it, hashing
/// it; keeps it only if `held` (asked once the bytes are in) says the lease
/// is still held, else answers `lost()`. Answered once the artifact store
/// holds the file: a worker sends again what the store did not take.
pub(super) async fn keep_upload(
    state: &AppState,
    body: Body,
    target: &std::path::Path,
    held: impl std::future::Future<Output = ApiResult<bool>>,
    lost: impl Fn() -> ApiError,
) -> ApiResult<(u64, String)> {
    let dir = target.parent().unwrap_or(target);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| ApiError::Storage(format!("cannot create {}: {e}", dir.display())))?;
    let part = dir.join(format!(
        ".{name}.{}.part",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    let (bytes, sha256) = match receive(body, &part).await {
        Ok(done) => done,
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
    };
    // The lease may have gone while the bytes came: then nothing changes.
    if !held.await? {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(lost());
    }
    tokio::fs::rename(&part, target)
        .await
        .map_err(|e| ApiError::Storage(format!("cannot store {name}: {e}")))?;
    state.artifacts.persist(target).await.map_err(|e| {
        tracing::error!(file = %target.display(), error = %format!("{e:#}"), "storing an uploaded file failed");
        ApiError::Storage(format!("the artifact store did not take {name}; send it again"))
    })?;
    Ok((bytes, sha256))
}

/// Writes a request body to `part`, hashing it on the way.
async fn receive(body: Body, part: &std::path::Path) -> ApiResult<(u64, String)> {
    let storage = |e: std::io::Error| ApiError::Storage(format!("cannot write the file: {e}"));
    let mut out = tokio::fs::File::create(part).await.map_err(storage)?;
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::BadRequest(format!("the upload broke off after {bytes} bytes: {e}"))
        })?;
        bytes += chunk.len() as u64;
        if bytes > MAX_FILE_BYTES {
            return Err(ApiError::TooLarge(format!(
                "a run file may weigh {} GiB at most",
                MAX_FILE_BYTES >> 30
            )));
        }
        hash.update(&chunk);
        out.write_all(&chunk).await.map_err(storage)?;
    }
    out.sync_all().await.map_err(storage)?;
    Ok((bytes, hex(&hash.finalize())))
}

/// A stored file of the run, streamed: what a worker resumes from.
#[utoipa::path(
    operation_id = "download_run_file",
    get,
    path = "/worker/runs/{id}/files/{file}",
    tag = "workers",
    params(("id" = String, Path, description = "the run's id"), ("file" = String, Path, description = "a name from the claim's `files`"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    responses((status = 200, description = "the file", body = Vec<u8>, content_type = "application/octet-stream"), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 404, description = "no such file, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn download(
    State(state): State<AppState>,
    p: Principal,
    Path((id, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    held(&state, &p, &id, &headers).await?;
    let missing = || ApiError::NotFound(format!("run `{id}` has no file `{file}`"));
    if !is_run_file(&file) {
        return Err(missing());
    }
    let path = state.artifacts.run_dir(&id).join(&file);
    stream_file(&state, &path, missing).await
}

/// A kept file, streamed (fetched from the artifact store first when the
/// server's cache lacks it); `missing` when it is nowhere.
pub(super) async fn stream_file(
    state: &AppState,
    path: &std::path::Path,
    missing: impl Fn() -> ApiError,
) -> ApiResult<Response> {
    if !state.artifacts.fetch(path).await? {
        return Err(missing());
    }
    let f = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(anyhow::Error::new(e).into()),
    };
    let len = f.metadata().await.map_err(anyhow::Error::new)?.len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(f));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

/// A registered data set the held run reads, by its content hash (the hex
/// digits of `sha256:…`), as a tar of its folder: what a worker caches.
#[utoipa::path(
    operation_id = "download_run_data",
    get,
    path = "/worker/runs/{id}/data/{hash}",
    tag = "workers",
    params(("id" = String, Path, description = "the run's id"), ("hash" = String, Path, description = "the data set's content hash, hex digits"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    responses((status = 200, description = "a tar of the data set's folder", body = Vec<u8>, content_type = "application/x-tar"), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 404, description = "the run reads no such data set, or its files are gone", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn data(
    State(state): State<AppState>,
    p: Principal,
    Path((id, hash)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (run, _) = held(&state, &p, &id, &headers).await?;
    let reads = [Some(&run.spec.data), run.spec.eval.data.as_ref()];
    data_tar(
        &state,
        &format!("run `{id}`"),
        &hash,
        reads.into_iter().flatten(),
    )
    .await
}

/// A tar of the folder of the registered data set among `reads` whose
/// content hash is `hash`.
pub(super) async fn data_tar<'a>(
    state: &AppState,
    who: &str,
    hash: &str,
    reads: impl Iterator<Item = &'a DataSpec>,
) -> ApiResult<Response> {
    let hash = hash.trim_start_matches("sha256:").to_ascii_lowercase();
    let registered = reads
        .filter_map(|d| match d {
            DataSpec::Dataset {
                registered: Some(r),
                ..
            } if r.hash.trim_start_matches("sha256:") == hash => Some(r.data.clone()),
            _ => None,
        })
        .next()
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "{who} reads no registered data set with content hash {hash}"
            ))
        })?;
    // On a fresh disk the folder comes back from the artifact store.
    let named = DataSpec::Dataset {
        name: String::new(),
        registered: Some(Box::new(sslab_shared::spec::RegisteredData {
            hash: format!("sha256:{hash}"),
            data: registered.clone(),
        })),
    };
    state.artifacts.need_data(&named).await?;
    let folder = registered
        .server_path()
        .map(std::path::PathBuf::from)
        .filter(|f| f.is_dir())
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "the files of data set {hash} are no longer on the server"
            ))
        })?;
    // Packed into a scratch file that is unlinked once open: the stream
    // reads it, and nothing is left behind whatever happens to the request.
    let scratch = std::env::temp_dir().join(format!(
        "sslab-data-{}.tar",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ));
    let packed = scratch.clone();
    let file = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        let out = std::fs::File::create(&packed)?;
        let mut tar = tar::Builder::new(out);
        tar.follow_symlinks(true);
        tar.append_dir_all(".", &folder)?;
        let mut out = tar.into_inner()?;
        std::io::Write::flush(&mut out)?;
        let file = std::fs::File::open(&packed)?;
        std::fs::remove_file(&packed)?;
        Ok(file)
    })
    .await
    .map_err(anyhow::Error::new)?;
    let file = file.map_err(|e| {
        let _ = std::fs::remove_file(&scratch);
        ApiError::Storage(format!("cannot pack data set {hash}: {e}"))
    })?;
    let len = file.metadata().map_err(anyhow::Error::new)?.len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(
        tokio::fs::File::from_std(file),
    ));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

/// The run's end, with the evaluations of a finished run.
#[utoipa::path(
    operation_id = "end_run",
    post,
    path = "/worker/runs/{id}/end",
    tag = "workers",
    params(("id" = String, Path, description = "the run's id"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    request_body = RunEnd,
    responses((status = 204, description = "recorded"), (status = 409, description = "the lease is not held; nothing recorded", body = sslab_shared::api::ErrorBody), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn end(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> ApiResult<StatusCode> {
    let (_, lease) = held(&state, &p, &id, &headers).await?;
    let end: RunEnd = parse(&body)?;
    check_ended(end.status)?;
    if end.status == RunStatus::Succeeded
        && state
            .artifacts
            .size(&state.artifacts.checkpoint(&id))
            .await?
            .is_none()
    {
        return Err(ApiError::Conflict(format!(
            "run `{id}` has no stored checkpoint: store it before reporting success"
        )));
    }
    let ok = state
        .store
        .finish_run(&lease, end.status, end.error.as_deref(), &end.evaluations)
        .await?;
    stored(ok, &id)
}

/// Hands the run back to the queue (the worker is stopping).
#[utoipa::path(
    operation_id = "release_run",
    post,
    path = "/worker/runs/{id}/release",
    tag = "workers",
    params(("id" = String, Path, description = "the run's id"), ("Sslab-Lease" = String, Header, description = "the claim's lease")),
    request_body = RunRelease,
    responses((status = 204, description = "queued again (or failed after too many attempts)"), (status = 409, description = "the lease is not held", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or not this worker's team", body = sslab_shared::api::ErrorBody), (status = 403, description = "not a worker token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn release(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonText(body): JsonText,
) -> ApiResult<StatusCode> {
    let (_, lease) = held(&state, &p, &id, &headers).await?;
    hand_back(&state, &lease, &body).await
}

/// The workers that serve the team: its own and the site-wide ones.
#[utoipa::path(
    operation_id = "list_workers",
    get,
    path = "/workers",
    tag = "workers",
    responses((status = 200, description = "most recently seen first", body = Vec<WorkerInfo>), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn list(State(state): State<AppState>, p: Principal) -> ApiResult<Json<Vec<WorkerInfo>>> {
    Ok(Json(state.store.list_workers(p.team()).await?))
}

/// Tells a worker to take no new job; it stops once its jobs end. Team
/// admins drain their team's workers, the site admin site-wide ones.
#[utoipa::path(
    operation_id = "drain_worker",
    post,
    path = "/workers/{id}/drain",
    tag = "workers",
    params(("id" = String, Path, description = "the worker's id")),
    responses((status = 200, description = "draining", body = WorkerInfo), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 403, description = "not an admin of its team", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn drain(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkerInfo>> {
    let worker = state
        .store
        .worker(&id, Some(p.team()))
        .await?
        .filter(|w| w.team.is_none() || w.team == p.team_id)
        .ok_or_else(|| ApiError::NotFound(format!("no worker `{id}`")))?;
    let allowed = match &worker.team {
        Some(_) => p.is_admin(),
        None => p.site_admin && p.can_write(),
    };
    if !allowed {
        return Err(ApiError::Forbidden(
            "only a team admin drains the team's workers, and the site admin site-wide ones".into(),
        ));
    }
    state.store.drain_worker(&id).await?;
    let worker = state
        .store
        .worker(&id, Some(p.team()))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no worker `{id}`")))?;
    Ok(Json(worker))
}
