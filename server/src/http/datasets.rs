//! `/datasets`: register (a server folder, or an uploaded archive), list,
//! read, and the sample thumbnails.

use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use sslab_shared::SpecError;
use sslab_shared::dataset::{Dataset, DatasetImport};
use tokio::io::AsyncWriteExt;

use super::authn::JsonText;
use super::{ApiError, ApiResult, AppState, owner};
use crate::auth::Principal;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/datasets", post(import).get(list))
        .route(
            "/datasets/upload",
            // The handler streams the body to disk under its own limit.
            post(upload).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/datasets/{name}",
            get(read).delete(super::deletes::dataset),
        )
        .route("/datasets/{name}/samples.png", get(samples))
}

/// Files already on the server: `{ "name", "format", "path", … }`. Team
/// admins only, and only inside the operator's `--data-root` folders.
#[utoipa::path(
    operation_id = "register_dataset",
    post,
    path = "/datasets",
    tag = "datasets",
    request_body = sslab_shared::dataset::DatasetImport,
    responses((status = 201, description = "registered", body = sslab_shared::dataset::Dataset), (status = 409, description = "the team has a data set of that name", body = sslab_shared::api::ErrorBody), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn import(
    State(state): State<AppState>,
    p: Principal,
    JsonText(body): JsonText,
) -> ApiResult<Response> {
    let mut req: DatasetImport =
        sslab_shared::error::from_json(&body).map_err(ApiError::InvalidSpec)?;
    if !p.is_admin() {
        return Err(ApiError::Forbidden(
            "only a team admin registers a folder on the server; upload an archive instead".into(),
        ));
    }
    if let Some(path) = req.path.as_deref().filter(|p| !p.trim().is_empty()) {
        let real = crate::datasets::under_roots(path, &state.data_roots)
            .map_err(|e| super::path_refused(e, "path"))?;
        req.path = Some(real.to_string_lossy().into_owned());
    }
    let d = state.datasets.import_path(&req, &owner(&p)).await?;
    Ok(created(d))
}

fn created(d: Dataset) -> Response {
    let location = format!("/api/v1/datasets/{}", d.name);
    super::created(true, location, d)
}

/// An archive (tar, tar.gz or zip) in the body; the options in the query:
/// `?name=pets&format=folder&image_size=64`.
#[utoipa::path(
    operation_id = "upload_dataset",
    post,
    path = "/datasets/upload",
    tag = "datasets",
    params(("name" = String, Query), ("format" = String, Query, description = "folder, cifar10, cifar100, stl10 or idx"), ("image_size" = Option<usize>, Query)),
    request_body(content = Vec<u8>, description = "a tar, tar.gz or zip archive", content_type = "application/octet-stream"),
    responses((status = 201, description = "registered", body = sslab_shared::dataset::Dataset), (status = 409, description = "the team has a data set of that name", body = sslab_shared::api::ErrorBody), (status = 413, description = "over the upload limit", body = sslab_shared::api::ErrorBody), (status = 422, description = "invalid; `field` names what", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn upload(
    State(state): State<AppState>,
    p: Principal,
    RawQuery(query): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    let req: DatasetImport = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::InvalidSpec(SpecError::new("query", e.to_string())))?;
    let registry = &state.datasets;
    // Refuse before reading a byte when the name is unusable.
    registry.check_free(p.team(), &req.name).await?;
    let file = registry.scratch()?;
    let received = receive(body, &file, registry.limits.max_upload).await;
    let bytes = match received {
        Ok(n) => n,
        Err(e) => {
            let _ = tokio::fs::remove_file(&file).await;
            return Err(e);
        }
    };
    let origin = format!("upload of {bytes} bytes");
    let d = registry
        .import_archive(&req, &file, origin, &owner(&p))
        .await?;
    Ok(created(d))
}

/// Streams the body into `file`, stopping at `limit` bytes.
async fn receive(body: Body, file: &std::path::Path, limit: u64) -> ApiResult<u64> {
    let storage = |e: std::io::Error| ApiError::Storage(format!("cannot store the upload: {e}"));
    let mut out = tokio::fs::File::create(file).await.map_err(storage)?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::BadRequest(format!("the upload broke off after {total} bytes: {e}"))
        })?;
        total += chunk.len() as u64;
        if total > limit {
            return Err(ApiError::TooLarge(format!(
                "the upload is larger than this server's limit of {limit} bytes"
            )));
        }
        out.write_all(&chunk).await.map_err(storage)?;
    }
    out.flush().await.map_err(storage)?;
    Ok(total)
}

#[utoipa::path(
    operation_id = "list_datasets",
    get,
    path = "/datasets",
    tag = "datasets",
    responses((status = 200, description = "newest first", body = Vec<sslab_shared::dataset::Dataset>), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn list(State(state): State<AppState>, p: Principal) -> ApiResult<Json<Vec<Dataset>>> {
    Ok(Json(state.datasets.store().list_datasets(p.team()).await?))
}

pub(super) async fn find(state: &AppState, p: &Principal, name: &str) -> ApiResult<Dataset> {
    state
        .datasets
        .store()
        .dataset(p.team(), name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no data set named `{name}`")))
}

#[utoipa::path(
    operation_id = "get_dataset",
    get,
    path = "/datasets/{name}",
    tag = "datasets",
    params(("name" = String, Path)),
    responses((status = 200, description = "OK", body = sslab_shared::dataset::Dataset), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn read(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
) -> ApiResult<Json<Dataset>> {
    Ok(Json(find(&state, &p, &name).await?))
}

#[utoipa::path(
    operation_id = "dataset_samples",
    get,
    path = "/datasets/{name}/samples.png",
    tag = "datasets",
    params(("name" = String, Path)),
    responses((status = 200, description = "a sheet of sample images", body = Vec<u8>, content_type = "image/png"), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn samples(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let d = find(&state, &p, &name).await?;
    let path = state.datasets.samples_path(&d).await?;
    let png = tokio::fs::read(&path)
        .await
        .map_err(|e| ApiError::NotFound(format!("the thumbnails of `{name}` are missing: {e}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        png,
    )
        .into_response())
}
