//! `DELETE` for runs, sweeps, audits and data sets: the rows and the files
//! go together, and nothing is deleted while it is queued, running, or
//! still used by something else (409, naming it).

use std::path::PathBuf;

use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::{ApiError, ApiResult, AppState, check_may_change};
use crate::auth::Principal;
use crate::store::Deleted;

fn still_used(what: &str, users: &[String]) -> ApiResult<()> {
    if users.is_empty() {
        return Ok(());
    }
    Err(ApiError::Conflict(format!(
        "{what} is still used by {}; delete those first",
        users.join(", ")
    )))
}

/// Moves `dirs` aside (one rename each), runs `rows`, then removes them —
/// or, when the rows stay, puts them back: a delete never leaves rows
/// without files or files without rows. Rows another request deleted
/// meanwhile (`Gone`) leave nothing to put back for.
async fn with_files_aside(
    artifacts: &crate::artifacts::Artifacts,
    dirs: Vec<PathBuf>,
    rows: impl Future<Output = crate::store::Result<Deleted>>,
) -> ApiResult<Deleted> {
    let mut moved = Vec::new();
    let mut failed = None;
    for dir in dirs.iter().cloned() {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        // Unique, so that two deletes at once never rename onto each other.
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let aside = dir.with_file_name(format!(".deleting-{name}-{tag}"));
        match tokio::fs::rename(&dir, &aside).await {
            Ok(()) => moved.push((dir, aside)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                failed =
                    Some(anyhow::Error::new(e).context(format!("moving {} aside", dir.display())));
                break;
            }
        }
    }
    let outcome = match failed {
        Some(e) => Err(ApiError::from(e)),
        None => rows.await.map_err(ApiError::from),
    };
    for (dir, aside) in moved {
        if matches!(outcome, Ok(Deleted::Yes | Deleted::Gone)) {
            if let Err(e) = tokio::fs::remove_dir_all(&aside).await {
                tracing::warn!("deleted files stay at {}: {e}", aside.display());
            }
        } else if let Err(e) = tokio::fs::rename(&aside, &dir).await {
            tracing::error!("could not put {} back: {e}", dir.display());
        }
    }
    // The rows are gone, so nothing reads the stored copies any more.
    if matches!(outcome, Ok(Deleted::Yes)) {
        for dir in &dirs {
            if let Err(e) = artifacts.forget_dir(dir).await {
                tracing::warn!("stored files of {} stay: {e:#}", dir.display());
            }
        }
    }
    outcome
}

/// `Deleted` as an answer; `busy` and `gone` say why not.
fn answer(
    outcome: Deleted,
    busy: impl FnOnce() -> ApiError,
    gone: String,
) -> ApiResult<StatusCode> {
    match outcome {
        Deleted::Yes => Ok(StatusCode::NO_CONTENT),
        Deleted::Busy => Err(busy()),
        // Another request deleted it meanwhile.
        Deleted::Gone => Err(ApiError::NotFound(gone)),
    }
}

/// Deletes the run with everything stored for it (metrics, evaluations,
/// jobs, log, checkpoint and files). A queued or running run must be
/// cancelled first; a run that an audit, export job, CKA job or demo reads
/// is kept.
#[utoipa::path(
    operation_id = "delete_run",
    delete,
    path = "/runs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "the run's id")),
    responses((status = 204, description = "deleted"), (status = 409, description = "queued, running, or still used (the answer names what uses it)", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, already deleted, or another team's", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
pub(super) async fn run(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let run = super::runs::find(&state, &p, &id).await?;
    check_may_change(&p, run.created_by.as_deref(), "this run")?;
    let busy = || {
        ApiError::Conflict(format!(
            "run `{id}` is queued or running; cancel it before deleting it"
        ))
    };
    if !run.status.is_terminal() {
        return Err(busy());
    }
    still_used(
        &format!("run `{id}`"),
        &state.store.users("run", &id).await?,
    )?;
    let dirs = vec![state.artifacts.run_dir(&id)];
    let outcome = with_files_aside(&state.artifacts, dirs, state.store.delete_run(&id)).await?;
    tracing::info!(run = %id, ?outcome, "delete");
    answer(outcome, busy, format!("run `{id}` is already deleted"))
}

/// Deletes the sweep and all its runs, with their files; refused while one
/// of its runs is queued or running (cancel the sweep first) or still used.
#[utoipa::path(
    operation_id = "delete_sweep",
    delete,
    path = "/sweeps/{id}",
    tag = "sweeps",
    params(("id" = String, Path, description = "the sweep's id")),
    responses((status = 204, description = "deleted with its runs"), (status = 409, description = "a run is queued, running or still used", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, already deleted, or another team's", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
pub(super) async fn sweep(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let sweep = super::sweeps::find(&state, &p, &id).await?;
    check_may_change(&p, sweep.created_by.as_deref(), "this sweep")?;
    let runs = state.store.sweep_runs(&id).await?;
    let busy = || {
        ApiError::Conflict(format!(
            "sweep `{id}` has queued or running runs; cancel the sweep before deleting it"
        ))
    };
    if runs.iter().any(|r| !r.status.is_terminal()) {
        return Err(busy());
    }
    let mut users = Vec::new();
    for r in &runs {
        users.extend(state.store.users("run", &r.id).await?);
    }
    still_used(&format!("a run of sweep `{id}`"), &users)?;
    let dirs = runs
        .iter()
        .map(|r| state.artifacts.run_dir(&r.id))
        .collect();
    let outcome = with_files_aside(&state.artifacts, dirs, state.store.delete_sweep(&id)).await?;
    tracing::info!(sweep = %id, runs = runs.len(), ?outcome, "delete");
    answer(outcome, busy, format!("sweep `{id}` is already deleted"))
}

/// Deletes the audit, its report and its files; refused while it is queued
/// or running, or while an export job or demo uses it.
#[utoipa::path(
    operation_id = "delete_audit",
    delete,
    path = "/audits/{id}",
    tag = "audits",
    params(("id" = String, Path, description = "the audit's id")),
    responses((status = 204, description = "deleted"), (status = 409, description = "queued, running, or still used", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, already deleted, or another team's", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
pub(super) async fn audit(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let audit = super::audits::find(&state, &p, &id).await?;
    check_may_change(&p, audit.created_by.as_deref(), "this audit")?;
    let busy = || {
        ApiError::Conflict(format!(
            "audit `{id}` is queued or running; cancel it before deleting it"
        ))
    };
    if !audit.status.is_terminal() {
        return Err(busy());
    }
    still_used(
        &format!("audit `{id}`"),
        &state.store.users("audit", &id).await?,
    )?;
    let dirs = vec![state.artifacts.audit_dir(&id)];
    let outcome = with_files_aside(&state.artifacts, dirs, state.store.delete_audit(&id)).await?;
    tracing::info!(audit = %id, ?outcome, "delete");
    answer(outcome, busy, format!("audit `{id}` is already deleted"))
}

/// Unregisters the data set and removes its stored files; refused while a
/// run, sweep, audit or CKA job of the team was made from it.
#[utoipa::path(
    operation_id = "delete_dataset",
    delete,
    path = "/datasets/{name}",
    tag = "datasets",
    params(("name" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 409, description = "still used (the answer names what uses it)", body = sslab_shared::api::ErrorBody), (status = 404, description = "not found, already deleted, or another team's", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
pub(super) async fn dataset(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let d = super::datasets::find(&state, &p, &name).await?;
    let by = state.store.dataset_created_by(p.team(), &name).await?;
    check_may_change(&p, by.as_deref(), "this data set")?;
    let users = state.store.dataset_users(p.team(), &name, &d.hash).await?;
    still_used(&format!("data set `{name}`"), &users)?;
    let dirs = vec![state.datasets.folder(&d)];
    let team = p.team().to_string();
    let outcome = with_files_aside(
        &state.artifacts,
        dirs,
        state.store.delete_dataset(&team, &name),
    )
    .await?;
    tracing::info!(dataset = %name, ?outcome, "delete");
    answer(
        outcome,
        || ApiError::Conflict(format!("data set `{name}` is in use")),
        format!("data set `{name}` is already deleted"),
    )
}
