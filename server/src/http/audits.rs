//! `/audits`: déjà vu audits as jobs of the queue: create from an
//! `AuditSpec`, list, read, cancel, and the report (JSON, or the per-image
//! rows as CSV).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sslab_shared::SpecError;
use sslab_shared::api::{Audit, RunStatus};
use sslab_shared::audit::{AuditReport, AuditRuns, AuditSpec, SplitSpec};
use sslab_shared::spec::{DejavuPart, SubsetSpec};

use super::authn::JsonText;
use super::{ApiError, ApiResult, AppState, check_may_change};
use crate::auth::Principal;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/audits", post(create).get(list))
        .route(
            "/audits/{id}",
            get(read)
                .patch(super::labels::update_audit)
                .delete(super::deletes::audit),
        )
        .route("/audits/{id}/cancel", post(cancel))
        .route("/audits/{id}/report", get(report))
        .route("/audits/{id}/examples.csv", get(examples))
        .route("/audits/{id}/images/{file}", get(image))
        .route("/audits/{id}/reconstruction.png", get(reconstruction))
}

/// Checked like a run (422 naming the field), with a registered data set
/// looked up first.
#[utoipa::path(
    operation_id = "create_audit",
    post,
    path = "/audits",
    tag = "audits",
    params(super::projects::CreateQuery),
    request_body(content = serde_json::Value, description = "an AuditSpec (docs/api.md)", content_type = "application/json"),
    responses((status = 201, description = "queued", body = sslab_shared::api::Audit), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn create(
    State(state): State<AppState>,
    p: Principal,
    Query(place): Query<super::projects::CreateQuery>,
    JsonText(body): JsonText,
) -> ApiResult<Response> {
    let mut spec = AuditSpec::from_json(&body).map_err(ApiError::InvalidSpec)?;
    let owner = super::projects::owner_in(&state, &p, &place).await?;
    match spec.runs.clone() {
        Some(runs) => from_runs(&state, &p, &mut spec, &runs).await?,
        None => {
            super::check_run_data(&state, &p, &spec.run, "run.")?;
            state
                .datasets
                .resolve(&mut spec.run, "run.", p.team())
                .await?
        }
    }
    spec.validate().map_err(ApiError::InvalidSpec)?;
    let audit = state.store.create_audit(&spec, &owner).await?;
    state.wake_workers();
    let location = format!("/api/v1/audits/{}", audit.id);
    Ok(super::created(true, location, audit))
}

/// Fills `run` and `split` from two finished runs trained on parts A and B
/// of one déjà vu partition with the same spec; 422 on `runs.…` otherwise.
async fn from_runs(
    state: &AppState,
    principal: &Principal,
    spec: &mut AuditSpec,
    runs: &AuditRuns,
) -> ApiResult<()> {
    let bad = |field: &str, message: String| ApiError::InvalidSpec(SpecError::new(field, message));
    let mut found = Vec::new();
    for (field, id, part) in [
        ("runs.target", &runs.target, DejavuPart::A),
        ("runs.reference", &runs.reference, DejavuPart::B),
    ] {
        let run = state
            .store
            .run(id)
            .await?
            .filter(|r| super::visible(principal, &r.team))
            .ok_or_else(|| bad(field, format!("no run with id `{id}`")))?;
        if run.status != RunStatus::Succeeded {
            return Err(bad(
                field,
                format!(
                    "run `{id}` is {}; only a finished run can be audited",
                    run.status.as_str()
                ),
            ));
        }
        match run.spec.subset {
            Some(SubsetSpec::Dejavu {
                part: p,
                per_class,
                public_per_class,
                seed,
            }) if p == part => found.push((
                run.spec.clone(),
                SplitSpec {
                    per_class,
                    public_per_class,
                    seed,
                },
            )),
            _ => {
                return Err(bad(
                    field,
                    format!(
                        "run `{id}` was not trained on part {} of a déjà vu partition (subset kind \"dejavu\", part \"{}\")",
                        if part == DejavuPart::A { "A" } else { "B" },
                        if part == DejavuPart::A { "a" } else { "b" }
                    ),
                ));
            }
        }
    }
    let (reference, reference_split) = found.pop().expect("two runs");
    let (target, split) = found.pop().expect("two runs");
    let without_part = |s: &sslab_shared::RunSpec| {
        let mut s = s.clone();
        s.subset = None;
        s.name = String::new();
        s
    };
    if without_part(&target) != without_part(&reference) || split != reference_split {
        return Err(bad(
            "runs.reference",
            "trained with another spec or partition than the target; an audit compares one spec trained on A and on B".into(),
        ));
    }
    spec.run = without_part(&target);
    spec.run.name = target.name.clone();
    spec.split = split;
    Ok(())
}

#[utoipa::path(
    operation_id = "list_audits",
    get,
    path = "/audits",
    tag = "audits",
    params(ListQuery),
    responses((status = 200, description = "newest first (the last 200); archived ones only when asked for", body = Vec<sslab_shared::api::Audit>), (status = 400, description = "bad archived", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn list(
    State(state): State<AppState>,
    p: Principal,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<Audit>>> {
    let filter = super::labels::label_filter(q.tag, q.project, q.archived.as_deref())?;
    Ok(Json(state.store.list_audits(p.team(), 200, &filter).await?))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only the audits with this tag.
    tag: Option<String>,
    /// Only the audits of this project.
    project: Option<String>,
    /// `false` (default: archived audits hidden), `true` or `all`.
    archived: Option<String>,
}

pub(super) async fn find(state: &AppState, p: &Principal, id: &str) -> ApiResult<Audit> {
    state
        .store
        .audit(id)
        .await?
        .filter(|a| super::visible(p, &a.team))
        .ok_or_else(|| ApiError::NotFound(format!("no audit with id `{id}`")))
}

#[utoipa::path(
    operation_id = "get_audit",
    get,
    path = "/audits/{id}",
    tag = "audits",
    params(("id" = String, Path, description = "the audit's id")),
    responses((status = 200, description = "OK", body = sslab_shared::api::Audit), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn read(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Audit>> {
    Ok(Json(find(&state, &p, &id).await?))
}

#[utoipa::path(
    operation_id = "cancel_audit",
    post,
    path = "/audits/{id}/cancel",
    tag = "audits",
    params(("id" = String, Path, description = "the audit's id")),
    responses((status = 200, description = "OK", body = sslab_shared::api::Audit), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 409, description = "conflicts with the object's state", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn cancel(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Audit>> {
    let audit = find(&state, &p, &id).await?;
    check_may_change(&p, audit.created_by.as_deref(), "this audit")?;
    if audit.status.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "audit `{id}` has already ended ({})",
            audit.status.as_str()
        )));
    }
    let audit = state.store.cancel_audit(&id).await?;
    audit
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no audit with id `{id}`")))
}

async fn finished_report(state: &AppState, p: &Principal, id: &str) -> ApiResult<AuditReport> {
    let audit = find(state, p, id).await?;
    if audit.status != RunStatus::Succeeded {
        return Err(ApiError::Conflict(format!(
            "audit `{id}` is {}; its report comes when it succeeds",
            audit.status.as_str()
        )));
    }
    state
        .store
        .audit_report(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("audit `{id}` has no report")))
}

#[utoipa::path(
    operation_id = "audit_report",
    get,
    path = "/audits/{id}/report",
    tag = "audits",
    params(("id" = String, Path, description = "the audit's id")),
    responses((status = 200, description = "the AuditReport", body = serde_json::Value), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 409, description = "conflicts with the object's state", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn report(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<AuditReport>> {
    Ok(Json(finished_report(&state, &p, &id).await?))
}

/// `{index}.png`: an image of the gallery (a memorized image or one of its
/// nearest public images), by pool index.
#[utoipa::path(
    operation_id = "audit_image",
    get,
    path = "/audits/{id}/images/{file}",
    tag = "audits",
    params(("id" = String, Path, description = "the audit's id"), ("file" = String, Path, description = "`{index}.png`")),
    responses((status = 200, description = "a PNG", body = Vec<u8>, content_type = "image/png"), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn image(
    State(state): State<AppState>,
    p: Principal,
    Path((id, file)): Path<(String, String)>,
) -> ApiResult<Response> {
    find(&state, &p, &id).await?;
    let index: usize = file
        .strip_suffix(".png")
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| ApiError::NotFound(format!("no image `{file}`")))?;
    let path = state
        .artifacts
        .audit_dir(&id)
        .join("images")
        .join(format!("{index}.png"));
    state.artifacts.fetch(&path).await?;
    let png = tokio::fs::read(&path)
        .await
        .map_err(|_| ApiError::NotFound(format!("audit `{id}` keeps no image {index}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        png,
    )
        .into_response())
}

/// What both models draw from the attacked images' crops (rows: crop,
/// image, the target's drawings, the reference's); only for an audit whose
/// spec has `reconstruct`.
#[utoipa::path(
    operation_id = "audit_reconstruction",
    get,
    path = "/audits/{id}/reconstruction.png",
    tag = "audits",
    params(("id" = String, Path, description = "the audit's id")),
    responses((status = 200, description = "a PNG", body = Vec<u8>, content_type = "image/png"), (status = 404, description = "not found, another team's, or an audit without reconstructions", body = sslab_shared::api::ErrorBody), (status = 409, description = "conflicts with the object's state", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn reconstruction(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let report = finished_report(&state, &p, &id).await?;
    if report.reconstruction.is_none() {
        return Err(ApiError::NotFound(format!(
            "audit `{id}` drew no reconstructions: its spec has no `reconstruct`"
        )));
    }
    let path = state
        .artifacts
        .audit_dir(&id)
        .join(crate::audit_job::RECONSTRUCTION);
    state.artifacts.fetch(&path).await?;
    let png = tokio::fs::read(&path)
        .await
        .map_err(|_| ApiError::NotFound(format!("audit `{id}` keeps no reconstruction.png")))?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

#[utoipa::path(
    operation_id = "audit_examples",
    get,
    path = "/audits/{id}/examples.csv",
    tag = "audits",
    params(("id" = String, Path, description = "the audit's id")),
    responses((status = 200, description = "one row per attacked image", body = String, content_type = "text/csv"), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 409, description = "conflicts with the object's state", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn examples(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let report = finished_report(&state, &p, &id).await?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"audit-{id}-examples.csv\""),
            ),
        ],
        crate::csv::examples(&report),
    )
        .into_response())
}
