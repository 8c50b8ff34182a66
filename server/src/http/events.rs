//! `GET /runs/{id}/events`: server-sent events with every new metric, every
//! status change and, at the end, the evaluations. It reads the database
//! rather than an in-memory channel, so it works whoever runs the job
//! (in-process worker, remote worker, another replica).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use sslab_shared::api::{RunStatus, events};

use super::{ApiResult, AppState};
use crate::auth::Principal;

const POLL: Duration = Duration::from_millis(250);
const RECHECK: Duration = Duration::from_secs(2);

struct Cursor {
    state: AppState,
    /// The request's credentials, checked again every `RECHECK`: a revoked
    /// token or ended session ends the stream.
    headers: HeaderMap,
    checked: std::time::Instant,
    id: String,
    /// Last metric step sent (also the SSE event id, so a reconnect resumes).
    last_step: i64,
    last_status: Option<(RunStatus, bool)>,
    queue: VecDeque<Event>,
    done: bool,
    first: bool,
}

#[utoipa::path(
    operation_id = "run_events",
    get,
    path = "/runs/{id}/events",
    tag = "runs",
    params(("id" = String, Path, description = "the run's id")),
    responses((status = 200, description = "server-sent events: metric, status, evaluations", body = String, content_type = "text/event-stream"), (status = 404, description = "not found, or another team's", body = sslab_shared::api::ErrorBody), (status = 401, description = "no or unusable credentials", body = sslab_shared::api::ErrorBody))
)]
pub async fn stream(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    super::runs::find(&state, &p, &id).await?;
    let last_step = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cursor = Cursor {
        state: state.clone(),
        headers,
        checked: std::time::Instant::now(),
        id,
        last_step,
        last_status: None,
        queue: VecDeque::new(),
        done: false,
        first: true,
    };
    let stream = futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(ev) = c.queue.pop_front() {
                return Some((Ok(ev), c));
            }
            if c.done {
                return None;
            }
            if !c.first {
                tokio::time::sleep(POLL).await;
            }
            c.first = false;
            if let Err(e) = poll(&mut c).await {
                tracing::warn!(error = %e, run = %c.id, "event stream ended");
                return None;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn json_event(name: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().comment("unserialisable"))
}

async fn poll(c: &mut Cursor) -> crate::store::Result<()> {
    if c.checked.elapsed() >= RECHECK {
        c.checked = std::time::Instant::now();
        if super::authn::resolve(&c.state, &c.headers).await.is_err() {
            c.done = true;
            return Ok(());
        }
    }
    // Status first: once it reads terminal, every metric is already stored.
    let Some(run) = c.state.store.run(&c.id).await? else {
        c.done = true;
        return Ok(());
    };
    loop {
        let batch = c.state.store.metrics(&c.id, c.last_step, 500).await?;
        let full = batch.len() == 500;
        for m in batch {
            c.last_step = m.step;
            c.queue
                .push_back(json_event(events::METRIC, &m).id(m.step.to_string()));
        }
        if !full {
            break;
        }
    }
    let status = (run.status, run.cancel_requested);
    if c.last_status != Some(status) {
        c.last_status = Some(status);
        let terminal = run.status.is_terminal();
        c.queue.push_back(json_event(events::STATUS, &run));
        if terminal {
            let evaluations = c.state.store.evaluations(&c.id, Some("")).await?;
            c.queue
                .push_back(json_event(events::EVALUATIONS, &evaluations));
            c.done = true;
        }
    }
    Ok(())
}
