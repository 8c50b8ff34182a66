//! `/sweeps`: create (expand into runs), list, read, summary (JSON or CSV),
//! cancel and re-queue as a whole; `/compare`: runs side by side.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use sslab_shared::api::{
    Comparison, MetricPoint, Page, RunStatus, SpecDifference, Sweep, SweepSummary,
};
use sslab_shared::sweep::{SweepSpec, canonical_path, flatten};

use super::authn::JsonText;
use super::{ApiError, ApiResult, AppState, check_may_change, idempotency_key, runs};
use crate::auth::Principal;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/sweeps", post(create).get(list))
        .route(
            "/sweeps/{id}",
            get(read)
                .patch(super::labels::update_sweep)
                .delete(super::deletes::sweep),
        )
        .route("/sweeps/{id}/summary", get(summary))
        .route("/sweeps/{id}/cancel", post(cancel))
        .route("/sweeps/{id}/requeue", post(requeue))
        .route("/compare", get(compare))
}

/// Expands the spec first: an invalid axis, value or a count over the cap
/// is a 422 and nothing is stored.
#[utoipa::path(
    operation_id = "create_sweep",
    post,
    path = "/sweeps",
    tag = "sweeps",
    params(("Idempotency-Key" = Option<String>, Header, description = "repeat a creating request safely"), super::projects::CreateQuery),
    request_body(content = serde_json::Value, description = "a SweepSpec (docs/api.md)", content_type = "application/json"),
    responses((status = 201, description = "created", body = sslab_shared::api::Sweep), (status = 200, description = "created earlier with this Idempotency-Key", body = sslab_shared::api::Sweep), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn create(
    State(state): State<AppState>,
    p: Principal,
    headers: HeaderMap,
    Query(place): Query<super::projects::CreateQuery>,
    JsonText(body): JsonText,
) -> ApiResult<Response> {
    let mut spec = SweepSpec::from_json(&body).map_err(ApiError::InvalidSpec)?;
    let owner = super::projects::owner_in(&state, &p, &place).await?;
    super::check_run_data(&state, &p, &spec.base, "base.")?;
    state
        .datasets
        .resolve(&mut spec.base, "base.", p.team())
        .await?;
    let mut points = spec
        .expand(state.max_sweep_runs)
        .map_err(ApiError::InvalidSpec)?;
    let key = idempotency_key(&headers)?;
    // Axes may name data too (a folder, or a registered name, or what a
    // name was resolved to): every expanded run is checked and its names
    // looked up again, so that no axis reaches past the team's data.
    for point in &mut points {
        super::check_run_data(&state, &p, &point.spec, "base.")?;
        state
            .datasets
            .resolve(&mut point.spec, "base.", p.team())
            .await?;
    }
    let (sweep, created) = state
        .store
        .create_sweep(&spec, &points, &owner, key)
        .await?;
    if created {
        state.wake_workers();
    }
    let location = format!("/api/v1/sweeps/{}", sweep.id);
    Ok(super::created(created, location, sweep))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    page_size: Option<usize>,
    page_token: Option<String>,
    /// Only the sweeps with this tag.
    tag: Option<String>,
    /// Only the sweeps of this project.
    project: Option<String>,
    /// `false` (default: archived sweeps hidden), `true` or `all`.
    archived: Option<String>,
}

#[utoipa::path(
    operation_id = "list_sweeps",
    get,
    path = "/sweeps",
    tag = "sweeps",
    params(ListQuery),
    responses((status = 200, description = "newest first; archived ones only when asked for", body = sslab_shared::api::Page<sslab_shared::api::Sweep>), (status = 400, description = "bad page size, token or archived", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn list(
    State(state): State<AppState>,
    p: Principal,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Sweep>>> {
    let page_size = runs::page_size(q.page_size)?;
    runs::check_page_token(q.page_token.as_deref())?;
    let filter = super::labels::label_filter(q.tag, q.project, q.archived.as_deref())?;
    Ok(Json(
        state
            .store
            .list_sweeps(p.team(), page_size, q.page_token.as_deref(), &filter)
            .await?,
    ))
}

pub(super) async fn find(state: &AppState, p: &Principal, id: &str) -> ApiResult<Sweep> {
    state
        .store
        .sweep(id)
        .await?
        .filter(|s| super::visible(p, &s.team))
        .ok_or_else(|| ApiError::NotFound(format!("no sweep with id `{id}`")))
}

#[utoipa::path(
    operation_id = "get_sweep",
    get,
    path = "/sweeps/{id}",
    tag = "sweeps",
    params(("id" = String, Path, description = "the sweep's id")),
    responses((status = 200, description = "OK", body = sslab_shared::api::Sweep), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn read(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Sweep>> {
    Ok(Json(find(&state, &p, &id).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SummaryQuery {
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// Everything the sweep page draws, in one response; or the CSV export.
#[utoipa::path(
    operation_id = "sweep_summary",
    get,
    path = "/sweeps/{id}/summary",
    tag = "sweeps",
    params(("id" = String, Path, description = "the sweep's id"), SummaryQuery),
    responses((status = 200, description = "JSON, or CSV with format=csv", body = sslab_shared::api::SweepSummary), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn summary(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    Query(q): Query<SummaryQuery>,
) -> ApiResult<Response> {
    let sweep = find(&state, &p, &id).await?;
    let runs = state.store.sweep_runs(&id).await?;
    let axes: Vec<String> = sweep
        .spec
        .swept_axes()
        .map(|a| canonical_path(&a.path))
        .collect();
    match q.format.as_deref() {
        None | Some("json") => {
            let (aggregates, excluded) = crate::sweep::aggregate(&axes, &runs);
            Ok(Json(SweepSummary {
                sweep,
                axes,
                runs,
                aggregates,
                excluded,
            })
            .into_response())
        }
        Some("csv") => Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{id}-summary.csv\""),
                ),
            ],
            crate::sweep::summary_csv(&axes, &runs),
        )
            .into_response()),
        Some(other) => Err(ApiError::BadRequest(format!(
            "unknown format `{other}`; use json or csv"
        ))),
    }
}

#[utoipa::path(
    operation_id = "cancel_sweep",
    post,
    path = "/sweeps/{id}/cancel",
    tag = "sweeps",
    params(("id" = String, Path, description = "the sweep's id")),
    responses((status = 200, description = "OK", body = sslab_shared::api::Sweep), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn cancel(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Sweep>> {
    let sweep = find(&state, &p, &id).await?;
    check_may_change(&p, sweep.created_by.as_deref(), "this sweep")?;
    state.store.cancel_sweep(&id).await?;
    Ok(Json(find(&state, &p, &id).await?))
}

/// Failed and cancelled runs start over; the others are left alone.
#[utoipa::path(
    operation_id = "requeue_sweep",
    post,
    path = "/sweeps/{id}/requeue",
    tag = "sweeps",
    params(("id" = String, Path, description = "the sweep's id")),
    responses((status = 200, description = "OK", body = sslab_shared::api::Sweep), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn requeue(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Sweep>> {
    let sweep = find(&state, &p, &id).await?;
    check_may_change(&p, sweep.created_by.as_deref(), "this sweep")?;
    // The runs start over: their earlier files go first, so that no new
    // attempt resumes from them.
    for run in state.store.sweep_runs(&id).await? {
        if matches!(run.status, RunStatus::Failed | RunStatus::Cancelled) {
            let dir = state.artifacts.run_dir(&run.id);
            if let Err(e) = tokio::fs::remove_dir_all(&dir).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(anyhow::Error::new(e)
                    .context(format!("removing {}", dir.display()))
                    .into());
            }
            state.artifacts.forget_dir(&dir).await?;
        }
    }
    if state.store.requeue_sweep(&id).await? > 0 {
        state.wake_workers();
    }
    Ok(Json(find(&state, &p, &id).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct CompareQuery {
    /// Run ids joined by commas.
    runs: String,
    /// Loss points kept per run (evenly thinned); default 500.
    max_points: Option<usize>,
}

const MAX_COMPARED: usize = 20;

#[utoipa::path(
    operation_id = "compare_runs",
    get,
    path = "/compare",
    tag = "runs",
    params(CompareQuery),
    responses((status = 200, description = "OK", body = sslab_shared::api::Comparison), (status = 400, description = "no or too many runs", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn compare(
    State(state): State<AppState>,
    p: Principal,
    Query(q): Query<CompareQuery>,
) -> ApiResult<Json<Comparison>> {
    let ids: Vec<&str> = q
        .runs
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if ids.is_empty() || ids.len() > MAX_COMPARED {
        return Err(ApiError::BadRequest(format!(
            "compare 1 to {MAX_COMPARED} runs, got {}",
            ids.len()
        )));
    }
    let max_points = q.max_points.unwrap_or(500).clamp(2, 100_000);
    let mut out = Comparison {
        runs: Vec::new(),
        metrics: Vec::new(),
        evaluations: Vec::new(),
        spec_diff: Vec::new(),
    };
    for id in &ids {
        let run = runs::find(&state, &p, id).await?;
        let points = state.store.metrics(id, 0, 1_000_000).await?;
        out.metrics.push(thin(points, max_points));
        out.evaluations
            .push(state.store.evaluations(id, Some("")).await?);
        out.runs.push(run);
    }
    out.spec_diff = spec_diff(&out.runs);
    Ok(Json(out))
}

/// Every `stride`-th point, and always the last.
fn thin(points: Vec<MetricPoint>, max_points: usize) -> Vec<MetricPoint> {
    if points.len() <= max_points {
        return points;
    }
    let stride = points.len().div_ceil(max_points - 1);
    let last = points.len() - 1;
    points
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % stride == 0 || *i == last)
        .map(|(_, p)| p)
        .collect()
}

/// The spec fields whose values are not the same in every run (names aside).
fn spec_diff(runs: &[sslab_shared::api::Run]) -> Vec<SpecDifference> {
    let flat: Vec<Vec<(String, serde_json::Value)>> = runs
        .iter()
        .map(|r| flatten(&serde_json::to_value(&r.spec).unwrap_or_default()))
        .collect();
    let mut paths: Vec<String> = flat.iter().flatten().map(|(p, _)| p.clone()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter(|p| p != "name")
        .filter_map(|path| {
            let values: Vec<serde_json::Value> = flat
                .iter()
                .map(|f| {
                    f.iter()
                        .find(|(p, _)| *p == path)
                        .map(|(_, v)| v.clone())
                        .unwrap_or(serde_json::Value::Null)
                })
                .collect();
            values
                .iter()
                .any(|v| *v != values[0])
                .then_some(SpecDifference { path, values })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_the_ends_and_the_budget() {
        let points: Vec<MetricPoint> = (1..=1000)
            .map(|step| MetricPoint {
                step,
                epoch: 0,
                loss: 1.0,
                lr: 0.1,
                images_per_sec: 1.0,
                data_wait: None,
                online_probe_acc: None,
            })
            .collect();
        let t = thin(points, 100);
        assert!(t.len() <= 100, "{}", t.len());
        assert_eq!(t.first().unwrap().step, 1);
        assert_eq!(t.last().unwrap().step, 1000);
    }
}
