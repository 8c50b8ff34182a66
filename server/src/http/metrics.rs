//! `GET /metrics` in Prometheus's text format: requests by method and
//! status, their latency, and the jobs of every kind by status (the queue's
//! depth is `sslab_jobs{status="queued"}`). For site admins and metrics
//! tokens: the counts cover every team.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sslab_shared::auth::Scope;

use super::{ApiError, ApiResult, AppState};
use crate::auth::Principal;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: String,
    status: String,
}

/// The server's counters, shared by every request.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Histogram,
    jobs: Family<JobLabels, Gauge>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        // 0.25 ms to about 8 s.
        let latency = Histogram::new(exponential_buckets(0.00025, 2.0, 16));
        let jobs = Family::<JobLabels, Gauge>::default();
        registry.register(
            "sslab_http_requests",
            "HTTP requests answered, by method and status",
            requests.clone(),
        );
        registry.register(
            "sslab_http_request_duration_seconds",
            "Time to answer an HTTP request (to its headers)",
            latency.clone(),
        );
        registry.register(
            "sslab_jobs",
            "Runs, evaluation jobs and audits by status (every team)",
            jobs.clone(),
        );
        Arc::new(Metrics {
            registry,
            requests,
            latency,
            jobs,
        })
    }
}

/// Counts and times every request.
pub async fn record(State(m): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    // Made-up methods share one label: each would otherwise add a series.
    let method = match *request.method() {
        axum::http::Method::GET
        | axum::http::Method::HEAD
        | axum::http::Method::POST
        | axum::http::Method::PUT
        | axum::http::Method::PATCH
        | axum::http::Method::DELETE
        | axum::http::Method::OPTIONS => request.method().as_str().to_string(),
        _ => "other".to_string(),
    };
    let start = Instant::now();
    let response = next.run(request).await;
    m.latency.observe(start.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

pub async fn serve(State(state): State<AppState>, p: Principal) -> ApiResult<Response> {
    if !(p.site_admin && p.scope == Scope::Write) && p.scope != Scope::Metrics {
        return Err(ApiError::Forbidden(
            "/metrics is for site admins and metrics tokens".into(),
        ));
    }
    let m = &state.metrics;
    m.jobs.clear();
    for (kind, status, n) in state.store.job_counts().await? {
        m.jobs
            .get_or_create(&JobLabels {
                kind: kind.name().into(),
                status,
            })
            .set(n);
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &m.registry)
        .map_err(|e| anyhow::anyhow!("encoding metrics: {e}"))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
