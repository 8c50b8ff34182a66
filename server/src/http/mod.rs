//! The HTTP surface: JSON API under `/api/v1` and the built dashboard at `/`.

mod accounts;
mod audits;
mod authn;
mod cka;
mod datasets;
mod decoders;
mod deletes;
mod demos;
mod error;
mod events;
mod exports;
mod labels;
mod metrics;
mod openapi;
mod projects;
mod recipes;
mod run_files;
mod runs;
mod search;
mod studies;
mod sweeps;
mod worker_decoders;
mod worker_jobs;
mod workers;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::get;
use tokio::sync::Notify;
use tower_http::services::{ServeDir, ServeFile};

pub use accounts::{issue_sign_in_code, issue_token};
pub use error::{ApiError, ApiResult};
pub use metrics::Metrics;

use crate::artifacts::Artifacts;
use crate::auth::{Backoff, Principal};
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
    /// Server folders the API may read data from (`--data-root`), resolved.
    pub data_roots: Arc<Vec<PathBuf>>,
    /// Origins other sites' scripts may call the API from (`--cors-origin`);
    /// none by default.
    pub cors_origins: Arc<Vec<axum::http::HeaderValue>>,
    pub backoff: Backoff,
    /// Requests per token; none: unlimited.
    pub rate_limit: Option<Arc<crate::auth::Limiter>>,
    pub metrics: Arc<metrics::Metrics>,
    /// Mark the session cookie `Secure` (off only for plain HTTP on a
    /// trusted network other than localhost: `--insecure-cookies`).
    pub secure_cookies: bool,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`--trusted-proxy`).
    pub trusted_proxies: Arc<Vec<std::net::IpAddr>>,
    /// Bytes a published demo bundle may weigh (`--max-demo-mib`).
    pub max_demo_bytes: u64,
}

impl AppState {
    /// Every idle worker looks at the queue; one that is busy finds the
    /// stored permit when it next waits.
    pub fn wake_workers(&self) {
        self.queued.notify_waiters();
        self.queued.notify_one();
    }
}

/// Who owns what `p` creates.
pub(crate) fn owner(p: &Principal) -> crate::store::Owner {
    crate::store::Owner {
        team: p.team().to_string(),
        user: p.actor(),
        project: sslab_shared::project::DEFAULT_PROJECT.into(),
    }
}

/// Another team's objects do not exist, as far as `p` can tell.
pub(crate) fn visible(p: &Principal, team: &str) -> bool {
    p.team_id.as_deref() == Some(team)
}

/// Members cancel what they created; admins anything of the team.
/// A 422 naming `field`.
pub(crate) fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidSpec(sslab_shared::SpecError::new(field, message.into()))
}

pub(crate) fn check_may_change(
    p: &Principal,
    created_by: Option<&str>,
    what: &str,
) -> ApiResult<()> {
    if p.may_change(created_by) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "only its creator or a team admin may change {what}"
        )))
    }
}

/// Data read straight from a server folder: team admins only, and only
/// inside the operator's `--data-root` folders. `field` names the spec's
/// data in errors.
pub(crate) fn check_server_data(
    state: &AppState,
    p: &Principal,
    data: &sslab_shared::spec::DataSpec,
    field: &str,
) -> ApiResult<()> {
    let Some(path) = data.server_path() else {
        return Ok(());
    };
    if !p.is_admin() {
        return Err(ApiError::Forbidden(format!(
            "{field}.path: only a team admin may name a folder on the server; upload the data instead"
        )));
    }
    crate::datasets::under_roots(path, &state.data_roots)
        .map(|_| ())
        .map_err(|e| path_refused(e, &format!("{field}.path")))
}

pub(crate) fn path_refused(e: crate::datasets::PathRefused, field: &str) -> ApiError {
    match e {
        crate::datasets::PathRefused::Outside(m) => ApiError::Forbidden(format!("{field}: {m}")),
        crate::datasets::PathRefused::Unreadable(m) => {
            ApiError::InvalidSpec(sslab_shared::SpecError::new(field, m))
        }
    }
}

/// `check_server_data` for every data a run spec reads.
pub(crate) fn check_run_data(
    state: &AppState,
    p: &Principal,
    spec: &sslab_shared::RunSpec,
    within: &str,
) -> ApiResult<()> {
    check_server_data(state, p, &spec.data, &format!("{within}data"))?;
    if let Some(d) = &spec.eval.data {
        check_server_data(state, p, d, &format!("{within}eval.data"))?;
    }
    Ok(())
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

/// Every API path the router serves (and `/metrics`), read off the router itself (its
/// `Debug` form is the only public view of its table), in order.
pub fn api_paths(router: &Router) -> Vec<String> {
    let text = format!("{router:?}");
    let mut paths: Vec<String> = text
        .split("RouteId(")
        .skip(1)
        .filter_map(|part| {
            let rest = part.split_once("): \"")?.1;
            Some(rest.split_once('"')?.0.to_string())
        })
        // `/api/v1` itself and the `__private__` tail are the nest's fallback.
        .filter(|p| (p.starts_with("/api/v1/") || p == "/metrics") && !p.contains("__private__"))
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// The whole application; tests call this with their own state.
pub fn app(state: AppState, static_dir: Option<PathBuf>) -> Router {
    use authn::Access;
    let guarded = |router: Router<AppState>, access: Access| {
        router.route_layer(axum::middleware::from_fn_with_state(
            (state.clone(), access),
            authn::layer,
        ))
    };
    let team = Router::new()
        .merge(runs::router())
        .merge(run_files::router())
        .merge(sweeps::router())
        .merge(datasets::router())
        .merge(audits::router())
        .merge(demos::router())
        .merge(exports::router())
        .merge(cka::router())
        .merge(decoders::router())
        .merge(search::router())
        .merge(studies::router())
        .merge(projects::router())
        .merge(recipes::router())
        .merge(workers::router())
        .merge(accounts::team_router());
    // Everything but health and sign-in goes through the authentication layer.
    let api = Router::new()
        .route("/health", get(openapi::health))
        .route("/openapi.json", get(openapi::document))
        .merge(accounts::public_router())
        .merge(demos::public_router())
        .merge(guarded(accounts::account_router(), Access::Account))
        .merge(guarded(team, Access::Team))
        .merge(guarded(workers::worker_router(), Access::Worker))
        .fallback(|| async { ApiError::NotFound("no such API route".into()) });
    let cors = cors_layer(&state.cors_origins);
    let counters = state.metrics.clone();
    let readings = guarded(
        Router::new().route("/metrics", get(metrics::serve)),
        Access::Account,
    );
    let static_dir = static_dir.filter(|d| d.join("index.html").is_file());
    let mut router = Router::new().nest("/api/v1", api).merge(readings);
    if let Some(dir) = &static_dir {
        // A public demo's page: its own small app, 404 for an unknown slug.
        let page = dir.join("demo.html");
        router = router.route(
            "/demo/{slug}",
            get(move |state: State<AppState>, slug: Path<String>| {
                let page = page.clone();
                async move { demos::page(state, slug, page).await }
            }),
        );
    }
    let router = router.with_state(state);
    let app = match static_dir {
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
    };
    // The last layer added runs first: a request id is set, then traced
    // (every log line of the request carries it), echoed, and the answer
    // compressed.
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    use tower_http::trace::{DefaultOnResponse, TraceLayer};
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &axum::http::Request<axum::body::Body>| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        })
        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO));
    app.layer(axum::middleware::from_fn(run_to_end))
        .layer(axum::middleware::from_fn_with_state(
            counters,
            metrics::record,
        ))
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(cors)
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(trace)
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// Runs a request's handler to its end even when the caller hangs up. A
/// handler dropped at an `.await` can leave a database connection inside
/// a transaction (sqlx does not roll back a `BEGIN` cancelled in flight),
/// and every statement later run on that pooled connection then holds its
/// locks uncommitted: a killed worker could wedge the queue.
async fn run_to_end(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let handler = tokio::spawn(next.run(req).in_current_span());
    match handler.await {
        Ok(response) => response,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => {
            use axum::response::IntoResponse;
            ApiError::Internal(anyhow::anyhow!("the request's task ended: {e}")).into_response()
        }
    }
}

/// Cross-origin calls: refused unless the operator names origins; those may
/// send bearer tokens, never the session cookie.
fn cors_layer(origins: &[axum::http::HeaderValue]) -> tower_http::cors::CorsLayer {
    use axum::http::{Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return CorsLayer::new();
    }
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().cloned()))
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            axum::http::HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([header::LOCATION, header::RETRY_AFTER])
}
