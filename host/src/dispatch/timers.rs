//! The timer scheduler: fires due delayed status changes through the same `change_status` path as
//! every other change. Timers live in Postgres, so they survive restarts; `FOR UPDATE SKIP LOCKED`
//! lets every replica run a scheduler without firing a timer twice.
//!
//! The timers claimed in one pass fire together, one statement per table. When that fails for a
//! timer's data, the pass fires them again each in its own savepoint: the failing one rolls back
//! only itself, is retried later on its own, and after `MAX_ATTEMPTS` is parked; the timers
//! behind it fire on time. A transient failure (Postgres unreachable) rolls the pass back and the
//! scheduler backs off.

use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeSet;

use sqlx::{Acquire, PgConnection, PgPool};
use tokio::sync::{Notify, watch};
use tracing::Instrument;
use uuid::Uuid;

use super::commit::{Moves, Who};
use crate::config::Topics;
use crate::db::batch::{self, Writes};
use crate::db::effects::{self, NextDue, Timer};
use crate::db::orders::{self, Cause, StoreError, change_status};
use crate::db::{self, FailureClass};
use crate::metrics::{Metrics, TimerPass};
use crate::orders::Status;

/// Timers fired per transaction.
const BATCH: i64 = 200;
/// Longest sleep without a wake-up: a safety net if a notification was missed, and the longest
/// that timers claimed by a replica that then died wait (its claims end with its session, with no
/// notification).
const MAX_SLEEP: Duration = Duration::from_secs(5);
/// Firings of one timer that fail for a non-state-machine reason before it is parked.
const MAX_ATTEMPTS: i32 = 5;

/// Sleeps until the earliest timer is due or a new one is created, fires what is due, repeats;
/// until `shutdown`.
pub async fn run(
    pool: PgPool,
    topics: Topics,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    while !*shutdown.borrow() {
        let (found, sleep) = match fire_due(&pool, &topics).await {
            Ok(n) if n as i64 == BATCH => (TimerPass::fired, Duration::ZERO),
            Ok(fired) => {
                backoff = Duration::from_millis(100);
                let found = if fired > 0 { TimerPass::fired } else { TimerPass::none_due };
                match effects::next_due(&pool).await {
                    Ok(next) => next_sleep(next, fired > 0, found),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the next timer failed");
                        (found, backoff)
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "firing timers failed");
                let now = backoff;
                backoff = (backoff * 2).min(MAX_SLEEP);
                (TimerPass::failed, now)
            }
        };
        metrics.timer_pass(found);
        if sleep.is_zero() {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = wake.notified() => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
    }
}

/// What a pass found and how long to sleep after it, from the next due times. Timers another
/// replica holds are not waited for: it deletes them when it commits, or releases them if it
/// dies (picked up within `MAX_SLEEP`). Only a free timer that is due wakes this one at once.
fn next_sleep(next: NextDue, fired: bool, found: TimerPass) -> (TimerPass, Duration) {
    let found = match next.any {
        Some(ms) if ms <= 0 && !fired && next.free.is_none_or(|f| f > 0) => TimerPass::held_elsewhere,
        _ => found,
    };
    let sleep = match next.free {
        Some(ms) if ms <= 0 && fired => Duration::ZERO,
        // Due and free, yet this pass claimed none: it became due just now.
        Some(ms) if ms <= 0 => Duration::from_millis(1),
        Some(ms) => Duration::from_millis(ms as u64).min(MAX_SLEEP),
        None => MAX_SLEEP,
    };
    (found, sleep)
}

/// Fires every due timer claimed in one transaction: all of them together (one statement per
/// table, as the dispatcher's group commit writes), or, when that fails for a timer's data, each
/// in its own savepoint so only the failing one fails. A change the state machine refuses (the
/// order moved on, or was cancelled) is logged and the timer dropped; it is never applied.
/// Returns how many timers were claimed.
async fn fire_due(pool: &PgPool, topics: &Topics) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let due = effects::claim_due(&mut tx, BATCH).await?;
    if due.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let mut grouped = tx.begin().await?;
    match fire_grouped(&mut grouped, &due, topics).await {
        Ok(()) => grouped.commit().await?,
        Err(e) if db::classify(&e) != FailureClass::BadValues => {
            return Err(anyhow::Error::from(e).context("firing timers"));
        }
        Err(e) => {
            grouped.rollback().await?;
            tracing::info!(error = %e, timers = due.len(), "a timer's change failed; firing them one by one");
            fire_one_by_one(&mut tx, &due, topics).await?;
        }
    }
    tx.commit().await?;
    Ok(due.len())
}

/// Every claimed timer in one go: lock their orders, plan the changes in due order, write, and
/// delete the timers (fired or refused).
async fn fire_grouped(conn: &mut PgConnection, due: &[Timer], topics: &Topics) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = due.iter().map(|t| t.order_id).collect::<BTreeSet<_>>().into_iter().collect();
    let locked = orders::lock_for_changes(conn, &ids).await?;
    let mut moves = Moves::of(&locked);
    let mut writes = Writes::default();
    for t in due {
        let span = fire_span(t);
        let _in_span = span.enter();
        let who = Who {
            cause: &t.cause,
            event_id: &t.event_id,
            handler_version: &t.handler_version,
            consumed_topic: &t.consumed_topic,
        };
        match (t.to_status.parse::<Status>(), moves.get_mut(&t.order_id)) {
            (Err(e), _) => tracing::error!(timer = t.id, error = %e, "timer with an unknown status dropped"),
            (Ok(to), Some(m)) if m.status.can_become(to) => {
                let from = m.status;
                m.change(&mut writes, to, &who, topics);
                tracing::info!(order_id = %t.order_id, %from, %to, cause = %t.cause, "timer fired");
            }
            (Ok(to), moving) => {
                let error = match moving {
                    Some(m) => StoreError::IllegalTransition { from: m.status, to },
                    None => StoreError::OrderNotFound(t.order_id.to_string()),
                };
                tracing::warn!(order_id = %t.order_id, cause = %t.cause, %error, "timer refused by the state machine");
            }
        }
    }
    moves.finish(&mut writes);
    batch::write(conn, &writes).await?;
    effects::delete_timers(conn, &due.iter().map(|t| t.id).collect::<Vec<_>>()).await
}

/// The change, and the record it publishes, continue the trace of whoever scheduled it.
fn fire_span(t: &Timer) -> tracing::Span {
    let span = tracing::info_span!("timer.fire", order_id = %t.order_id, to = %t.to_status);
    if let Some(tp) = &t.traceparent {
        crate::telemetry::set_parent(&span, tp);
    }
    span
}

/// After a failed grouped firing: each timer in its own savepoint. One whose change fails for its
/// data is retried later on its own, and parked after `MAX_ATTEMPTS`.
async fn fire_one_by_one(tx: &mut PgConnection, due: &[Timer], topics: &Topics) -> anyhow::Result<()> {
    for t in due {
        let mut savepoint = tx.begin().await?;
        match fire_one(&mut savepoint, t, topics).instrument(fire_span(t)).await {
            Ok(()) => {
                savepoint.commit().await?;
                effects::delete_timers(&mut *tx, &[t.id]).await?;
            }
            Err(e) if db::classify(&e) != FailureClass::BadValues => {
                return Err(anyhow::Error::from(e).context(format!("firing timer {}", t.id)));
            }
            Err(e) => {
                savepoint.rollback().await?;
                let attempt = t.attempts + 1;
                let error = format!("{e} (SQLSTATE {})", db::sqlstate(&e).unwrap_or_default());
                let retry = (attempt < MAX_ATTEMPTS).then(|| 1000i64 << attempt.min(16));
                match retry {
                    Some(ms) => {
                        tracing::warn!(timer = t.id, order_id = %t.order_id, attempt, %error, retry_in_ms = ms,
                        "timer failed; retrying it later")
                    }
                    None => tracing::error!(timer = t.id, order_id = %t.order_id, attempt, %error,
                        "timer failed too often; parked"),
                }
                effects::timer_failed(&mut *tx, t.id, &error, retry).await?;
            }
        }
    }
    Ok(())
}

/// One timer's change. `Err` only for a database failure; refusals are logged and done.
async fn fire_one(conn: &mut sqlx::PgConnection, t: &Timer, topics: &Topics) -> Result<(), sqlx::Error> {
    let cause = Cause::handler(&t.cause, &t.event_id, &t.handler_version, &t.consumed_topic);
    match t.to_status.parse() {
        Err(e) => tracing::error!(timer = t.id, error = %e, "timer with an unknown status dropped"),
        Ok(to) => match change_status(conn, t.order_id, to, &cause, topics).await {
            Ok(c) => {
                tracing::info!(order_id = %t.order_id, from = %c.previous, to = %c.status, cause = %t.cause, "timer fired")
            }
            Err(e @ (StoreError::IllegalTransition { .. } | StoreError::OrderNotFound(_))) => {
                tracing::warn!(order_id = %t.order_id, cause = %t.cause, error = %e, "timer refused by the state machine")
            }
            Err(StoreError::Db(e)) => return Err(e),
            Err(e) => tracing::error!(timer = t.id, error = %e, "timer refused; dropped"),
        },
    }
    Ok(())
}
