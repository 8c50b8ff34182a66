//! The HTTP surface: JSON API under `/api/v1` and the built dashboard at `/`.

mod audits;
mod datasets;
mod error;
mod events;
mod runs;
mod sweeps;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::get;
use tokio::sync::Notify;
use tower_http::services::{ServeDir, ServeFile};

pub use error::{ApiError, ApiResult};

use crate::artifacts::Artifacts;
use crate::datasets::Registry;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub artifacts: Artifacts,
    /// Wakes idle workers when a run is queued.
    pub queued: Arc<Notify>,
    /// The most runs one sweep may expand to.
    pub max_sweep_runs: usize,
    pub datasets: Registry,
}

impl AppState {
    /// Every idle worker looks at the queue; one that is busy finds the
    /// stored permit when it next waits.
    pub fn wake_workers(&self) {
        self.queued.notify_waiters();
        self.queued.notify_one();
    }
}

/// The answer to a creating POST: 201 with a Location, or 200 when an
/// idempotency key found what an earlier request created.
pub(crate) fn created(
    fresh: bool,
    location: String,
    body: impl serde::Serialize,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = if fresh {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (
        status,
        [(axum::http::header::LOCATION, location)],
        axum::Json(body),
    )
        .into_response()
}

/// The `Idempotency-Key` header of a creating POST, checked.
pub(crate) fn idempotency_key(headers: &axum::http::HeaderMap) -> ApiResult<Option<&str>> {
    let key = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be ASCII".into()))
        })
        .transpose()?;
    if key.is_some_and(|k| k.is_empty() || k.len() > 200) {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be 1 to 200 characters".into(),
        ));
    }
    Ok(key)
}

/// The whole application; tests call this with their own state.
pub fn app(state: AppState, static_dir: Option<PathBuf>) -> Router {
    let api = Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(runs::router())
        .merge(sweeps::router())
        .merge(datasets::router())
        .merge(audits::router())
        .fallback(|| async { ApiError::NotFound("no such API route".into()) });
    let router = Router::new().nest("/api/v1", api).with_state(state);
    match static_dir.filter(|d| d.join("index.html").is_file()) {
        // Client-side routes (/runs/…) get index.html; the app routes itself.
        Some(dir) => router
            .fallback_service(ServeDir::new(&dir).fallback(ServeFile::new(dir.join("index.html")))),
        None => router.fallback(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Html(
                    "<h1>sslab</h1><p>The dashboard is not built. Start the platform with \
                      <code>cargo xtask serve</code>, or pass <code>--static-dir</code> \
                      pointing at a built <code>frontend/dist</code>. The API is at \
                      <a href=\"/api/v1/runs\">/api/v1/runs</a>.</p>",
                ),
            )
        }),
    }
    .layer(tower_http::trace::TraceLayer::new_for_http())
}
