//! The dispatcher's group commit: the writes of many handler applications, planned in Rust, sent
//! as one statement per table (`unnest` over arrays) instead of one statement per row.
//!
//! Why arrays rather than a multi-row `VALUES` list: the statement text stays the same for every
//! batch size, so Postgres and sqlx prepare it once, and no batch can outgrow the 65,535 bind
//! parameters of the wire protocol.

use sqlx::PgConnection;
use uuid::Uuid;

use super::effects::{LogPosition, NewNotification, NewTimer};
use super::orders::{Settlement, settle_stock};
use crate::events::Record;
use crate::orders::Status;

/// The effects one batch writes. Rows keep their planned order (ids, and so the relay's
/// publishing order, follow it).
#[derive(Default)]
pub struct Writes<'a> {
    /// Each changed order once, with its final status and the topic of the last change.
    pub statuses: Vec<FinalStatus<'a>>,
    /// Orders whose reservation becomes a sale, and orders whose reservation is released.
    pub sold: Vec<Uuid>,
    pub released: Vec<Uuid>,
    pub history: Vec<HistoryRow<'a>>,
    pub outbox: Vec<Record>,
    pub notifications: Vec<Addressed<'a>>,
    pub timers: Vec<NewTimer<'a>>,
}

/// An idempotency row, outcome `applied`.
pub struct Processed<'a> {
    pub handler: &'a str,
    pub event_id: &'a str,
    pub handler_version: &'a str,
    pub attempts: u32,
    pub position: &'a LogPosition,
}

/// A notification and its order's customer, read when the batch locked the order.
pub struct Addressed<'a> {
    pub note: NewNotification<'a>,
    pub recipient: &'a str,
}

pub struct FinalStatus<'a> {
    pub order_id: Uuid,
    pub status: Status,
    pub consumed_topic: &'a str,
}

pub struct HistoryRow<'a> {
    pub order_id: Uuid,
    pub from: Status,
    pub to: Status,
    pub cause: &'a str,
    pub event_id: &'a str,
    pub handler_version: &'a str,
    pub consumed_topic: &'a str,
}

/// Writes `w` inside the caller's transaction, which must hold the locks of every changed order
/// (`orders::lock_for_changes`). `history.at` and `updated_at` are the transaction's `now()`.
pub async fn write(conn: &mut PgConnection, w: &Writes<'_>) -> sqlx::Result<()> {
    statuses(conn, &w.statuses).await?;
    for (settle, orders) in [(Settlement::Sale, &w.sold), (Settlement::Release, &w.released)] {
        if !orders.is_empty() {
            settle_stock(conn, settle, orders).await?;
        }
    }
    history(conn, &w.history).await?;
    outbox(conn, &w.outbox).await?;
    notifications(conn, &w.notifications).await?;
    timers(conn, &w.timers).await?;
    Ok(())
}

/// Inserts the idempotency rows (outcome `applied`). A row that exists already (another delivery
/// of the event settled it first) fails the statement with a unique violation, and the caller
/// rolls the batch back and applies it one by one, where each application finds out for itself.
///
/// Why not `ON CONFLICT DO NOTHING RETURNING`, which would name the duplicates in one go: such an
/// insert probes the primary key before every row as well as when inserting it, and returns every
/// row. In the pg_stat_statements of a batched drain that statement was the costliest of all, and
/// a duplicate reaching the group commit is rare: the event's snapshot read has already skipped
/// every handler that settled it, so only a delivery racing another one gets here.
pub async fn record_processed(conn: &mut PgConnection, rows: &[Processed<'_>]) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO processed_events
             (handler, event_id, handler_version, outcome, attempts, topic, kafka_partition, kafka_offset)
         SELECT h, e, v, 'applied', a, t, p, o
         FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::int[], $7::bigint[])
              AS r(h, e, v, a, t, p, o)",
    )
    .bind(rows.iter().map(|r| r.handler).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.handler_version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.attempts as i32).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.position.topic.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.position.partition).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.position.offset).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Removes the idempotency rows of applications that were refused after all.
pub async fn forget_processed(conn: &mut PgConnection, rows: &[(&str, &str)]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "DELETE FROM processed_events p USING unnest($1::text[], $2::text[]) AS r(h, e)
         WHERE p.handler = r.h AND p.event_id = r.e",
    )
    .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

async fn statuses(conn: &mut PgConnection, rows: &[FinalStatus<'_>]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE orders o SET status = c.s, updated_at = now(), source_topic = c.t
         FROM unnest($1::uuid[], $2::text[], $3::text[]) AS c(id, s, t) WHERE o.id = c.id",
    )
    .bind(rows.iter().map(|r| r.order_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.consumed_topic).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

async fn history(conn: &mut PgConnection, rows: &[HistoryRow<'_>]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO order_status_history
             (order_id, from_status, to_status, cause, event_id, handler_version, consumed_topic, at)
         SELECT i, f, s, c, e, v, t, now()
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
              WITH ORDINALITY AS r(i, f, s, c, e, v, t, n)
         ORDER BY n",
    )
    .bind(rows.iter().map(|r| r.order_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.from.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.to.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.cause).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.handler_version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.consumed_topic).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Outbox rows in order. A row's headers are a slice `[lo, hi]` of two flat arrays: Postgres
/// arrays cannot be ragged, so an array of header lists cannot be bound directly.
async fn outbox(conn: &mut PgConnection, records: &[Record]) -> sqlx::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let (mut names, mut values, mut lo, mut hi) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in records {
        lo.push(names.len() as i32 + 1);
        for (k, v) in &r.headers {
            names.push(k.as_str());
            values.push(v.as_slice());
        }
        hi.push(names.len() as i32);
    }
    sqlx::query(
        "INSERT INTO outbox (topic, key, header_names, header_values, payload)
         SELECT t, k, coalesce(($4::text[])[lo:hi], '{}'), coalesce(($5::bytea[])[lo:hi], '{}'), p
         FROM unnest($1::text[], $2::bytea[], $3::bytea[], $6::int[], $7::int[])
              WITH ORDINALITY AS r(t, k, p, lo, hi, n)
         ORDER BY n",
    )
    .bind(records.iter().map(|r| r.topic.as_str()).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.key.as_deref()).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.payload.as_deref()).collect::<Vec<_>>())
    .bind(names)
    .bind(values)
    .bind(lo)
    .bind(hi)
    .execute(conn)
    .await?;
    Ok(())
}

/// Notifications in order. The recipient comes with each row rather than from a join with
/// `orders`: the batch read it when it locked the order, and a join cost a lookup per row.
async fn notifications(conn: &mut PgConnection, rows: &[Addressed<'_>]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO notifications (order_id, channel, recipient, subject, body, cause, event_id)
         SELECT i, ch, rc, s, b, c, e
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
              WITH ORDINALITY AS r(i, ch, rc, s, b, c, e, n)
         ORDER BY n",
    )
    .bind(rows.iter().map(|r| r.note.order_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.note.channel).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.recipient).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.note.subject).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.note.body).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.note.cause).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.note.event_id).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

async fn timers(conn: &mut PgConnection, rows: &[NewTimer<'_>]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO timers (order_id, to_status, due_at, cause, event_id, handler_version, consumed_topic, traceparent)
         SELECT i, s, now() + make_interval(secs => d / 1000), c, e, v, t, tp
         FROM unnest($1::uuid[], $2::text[], $3::float8[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
              WITH ORDINALITY AS r(i, s, d, c, e, v, t, tp, n)
         ORDER BY n",
    )
    .bind(rows.iter().map(|r| r.order_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.to.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.delay_ms as f64).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.cause).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.handler_version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.consumed_topic).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.traceparent).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}
