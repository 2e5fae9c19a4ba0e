//! `/admin`: list, upload, roll back and unsubscribe handlers at runtime. Bearer `ADMIN_TOKEN`;
//! with the variable unset every `/admin` route answers 404 `admin_disabled`.
//!
//! An upload is compiled and checked against the world off the async threads before anything
//! changes, so a broken component gets a 400 naming the problem and the current version keeps
//! serving.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, AppState};
use crate::config::Secret;
use crate::handler_set::{HandlerInfo, HandlerSet, SetError, Source, Version};
use crate::runtime::{EventKind, HandlerSpec, LoadedHandler, Runtime};

/// What the admin routes need; absent when `ADMIN_TOKEN` is unset.
pub struct Admin {
    pub token: Secret,
    pub runtime: Arc<Runtime>,
    pub handlers: Arc<HandlerSet>,
    /// The host's values over every handler's config (`DEMO_MODE`).
    pub overlay: BTreeMap<String, String>,
    pub max_upload_bytes: usize,
    /// Uploads and replays being received, compiled or run at once; more are refused with 429
    /// before their body is read, so memory stays bounded by
    /// `MAX_CONCURRENT_UPLOADS × HANDLER_UPLOAD_MAX_BYTES`.
    pub uploads: tokio::sync::Semaphore,
    /// Runs dead letters again through their handlers' serving versions.
    pub redriver: crate::dispatch::redrive::Redriver,
    /// Shadow candidates: started by an upload with `mode=shadow`.
    pub shadows: Arc<crate::shadow::ShadowSet>,
}

/// Concurrent uploads: compiling is CPU-bound and a deploy uploads a handful of components.
pub const MAX_CONCURRENT_UPLOADS: usize = 2;

impl Admin {
    /// A place among the components being received, compiled or replayed at once, held until
    /// the returned permit drops; `None` when all are taken.
    pub(super) fn upload_place(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.uploads.try_acquire().ok()
    }

    /// How many places are taken now (`/metrics`).
    pub fn uploads_in_progress(&self) -> usize {
        MAX_CONCURRENT_UPLOADS - self.uploads.available_permits()
    }
}

/// 429 `too_many_uploads`, answered once the request's body is drained (see `refuse`).
pub(super) async fn too_many_uploads(body: Body) -> Response {
    let busy = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_uploads",
        format!("{MAX_CONCURRENT_UPLOADS} uploads or replays are already in progress; try again shortly"),
    );
    refuse(Request::new(body), busy.into_response()).await
}

/// Refuses every `/admin` request unless the admin API is on and the bearer token matches.
pub async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(admin) = &state.admin else {
        let refusal = ApiError::not_found("admin_disabled", "the admin API is off: ADMIN_TOKEN is not set");
        return refuse(request, refusal.into_response()).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if constant_time_eq(token.trim().as_bytes(), admin.token.0.as_bytes()) => {
            next.run(request).await
        }
        other => {
            let message = if other.is_some() { "wrong bearer token" } else { "missing bearer token" };
            let mut response =
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            refuse(request, response).await
        }
    }
}

/// How much of a refused request's body is read (and dropped) before answering, and for how long.
const REFUSED_BODY_LIMIT: usize = 64 << 10;
const REFUSED_BODY_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Answers `response` to a request that will not be served. A small body is read first (hyper
/// closes a connection whose request body was left unread, and a client still sending a small
/// body would see a reset instead of the 401 or 404 that explains it); a large one is never
/// buffered: the answer says `Connection: close` and the rest is left unread, so an
/// unauthenticated upload costs at most `REFUSED_BODY_LIMIT` bytes of memory for a moment.
pub(super) async fn refuse(request: Request, mut response: Response) -> Response {
    use futures_util::StreamExt as _;
    let mut body = request.into_body().into_data_stream();
    let mut read = 0usize;
    let drained = tokio::time::timeout(REFUSED_BODY_WAIT, async {
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { return false };
            read += chunk.len();
            if read > REFUSED_BODY_LIMIT {
                return false;
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    if !drained {
        response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    response
}

/// Compares without an early exit, so response timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) fn admin(state: &AppState) -> &Admin {
    state.admin.as_deref().expect("authorize runs before every admin route")
}

/// One version of a handler.
#[derive(Serialize, ToSchema)]
pub struct VersionView {
    /// Hex sha256 of the component.
    pub version: String,
    pub short_version: String,
    /// `dir` or `upload`.
    pub source: String,
    /// When this version started serving.
    pub since: DateTime<Utc>,
    /// When it was compiled or loaded from the cache.
    pub loaded_at: DateTime<Utc>,
    pub events: Vec<String>,
    pub invocations: u64,
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Serialize, ToSchema)]
pub struct HandlerView {
    pub name: String,
    /// False once deleted: no events go to it until a rollback or a new version.
    pub subscribed: bool,
    pub current: Option<VersionView>,
    /// Earlier versions, newest first: what a rollback returns to.
    pub previous: Vec<VersionView>,
    /// Its shadow candidate, running or the last one that ended (`GET …/shadow` has the rest).
    pub shadow: Option<super::shadow::ShadowBrief>,
}

fn version_view(v: &Version) -> VersionView {
    let h = &v.handler;
    let stats = h.stats.snapshot();
    let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    VersionView {
        version: h.version.clone(),
        short_version: h.short_version().to_string(),
        source: match v.source {
            Source::Dir => "dir",
            Source::Upload => "upload",
        }
        .into(),
        since: v.since.into(),
        loaded_at: h.loaded_at.into(),
        events: h.manifest.spec.events.iter().map(|e| e.to_string()).collect(),
        invocations: stats.invocations,
        errors: stats.errors,
        p50_ms: ms(stats.p50),
        p99_ms: ms(stats.p99),
    }
}

fn handler_view(info: &HandlerInfo, admin: &Admin) -> HandlerView {
    HandlerView {
        name: info.name.clone(),
        subscribed: info.current.is_some(),
        current: info.current.as_ref().map(version_view),
        previous: info.previous.iter().map(version_view).collect(),
        shadow: admin.shadows.get(&info.name).map(|s| super::shadow::brief(&s)),
    }
}

pub(super) fn view_of(admin: &Admin, name: &str) -> HandlerView {
    let info =
        admin.handlers.list().into_iter().find(|i| i.name == name).expect("the handler was just changed");
    handler_view(&info, admin)
}

impl From<SetError> for ApiError {
    fn from(e: SetError) -> ApiError {
        match e {
            SetError::Unknown(_) => ApiError::not_found("handler_not_found", e.to_string()),
            SetError::NothingToRollBack(_) => {
                ApiError::new(StatusCode::CONFLICT, "no_previous_version", e.to_string())
            }
        }
    }
}

/// Every handler the host knows, with its serving version and invocation figures.
#[utoipa::path(get, path = "/admin/handlers", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = [HandlerView]), (status = 401, body = super::ErrorBody, description = "missing or wrong bearer token"),
        (status = 404, body = super::ErrorBody, description = "`admin_disabled`: `ADMIN_TOKEN` is not set")))]
pub async fn list_handlers(State(state): State<AppState>) -> Json<Vec<HandlerView>> {
    let admin = admin(&state);
    Json(admin.handlers.list().iter().map(|info| handler_view(info, admin)).collect())
}

/// Manifest fields for an upload; each one not given is inherited from the serving version (or
/// the manifest defaults for a new handler).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadParams {
    /// Comma-separated: `order-created`, `status-updated` (whitespace around each is ignored).
    #[param(pattern = r"^(order-created|status-updated)(,(order-created|status-updated))*$")]
    pub events: Option<String>,
    /// 1 to 60000 (`handler_manifest::MAX_TIMEOUT_MS`); 400 `invalid_query` outside.
    #[param(minimum = 1, maximum = 60000)]
    pub timeout_ms: Option<u64>,
    /// At least 65536 (one wasm page), and at most the host's `HANDLER_MAX_MEMORY_BYTES` (400
    /// `invalid_component` above it).
    #[param(minimum = 65536)]
    pub memory_limit_bytes: Option<u64>,
    /// `serve` (the default) swaps the upload in; `shadow` runs it beside the serving version on
    /// every event, comparing answers and applying none, until it is promoted or dropped (202
    /// with the shadow's report). A shadow takes the serving version's `events` and limits: the
    /// three parameters above are refused with it.
    pub mode: Option<UploadMode>,
    /// Shadow only: promote the candidate by itself after this many comparisons within bounds.
    #[param(minimum = 1)]
    pub promote_after: Option<u64>,
    /// Shadow only: abort when more than this fraction of answers differ (0 to 1; below 20
    /// comparisons the bound is taken of 20, so one early difference does not abort 0.05; at
    /// `promote_after` the rate itself must hold).
    #[param(minimum = 0.0, maximum = 1.0)]
    pub max_diff_rate: Option<f64>,
    /// Shadow only: abort when the candidate traps or hits a limit more often than this.
    pub max_errors: Option<u64>,
}

#[derive(Deserialize, ToSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UploadMode {
    Serve,
    Shadow,
}

impl UploadParams {
    /// The shadow's policy when `mode=shadow`; policy fields without it are a mistake.
    fn shadow_policy(&self) -> Result<Option<crate::shadow::Policy>, ApiError> {
        let policy = crate::shadow::Policy {
            promote_after: self.promote_after,
            max_diff_rate: self.max_diff_rate,
            max_errors: self.max_errors,
        };
        let invalid = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", m);
        if self.mode != Some(UploadMode::Shadow) {
            if policy != crate::shadow::Policy::default() {
                return Err(invalid("promote_after, max_diff_rate and max_errors need mode=shadow".into()));
            }
            return Ok(None);
        }
        if self.events.is_some() || self.timeout_ms.is_some() || self.memory_limit_bytes.is_some() {
            return Err(invalid(
                "a shadow candidate runs with the serving version's events and limits, so that both \
                 answer the same events under the same limits: events, timeout_ms and \
                 memory_limit_bytes need mode=serve"
                    .into(),
            ));
        }
        if let Some(rate) = policy.max_diff_rate.filter(|r| !(0.0..=1.0).contains(r)) {
            return Err(invalid(format!("max_diff_rate must be between 0 and 1, not {rate}")));
        }
        if policy.promote_after == Some(0) {
            return Err(invalid("promote_after must be at least 1".into()));
        }
        Ok(Some(policy))
    }
}

/// The raw bytes of a WebAssembly component (built for `wasm32-wasip2`), not empty.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct ComponentBytes(pub Vec<u8>);

/// Uploads a new version of `name` (the raw component bytes as the body) and swaps it in, or,
/// with `mode=shadow`, starts it as a shadow candidate of the serving version.
#[utoipa::path(put, path = "/admin/handlers/{name}", tag = "admin", security(("admin_token" = [])),
    params(("name" = String, Path, description = "1 to 64 ASCII letters, digits, `-` or `_`",
            pattern = r"^[A-Za-z0-9_-]{1,64}$"), UploadParams),
    request_body(content = ComponentBytes, content_type = "application/wasm"),
    responses((status = 200, body = HandlerView, description = "swapped in (`mode=serve`)"),
        (status = 202, body = super::shadow::ShadowView, description = "started as a shadow candidate (`mode=shadow`)"),
        (status = 400, body = super::ErrorBody, description = "`invalid_query`, `invalid_name`, or `invalid_component` (empty body, not a WebAssembly component, wrong world, bad manifest values)"),
        (status = 409, body = super::ErrorBody, description = "`nothing_serving`: a shadow needs a serving version"),
        (status = 401, body = super::ErrorBody, description = "missing or wrong bearer token"), (status = 404, body = super::ErrorBody, description = "`admin_disabled`: `ADMIN_TOKEN` is not set"),
        (status = 413, body = super::ErrorBody, description = "over `HANDLER_UPLOAD_MAX_BYTES`"),
        (status = 429, body = super::ErrorBody, description = "too many uploads at once"),
        (status = 500, body = super::ErrorBody, description = "the loader task failed")))]
pub async fn put_handler(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<UploadParams>, QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let admin = admin(&state);
    let _place = match admin.upload_place() {
        Some(place) => place,
        None => return Ok(too_many_uploads(body).await),
    };
    // Read before anything is checked: hyper closes a connection whose request body was left
    // unread, and a client still sending the component would see a broken pipe instead of the
    // 400 or 409 that explains it. The caller is authenticated and the read is bounded.
    let bytes = read_upload(body, admin.max_upload_bytes).await?;
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    check_upload_name(&name)?;
    let policy = params.shadow_policy()?;
    // Before compiling anything: a shadow needs a serving version (`start` checks again).
    if policy.is_some() && admin.handlers.current_of(&name).is_none() {
        return Err(crate::shadow::ShadowError::NothingServing(name).into());
    }
    let spec = upload_spec(admin, &name, &params)?;
    let handler = load_component(admin, &name, spec, bytes).await?;
    let Some(policy) = policy else {
        let handler = admin.handlers.install(handler, Source::Upload);
        tracing::info!(handler = %handler.cause(), "handler uploaded and swapped in");
        return Ok(Json(view_of(admin, &name)).into_response());
    };
    let shadow = admin.shadows.start(handler, policy)?;
    Ok((StatusCode::ACCEPTED, Json(super::shadow::shadow_view(&shadow))).into_response())
}

/// Compiles and checks an uploaded component against the world, off the async threads; nothing
/// changes yet. A component that does not fit is a 400 naming the problem.
pub(super) async fn load_component(
    admin: &Admin,
    name: &str,
    spec: HandlerSpec,
    bytes: axum::body::Bytes,
) -> Result<LoadedHandler, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_component",
            "the body is empty: send the component bytes",
        ));
    }
    let manifest = spec.into_manifest(name, &format!("{name}.wasm (uploaded)"), None);
    let (runtime, overlay) = (admin.runtime.clone(), admin.overlay.clone());
    let loaded: anyhow::Result<LoadedHandler> =
        tokio::task::spawn_blocking(move || runtime.load(manifest, &bytes, &overlay)).await.map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("the loader failed: {e}"))
        })?;
    loaded.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_component", format!("{e:#}")))
}

/// The registry's rule for a name (`runtime::validate_name`, length included), checked before
/// anything is compiled, less the `.` a manifest may use.
fn check_upload_name(name: &str) -> Result<(), ApiError> {
    if name.contains('.') || crate::runtime::validate_name(name).is_err() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_name",
            format!("handler name {name:?} must be 1 to 64 letters, digits, `-` or `_`"),
        ));
    }
    Ok(())
}

/// An upload's whole body, at most `max` bytes (413 above). Every route that takes a component
/// reads it before it validates anything else, so a refusal reaches a client that is still sending.
pub(super) async fn read_upload(body: Body, max: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, max).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a component may be at most {max} bytes (HANDLER_UPLOAD_MAX_BYTES)"),
        )
    })
}

/// The serving version's spec (or the defaults for a new name), with the query's overrides.
fn upload_spec(admin: &Admin, name: &str, params: &UploadParams) -> Result<HandlerSpec, ApiError> {
    let mut spec =
        admin.handlers.current_of(name).map_or_else(HandlerSpec::default, |h| h.manifest.spec.clone());
    if let Some(events) = &params.events {
        spec.events = events.split(',').map(|e| parse_event(e.trim())).collect::<Result<_, _>>()?;
    }
    spec.timeout_ms = params.timeout_ms.unwrap_or(spec.timeout_ms);
    spec.memory_limit_bytes = params.memory_limit_bytes.unwrap_or(spec.memory_limit_bytes);
    // The overrides are the query's: a limit out of range is its error, answered before compiling.
    spec.validate().map_err(|problem| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("the upload's limits: {problem}"))
    })?;
    Ok(spec)
}

fn parse_event(e: &str) -> Result<EventKind, ApiError> {
    e.parse().map_err(|message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message))
}

/// Outbox records the relay gave up on (the broker refused them for good, too often), oldest
/// first, each with how many later records of its key wait behind it.
#[utoipa::path(get, path = "/admin/outbox/parked", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = [crate::db::outbox::Parked]), (status = 401, body = super::ErrorBody, description = "missing or wrong bearer token"),
        (status = 404, body = super::ErrorBody, description = "`admin_disabled`: `ADMIN_TOKEN` is not set"), (status = 500, body = super::ErrorBody), (status = 503, body = super::ErrorBody, description = "database unavailable")))]
pub async fn parked_outbox(
    State(state): State<AppState>,
) -> Result<Json<Vec<crate::db::outbox::Parked>>, ApiError> {
    Ok(Json(crate::db::outbox::parked(&state.pool).await?))
}

/// The most busy keys one `/admin/dispatch/backlog` lists.
const MAX_TOP_KEYS: usize = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BacklogParams {
    /// How many of the busiest keys to list: 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub top: Option<usize>,
}

/// The dispatcher's in-flight events on this replica.
#[derive(Debug, Serialize, ToSchema)]
pub struct BacklogView {
    /// Every partition this replica holds a position on.
    pub partitions: Vec<PartitionView>,
    /// Keys with an event running.
    pub keys_running: usize,
    /// Events queued behind a running event of their key.
    pub events_waiting: usize,
    /// The keys with the most events waiting behind them, most first.
    pub top_keys: Vec<BusyKeyView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PartitionView {
    pub topic: String,
    pub partition: i32,
    /// Events consumed and not yet finished (applied, dead-lettered or skipped).
    pub in_flight: usize,
    /// Milliseconds since the oldest of them was consumed.
    pub oldest_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BusyKeyView {
    /// The record key (the order id) as text, or `hex:` and its bytes.
    pub key: String,
    pub waiting: usize,
    /// Milliseconds since the first of them was queued.
    pub oldest_waiting_ms: u64,
}

/// Where this replica's dispatcher has events waiting: per partition, and the keys with the most
/// events queued behind their running one (a slow or retrying order holds up only its own key).
#[utoipa::path(get, path = "/admin/dispatch/backlog", tag = "admin", params(BacklogParams), security(("admin_token" = [])),
    responses((status = 200, body = BacklogView),
        (status = 400, body = super::ErrorBody, description = "`invalid_query`: `top` is not 1 to 100"),
        (status = 401, body = super::ErrorBody, description = "missing or wrong bearer token"), (status = 404, body = super::ErrorBody, description = "`admin_disabled`: `ADMIN_TOKEN` is not set")))]
pub async fn dispatch_backlog(
    State(state): State<AppState>,
    params: Result<Query<BacklogParams>, QueryRejection>,
) -> Result<Json<BacklogView>, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let top = match params.top.unwrap_or(20) {
        n @ 1..=MAX_TOP_KEYS => n,
        n => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("top must be 1 to {MAX_TOP_KEYS}, not {n}"),
            ));
        }
    };
    let lanes = state.backlog.key_lanes(top);
    Ok(Json(BacklogView {
        partitions: state
            .backlog
            .partitions()
            .into_iter()
            .map(|p| PartitionView {
                topic: p.topic,
                partition: p.partition,
                in_flight: p.events,
                oldest_ms: p.oldest.as_millis() as u64,
            })
            .collect(),
        keys_running: lanes.running,
        events_waiting: lanes.waiting,
        top_keys: lanes
            .top
            .into_iter()
            .map(|k| BusyKeyView {
                key: crate::db::outbox::printable(&k.key),
                waiting: k.waiting,
                oldest_waiting_ms: k.oldest_waiting.as_millis() as u64,
            })
            .collect(),
    }))
}

/// Returns `name` to the version before the current one (or restores a deleted handler).
#[utoipa::path(post, path = "/admin/handlers/{name}/rollback", tag = "admin", security(("admin_token" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = HandlerView),
        (status = 400, body = super::ErrorBody, description = "the path holds a NUL (`%00`) or is not UTF-8"),
        (status = 401, body = super::ErrorBody, description = "missing or wrong bearer token"),
        (status = 404, body = super::ErrorBody, description = "`handler_not_found`, or `admin_disabled`"),
        (status = 409, body = super::ErrorBody, description = "`no_previous_version`")))]
pub async fn rollback_handler(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<HandlerView>, ApiError> {
    let admin = admin(&state);
    let handler = admin.handlers.rollback(&name)?;
    tracing::info!(handler = %handler.cause(), "handler rolled back");
    Ok(Json(view_of(admin, &name)))
}

/// Unsubscribes `name`: events dispatched from now on skip it. A rollback brings it back.
#[utoipa::path(delete, path = "/admin/handlers/{name}", tag = "admin", security(("admin_token" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = HandlerView),
        (status = 400, body = super::ErrorBody, description = "the path holds a NUL (`%00`) or is not UTF-8"),
        (status = 401, body = super::ErrorBody, description = "missing or wrong bearer token"),
        (status = 404, body = super::ErrorBody, description = "`handler_not_found`, or `admin_disabled`")))]
pub async fn delete_handler(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<HandlerView>, ApiError> {
    let admin = admin(&state);
    admin.handlers.remove(&name)?;
    tracing::info!(handler = %name, "handler unsubscribed");
    Ok(Json(view_of(admin, &name)))
}
