//! `/metrics`: the Prometheus exposition, plus the middleware that times every matched route.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::db;
use crate::metrics::{self, Metrics, Snapshot};

/// Counters, histograms and the gauges read from Postgres now (outbox backlog, timers).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus / OpenMetrics text exposition", content_type = "application/openmetrics-text"),
              (status = 500, body = super::ErrorBody),
              (status = 503, body = super::ErrorBody, description = "database unavailable")))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (outbox_backlog, outbox_parked) = db::outbox::backlog(&state.pool).await?;
    let (timers_due, timers_scheduled, timers_parked) = db::effects::timer_counts(&state.pool).await?;
    let handlers_loaded = (state.probes.handlers)().0 as i64;
    let open = db::dead_letters::Filter { state: Some(db::dead_letters::State::Open), ..Default::default() };
    let dead_letters_open = db::dead_letters::counts(&state.pool, &open)
        .await?
        .into_iter()
        .map(|c| (c.handler, c.class, c.count))
        .collect();
    let lanes = state.backlog.key_lanes(0);
    let text = state.metrics.encode(Snapshot {
        outbox_backlog,
        outbox_parked,
        timers_due,
        timers_scheduled,
        timers_parked,
        handlers_loaded,
        dead_letters_open,
        partitions: state.backlog.partitions(),
        keys_running: lanes.running as i64,
        events_waiting_behind_key: lanes.waiting as i64,
        admin_uploads: state.admin.as_ref().map_or(0, |a| a.uploads_in_progress() as i64),
    });
    Ok(([(CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

/// Records each request to a matched route by its template. Installed as a route layer, so a
/// request for a path no route matches is not recorded: random paths cannot grow the label set.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let method = req.method().clone();
    let started = Instant::now();
    let response = next.run(req).await;
    if let Some(route) = route {
        metrics.http_request(method.as_str(), route, response.status().as_u16(), started.elapsed());
    }
    response
}
