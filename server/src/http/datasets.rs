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

use super::{ApiError, ApiResult, AppState};

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/datasets", post(import).get(list))
        .route(
            "/datasets/upload",
            // The handler streams the body to disk under its own limit.
            post(upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/datasets/{name}", get(read))
        .route("/datasets/{name}/samples.png", get(samples))
}

/// Files already on the server: `{ "name", "format", "path", … }`.
async fn import(State(state): State<AppState>, body: String) -> ApiResult<Response> {
    let req: DatasetImport =
        sslab_shared::error::from_json(&body).map_err(ApiError::InvalidSpec)?;
    let d = state.datasets.import_path(&req).await?;
    Ok(created(d))
}

fn created(d: Dataset) -> Response {
    let location = format!("/api/v1/datasets/{}", d.name);
    super::created(true, location, d)
}

/// An archive (tar, tar.gz or zip) in the body; the options in the query:
/// `?name=pets&format=folder&image_size=64`.
async fn upload(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    let req: DatasetImport = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::InvalidSpec(SpecError::new("query", e.to_string())))?;
    let registry = &state.datasets;
    // Refuse before reading a byte when the name is unusable.
    registry.check_free(&req.name).await?;
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
    let d = registry.import_archive(&req, &file, origin).await?;
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

async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<Dataset>>> {
    Ok(Json(state.datasets.store().list_datasets().await?))
}

async fn find(state: &AppState, name: &str) -> ApiResult<Dataset> {
    state
        .datasets
        .store()
        .dataset(name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no data set named `{name}`")))
}

async fn read(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Dataset>> {
    Ok(Json(find(&state, &name).await?))
}

async fn samples(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    let d = find(&state, &name).await?;
    let path = state.datasets.samples_path(&d);
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
