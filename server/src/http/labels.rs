//! `PATCH /runs/{id}`, `/sweeps/{id}`, `/audits/{id}`: name, tags, note,
//! archived; and the `tag` and `archived` filters of their lists.

use axum::Json;
use axum::extract::{Path, State};
use sslab_shared::api::{Audit, Run, Sweep};
use sslab_shared::labels::{LabelUpdate, check_note, check_tags};

use super::authn::JsonText;
use super::{ApiError, ApiResult, AppState, audits, check_may_change, invalid, runs, sweeps};
use crate::auth::Principal;
use crate::store::{LabelFilter, Labelled};

/// The update with its fields checked: a 422 names the first bad one.
async fn checked(state: &AppState, p: &Principal, body: &str) -> ApiResult<LabelUpdate> {
    let mut update: LabelUpdate =
        sslab_shared::error::from_json(body).map_err(ApiError::InvalidSpec)?;
    if let Some(name) = &mut update.name {
        *name = name.trim().to_string();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(invalid("name", "a name has 1 to 200 characters"));
        }
    }
    if let Some(tags) = &update.tags {
        update.tags = Some(check_tags(tags).map_err(|e| invalid("tags", e))?);
    }
    if let Some(note) = &update.note {
        check_note(note).map_err(|e| invalid("note", e))?;
    }
    if let Some(project) = &update.project {
        update.project = Some(super::projects::existing(state, p, project).await?);
    }
    Ok(update)
}

/// `archived=false|true|all` (archived ones are hidden by default).
pub(super) fn archived_filter(asked: Option<&str>) -> ApiResult<Option<bool>> {
    match asked {
        None | Some("") | Some("false") => Ok(Some(false)),
        Some("true") => Ok(Some(true)),
        Some("all") => Ok(None),
        Some(other) => Err(ApiError::BadRequest(format!(
            "archived is true, false or all, got `{other}`"
        ))),
    }
}

/// The filter of a sweeps or audits list.
pub(super) fn label_filter(
    tag: Option<String>,
    project: Option<String>,
    archived: Option<&str>,
) -> ApiResult<LabelFilter> {
    Ok(LabelFilter {
        tag: tag.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()),
        project: project
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()),
        archived: archived_filter(archived)?,
    })
}

async fn apply(state: &AppState, what: Labelled, id: &str, update: &LabelUpdate) -> ApiResult<()> {
    if state.store.update_labels(what, id, update).await? {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("`{id}` was deleted meanwhile")))
    }
}

/// Each field given replaces the stored one: `name`, `tags` (the whole
/// set), `note` (markdown), `archived`, `project` (moves it).
#[utoipa::path(
    operation_id = "update_run",
    patch,
    path = "/runs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "the run's id")),
    request_body(content = sslab_shared::labels::LabelUpdate, content_type = "application/json"),
    responses((status = 200, description = "updated", body = sslab_shared::api::Run), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
pub(super) async fn update_run(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    JsonText(body): JsonText,
) -> ApiResult<Json<Run>> {
    let update = checked(&state, &p, &body).await?;
    let run = runs::find(&state, &p, &id).await?;
    check_may_change(&p, run.created_by.as_deref(), "this run")?;
    apply(&state, Labelled::Run, &id, &update).await?;
    Ok(Json(runs::find(&state, &p, &id).await?))
}

/// As for runs: `name`, `tags`, `note`, `archived`, `project` (moves the
/// sweep with its runs).
#[utoipa::path(
    operation_id = "update_sweep",
    patch,
    path = "/sweeps/{id}",
    tag = "sweeps",
    params(("id" = String, Path, description = "the sweep's id")),
    request_body(content = sslab_shared::labels::LabelUpdate, content_type = "application/json"),
    responses((status = 200, description = "updated", body = sslab_shared::api::Sweep), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
pub(super) async fn update_sweep(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    JsonText(body): JsonText,
) -> ApiResult<Json<Sweep>> {
    let update = checked(&state, &p, &body).await?;
    let sweep = sweeps::find(&state, &p, &id).await?;
    check_may_change(&p, sweep.created_by.as_deref(), "this sweep")?;
    apply(&state, Labelled::Sweep, &id, &update).await?;
    Ok(Json(sweeps::find(&state, &p, &id).await?))
}

/// As for runs: `name`, `tags`, `note`, `archived`, `project`.
#[utoipa::path(
    operation_id = "update_audit",
    patch,
    path = "/audits/{id}",
    tag = "audits",
    params(("id" = String, Path, description = "the audit's id")),
    request_body(content = sslab_shared::labels::LabelUpdate, content_type = "application/json"),
    responses((status = 200, description = "updated", body = sslab_shared::api::Audit), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
pub(super) async fn update_audit(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    JsonText(body): JsonText,
) -> ApiResult<Json<Audit>> {
    let update = checked(&state, &p, &body).await?;
    let audit = audits::find(&state, &p, &id).await?;
    check_may_change(&p, audit.created_by.as_deref(), "this audit")?;
    apply(&state, Labelled::Audit, &id, &update).await?;
    Ok(Json(audits::find(&state, &p, &id).await?))
}
