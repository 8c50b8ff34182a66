//! `PATCH /runs/{id}`: name, tags, note, archived.

use axum::Json;
use axum::extract::{Path, State};
use sslab_shared::api::Run;
use sslab_shared::labels::{RunUpdate, check_note, check_tags};

use super::authn::JsonText;
use super::runs::find;
use super::{ApiError, ApiResult, AppState, check_may_change, invalid};
use crate::auth::Principal;

/// Each field given replaces the stored one: `name`, `tags` (the whole
/// set), `note` (markdown), `archived`.
#[utoipa::path(
    operation_id = "update_run",
    patch,
    path = "/runs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "the run's id")),
    request_body(content = sslab_shared::labels::RunUpdate, content_type = "application/json"),
    responses((status = 200, description = "updated", body = sslab_shared::api::Run), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
pub(super) async fn update(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    JsonText(body): JsonText,
) -> ApiResult<Json<Run>> {
    let mut update: RunUpdate =
        sslab_shared::error::from_json(&body).map_err(ApiError::InvalidSpec)?;
    let run = find(&state, &p, &id).await?;
    check_may_change(&p, run.created_by.as_deref(), "this run")?;
    if let Some(name) = &mut update.name {
        *name = name.trim().to_string();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(invalid("name", "a run's name has 1 to 200 characters"));
        }
    }
    if let Some(tags) = &update.tags {
        update.tags = Some(check_tags(tags).map_err(|e| invalid("tags", e))?);
    }
    if let Some(note) = &update.note {
        check_note(note).map_err(|e| invalid("note", e))?;
    }
    state
        .store
        .update_run(&id, &update)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no run with id `{id}`")))
}
