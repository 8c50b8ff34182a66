//! `GET /recipes`: the shipped recipes, for the new-run form and scripts.

use axum::Json;
use sslab_shared::api::Recipe;

use super::{ApiResult, AppState};
use crate::auth::Principal;

/// Every shipped recipe (`recipes/*.toml`): its name, kind (`run`, `sweep`,
/// `audit`), opening comment, text and parsed spec, by name.
#[utoipa::path(
    operation_id = "list_recipes",
    get,
    path = "/recipes",
    tag = "runs",
    responses((status = 200, description = "OK", body = Vec<sslab_shared::api::Recipe>), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
pub(super) async fn list(_p: Principal) -> ApiResult<Json<Vec<Recipe>>> {
    Ok(Json(crate::recipes::all()))
}

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/recipes", axum::routing::get(list))
}
