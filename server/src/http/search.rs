//! `GET /search?q=`: the dashboard's one search box.

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use sslab_shared::labels::SearchHit;

use super::{ApiError, ApiResult, AppState};
use crate::auth::Principal;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct SearchQuery {
    /// An id's start, a part of a name, or a tag's start (any case); 1 to
    /// 100 characters.
    q: String,
    /// Hits of each kind, 1 to 50 (default 10).
    limit: Option<usize>,
}

/// The team's runs, sweeps, audits and data sets that match, kind by kind
/// (an exact id first, then newest first); archived ones included.
#[utoipa::path(
    operation_id = "search",
    get,
    path = "/search",
    tag = "search",
    params(SearchQuery),
    responses((status = 200, description = "what matched", body = Vec<sslab_shared::labels::SearchHit>), (status = 400, description = "empty or too long a query, or a bad limit", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
pub(super) async fn search(
    State(state): State<AppState>,
    p: Principal,
    Query(q): Query<SearchQuery>,
) -> ApiResult<Json<Vec<SearchHit>>> {
    let text = q.q.trim();
    if text.is_empty() || text.chars().count() > 100 {
        return Err(ApiError::BadRequest("q must be 1 to 100 characters".into()));
    }
    let limit = q.limit.unwrap_or(10);
    if !(1..=50).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and 50, got {limit}"
        )));
    }
    Ok(Json(state.store.search(p.team(), text, limit).await?))
}

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/search", axum::routing::get(search))
}
