//! `/admin` routes for safe rollout: a handler's shadow candidate (report, promote, drop),
//! replay of a candidate against the invocation journal, and an order's journal.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::admin::{HandlerView, admin, load_component, read_upload, too_many_uploads, view_of};
use super::{ApiError, AppState, ErrorBody};
use crate::db::journal::{self, Invocation};
use crate::dispatch::DbOrders;
use crate::journal::Answer;
use crate::runtime::Event;
use crate::shadow::{Decider, Phase, Shadow, ShadowError};

/// What `GET /admin/handlers` shows of a handler's shadow.
#[derive(Serialize, ToSchema)]
pub struct ShadowBrief {
    /// `running`, `promoted`, `aborted` or `dropped`.
    pub state: String,
    pub candidate_version: String,
    pub compared: u64,
    pub different: u64,
    pub candidate_errors: u64,
}

#[derive(Serialize, ToSchema)]
pub struct PolicyView {
    pub promote_after: Option<u64>,
    pub max_diff_rate: Option<f64>,
    pub max_errors: Option<u64>,
}

/// p50 and p99 of one side's invocation time.
#[derive(Serialize, ToSchema)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// One event on which the candidate answered differently (or failed).
#[derive(Serialize, ToSchema)]
pub struct DiffView {
    pub at: DateTime<Utc>,
    pub event_id: String,
    pub order_id: Uuid,
    /// The event both versions were given.
    #[schema(value_type = Object)]
    pub input: serde_json::Value,
    /// `{"outcome": "actions" | "handler-error" | "trap", "output": …}`.
    #[schema(value_type = Object)]
    pub serving: serde_json::Value,
    #[schema(value_type = Object)]
    pub candidate: serde_json::Value,
}

/// A shadow candidate's standing: counts, timings, the policy and its decision, recent diffs.
#[derive(Serialize, ToSchema)]
pub struct ShadowView {
    pub handler: String,
    pub candidate_version: String,
    /// `running`, `promoted`, `aborted` or `dropped`.
    pub state: String,
    /// Who promoted it: `policy` or `operator`.
    pub decided_by: Option<String>,
    /// Why it was aborted.
    pub reason: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub policy: PolicyView,
    /// Comparisons made: identical + different + candidate_errors.
    pub compared: u64,
    pub identical: u64,
    pub different: u64,
    /// Candidate traps and limit hits (the serving answer stood, as always).
    pub candidate_errors: u64,
    /// Events not compared: no shadow capacity free, or a host failure on either side.
    pub skipped: u64,
    pub serving: Latency,
    pub candidate: Latency,
    /// The last differences, oldest first (at most 20).
    pub diffs: Vec<DiffView>,
}

/// Who ended it, why, and when: (decided_by, reason, ended_at).
fn ending(phase: &Phase) -> (Option<String>, Option<String>, Option<DateTime<Utc>>) {
    match phase {
        Phase::Running => (None, None, None),
        Phase::Promoted { at, by: Decider::Policy } => (Some("policy".into()), None, Some(*at)),
        Phase::Promoted { at, by: Decider::Operator } | Phase::Dropped { at } => {
            (Some("operator".into()), None, Some(*at))
        }
        Phase::Aborted { at, reason } => (None, Some(reason.clone()), Some(*at)),
    }
}

pub fn brief(shadow: &Shadow) -> ShadowBrief {
    let c = shadow.counts();
    ShadowBrief {
        state: c.phase.as_str().into(),
        candidate_version: shadow.candidate.version.clone(),
        compared: c.compared,
        different: c.different,
        candidate_errors: c.candidate_errors,
    }
}

pub fn shadow_view(shadow: &Shadow) -> ShadowView {
    let r = shadow.report();
    let c = &r.counts;
    let (decided_by, reason, ended_at) = ending(&c.phase);
    ShadowView {
        handler: r.handler,
        candidate_version: r.candidate_version,
        state: c.phase.as_str().into(),
        decided_by,
        reason,
        started_at: r.started,
        ended_at,
        policy: PolicyView {
            promote_after: r.policy.promote_after,
            max_diff_rate: r.policy.max_diff_rate,
            max_errors: r.policy.max_errors,
        },
        compared: c.compared,
        identical: c.identical,
        different: c.different,
        candidate_errors: c.candidate_errors,
        skipped: c.skipped,
        serving: Latency { p50_ms: r.serving_ms.0, p99_ms: r.serving_ms.1 },
        candidate: Latency { p50_ms: r.candidate_ms.0, p99_ms: r.candidate_ms.1 },
        diffs: r
            .diffs
            .into_iter()
            .map(|d| DiffView {
                at: d.at,
                event_id: d.event_id,
                order_id: d.order_id,
                input: d.input,
                serving: d.serving,
                candidate: d.candidate,
            })
            .collect(),
    }
}

impl From<ShadowError> for ApiError {
    fn from(e: ShadowError) -> ApiError {
        let message = e.to_string();
        match e {
            ShadowError::NothingServing(_) => ApiError::new(StatusCode::CONFLICT, "nothing_serving", message),
            ShadowError::NotRunning(_) => ApiError::new(StatusCode::CONFLICT, "shadow_not_running", message),
            ShadowError::Unknown(_) => ApiError::not_found("shadow_not_found", message),
        }
    }
}

const NAME: &str = "A handler name";

/// The shadow candidate of `name`: running, or the last one that ended.
#[utoipa::path(get, path = "/admin/handlers/{name}/shadow", tag = "admin", security(("admin_token" = [])),
    params(("name" = String, Path, description = NAME)),
    responses((status = 200, body = ShadowView),
        (status = 400, body = ErrorBody, description = "the path holds a NUL (`%00`) or is not UTF-8"),
        (status = 401, body = ErrorBody, description = "missing or wrong bearer token"),
        (status = 404, body = ErrorBody, description = "`shadow_not_found`, or `admin_disabled`")))]
pub async fn get_shadow(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ShadowView>, ApiError> {
    let shadow = admin(&state).shadows.get(&name).ok_or(ShadowError::Unknown(name))?;
    Ok(Json(shadow_view(&shadow)))
}

/// Makes the running candidate serve now: an ordinary swap (versions, rollback, drain).
#[utoipa::path(post, path = "/admin/handlers/{name}/shadow/promote", tag = "admin", security(("admin_token" = [])),
    params(("name" = String, Path, description = NAME)),
    responses((status = 200, body = HandlerView),
        (status = 400, body = ErrorBody, description = "the path holds a NUL (`%00`) or is not UTF-8"),
        (status = 401, body = ErrorBody, description = "missing or wrong bearer token"),
        (status = 404, body = ErrorBody, description = "`shadow_not_found`, or `admin_disabled`"),
        (status = 409, body = ErrorBody, description = "`shadow_not_running`: it already ended")))]
pub async fn promote_shadow(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<HandlerView>, ApiError> {
    let admin = admin(&state);
    admin.shadows.promote(&name)?;
    Ok(Json(view_of(admin, &name)))
}

/// Ends the running candidate without promoting it; the serving version never noticed it.
#[utoipa::path(delete, path = "/admin/handlers/{name}/shadow", tag = "admin", security(("admin_token" = [])),
    params(("name" = String, Path, description = NAME)),
    responses((status = 200, body = ShadowView),
        (status = 400, body = ErrorBody, description = "the path holds a NUL (`%00`) or is not UTF-8"),
        (status = 401, body = ErrorBody, description = "missing or wrong bearer token"),
        (status = 404, body = ErrorBody, description = "`shadow_not_found`, or `admin_disabled`"),
        (status = 409, body = ErrorBody, description = "`shadow_not_running`: it already ended")))]
pub async fn drop_shadow(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ShadowView>, ApiError> {
    let admin = admin(&state);
    admin.shadows.drop_running(&name)?;
    let shadow = admin.shadows.get(&name).ok_or(ShadowError::Unknown(name))?;
    Ok(Json(shadow_view(&shadow)))
}

/// The longest look back a replay takes: ten years, far past any journal retention, and small
/// enough that Postgres's interval arithmetic never overflows (a 400 naming the bound instead).
const MAX_SINCE_SECS: u64 = 315_360_000;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReplayParams {
    /// How far back in the journal, in seconds (default 86400: a day; at most 315360000).
    #[param(minimum = 1, maximum = 315360000)]
    pub since_secs: Option<u64>,
    /// Most invocations replayed, oldest first (default 1000, at most 10000).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<i64>,
}

/// The result of replaying a candidate against recorded invocations.
#[derive(Serialize, ToSchema)]
pub struct ReplayView {
    pub handler: String,
    pub candidate_version: String,
    /// Recorded invocations run through the candidate.
    pub replayed: u64,
    pub identical: u64,
    pub different: u64,
    /// Candidate traps and limit hits.
    pub candidate_errors: u64,
    /// Not compared: the candidate met a host failure, or the record could not be read back.
    pub skipped: u64,
    /// Differing invocations, oldest first (at most 50).
    pub diffs: Vec<ReplayDiff>,
}

#[derive(Serialize, ToSchema)]
pub struct ReplayDiff {
    /// The journal entry's id.
    pub invocation_id: i64,
    pub event_id: String,
    pub order_id: Uuid,
    /// The version that answered then.
    pub recorded_version: String,
    /// `{"outcome": …, "output": …}` as recorded, and as the candidate answers now.
    #[schema(value_type = Object)]
    pub recorded: serde_json::Value,
    #[schema(value_type = Object)]
    pub candidate: serde_json::Value,
}

const DIFFS_SHOWN: usize = 50;

/// Runs a candidate (the raw component as the body) against `name`'s recorded invocations and
/// compares its answers with what was recorded. Nothing is applied and nothing serves: a
/// regression test against production traffic before an upload. `host.get-order` answers from
/// the database as it is now.
#[utoipa::path(post, path = "/admin/handlers/{name}/replay", tag = "admin", security(("admin_token" = [])),
    params(("name" = String, Path, description = NAME), ReplayParams),
    request_body(content = super::admin::ComponentBytes, content_type = "application/wasm"),
    responses((status = 200, body = ReplayView),
        (status = 400, body = ErrorBody, description = "`invalid_query`, or `invalid_component` (empty, not a component, wrong world)"),
        (status = 401, body = ErrorBody, description = "missing or wrong bearer token"),
        (status = 404, body = ErrorBody, description = "`handler_not_found` (nothing serves under that name), or `admin_disabled`"),
        (status = 413, body = ErrorBody, description = "over `HANDLER_UPLOAD_MAX_BYTES`"),
        (status = 429, body = ErrorBody, description = "`too_many_uploads`: two uploads or replays already in progress"),
        (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn replay(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<ReplayParams>, QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let admin = admin(&state);
    // A replay buffers and compiles a component as an upload does, then runs it many times.
    let _place = match admin.upload_place() {
        Some(place) => place,
        None => return Ok(too_many_uploads(body).await),
    };
    let bytes = read_upload(body, admin.max_upload_bytes).await?;
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let limit = params.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) || !(1..=MAX_SINCE_SECS).contains(&params.since_secs.unwrap_or(1)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be 1 to 10000 and since_secs 1 to {MAX_SINCE_SECS}"),
        ));
    }
    let serving = admin
        .handlers
        .current_of(&name)
        .ok_or_else(|| ApiError::not_found("handler_not_found", format!("no handler {name:?} is serving")))?;
    let candidate = load_component(admin, &name, serving.manifest.spec.clone(), bytes).await?;
    let since = Duration::from_secs(params.since_secs.unwrap_or(86_400));
    let recorded = journal::answered_by(&state.pool, &name, since, limit).await?;
    let mut view = ReplayView {
        handler: name,
        candidate_version: candidate.version.clone(),
        replayed: 0,
        identical: 0,
        different: 0,
        candidate_errors: 0,
        skipped: 0,
        diffs: Vec::new(),
    };
    let orders = std::sync::Arc::new(DbOrders(state.pool.clone()));
    for entry in recorded {
        let Ok(event) = serde_json::from_value::<Event>(entry.input.clone()) else {
            view.skipped += 1;
            continue;
        };
        let result = admin.runtime.invoke(&candidate, &event, orders.clone()).await;
        if matches!(result, Err(crate::runtime::DispatchError::Host(_))) {
            view.skipped += 1;
            continue;
        }
        view.replayed += 1;
        let answer = Answer::of(&result);
        if matches!(result, Err(crate::runtime::DispatchError::Trap { .. })) {
            view.candidate_errors += 1;
        } else if answer.outcome() == entry.outcome && answer.output() == entry.output {
            view.identical += 1;
            continue;
        } else {
            view.different += 1;
        }
        if view.diffs.len() < DIFFS_SHOWN {
            view.diffs.push(ReplayDiff {
                invocation_id: entry.id,
                event_id: entry.event_id,
                order_id: entry.order_id,
                recorded_version: entry.version,
                recorded: serde_json::json!({"outcome": entry.outcome, "output": entry.output}),
                candidate: answer.to_json(),
            });
        }
    }
    Ok(Json(view).into_response())
}

/// What every handler invocation for one order was given and answered, oldest first, for the
/// orders the journal records (`JOURNAL_MODE`).
#[utoipa::path(get, path = "/admin/orders/{id}/invocations", tag = "admin", security(("admin_token" = [])),
    params(("id" = Uuid, Path, description = "The order id (a UUID); any other text answers 404 `order_not_found`")),
    responses((status = 200, body = [Invocation]),
        (status = 400, body = ErrorBody, description = "the path holds a NUL (`%00`) or is not UTF-8"),
        (status = 401, body = ErrorBody, description = "missing or wrong bearer token"),
        (status = 404, body = ErrorBody, description = "`order_not_found`, or `admin_disabled`"),
        (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn order_invocations(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<Invocation>>, ApiError> {
    let order_id = Uuid::parse_str(&id).map_err(|_| ApiError::order_not_found(&id))?;
    Ok(Json(journal::for_order(&state.pool, order_id, 1000).await?))
}
