//! `/healthz` (the process is alive) and `/readyz` (Postgres, Kafka and handlers are all usable).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::db;
use crate::kafka::Producer;
use crate::runtime::EventKind;
use crate::supervise::Supervisor;

/// How many handlers are loaded, and which event types would wait for want of one.
pub type HandlerProbe = Arc<dyn Fn() -> (usize, Vec<EventKind>) + Send + Sync>;

/// What readiness consults besides Postgres.
#[derive(Clone)]
pub struct Probes {
    pub kafka: Arc<Producer>,
    pub handlers: HandlerProbe,
    pub supervisor: Arc<Supervisor>,
}

/// Each probe must answer within this, so a hung dependency makes the pod unready rather than
/// hanging the kubelet's probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, ToSchema)]
pub struct Liveness {
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not ready`.
    pub status: String,
    /// `ok` or why not.
    pub postgres: String,
    pub kafka: String,
    pub handlers_loaded: usize,
    /// Event types whose events are held because no handler for them is loaded (see README,
    /// "Events"): their consumption stalls until one is.
    pub events_waiting_for_handler: Vec<String>,
    /// Background tasks that died (the process is shutting down).
    pub failed_tasks: Vec<String>,
}

/// Liveness: answers while the process can serve requests at all.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Liveness)))]
pub async fn healthz() -> Json<Liveness> {
    Json(Liveness { status: "ok".into() })
}

fn outcome(r: Result<anyhow::Result<()>, tokio::time::error::Elapsed>) -> String {
    match r {
        Ok(Ok(())) => "ok".into(),
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => format!("no answer within {PROBE_TIMEOUT:?}"),
    }
}

/// Readiness: Postgres answers, Kafka answers (and the producer is usable), every event type
/// that needs a handler has one, and no background task has died.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let (pg, kafka) = tokio::join!(
        tokio::time::timeout(PROBE_TIMEOUT, db::ping(&state.pool)),
        tokio::time::timeout(PROBE_TIMEOUT, state.probes.kafka.check(PROBE_TIMEOUT)),
    );
    let (handlers_loaded, waiting) = (state.probes.handlers)();
    let r = Readiness {
        status: String::new(),
        postgres: outcome(pg),
        kafka: outcome(kafka),
        handlers_loaded,
        events_waiting_for_handler: waiting.iter().map(|k| k.to_string()).collect(),
        failed_tasks: state.probes.supervisor.deaths(),
    };
    let ready = r.postgres == "ok"
        && r.kafka == "ok"
        && r.events_waiting_for_handler.is_empty()
        && r.failed_tasks.is_empty();
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(Readiness { status: if ready { "ready" } else { "not ready" }.into(), ..r }))
}
