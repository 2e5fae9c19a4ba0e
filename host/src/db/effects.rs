//! What handlers' effects write besides orders: idempotency records, durable timers and customer
//! notifications.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::orders::Status;

/// Where in the Kafka log an event was consumed, recorded with its idempotency row.
#[derive(Debug, Clone)]
pub struct LogPosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl From<&crate::kafka::Incoming> for LogPosition {
    fn from(record: &crate::kafka::Incoming) -> LogPosition {
        LogPosition { topic: record.topic.clone(), partition: record.partition, offset: record.offset }
    }
}

/// The handler's idempotency record for the event turns from dead-lettered to applied, inside the
/// transaction that applies the redrive's effects. `false` if it was not dead-lettered.
pub async fn mark_applied(
    conn: &mut PgConnection,
    handler: &str,
    event_id: &str,
    handler_version: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE processed_events SET outcome = 'applied', handler_version = $3
         WHERE handler = $1 AND event_id = $2 AND outcome = 'dead-lettered'",
    )
    .bind(handler)
    .bind(event_id)
    .bind(handler_version)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Inserts the idempotency row inside the caller's transaction. `false` means another delivery of
/// the same event got there first: the caller must roll back and apply nothing.
pub async fn record_processed(
    conn: &mut PgConnection,
    handler: &str,
    event_id: &str,
    handler_version: &str,
    outcome: &str,
    attempts: u32,
    position: &LogPosition,
) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO processed_events
             (handler, event_id, handler_version, outcome, attempts, topic, kafka_partition, kafka_offset)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(handler)
    .bind(event_id)
    .bind(handler_version)
    .bind(outcome)
    .bind(attempts as i32)
    .bind(&position.topic)
    .bind(position.partition)
    .bind(position.offset)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// A delayed status change, waiting in Postgres.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Timer {
    pub id: i64,
    pub order_id: Uuid,
    pub to_status: String,
    pub due_at: DateTime<Utc>,
    pub cause: String,
    pub event_id: String,
    pub handler_version: String,
    pub consumed_topic: String,
    pub traceparent: Option<String>,
    /// Earlier firings that failed for a reason other than the state machine.
    pub attempts: i32,
}

pub struct NewTimer<'a> {
    pub order_id: Uuid,
    pub to: Status,
    pub delay_ms: u64,
    pub cause: &'a str,
    pub event_id: &'a str,
    pub handler_version: &'a str,
    pub consumed_topic: &'a str,
    pub traceparent: Option<&'a str>,
}

pub async fn schedule(conn: &mut PgConnection, t: &NewTimer<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO timers (order_id, to_status, due_at, cause, event_id, handler_version, consumed_topic, traceparent)
         VALUES ($1, $2, now() + make_interval(secs => $3::float8 / 1000), $4, $5, $6, $7, $8)",
    )
    .bind(t.order_id)
    .bind(t.to.as_str())
    .bind(t.delay_ms as f64)
    .bind(t.cause)
    .bind(t.event_id)
    .bind(t.handler_version)
    .bind(t.consumed_topic)
    .bind(t.traceparent)
    .execute(conn)
    .await?;
    Ok(())
}

/// Claims up to `limit` due timers, locked by the caller's transaction; rows another replica is
/// firing are skipped rather than waited for.
pub async fn claim_due(conn: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<Timer>> {
    sqlx::query_as(
        "SELECT id, order_id, to_status, due_at, cause, event_id, handler_version, consumed_topic, traceparent, attempts
         FROM timers WHERE due_at <= now() AND parked_at IS NULL ORDER BY due_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn delete_timers(conn: &mut PgConnection, ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM timers WHERE id = ANY($1)").bind(ids).execute(conn).await?;
    Ok(())
}

/// Records a firing of timer `id` that failed for a reason other than the state machine: it is
/// due again after `retry_after_ms`, or parked (`None`) for an operator.
pub async fn timer_failed(
    conn: &mut PgConnection,
    id: i64,
    error: &str,
    retry_after_ms: Option<i64>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE timers SET attempts = attempts + 1, last_error = $2,
             due_at = CASE WHEN $3::bigint IS NULL THEN due_at ELSE now() + make_interval(secs => $3::float8 / 1000) END,
             parked_at = CASE WHEN $3::bigint IS NULL THEN now() END
         WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .bind(retry_after_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Timers past their due time, timers in all, and parked timers, for `/metrics`.
pub async fn timer_counts(pool: &PgPool) -> sqlx::Result<(i64, i64, i64)> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE due_at <= now() AND parked_at IS NULL),
                count(*) FILTER (WHERE parked_at IS NULL),
                count(*) FILTER (WHERE parked_at IS NOT NULL)
         FROM timers",
    )
    .fetch_one(pool)
    .await
}

/// When the next timers are due, in milliseconds from now by the database's clock (the one
/// `claim_due` compares with); negative when overdue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextDue {
    /// The earliest unparked timer, whoever holds it.
    pub any: Option<i64>,
    /// The earliest one no other replica holds (is firing) right now.
    pub free: Option<i64>,
}

/// Reads [`NextDue`]. The free one is found with `SKIP LOCKED`, so a scheduler whose due timers
/// are all being fired by another replica sleeps until the next timer it could fire, instead of
/// polling the held ones.
pub async fn next_due(pool: &PgPool) -> sqlx::Result<NextDue> {
    let (any, free): (Option<f64>, Option<f64>) = sqlx::query_as(
        "WITH free AS (
             SELECT due_at FROM timers WHERE parked_at IS NULL ORDER BY due_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
         SELECT (EXTRACT(EPOCH FROM ((SELECT min(due_at) FROM timers WHERE parked_at IS NULL) - now())) * 1000)::float8,
                (EXTRACT(EPOCH FROM ((SELECT due_at FROM free) - now())) * 1000)::float8",
    )
    .fetch_one(pool)
    .await?;
    let ms = |m: Option<f64>| m.map(|m| m.ceil() as i64);
    Ok(NextDue { any: ms(any), free: ms(free) })
}

/// A message for the customer, as a handler asked for it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct Notification {
    pub id: i64,
    pub order_id: Uuid,
    /// `email`, `sms` or `push`.
    pub channel: String,
    pub recipient: String,
    pub subject: String,
    pub body: String,
    /// `handler:<name>@<version>`.
    pub cause: String,
    pub event_id: String,
    pub created_at: DateTime<Utc>,
}

pub struct NewNotification<'a> {
    pub order_id: Uuid,
    pub channel: &'a str,
    pub subject: &'a str,
    pub body: &'a str,
    pub cause: &'a str,
    pub event_id: &'a str,
}

/// Records a notification addressed to the order's customer. `false` if the order does not exist.
pub async fn notify(conn: &mut PgConnection, n: &NewNotification<'_>) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO notifications (order_id, channel, recipient, subject, body, cause, event_id)
         SELECT id, $2, customer_email, $3, $4, $5, $6 FROM orders WHERE id = $1",
    )
    .bind(n.order_id)
    .bind(n.channel)
    .bind(n.subject)
    .bind(n.body)
    .bind(n.cause)
    .bind(n.event_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn notifications(pool: &PgPool, order_id: Uuid) -> sqlx::Result<Vec<Notification>> {
    sqlx::query_as(
        "SELECT id, order_id, channel, recipient, subject, body, cause, event_id, created_at
         FROM notifications WHERE order_id = $1 ORDER BY id",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await
}
