//! `/demos`: publish a demo bundle (team admins), list the team's, and
//! unpublish; `/public/demos/{slug}`: a published demo's manifest and files,
//! for anyone (the demo page is public).

use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures_util::StreamExt;
use sslab_shared::api::RunStatus;
use sslab_shared::demo::{Demo, MANIFEST, PublishExport};

use super::{ApiError, ApiResult, AppState, owner};
use crate::auth::Principal;
use crate::demos::{self, Refused};

/// Tar headers and padding on top of the files themselves.
const ARCHIVE_OVERHEAD: u64 = 1 << 20;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            "/demos",
            // The handler reads the body under the bundle cap itself.
            post(publish).get(list).layer(DefaultBodyLimit::disable()),
        )
        .route("/demos/{slug}", delete(unpublish))
}

/// Routes that need no credentials.
pub fn public_router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/public/demos/{slug}", get(manifest))
        .route("/public/demos/{slug}/files/{sha256}", get(file))
}

/// A bundle folder as a tar archive (`tar -cf demo.tar -C BUNDLE .`), made
/// by `sslab export`, or `{"export": id}` (JSON) for an export job's
/// bundle. Team admins only; the answer names the demo's page.
#[utoipa::path(
    operation_id = "publish_demo",
    post,
    path = "/demos",
    tag = "demos",
    request_body(content(
        (Vec<u8> = "application/x-tar"),
        (sslab_shared::demo::PublishExport = "application/json"),
    ), description = "a tar archive of a bundle folder, or an export job to publish"),
    responses((status = 201, description = "published at /demo/{slug}", body = sslab_shared::demo::Demo), (status = 413, description = "over the bundle cap", body = sslab_shared::api::ErrorBody), (status = 404, description = "no such export, or another team's", body = sslab_shared::api::ErrorBody), (status = 409, description = "the export has not succeeded", body = sslab_shared::api::ErrorBody), (status = 415, description = "not a tar archive", body = sslab_shared::api::ErrorBody), (status = 422, description = "a damaged or mismatched bundle; the message says which file", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn publish(
    State(state): State<AppState>,
    p: Principal,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    if !p.is_admin() {
        return Err(ApiError::Forbidden(
            "only a team admin publishes demos".into(),
        ));
    }
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let cap = state.max_demo_bytes;
    let checked = match kind.as_str() {
        "application/json" => {
            let text = read_body(body, 64 << 10).await?;
            let req: PublishExport = sslab_shared::error::from_json(
                std::str::from_utf8(&text)
                    .map_err(|_| ApiError::BadRequest("the body is not UTF-8".into()))?,
            )
            .map_err(ApiError::InvalidSpec)?;
            let job = super::exports::find(&state, &p, &req.export).await?;
            if job.status != RunStatus::Succeeded {
                return Err(ApiError::Conflict(format!(
                    "export {} is {}; publish it once it has succeeded",
                    job.id,
                    job.status.as_str()
                )));
            }
            let dir = state.artifacts.export_dir(&job.id);
            state.artifacts.fetch_dir(&dir).await?;
            tokio::task::spawn_blocking(move || demos::check_folder(&dir, cap)).await
        }
        "application/x-tar" | "application/octet-stream" => {
            let archive = read_body(body, cap + ARCHIVE_OVERHEAD).await?;
            tokio::task::spawn_blocking(move || demos::check_archive(&archive, cap)).await
        }
        _ => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "send a bundle as a tar archive (Content-Type application/x-tar) or \
                 {{\"export\": id}} as JSON, not `{kind}`"
            )));
        }
    };
    let checked = checked
        .map_err(|e| anyhow::anyhow!("checking the bundle crashed: {e}"))?
        .map_err(|e| match e {
            Refused::TooLarge(m) => ApiError::TooLarge(m),
            Refused::Invalid(m) => ApiError::InvalidData(m),
        })?;
    let source = if checked.manifest.source.is_empty() {
        "an uploaded bundle".to_string()
    } else {
        checked.manifest.source.clone()
    };
    let created_at = crate::store::now_ms();
    let row = demos::row(
        &checked,
        demos::slug(&checked.manifest.title),
        source,
        created_at,
    );
    let dir = state.artifacts.demo_dir(&row.slug);
    let (slug_dir, checked) = (dir.clone(), checked);
    tokio::task::spawn_blocking(move || demos::store(&checked, &slug_dir))
        .await
        .map_err(|e| anyhow::anyhow!("storing the bundle crashed: {e}"))?
        .map_err(|e| ApiError::Storage(format!("cannot store the bundle: {e}")))?;
    if let Err(e) = state.artifacts.persist_dir(&dir).await {
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let _ = state.artifacts.forget_dir(&dir).await;
        return Err(ApiError::Storage(format!("{e:#}")));
    }
    let stored = state.store.insert_demo(&row, &owner(&p)).await;
    if !matches!(stored, Ok(true)) {
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let _ = state.artifacts.forget_dir(&dir).await;
        stored?;
        return Err(ApiError::Conflict(
            "that slug is taken; publish again".into(),
        ));
    }
    let demo = state
        .store
        .demo(&row.slug)
        .await?
        .ok_or_else(|| anyhow::anyhow!("a demo vanished as it was published"))?;
    let location = format!("/demo/{}", demo.slug);
    Ok(super::created(true, location, demo))
}

#[utoipa::path(
    operation_id = "list_demos",
    get,
    path = "/demos",
    tag = "demos",
    responses((status = 200, description = "the team's demos, newest first", body = Vec<sslab_shared::demo::Demo>), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn list(State(state): State<AppState>, p: Principal) -> ApiResult<Json<Vec<Demo>>> {
    Ok(Json(state.store.list_demos(p.team()).await?))
}

/// Unpublishes: the page and its files answer 404 from then on. Team
/// admins only.
#[utoipa::path(
    operation_id = "unpublish_demo",
    delete,
    path = "/demos/{slug}",
    tag = "demos",
    params(("slug" = String, Path)),
    responses((status = 204, description = "unpublished"), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 403, description = "the credentials do not allow it", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
async fn unpublish(
    State(state): State<AppState>,
    p: Principal,
    Path(slug): Path<String>,
) -> ApiResult<StatusCode> {
    let demo = state
        .store
        .demo(&slug)
        .await?
        .filter(|d| super::visible(&p, &d.team))
        .ok_or_else(|| ApiError::NotFound(format!("no demo `{slug}`")))?;
    if !p.is_admin() {
        return Err(ApiError::Forbidden(
            "only a team admin unpublishes demos".into(),
        ));
    }
    state.store.delete_demo(&demo.slug).await?;
    // The row is gone, so nothing serves the files any more; a folder left
    // by a failed removal is only disk.
    let dir = state.artifacts.demo_dir(&demo.slug);
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
        tracing::warn!(slug = %demo.slug, error = %e, "an unpublished demo's files were not removed");
    }
    if let Err(e) = state.artifacts.forget_dir(&dir).await {
        tracing::warn!(slug = %demo.slug, error = %format!("{e:#}"), "an unpublished demo's stored files were not removed");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The body, refused past `limit` bytes.
async fn read_body(body: Body, limit: u64) -> ApiResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::BadRequest(format!(
                "the upload broke off after {} bytes: {e}",
                out.len()
            ))
        })?;
        out.extend_from_slice(&chunk);
        if out.len() as u64 > limit {
            return Err(ApiError::TooLarge(format!(
                "the body is over this route's limit of {} MiB",
                (limit >> 20).max(1)
            )));
        }
    }
    Ok(out)
}

async fn published(state: &AppState, slug: &str) -> ApiResult<Demo> {
    state
        .store
        .demo(slug)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no published demo `{slug}`")))
}

/// A published demo's manifest (`sslab_shared::demo::Manifest`); no
/// credentials needed.
#[utoipa::path(
    operation_id = "demo_manifest",
    get,
    path = "/public/demos/{slug}",
    tag = "demos",
    security(()),
    params(("slug" = String, Path)),
    responses((status = 200, description = "the bundle's manifest.json", body = serde_json::Value), (status = 404, description = "no such published demo", body = sslab_shared::api::ErrorBody))
)]
async fn manifest(State(state): State<AppState>, Path(slug): Path<String>) -> ApiResult<Response> {
    let demo = published(&state, &slug).await?;
    let path = state.artifacts.demo_dir(&demo.slug).join(MANIFEST);
    state.artifacts.fetch(&path).await?;
    let text = tokio::fs::read(&path)
        .await
        .map_err(|e| ApiError::NotFound(format!("the demo's files are missing: {e}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        text,
    )
        .into_response())
}

/// One file of a published demo, by the SHA-256 its manifest gives it:
/// the address changes with the content, so it may be cached for good.
#[utoipa::path(
    operation_id = "demo_file",
    get,
    path = "/public/demos/{slug}/files/{sha256}",
    tag = "demos",
    security(()),
    params(("slug" = String, Path), ("sha256" = String, Path)),
    responses((status = 200, description = "the file", body = Vec<u8>, content_type = "application/octet-stream"), (status = 404, description = "no such demo or file", body = sslab_shared::api::ErrorBody))
)]
async fn file(
    State(state): State<AppState>,
    Path((slug, sha256)): Path<(String, String)>,
) -> ApiResult<Response> {
    let demo = published(&state, &slug).await?;
    let dir = state.artifacts.demo_dir(&demo.slug);
    state.artifacts.fetch(&dir.join(MANIFEST)).await?;
    let text = tokio::fs::read_to_string(dir.join(MANIFEST))
        .await
        .map_err(|e| ApiError::NotFound(format!("the demo's files are missing: {e}")))?;
    let manifest: sslab_shared::demo::Manifest = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("a stored manifest does not parse: {e}"))?;
    // Paths come from a manifest checked at publishing: plain and relative.
    let entry = manifest
        .files
        .iter()
        .find(|f| f.sha256 == sha256)
        .ok_or_else(|| ApiError::NotFound(format!("demo `{slug}` has no file {sha256}")))?;
    state.artifacts.fetch(&dir.join(&entry.path)).await?;
    let bytes = tokio::fs::read(dir.join(&entry.path))
        .await
        .map_err(|e| ApiError::NotFound(format!("`{}` is missing: {e}", entry.path)))?;
    Ok((
        [
            (header::CONTENT_TYPE, demos::content_type(&entry.path)),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        bytes,
    )
        .into_response())
}

/// The page of `/demo/{slug}`: the demo app for a published slug, a plain
/// 404 page otherwise.
pub async fn page(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    html: std::path::PathBuf,
) -> Response {
    let found = match state.store.demo(&slug).await {
        Ok(found) => found,
        Err(e) => return ApiError::from(e).into_response(),
    };
    match (found, tokio::fs::read(&html).await) {
        (Some(_), Ok(page)) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            page,
        )
            .into_response(),
        (Some(_), Err(e)) => {
            ApiError::Storage(format!("the demo page {} is missing: {e}", html.display()))
                .into_response()
        }
        (None, _) => (
            StatusCode::NOT_FOUND,
            axum::response::Html(
                "<!doctype html><meta name=viewport content=\"width=device-width\">\
                 <title>No such demo</title><h1 id=\"no-demo\">No such demo</h1>\
                 <p>Nothing is published at this address: the link is wrong, or the demo \
                 was unpublished.</p>",
            ),
        )
            .into_response(),
    }
}
