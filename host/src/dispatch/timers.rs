//! The timer scheduler: fires due delayed status changes through the same `change_status` path as
//! every other change. Timers live in Postgres, so they survive restarts; `FOR UPDATE SKIP LOCKED`
//! lets every replica run a scheduler without firing a timer twice.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::config::Topics;
use crate::db::dispatch as store;
use crate::db::orders::{Cause, StoreError, change_status};

/// Timers fired per transaction.
const BATCH: i64 = 200;
/// Longest sleep without a wake-up: a safety net if a notification was missed.
const MAX_SLEEP: Duration = Duration::from_secs(5);

/// Sleeps until the earliest timer is due or a new one is created, fires what is due, repeats;
/// until `shutdown`.
pub async fn run(pool: PgPool, topics: Topics, wake: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    while !*shutdown.borrow() {
        let sleep = match fire_due(&pool, &topics).await {
            Ok(n) if n as i64 == BATCH => continue,
            Ok(_) => {
                backoff = Duration::from_millis(100);
                match store::millis_until_next_due(&pool).await {
                    Ok(Some(ms)) => Duration::from_millis(ms.max(0) as u64).min(MAX_SLEEP),
                    Ok(None) => MAX_SLEEP,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the next timer failed");
                        backoff
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "firing timers failed");
                backoff = (backoff * 2).min(MAX_SLEEP);
                backoff
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = wake.notified() => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
    }
}

/// Fires every due timer claimed in one transaction. A change the state machine refuses (the
/// order moved on, or was cancelled) is logged and the timer dropped; it is never applied.
async fn fire_due(pool: &PgPool, topics: &Topics) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let due = store::claim_due(&mut tx, BATCH).await?;
    for t in &due {
        let cause = Cause::handler(&t.cause, &t.event_id, &t.handler_version, &t.consumed_topic);
        // The change, and the record it publishes, continue the trace of whoever scheduled it.
        let span = tracing::info_span!("timer.fire", order_id = %t.order_id, to = %t.to_status);
        if let Some(tp) = &t.traceparent {
            crate::telemetry::set_parent(&span, tp);
        }
        let fire = async {
            match t.to_status.parse() {
                Err(e) => tracing::error!(timer = t.id, error = %e, "timer with an unknown status dropped"),
                Ok(to) => match change_status(&mut tx, t.order_id, to, &cause, topics).await {
                    Ok(c) => {
                        tracing::info!(order_id = %t.order_id, from = %c.previous, to = %c.status, cause = %t.cause, "timer fired")
                    }
                    Err(e @ (StoreError::IllegalTransition { .. } | StoreError::OrderNotFound(_))) => {
                        tracing::warn!(order_id = %t.order_id, cause = %t.cause, error = %e, "timer refused by the state machine")
                    }
                    Err(e) => return Err(anyhow::Error::from(e)),
                },
            }
            Ok(())
        };
        fire.instrument(span).await?;
        store::delete_timer(&mut tx, t.id).await?;
    }
    tx.commit().await?;
    Ok(due.len())
}
