//! `GET /api/orders/{id}/events`: a Server-Sent Events stream of one order's status, starting
//! with its current status, then every committed change in order.
//!
//! Changes arrive through the process-wide LISTEN fan-out, so a change committed by any replica
//! reaches every stream. A notice names only the orders a statement changed; a stream whose order
//! is among them, or that lags behind the fan-out or sees it reconnect, reads the history after
//! the last id it sent. Each event carries its history id, so nothing is skipped or sent twice.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;
use uuid::Uuid;

use super::orders::parse_order_id;
use super::{ApiError, AppState, ErrorBody};
use crate::db;
use crate::db::listen::Notice;

/// The `data` of each `status` event.
#[derive(Serialize, ToSchema)]
pub struct StatusEventJson {
    pub order_id: Uuid,
    pub status: String,
    pub previous_status: Option<String>,
    /// `api` or `handler:<name>@<version>`; absent on the first event, which is the current state.
    pub cause: Option<String>,
    pub changed_at: DateTime<Utc>,
}

/// One event of the stream as it is framed on the wire, for the document: schemathesis and other
/// SSE-aware clients check each event's fields against the response schema.
#[derive(ToSchema)]
#[allow(dead_code)] // never built: it exists for its schema
pub struct StatusSseEvent {
    /// Always `status`.
    #[schema(pattern = "^status$")]
    event: String,
    /// The history row's id: a client that reconnects sees later ids only.
    #[schema(pattern = "^[0-9]+$")]
    id: String,
    /// A `StatusEventJson` as JSON text: `order_id`, `status`, `previous_status`, `cause`,
    /// `changed_at`.
    #[schema(content_media_type = "application/json")]
    data: String,
}

fn event(id: i64, body: &StatusEventJson) -> Event {
    Event::default().event("status").id(id.to_string()).json_data(body).expect("status events serialise")
}

fn history_event(order_id: Uuid, h: db::orders::HistoryEntry) -> (i64, Event) {
    let body = StatusEventJson {
        order_id,
        status: h.to_status,
        previous_status: h.from_status,
        cause: Some(h.cause),
        changed_at: h.at,
    };
    (h.id, event(h.id, &body))
}

/// Live status of one order as `text/event-stream`: one `status` event now, then one per change.
#[utoipa::path(get, path = "/api/orders/{id}/events", tag = "orders",
    params(("id" = Uuid, Path, description = "The order id (a UUID); any other text answers 404 `order_not_found`")),
    responses((status = 200, content_type = "text/event-stream", body = StatusSseEvent,
               description = "`status` events, the first being the current status; the stream stays open"),
              (status = 400, body = ErrorBody, description = "the path holds a NUL (`%00`) or is not UTF-8"),
              (status = 404, body = ErrorBody, description = "`order_not_found`"),
              (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn order_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let order_id = parse_order_id(&id)?;
    // Subscribe before reading, so a change committed in between is in the channel; the history
    // id filter drops it if the read already covered it.
    let notices = state.notices.subscribe_status();
    let (status, last_id, at) = db::orders::current_status(&state.pool, order_id)
        .await?
        .ok_or_else(|| ApiError::order_not_found(&id))?;
    let first = StatusEventJson {
        order_id,
        status: status.to_string(),
        previous_status: None,
        cause: None,
        changed_at: at,
    };
    let s = StreamState {
        order_id,
        last_id,
        queue: VecDeque::from([event(last_id, &first)]),
        notices,
        state: state.clone(),
    };
    let stream = futures_util::stream::unfold(s, |mut s| async move {
        let ev = s.next().await?;
        Some((Ok(ev), s))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

struct StreamState {
    order_id: Uuid,
    /// The newest history id already sent.
    last_id: i64,
    queue: VecDeque<Event>,
    notices: tokio::sync::broadcast::Receiver<Notice>,
    state: AppState,
}

impl StreamState {
    /// The next event, or `None` to end the stream (shutdown, or the fan-out is gone).
    async fn next(&mut self) -> Option<Event> {
        let mut shutdown = self.state.shutdown.clone();
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Some(ev);
            }
            let notice = tokio::select! {
                n = self.notices.recv() => n,
                _ = shutdown.wait_for(|s| *s) => return None,
            };
            match notice {
                Ok(Notice::Changed(ids)) if ids.contains(&self.order_id) => self.catch_up().await,
                Ok(Notice::Changed(_)) => {}
                Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => self.catch_up().await,
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// Queues whatever history was committed after the last event sent.
    async fn catch_up(&mut self) {
        match db::orders::history_after(&self.state.pool, self.order_id, self.last_id).await {
            Ok(rows) => {
                for h in rows {
                    let (id, ev) = history_event(self.order_id, h);
                    self.last_id = id;
                    self.queue.push_back(ev);
                }
            }
            // The next notice or resync tries again.
            Err(e) => tracing::warn!(error = %e, order_id = %self.order_id, "order stream catch-up failed"),
        }
    }
}
