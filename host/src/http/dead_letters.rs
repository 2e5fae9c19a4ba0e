//! `/admin/dead-letters`: list, inspect, redrive and discard dead letters, one or in bulk. Behind
//! the admin bearer token like the rest of `/admin`. A redrive runs the failed handler's serving
//! version on the stored event (`dispatch::redrive`); a discard closes a dead letter for good.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ApiJson;
use super::{ApiError, AppState, ErrorBody};
use crate::db::dead_letters::{self, Count, DeadLetter, Filter, State as LetterState};
use crate::db::outbox::printable;
use crate::dispatch::decode::{Happened, decode};
use crate::dispatch::redrive::{Redriven, Refused, outcome_label};
use crate::kafka::Incoming;

/// The most dead letters one page lists, and one bulk action takes.
const MAX_PAGE: i64 = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    pub handler: Option<String>,
    /// `x-dlq-class`, e.g. `trap` or `handler-error`.
    pub class: Option<String>,
    pub order_id: Option<Uuid>,
    pub state: Option<LetterState>,
    /// Dead-lettered at or after (RFC 3339, years 0000 to 9999).
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before (RFC 3339, years 0000 to 9999).
    pub until: Option<DateTime<Utc>>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<i64>,
    /// 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// One page of dead letters, oldest first, and how many match the filters by handler and class.
#[derive(Serialize, ToSchema)]
pub struct Page {
    pub items: Vec<DeadLetter>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<i64>,
    pub counts: Vec<Count>,
}

fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// The limit, refused (not clamped) when out of range, so a client learns its mistake.
fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit.unwrap_or(100) {
        n @ 1..=MAX_PAGE => Ok(n),
        n => Err(invalid("invalid_query", format!("limit must be 1 to {MAX_PAGE}, not {n}"))),
    }
}

/// An instant bound from the query, refused by name unless its year is 0 to 9999 (RFC 3339's
/// four digits). chrono also parses signed and longer years, which Postgres cannot compare with a
/// `timestamptz` and used to answer as a value that "cannot be stored".
fn instant(name: &str, at: Option<DateTime<Utc>>) -> Result<Option<DateTime<Utc>>, ApiError> {
    use chrono::Datelike;
    match at {
        Some(t) if !(0..=9999).contains(&t.year()) => Err(invalid(
            "invalid_query",
            format!("{name} must be an RFC 3339 instant in the years 0000 to 9999"),
        )),
        _ => Ok(at),
    }
}

/// Dead letters matching the filters, oldest first, a page at a time.
#[utoipa::path(get, path = "/admin/dead-letters", tag = "admin", params(ListParams), security(("admin_token" = [])),
    responses((status = 200, body = Page),
        (status = 400, body = ErrorBody, description = "`invalid_query`: a parameter does not parse (`order_id`, `state`, `since`, `until`, `cursor`) or `limit` is not 1 to 500; or the query holds a NUL (`%00`)"),
        (status = 401, body = ErrorBody, description = "missing or wrong bearer token"),
        (status = 404, body = ErrorBody, description = "`admin_disabled`: `ADMIN_TOKEN` is not set"),
        (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn list(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    let Query(p) = params.map_err(|e| invalid("invalid_query", e.body_text()))?;
    let limit = page_limit(p.limit)?;
    let filter = Filter {
        handler: p.handler,
        class: p.class,
        order_id: p.order_id,
        state: p.state,
        since: instant("since", p.since)?,
        until: instant("until", p.until)?,
    };
    let items = dead_letters::list(&state.pool, &filter, p.cursor.unwrap_or(0), limit).await?;
    let next_cursor = (items.len() as i64 == limit).then(|| items.last().map(|d| d.id)).flatten();
    let counts = dead_letters::counts(&state.pool, &filter).await?;
    Ok(Json(Page { items, next_cursor, counts }))
}

/// A stored record, readable: text where the bytes are printable UTF-8, else `hex:…`.
#[derive(Serialize, ToSchema)]
pub struct RecordView {
    pub key: Option<String>,
    pub headers: Vec<HeaderView>,
    /// The value as JSON when it is JSON (any JSON value, not only an object), else as text
    /// (`hex:…` for binary); null for none.
    #[schema(value_type = Value)]
    pub value: Option<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub struct HeaderView {
    pub name: String,
    pub value: String,
}

/// What the record says happened, when it decodes.
#[derive(Serialize, ToSchema)]
pub struct EventView {
    pub event_id: String,
    pub order_id: Uuid,
    /// `order-created` or `status-updated`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For status updates: `previous → current`.
    pub change: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Detail {
    pub dead_letter: DeadLetter,
    pub record: RecordView,
    pub event: Option<EventView>,
    /// Why the record does not decode, when it does not.
    pub undecodable: Option<String>,
}

fn record_view(r: &Incoming) -> RecordView {
    RecordView {
        key: r.key.as_deref().map(printable),
        headers: r
            .headers
            .iter()
            .map(|(name, v)| HeaderView { name: name.clone(), value: printable(v) })
            .collect(),
        value: r
            .payload
            .as_deref()
            .map(|v| serde_json::from_slice(v).unwrap_or_else(|_| serde_json::Value::String(printable(v)))),
    }
}

fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse().map_err(|_| invalid("invalid_id", format!("dead letter id {raw:?} is not a number")))
}

fn not_found(id: i64) -> ApiError {
    ApiError::not_found("dead_letter_not_found", format!("no dead letter {id}"))
}

/// One dead letter, its record and the event it carries when it decodes.
#[utoipa::path(get, path = "/admin/dead-letters/{id}", tag = "admin", params(("id" = i64, Path, description = "A dead letter id; anything but a 64-bit integer answers 400 `invalid_id`")), security(("admin_token" = [])),
    responses((status = 200, body = Detail),
        (status = 400, body = ErrorBody, description = "`invalid_id`"),
        (status = 401, body = ErrorBody, description = "missing or wrong bearer token"),
        (status = 404, body = ErrorBody, description = "`dead_letter_not_found`, or `admin_disabled`: `ADMIN_TOKEN` is not set"),
        (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn get(State(state): State<AppState>, Path(raw): Path<String>) -> Result<Json<Detail>, ApiError> {
    let id = parse_id(&raw)?;
    let (dead_letter, record) = dead_letters::get(&state.pool, id).await?.ok_or_else(|| not_found(id))?;
    let admin = super::admin::admin(&state);
    let k = &admin.redriver.kafka;
    let (event, undecodable) = match decode(&record, &k.created_topic, &k.status_topic) {
        Ok(d) => {
            let change = match &d.happened {
                Happened::Created => None,
                Happened::StatusUpdated(u) => Some(format!("{} → {}", u.previous, u.current)),
            };
            let kind = d.kind().to_string();
            (Some(EventView { event_id: d.event_id, order_id: d.order_id, kind, change }), None)
        }
        Err(reason) => (None, Some(reason)),
    };
    Ok(Json(Detail { dead_letter, record: record_view(&record), event, undecodable }))
}

/// What a redrive came to.
#[derive(Serialize, ToSchema)]
pub struct RedriveResult {
    /// `applied`: the serving version's effects are committed and the dead letter is `redriven`;
    /// `failed`: it failed again and stays `open`, with the failure appended.
    pub outcome: String,
    pub class: Option<String>,
    pub reason: Option<String>,
    pub dead_letter: DeadLetter,
}

impl From<Refused> for ApiError {
    fn from(e: Refused) -> ApiError {
        let message = e.to_string();
        match e {
            Refused::NotFound(_) => ApiError::not_found("dead_letter_not_found", message),
            Refused::NotOpen { .. } => ApiError::new(StatusCode::CONFLICT, "not_open", message),
            Refused::Busy(_) => ApiError::new(StatusCode::CONFLICT, "busy", message),
            Refused::NotSubscribed { .. } => {
                ApiError::new(StatusCode::CONFLICT, "handler_not_subscribed", message)
            }
            Refused::EarlierOpen { .. } => {
                ApiError::new(StatusCode::CONFLICT, "earlier_dead_letter_open", message)
            }
            Refused::NotServing(_) => ApiError::new(StatusCode::CONFLICT, "handler_not_serving", message),
            Refused::Undecodable(_) => ApiError::new(StatusCode::CONFLICT, "undecodable", message),
            Refused::AlreadySettled => ApiError::new(StatusCode::CONFLICT, "already_settled", message),
            Refused::Unavailable(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
            Refused::Db(e) => e.into(),
        }
    }
}

async fn redrive_one(state: &AppState, id: i64) -> Result<RedriveResult, ApiError> {
    let admin = super::admin::admin(state);
    let (outcome, class, reason) = match admin.redriver.redrive(id).await? {
        Redriven::Applied => ("applied", None, None),
        Redriven::Failed { class, reason } => ("failed", Some(class.to_string()), Some(reason)),
    };
    let (dead_letter, _) = dead_letters::get(&state.pool, id).await?.ok_or_else(|| not_found(id))?;
    Ok(RedriveResult { outcome: outcome.into(), class, reason, dead_letter })
}

/// Runs the failed handler's serving version on the stored event. Its effects, the idempotency
/// record's turn from dead-lettered to applied and the dead letter's new state commit together:
/// a second redrive of the same dead letter changes nothing (409).
#[utoipa::path(post, path = "/admin/dead-letters/{id}/redrive", tag = "admin", params(("id" = i64, Path, description = "A dead letter id; anything but a 64-bit integer answers 400 `invalid_id`")), security(("admin_token" = [])),
    responses((status = 200, body = RedriveResult),
        (status = 400, body = ErrorBody, description = "`invalid_id`"),
        (status = 401, body = ErrorBody, description = "missing or wrong bearer token"),
        (status = 404, body = ErrorBody, description = "`dead_letter_not_found`, or `admin_disabled`: `ADMIN_TOKEN` is not set"),
        (status = 409, body = ErrorBody, description = "not open, busy, already settled, an earlier dead letter of the order is open, the handler is unsubscribed or not serving, or undecodable"),
        (status = 500, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "`unavailable` or `database_unavailable`")))]
pub async fn redrive(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<RedriveResult>, ApiError> {
    let id = parse_id(&raw)?;
    Ok(Json(redrive_one(&state, id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscardRequest {
    /// Why it will never be redriven; kept with the dead letter. Not blank; at most 1000
    /// characters once surrounding whitespace is trimmed.
    #[schema(
        min_length = 1,
        max_length = 1000,
        pattern = r"[^\t-\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]"
    )]
    pub reason: String,
}

fn check_reason(reason: &str) -> Result<(), ApiError> {
    match reason.trim().chars().count() {
        0 => Err(invalid("invalid_reason", "a discard needs a reason")),
        1..=1000 => Ok(()),
        _ => Err(invalid("invalid_reason", "a reason is at most 1000 characters")),
    }
}

/// Closes an open dead letter for good, with the operator's reason.
#[utoipa::path(post, path = "/admin/dead-letters/{id}/discard", tag = "admin", params(("id" = i64, Path, description = "A dead letter id; anything but a 64-bit integer answers 400 `invalid_id`")), security(("admin_token" = [])),
    request_body = DiscardRequest,
    responses((status = 200, body = DeadLetter),
        (status = 400, body = ErrorBody, description = "`invalid_id`, `invalid_reason`, `malformed_json`, or `invalid_body` (wrong type, missing or unknown field, NUL character)"),
        (status = 401, body = ErrorBody, description = "missing or wrong bearer token"),
        (status = 404, body = ErrorBody, description = "`dead_letter_not_found`, or `admin_disabled`: `ADMIN_TOKEN` is not set"),
        (status = 409, body = ErrorBody, description = "`not_open`"),
        (status = 413, body = ErrorBody, description = "body over 64 KiB"),
        (status = 415, body = ErrorBody, description = "no `application/json` content type"),
        (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn discard(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    ApiJson(req): ApiJson<DiscardRequest>,
) -> Result<Json<DeadLetter>, ApiError> {
    let id = parse_id(&raw)?;
    check_reason(&req.reason)?;
    let mut conn = state.pool.acquire().await?;
    // The update itself refuses a dead letter that is not open, so a racing redrive or discard
    // cannot be overwritten; the read is for the answer.
    if !dead_letters::resolve(&mut conn, id, LetterState::Discarded, req.reason.trim()).await? {
        let (letter, _) = dead_letters::get(&state.pool, id).await?.ok_or_else(|| not_found(id))?;
        return Err(Refused::NotOpen { id, state: letter.state.as_str() }.into());
    }
    let (dead_letter, _) = dead_letters::get(&state.pool, id).await?.ok_or_else(|| not_found(id))?;
    tracing::info!(dead_letter = id, handler = %dead_letter.handler, reason = %req.reason.trim(), "dead letter discarded");
    Ok(Json(dead_letter))
}

/// Which open dead letters a bulk action takes (all of them for `{}`), at most `limit`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkFilter {
    pub handler: Option<String>,
    pub class: Option<String>,
    pub order_id: Option<Uuid>,
    /// 1 to 500 (default 100).
    #[schema(minimum = 1, maximum = 500)]
    #[serde(default, deserialize_with = "super::error::integral_opt")]
    pub limit: Option<i64>,
}

impl BulkFilter {
    fn filter(&self) -> Filter {
        Filter {
            handler: self.handler.clone(),
            class: self.class.clone(),
            order_id: self.order_id,
            // `open_ids` takes only open ones.
            ..Filter::default()
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct BulkItem {
    pub id: i64,
    /// `applied`, `failed` (stays open), `refused` (not run; see `error`) or `error` (the host
    /// could not run it; the bulk redrive stopped there).
    pub outcome: String,
    pub error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct BulkResult {
    pub applied: usize,
    pub failed: usize,
    pub refused: usize,
    pub items: Vec<BulkItem>,
}

/// Redrives the matching open dead letters one after another, oldest first, so one order's dead
/// letters run in the order their events were consumed; one that fails leaves the later ones of
/// its order refused (an earlier one is still open).
#[utoipa::path(post, path = "/admin/dead-letters/redrive", tag = "admin", request_body = BulkFilter, security(("admin_token" = [])),
    responses((status = 200, body = BulkResult),
        (status = 400, body = ErrorBody, description = "`invalid_query` (`limit` not 1 to 500), `malformed_json`, or `invalid_body` (wrong type, unknown field, NUL character)"),
        (status = 401, body = ErrorBody, description = "missing or wrong bearer token"),
        (status = 404, body = ErrorBody, description = "`admin_disabled`: `ADMIN_TOKEN` is not set"),
        (status = 413, body = ErrorBody, description = "body over 64 KiB"),
        (status = 415, body = ErrorBody, description = "no `application/json` content type"),
        (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn redrive_bulk(
    State(state): State<AppState>,
    ApiJson(bulk): ApiJson<BulkFilter>,
) -> Result<Json<BulkResult>, ApiError> {
    let ids = dead_letters::open_ids(&state.pool, &bulk.filter(), page_limit(bulk.limit)?).await?;
    let admin = super::admin::admin(&state);
    let mut result = BulkResult { applied: 0, failed: 0, refused: 0, items: Vec::new() };
    for id in ids {
        let redriven = admin.redriver.redrive(id).await;
        let outcome = outcome_label(&redriven);
        let error = match redriven {
            Ok(Redriven::Applied) => None,
            Ok(Redriven::Failed { reason, .. }) => Some(reason),
            Err(e) => Some(e.to_string()),
        };
        match outcome {
            "applied" => result.applied += 1,
            "failed" => result.failed += 1,
            _ => result.refused += 1,
        }
        result.items.push(BulkItem { id, outcome: outcome.into(), error });
        // The host cannot redrive now: stop, and report what was done so far.
        if outcome == "error" {
            break;
        }
    }
    Ok(Json(result))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkDiscard {
    pub handler: Option<String>,
    pub class: Option<String>,
    pub order_id: Option<Uuid>,
    /// 1 to 500 (default 100).
    #[schema(minimum = 1, maximum = 500)]
    #[serde(default, deserialize_with = "super::error::integral_opt")]
    pub limit: Option<i64>,
    /// Why they will never be redriven; kept with each. Not blank; at most 1000 characters once
    /// surrounding whitespace is trimmed.
    #[schema(
        min_length = 1,
        max_length = 1000,
        pattern = r"[^\t-\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]"
    )]
    pub reason: String,
}

#[derive(Serialize, ToSchema)]
pub struct Discarded {
    pub discarded: Vec<i64>,
}

/// Discards the matching open dead letters, with one reason.
#[utoipa::path(post, path = "/admin/dead-letters/discard", tag = "admin", request_body = BulkDiscard, security(("admin_token" = [])),
    responses((status = 200, body = Discarded),
        (status = 400, body = ErrorBody, description = "`invalid_reason`, `invalid_query` (`limit` not 1 to 500), `malformed_json`, or `invalid_body` (wrong type, missing or unknown field, NUL character)"),
        (status = 401, body = ErrorBody, description = "missing or wrong bearer token"),
        (status = 404, body = ErrorBody, description = "`admin_disabled`: `ADMIN_TOKEN` is not set"),
        (status = 413, body = ErrorBody, description = "body over 64 KiB"),
        (status = 415, body = ErrorBody, description = "no `application/json` content type"),
        (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn discard_bulk(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<BulkDiscard>,
) -> Result<Json<Discarded>, ApiError> {
    check_reason(&req.reason)?;
    let bulk =
        BulkFilter { handler: req.handler, class: req.class, order_id: req.order_id, limit: req.limit };
    let ids = dead_letters::open_ids(&state.pool, &bulk.filter(), page_limit(bulk.limit)?).await?;
    let discarded =
        dead_letters::resolve_all(&state.pool, &ids, LetterState::Discarded, req.reason.trim()).await?;
    tracing::info!(count = discarded.len(), reason = %req.reason.trim(), "dead letters discarded");
    Ok(Json(Discarded { discarded }))
}
