//! `/projects`: a team's projects; and the `project` of creating requests.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get};
use serde::Deserialize;
use sslab_shared::project::{
    DEFAULT_PROJECT, NewProject, Project, check_project_description, check_project_name,
};

use super::authn::JsonText;
use super::{ApiError, ApiResult, AppState, check_may_change, invalid, owner};
use crate::auth::Principal;
use crate::store::Owner;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/projects", get(list).post(create))
        .route("/projects/{name}", delete(remove))
}

/// `?project=` of a creating request (`POST /runs`, `/sweeps`, `/audits`).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct CreateQuery {
    /// The project it goes to (default: `default`); it must exist.
    pub project: Option<String>,
}

/// A project of `p`'s team, checked: a 422 on `project` otherwise.
pub(super) async fn existing(state: &AppState, p: &Principal, asked: &str) -> ApiResult<String> {
    let name = check_project_name(asked).map_err(|e| invalid("project", e))?;
    if !state.store.project_exists(p.team(), &name).await? {
        return Err(invalid(
            "project",
            format!("this team has no project `{name}`; create it with POST /api/v1/projects"),
        ));
    }
    Ok(name)
}

/// Who owns what `p` creates, and in which project.
pub(super) async fn owner_in(state: &AppState, p: &Principal, q: &CreateQuery) -> ApiResult<Owner> {
    let mut o = owner(p);
    if let Some(asked) = q.project.as_deref().filter(|s| !s.trim().is_empty()) {
        o.project = existing(state, p, asked).await?;
    }
    Ok(o)
}

/// The team's projects, `default` first, with how many runs, sweeps and
/// audits each holds.
#[utoipa::path(
    operation_id = "list_projects",
    get,
    path = "/projects",
    tag = "projects",
    responses((status = 200, description = "OK", body = Vec<sslab_shared::project::Project>), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
pub(super) async fn list(
    State(state): State<AppState>,
    p: Principal,
) -> ApiResult<Json<Vec<Project>>> {
    Ok(Json(state.store.list_projects(p.team()).await?))
}

#[utoipa::path(
    operation_id = "create_project",
    post,
    path = "/projects",
    tag = "projects",
    request_body = sslab_shared::project::NewProject,
    responses((status = 201, description = "created", body = sslab_shared::project::Project), (status = 409, description = "the team has a project of that name", body = sslab_shared::api::ErrorBody), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
pub(super) async fn create(
    State(state): State<AppState>,
    p: Principal,
    JsonText(body): JsonText,
) -> ApiResult<Response> {
    let mut new: NewProject =
        sslab_shared::error::from_json(&body).map_err(ApiError::InvalidSpec)?;
    new.name = check_project_name(&new.name).map_err(|e| invalid("name", e))?;
    check_project_description(&new.description).map_err(|e| invalid("description", e))?;
    let created = state
        .store
        .create_project(p.team(), p.actor().as_deref(), &new)
        .await?
        .ok_or_else(|| {
            ApiError::Conflict(format!("this team already has a project `{}`", new.name))
        })?;
    let location = format!("/api/v1/projects/{}", created.name);
    Ok(super::created(true, location, created))
}

/// Deletes an empty project; one that holds anything is refused, naming it.
#[utoipa::path(
    operation_id = "delete_project",
    delete,
    path = "/projects/{name}",
    tag = "projects",
    params(("name" = String, Path, description = "the project's name")),
    responses((status = 204, description = "deleted"), (status = 404, description = "no such project", body = sslab_shared::api::ErrorBody), (status = 409, description = "it holds runs, sweeps or audits, or it is `default`", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
pub(super) async fn remove(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if name == DEFAULT_PROJECT {
        return Err(ApiError::Conflict(
            "the `default` project cannot be deleted".into(),
        ));
    }
    let project = state
        .store
        .list_projects(p.team())
        .await?
        .into_iter()
        .find(|x| x.name == name && x.created_at > 0)
        .ok_or_else(|| ApiError::NotFound(format!("no project `{name}`")))?;
    check_may_change(&p, project.created_by.as_deref(), "this project")?;
    match state.store.delete_project(p.team(), &name).await? {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::NotFound(format!("no project `{name}`"))),
        Err(held) => Err(ApiError::Conflict(format!(
            "project `{name}` still holds {held}; move or delete them first"
        ))),
    }
}
