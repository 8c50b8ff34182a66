//! `PATCH /runs/{id}` (name, tags, note, archived) and `DELETE /runs/{id}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use sslab_shared::SpecError;
use sslab_shared::api::Run;
use sslab_shared::labels::{RunUpdate, check_note, check_tags};

use super::authn::JsonText;
use super::runs::find;
use super::{ApiError, ApiResult, AppState, check_may_change};
use crate::auth::Principal;
use crate::store::Deleted;

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidSpec(SpecError::new(field, message.into()))
}

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

/// Deletes the run with everything stored for it (metrics, evaluations,
/// logs, checkpoint and files). A queued or running run must be cancelled
/// first; a run that an export job, CKA job or demo reads is kept (409,
/// naming them).
#[utoipa::path(
    operation_id = "delete_run",
    delete,
    path = "/runs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "the run's id")),
    responses((status = 204, description = "deleted"), (status = 409, description = "queued, running, or still used", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, already deleted, or another team's", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
pub(super) async fn delete(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let run = find(&state, &p, &id).await?;
    check_may_change(&p, run.created_by.as_deref(), "this run")?;
    let busy = || {
        ApiError::Conflict(format!(
            "run `{id}` is queued or running; cancel it before deleting it"
        ))
    };
    if !run.status.is_terminal() {
        return Err(busy());
    }
    let users = state.store.run_users(&id).await?;
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!(
            "run `{id}` is still used by {}; delete those first",
            users.join(", ")
        )));
    }
    // The files move aside first (one rename), so that a failed delete of
    // the rows can put them back and a deleted run leaves nothing behind.
    let dir = state.artifacts.run_dir(&id);
    let aside = dir.with_file_name(format!(".deleting-{id}"));
    let moved = match tokio::fs::rename(&dir, &aside).await {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("moving {} aside", dir.display()))
                .into());
        }
    };
    let restore = || async {
        if moved {
            let _ = tokio::fs::rename(&aside, &dir).await;
        }
    };
    let outcome = match state.store.delete_run(&id).await {
        Ok(o) => o,
        Err(e) => {
            restore().await;
            return Err(e.into());
        }
    };
    match outcome {
        Deleted::Yes => {
            if moved && let Err(e) = tokio::fs::remove_dir_all(&aside).await {
                tracing::warn!(run = %id, "deleted run's files stay at {}: {e}", aside.display());
            }
            tracing::info!(run = %id, "run deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        Deleted::Busy => {
            restore().await;
            Err(busy())
        }
        // Another request deleted it meanwhile (and its files, or will).
        Deleted::Gone => Err(ApiError::NotFound(format!("run `{id}` is already deleted"))),
    }
}
