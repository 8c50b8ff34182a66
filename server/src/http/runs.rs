//! `/runs`: create, list, read, cancel; metrics, memorization readings,
//! evaluations and the checkpoint.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use sslab_shared::RunSpec;
use sslab_shared::api::{
    EvaluationJob, EvaluationRequest, MemorizationPoint, MetricPoint, Page, Run, RunStatus,
};

use super::authn::JsonText;
use super::{ApiError, ApiResult, AppState, check_may_change, events, idempotency_key};
use crate::auth::Principal;
use crate::store::RunFilter;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/runs", post(create).get(list))
        .route(
            "/runs/{id}",
            get(read)
                .patch(super::labels::update_run)
                .delete(super::deletes::run),
        )
        .route("/runs/{id}/cancel", post(cancel))
        .route("/runs/{id}/metrics", get(metrics))
        .route("/runs/{id}/memorization", get(memorization))
        .route("/runs/{id}/system", get(system))
        .route("/runs/{id}/logs", get(logs))
        .route("/runs/{id}/evaluations", get(evaluations))
        .route("/runs/{id}/evaluate", post(evaluate))
        .route("/runs/{id}/evaluation-jobs", get(evaluation_jobs))
        .route("/evaluation-jobs/{id}", get(evaluation_job))
        .route("/evaluation-jobs/{id}/cancel", post(cancel_evaluation))
        .route("/runs/{id}/checkpoint", get(checkpoint))
        .route("/runs/{id}/events", get(events::stream))
}

/// The body is parsed here rather than by axum's `Json` so that every
/// problem, syntax included, comes back as a 422 naming the field.
#[utoipa::path(
    operation_id = "create_run",
    post,
    path = "/runs",
    tag = "runs",
    params(("Idempotency-Key" = Option<String>, Header, description = "repeat a creating request safely"), super::projects::CreateQuery),
    request_body(content = serde_json::Value, description = "a RunSpec (docs/api.md)", content_type = "application/json"),
    responses((status = 201, description = "created", body = sslab_shared::api::Run), (status = 200, description = "created earlier with this Idempotency-Key", body = sslab_shared::api::Run), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn create(
    State(state): State<AppState>,
    p: Principal,
    headers: HeaderMap,
    Query(place): Query<super::projects::CreateQuery>,
    JsonText(body): JsonText,
) -> ApiResult<Response> {
    let mut spec = RunSpec::from_json(&body).map_err(ApiError::InvalidSpec)?;
    let owner = super::projects::owner_in(&state, &p, &place).await?;
    super::check_run_data(&state, &p, &spec, "")?;
    state.datasets.resolve(&mut spec, "", p.team()).await?;
    let key = idempotency_key(&headers)?;
    let (run, created) = state.store.create_run(&spec, &owner, key).await?;
    if created {
        state.wake_workers();
    }
    let location = format!("/api/v1/runs/{}", run.id);
    Ok(super::created(created, location, run))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    page_size: Option<usize>,
    page_token: Option<String>,
    status: Option<String>,
    /// Only the runs of this sweep.
    sweep: Option<String>,
    method: Option<String>,
    /// Part of the run name, any case.
    q: Option<String>,
    /// Only the runs with this tag.
    tag: Option<String>,
    /// Only the runs of this project.
    project: Option<String>,
    /// `false` (default: archived runs hidden), `true` (only archived
    /// ones) or `all`.
    archived: Option<String>,
}

pub(super) fn page_size(asked: Option<usize>) -> ApiResult<usize> {
    let page_size = asked.unwrap_or(50);
    if !(1..=500).contains(&page_size) {
        return Err(ApiError::BadRequest(format!(
            "page_size must be between 1 and 500, got {page_size}"
        )));
    }
    Ok(page_size)
}

pub(super) fn check_page_token(token: Option<&str>) -> ApiResult<()> {
    if let Some(t) = token
        && !crate::store::is_page_token(t)
    {
        return Err(ApiError::BadRequest(format!(
            "`{t}` is not a page token from this API"
        )));
    }
    Ok(())
}

/// Newest first, filtered on the server: status, sweep, method, name,
/// tag; archived runs only when asked for.
#[utoipa::path(
    operation_id = "list_runs",
    get,
    path = "/runs",
    tag = "runs",
    params(ListQuery),
    responses((status = 200, description = "newest first", body = sslab_shared::api::Page<sslab_shared::api::Run>), (status = 400, description = "bad page size, token or status", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn list(
    State(state): State<AppState>,
    p: Principal,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Run>>> {
    let page_size = page_size(q.page_size)?;
    check_page_token(q.page_token.as_deref())?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown status `{s}`; use one of queued, running, succeeded, failed, cancelled"
            ))
        })?),
    };
    let archived = super::labels::archived_filter(q.archived.as_deref())?;
    let nonempty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
    let filter = RunFilter {
        team: p.team().to_string(),
        status,
        sweep_id: nonempty(q.sweep),
        method: nonempty(q.method),
        name_contains: nonempty(q.q).map(|s| s.trim().to_string()),
        tag: nonempty(q.tag).map(|s| s.trim().to_string()),
        project: nonempty(q.project).map(|s| s.trim().to_string()),
        archived,
    };
    Ok(Json(
        state
            .store
            .list_runs(page_size, q.page_token.as_deref(), &filter)
            .await?,
    ))
}

/// The run, if `p`'s team has one with that id.
pub(super) async fn find(state: &AppState, p: &Principal, id: &str) -> ApiResult<Run> {
    state
        .store
        .run(id)
        .await?
        .filter(|r| super::visible(p, &r.team))
        .ok_or_else(|| ApiError::NotFound(format!("no run with id `{id}`")))
}

#[utoipa::path(
    operation_id = "get_run",
    get,
    path = "/runs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "the run's id")),
    responses((status = 200, description = "OK", body = sslab_shared::api::Run), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn read(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Run>> {
    Ok(Json(find(&state, &p, &id).await?))
}

#[utoipa::path(
    operation_id = "cancel_run",
    post,
    path = "/runs/{id}/cancel",
    tag = "runs",
    params(("id" = String, Path, description = "the run's id")),
    responses((status = 200, description = "cancel requested", body = sslab_shared::api::Run), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 409, description = "conflicts with the object's state", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn cancel(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Run>> {
    let run = find(&state, &p, &id).await?;
    check_may_change(&p, run.created_by.as_deref(), "this run")?;
    if run.status.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "run `{id}` has already ended ({})",
            run.status.as_str()
        )));
    }
    let run = state.store.request_cancel(&id).await?;
    run.map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no run with id `{id}`")))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct MetricsQuery {
    after_step: Option<i64>,
    limit: Option<usize>,
}

#[utoipa::path(
    operation_id = "run_metrics",
    get,
    path = "/runs/{id}/metrics",
    tag = "runs",
    params(("id" = String, Path, description = "the run's id"), MetricsQuery),
    responses((status = 200, description = "OK", body = Vec<sslab_shared::api::MetricPoint>), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn metrics(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    Query(q): Query<MetricsQuery>,
) -> ApiResult<Json<Vec<MetricPoint>>> {
    find(&state, &p, &id).await?;
    let limit = q.limit.unwrap_or(10_000).min(100_000);
    Ok(Json(
        state
            .store
            .metrics(&id, q.after_step.unwrap_or(0), limit)
            .await?,
    ))
}

/// The memorization monitor's readings, by epoch (empty when the run has
/// no `eval.memorization`).
#[utoipa::path(
    operation_id = "run_memorization",
    get,
    path = "/runs/{id}/memorization",
    tag = "runs",
    params(("id" = String, Path, description = "the run's id")),
    responses((status = 200, description = "OK", body = Vec<sslab_shared::api::MemorizationPoint>), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn memorization(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<MemorizationPoint>>> {
    find(&state, &p, &id).await?;
    Ok(Json(state.store.memorization(&id).await?))
}

/// What the machine did while the run trained, sampled every two seconds
/// by its worker: process CPU and memory, and on CUDA the GPU's
/// utilisation and memory. Oldest first.
#[utoipa::path(
    operation_id = "run_system_metrics",
    get,
    path = "/runs/{id}/system",
    tag = "runs",
    params(("id" = String, Path, description = "the run's id")),
    responses((status = 200, description = "OK", body = Vec<sslab_shared::api::SystemSample>), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn system(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<sslab_shared::api::SystemSample>>> {
    find(&state, &p, &id).await?;
    Ok(Json(state.store.system_samples(&id).await?))
}

/// What the run's workers said, attempt by attempt: where it ran, each
/// epoch, checkpoints, resumes and the end.
#[utoipa::path(
    operation_id = "run_logs",
    get,
    path = "/runs/{id}/logs",
    tag = "runs",
    params(("id" = String, Path, description = "the run's id")),
    responses((status = 200, description = "oldest first, the first 5 000 lines", body = Vec<sslab_shared::worker::RunLogLine>), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
pub(super) async fn logs(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<sslab_shared::worker::RunLogLine>>> {
    find(&state, &p, &id).await?;
    Ok(Json(state.store.run_logs(&id, 5000).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EvaluationsQuery {
    /// `json` (default) or `csv`.
    format: Option<String>,
    /// Only the rows of this re-evaluation job; `training` for the end of training.
    job: Option<String>,
}

/// One row per (layer, probe, metric), as JSON or CSV.
#[utoipa::path(
    operation_id = "run_evaluations",
    get,
    path = "/runs/{id}/evaluations",
    tag = "runs",
    params(("id" = String, Path, description = "the run's id"), EvaluationsQuery),
    responses((status = 200, description = "rows as JSON, or CSV with format=csv", body = Vec<sslab_shared::api::Evaluation>), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn evaluations(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    Query(q): Query<EvaluationsQuery>,
) -> ApiResult<Response> {
    find(&state, &p, &id).await?;
    let job = q
        .job
        .as_deref()
        .map(|j| if j == "training" { "" } else { j });
    let rows = state.store.evaluations(&id, job).await?;
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(rows).into_response()),
        Some("csv") => {
            let out = crate::csv::evaluations(&id, &rows);
            Ok((
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{id}-evaluations.csv\""),
                    ),
                ],
                out,
            )
                .into_response())
        }
        Some(other) => Err(ApiError::BadRequest(format!(
            "unknown format `{other}`; use json or csv"
        ))),
    }
}

/// Queues a re-evaluation of a finished run: another plan, other data, no retraining.
#[utoipa::path(
    operation_id = "evaluate_run",
    post,
    path = "/runs/{id}/evaluate",
    tag = "runs",
    params(("id" = String, Path, description = "the run's id")),
    request_body(content = serde_json::Value, description = "an EvaluationRequest: {\"eval\": {…}}", content_type = "application/json"),
    responses((status = 201, description = "queued", body = sslab_shared::api::EvaluationJob), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 409, description = "conflicts with the object's state", body = sslab_shared::api::ErrorBody), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn evaluate(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    JsonText(body): JsonText,
) -> ApiResult<Response> {
    let run = find(&state, &p, &id).await?;
    let body = if body.trim().is_empty() {
        "{}"
    } else {
        body.as_str()
    };
    let mut request = EvaluationRequest::parse(body, false, &run.spec.layer_names())
        .map_err(ApiError::InvalidSpec)?;
    if let Some(data) = &mut request.eval.data {
        super::check_server_data(&state, &p, data, "eval.data")?;
        state
            .datasets
            .resolve_data(data, "eval.data", p.team())
            .await?;
    }
    if run.status != RunStatus::Succeeded {
        return Err(ApiError::Conflict(format!(
            "run `{id}` is {}; only a run that succeeded has final weights to evaluate",
            run.status.as_str()
        )));
    }
    let job = state
        .store
        .create_evaluation_job(&id, &request, p.actor().as_deref())
        .await?;
    state.wake_workers();
    Ok((
        StatusCode::CREATED,
        [(
            header::LOCATION,
            format!("/api/v1/evaluation-jobs/{}", job.id),
        )],
        Json(job),
    )
        .into_response())
}

#[utoipa::path(
    operation_id = "run_evaluation_jobs",
    get,
    path = "/runs/{id}/evaluation-jobs",
    tag = "runs",
    params(("id" = String, Path, description = "the run's id")),
    responses((status = 200, description = "OK", body = Vec<sslab_shared::api::EvaluationJob>), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn evaluation_jobs(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<EvaluationJob>>> {
    find(&state, &p, &id).await?;
    Ok(Json(state.store.evaluation_jobs(&id).await?))
}

/// The job, if it evaluates a run of `p`'s team.
async fn find_job(state: &AppState, p: &Principal, id: &str) -> ApiResult<EvaluationJob> {
    let missing = || ApiError::NotFound(format!("no evaluation job with id `{id}`"));
    let job = state.store.evaluation_job(id).await?.ok_or_else(missing)?;
    find(state, p, &job.run_id).await.map_err(|_| missing())?;
    Ok(job)
}

#[utoipa::path(
    operation_id = "get_evaluation_job",
    get,
    path = "/evaluation-jobs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "the evaluation job's id")),
    responses((status = 200, description = "OK", body = sslab_shared::api::EvaluationJob), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn evaluation_job(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<EvaluationJob>> {
    Ok(Json(find_job(&state, &p, &id).await?))
}

/// Cancels a queued re-evaluation at once; a running one ends as
/// cancelled, its rows discarded.
#[utoipa::path(
    operation_id = "cancel_evaluation_job",
    post,
    path = "/evaluation-jobs/{id}/cancel",
    tag = "runs",
    params(("id" = String, Path, description = "the evaluation job's id")),
    responses((status = 200, description = "OK", body = sslab_shared::api::EvaluationJob), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 409, description = "conflicts with the object's state", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn cancel_evaluation(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<EvaluationJob>> {
    let missing = || ApiError::NotFound(format!("no evaluation job with id `{id}`"));
    let job = find_job(&state, &p, &id).await?;
    check_may_change(&p, job.created_by.as_deref(), "this evaluation job")?;
    if job.status.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "evaluation job `{id}` has already ended ({})",
            job.status.as_str()
        )));
    }
    state
        .store
        .cancel_evaluation(&id)
        .await?
        .map(Json)
        .ok_or_else(missing)
}

/// The last end-of-epoch weights, as safetensors.
#[utoipa::path(
    operation_id = "run_checkpoint",
    get,
    path = "/runs/{id}/checkpoint",
    tag = "runs",
    params(("id" = String, Path, description = "the run's id")),
    responses((status = 200, description = "safetensors weights", body = Vec<u8>, content_type = "application/octet-stream"), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn checkpoint(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    find(&state, &p, &id).await?;
    let path = state.artifacts.checkpoint(&id);
    state.artifacts.fetch(&path).await?;
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::NotFound(format!(
                "run `{id}` has no checkpoint yet"
            )));
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("reading {}", path.display()))
                .into());
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{id}.safetensors\""),
            ),
        ],
        Body::from(bytes),
    )
        .into_response())
}
