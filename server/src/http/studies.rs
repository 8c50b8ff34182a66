//! `/studies`: create (every sweep and audit queued at once), list, read,
//! the report computed from the stored results (JSON, Markdown, a chart per
//! finding), and cancel.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use sslab_shared::api::Page;
use sslab_shared::study::{MAX_PARTS, Study, StudyReport, StudySpec};

use super::authn::JsonText;
use super::{ApiError, ApiResult, AppState, check_may_change, idempotency_key, runs};
use crate::auth::Principal;
use crate::store::NewSweep;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/studies", post(create).get(list))
        .route("/studies/{id}", get(read))
        .route("/studies/{id}/report", get(report))
        .route("/studies/{id}/report.md", get(report_md))
        .route("/studies/{id}/charts/{file}", get(chart))
        .route("/studies/{id}/cancel", post(cancel))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct CreateQuery {
    /// The project it goes to (default: `default`); it must exist.
    project: Option<String>,
    /// `true`: queue the study's `[micro]` size, to check it end to end.
    micro: Option<bool>,
}

/// Expands every sweep and audit series first: an invalid part is a 422
/// naming it, and nothing is stored.
#[utoipa::path(
    operation_id = "create_study",
    post,
    path = "/studies",
    tag = "studies",
    params(("Idempotency-Key" = Option<String>, Header, description = "repeat a creating request safely"), CreateQuery),
    request_body(content = serde_json::Value, description = "a StudySpec (recipes/studies/*.toml as JSON)", content_type = "application/json"),
    responses((status = 201, description = "created", body = sslab_shared::study::Study), (status = 200, description = "created earlier with this Idempotency-Key", body = sslab_shared::study::Study), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn create(
    State(state): State<AppState>,
    p: Principal,
    headers: HeaderMap,
    Query(q): Query<CreateQuery>,
    JsonText(body): JsonText,
) -> ApiResult<Response> {
    let mut spec = StudySpec::from_json(&body).map_err(ApiError::InvalidSpec)?;
    if q.micro == Some(true) {
        spec = spec.micro().map_err(ApiError::InvalidSpec)?;
    }
    let place = super::projects::CreateQuery { project: q.project };
    let owner = super::projects::owner_in(&state, &p, &place).await?;
    let mut sweeps = Vec::new();
    for (key, sweep) in &spec.sweeps {
        let within = format!("sweeps.{key}.base.");
        let mut points = sweep
            .expand(MAX_PARTS)
            .map_err(|e| super::invalid(&format!("sweeps.{key}.{}", e.field), e.message))?;
        for point in &mut points {
            super::check_run_data(&state, &p, &point.spec, &within)?;
            state
                .datasets
                .resolve(&mut point.spec, &within, p.team())
                .await?;
        }
        sweeps.push((key.clone(), points));
    }
    let mut audits = Vec::new();
    for (key, series) in &spec.audits {
        let mut points = series
            .expand()
            .map_err(|e| super::invalid(&format!("audits.{key}.{}", e.field), e.message))?;
        let within = format!("audits.{key}.base.run.");
        for point in &mut points {
            super::check_run_data(&state, &p, &point.spec.run, &within)?;
            state
                .datasets
                .resolve(&mut point.spec.run, &within, p.team())
                .await?;
        }
        audits.push((key.clone(), points));
    }
    let new_sweeps: Vec<NewSweep<'_>> = sweeps
        .iter()
        .map(|(key, points)| NewSweep {
            key,
            spec: &spec.sweeps[key],
            points,
        })
        .collect();
    let key = idempotency_key(&headers)?;
    let (study, created) = state
        .store
        .create_study(&spec, &new_sweeps, &audits, &owner, key)
        .await?;
    if created {
        state.wake_workers();
    }
    Ok(super::created(
        created,
        format!("/api/v1/studies/{}", study.id),
        study,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    page_size: Option<usize>,
    page_token: Option<String>,
}

#[utoipa::path(
    operation_id = "list_studies",
    get,
    path = "/studies",
    tag = "studies",
    params(ListQuery),
    responses((status = 200, description = "newest first", body = sslab_shared::api::Page<sslab_shared::study::Study>), (status = 400, description = "bad page size or token", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn list(
    State(state): State<AppState>,
    p: Principal,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Study>>> {
    let page_size = runs::page_size(q.page_size)?;
    runs::check_page_token(q.page_token.as_deref())?;
    Ok(Json(
        state
            .store
            .list_studies(p.team(), page_size, q.page_token.as_deref())
            .await?,
    ))
}

async fn find(state: &AppState, p: &Principal, id: &str) -> ApiResult<Study> {
    state
        .store
        .study(id)
        .await?
        .filter(|s| super::visible(p, &s.team))
        .ok_or_else(|| ApiError::NotFound(format!("no study with id `{id}`")))
}

#[utoipa::path(
    operation_id = "get_study",
    get,
    path = "/studies/{id}",
    tag = "studies",
    params(("id" = String, Path, description = "the study's id")),
    responses((status = 200, description = "OK", body = sslab_shared::study::Study), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn read(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Study>> {
    Ok(Json(find(&state, &p, &id).await?))
}

/// The report of a study the caller may see, from what is stored now;
/// comparisons whose runs have finished are queued first.
async fn current_report(state: &AppState, p: &Principal, id: &str) -> ApiResult<StudyReport> {
    let study = find(state, p, id).await?;
    if crate::study::advance::advance(&state.store, Some(id)).await? {
        state.wake_workers();
    }
    let results = state.store.study_results(id).await?;
    Ok(crate::study::report::report(&study.spec, &results))
}

/// Every finding with its figure (mean ± std over seeds), the verdict
/// against the paper's expected sign, and every run, audit and comparison;
/// parts that failed are named in `problems`.
#[utoipa::path(
    operation_id = "study_report",
    get,
    path = "/studies/{id}/report",
    tag = "studies",
    params(("id" = String, Path, description = "the study's id")),
    responses((status = 200, description = "OK", body = sslab_shared::study::StudyReport), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn report(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<StudyReport>> {
    Ok(Json(current_report(&state, &p, &id).await?))
}

#[utoipa::path(
    operation_id = "study_report_markdown",
    get,
    path = "/studies/{id}/report.md",
    tag = "studies",
    params(("id" = String, Path, description = "the study's id")),
    responses((status = 200, description = "the report as Markdown; charts at charts/finding-N.png", body = String, content_type = "text/markdown"), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn report_md(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let r = current_report(&state, &p, &id).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
        crate::study::markdown(&r),
    )
        .into_response())
}

#[utoipa::path(
    operation_id = "study_chart",
    get,
    path = "/studies/{id}/charts/{file}",
    tag = "studies",
    params(("id" = String, Path, description = "the study's id"), ("file" = String, Path, description = "`finding-N.png`, N from 1")),
    responses((status = 200, description = "the finding's chart", body = Vec<u8>, content_type = "image/png"), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn chart(
    State(state): State<AppState>,
    p: Principal,
    Path((id, file)): Path<(String, String)>,
) -> ApiResult<Response> {
    let r = current_report(&state, &p, &id).await?;
    let finding = file
        .strip_prefix("finding-")
        .and_then(|f| f.strip_suffix(".png"))
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|n| r.findings.get(n.checked_sub(1)?))
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no chart `{file}`; this study has finding-1.png … finding-{}.png",
                r.findings.len()
            ))
        })?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        crate::study::chart::png(finding),
    )
        .into_response())
}

/// Cancels every sweep run, audit and comparison of the study not yet finished.
#[utoipa::path(
    operation_id = "cancel_study",
    post,
    path = "/studies/{id}/cancel",
    tag = "studies",
    params(("id" = String, Path, description = "the study's id")),
    responses((status = 200, description = "OK", body = sslab_shared::study::Study), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn cancel(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Study>> {
    let study = find(&state, &p, &id).await?;
    check_may_change(&p, study.created_by.as_deref(), "this study")?;
    state.store.cancel_study(&id).await?;
    Ok(Json(find(&state, &p, &id).await?))
}
