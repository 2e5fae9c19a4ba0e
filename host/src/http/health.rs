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

/// What readiness consults besides Postgres.
#[derive(Clone)]
pub struct Probes {
    pub kafka: Arc<Producer>,
    /// How many handlers are loaded right now.
    pub handlers_loaded: Arc<dyn Fn() -> usize + Send + Sync>,
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

/// Readiness: Postgres answers, Kafka answers, and at least one handler is loaded.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let (pg, kafka) = tokio::join!(
        tokio::time::timeout(PROBE_TIMEOUT, db::ping(&state.pool)),
        tokio::time::timeout(PROBE_TIMEOUT, state.probes.kafka.check(PROBE_TIMEOUT)),
    );
    let handlers_loaded = (state.probes.handlers_loaded)();
    let r =
        Readiness { status: String::new(), postgres: outcome(pg), kafka: outcome(kafka), handlers_loaded };
    let ready = r.postgres == "ok" && r.kafka == "ok" && handlers_loaded > 0;
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(Readiness { status: if ready { "ready" } else { "not ready" }.into(), ..r }))
}
