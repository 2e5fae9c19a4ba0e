//! Dead letters as rows an operator can list, inspect, redrive and discard. The Kafka dead-letter
//! record stays as it is for consumers that want it; this table is what the admin API acts on.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

use super::outbox::printable;
use crate::kafka::Incoming;

/// A dead letter being written, with the record it was consumed as.
pub struct NewDeadLetter<'a> {
    pub handler: &'a str,
    pub handler_version: &'a str,
    pub event_id: &'a str,
    pub order_id: Option<Uuid>,
    pub class: &'a str,
    pub reason: &'a str,
    pub attempts: u32,
    /// The record as consumed, with its position in the log.
    pub record: &'a Incoming,
}

/// Text a `TEXT` column can hold: a handler's error message may carry a NUL byte. The exact bytes
/// travel in the Kafka record's `x-dlq-error` header.
fn storable(text: &str) -> String {
    text.replace('\0', "\u{fffd}")
}

/// Writes the row inside the caller's transaction (the one writing the idempotency record).
pub async fn insert(conn: &mut PgConnection, d: &NewDeadLetter<'_>) -> sqlx::Result<()> {
    let (names, values): (Vec<&str>, Vec<&[u8]>) =
        d.record.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).unzip();
    sqlx::query(
        "INSERT INTO dead_letters (handler, handler_version, event_id, order_id, class, reason, attempts,
             topic, kafka_partition, kafka_offset, key, payload, header_names, header_values)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (handler, event_id) DO NOTHING",
    )
    .bind(d.handler)
    .bind(d.handler_version)
    .bind(d.event_id)
    .bind(d.order_id)
    .bind(d.class)
    .bind(storable(d.reason))
    .bind(d.attempts as i32)
    .bind(&d.record.topic)
    .bind(d.record.partition)
    .bind(d.record.offset)
    .bind(&d.record.key)
    .bind(&d.record.payload)
    .bind(names)
    .bind(values)
    .execute(conn)
    .await?;
    Ok(())
}

/// What a dead letter is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Open,
    Redriven,
    Discarded,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Redriven => "redriven",
            State::Discarded => "discarded",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "redriven" => State::Redriven,
            "discarded" => State::Discarded,
            _ => State::Open,
        }
    }
}

/// A dead letter as the admin API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeadLetter {
    pub id: i64,
    pub handler: String,
    pub handler_version: String,
    pub event_id: String,
    pub order_id: Option<Uuid>,
    /// `x-dlq-class`: undecodable, handler-error, trap, rejected-effects, missing-order,
    /// invalid-action, refused-transition.
    pub class: String,
    pub reason: String,
    /// Handler-caused attempts before it was dead-lettered.
    pub attempts: i32,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The key as text when it is printable UTF-8, else `hex:` and its bytes in hex.
    pub key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub state: State,
    /// Failed redrives, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub failures: serde_json::Value,
    pub resolved_at: Option<DateTime<Utc>>,
    /// The version that applied it (redriven) or the operator's reason (discarded).
    pub resolution: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    handler: String,
    handler_version: String,
    event_id: String,
    order_id: Option<Uuid>,
    class: String,
    reason: String,
    attempts: i32,
    topic: String,
    kafka_partition: i32,
    kafka_offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    header_names: Vec<String>,
    header_values: Vec<Vec<u8>>,
    created_at: DateTime<Utc>,
    state: String,
    failures: serde_json::Value,
    resolved_at: Option<DateTime<Utc>>,
    resolution: Option<String>,
}

const COLUMNS: &str = "id, handler, handler_version, event_id, order_id, class, reason, attempts, topic,
    kafka_partition, kafka_offset, key, payload, header_names, header_values, created_at, state,
    failures, resolved_at, resolution";

impl Row {
    fn split(self) -> (DeadLetter, Incoming) {
        let record = Incoming {
            topic: self.topic.clone(),
            partition: self.kafka_partition,
            offset: self.kafka_offset,
            key: self.key,
            payload: self.payload,
            headers: self.header_names.into_iter().zip(self.header_values).collect(),
        };
        let view = DeadLetter {
            id: self.id,
            handler: self.handler,
            handler_version: self.handler_version,
            event_id: self.event_id,
            order_id: self.order_id,
            class: self.class,
            reason: self.reason,
            attempts: self.attempts,
            topic: self.topic,
            partition: self.kafka_partition,
            offset: self.kafka_offset,
            key: record.key.as_deref().map(printable),
            created_at: self.created_at,
            state: State::parse(&self.state),
            failures: self.failures,
            resolved_at: self.resolved_at,
            resolution: self.resolution,
        };
        (view, record)
    }
}

/// Which dead letters a listing, a count or a bulk action takes.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub handler: Option<String>,
    pub class: Option<String>,
    pub order_id: Option<Uuid>,
    pub state: Option<State>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl Filter {
    fn push_where<'a>(&'a self, q: &mut QueryBuilder<'a, sqlx::Postgres>) {
        q.push(" WHERE TRUE");
        if let Some(h) = &self.handler {
            q.push(" AND handler = ").push_bind(h);
        }
        if let Some(c) = &self.class {
            q.push(" AND class = ").push_bind(c);
        }
        if let Some(o) = self.order_id {
            q.push(" AND order_id = ").push_bind(o);
        }
        if let Some(s) = self.state {
            q.push(" AND state = ").push_bind(s.as_str());
        }
        if let Some(t) = self.since {
            q.push(" AND created_at >= ").push_bind(t);
        }
        if let Some(t) = self.until {
            q.push(" AND created_at < ").push_bind(t);
        }
    }
}

/// Dead letters matching `filter` with an id above `after`, oldest first, at most `limit`.
pub async fn list(pool: &PgPool, filter: &Filter, after: i64, limit: i64) -> sqlx::Result<Vec<DeadLetter>> {
    let mut q = QueryBuilder::new(format!("SELECT {COLUMNS} FROM dead_letters"));
    filter.push_where(&mut q);
    q.push(" AND id > ").push_bind(after).push(" ORDER BY id LIMIT ").push_bind(limit);
    let rows: Vec<Row> = q.build_query_as().fetch_all(pool).await?;
    Ok(rows.into_iter().map(|r| r.split().0).collect())
}

/// How many dead letters match `filter`, by handler and class.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Count {
    pub handler: String,
    pub class: String,
    pub count: i64,
}

pub async fn counts(pool: &PgPool, filter: &Filter) -> sqlx::Result<Vec<Count>> {
    let mut q = QueryBuilder::new("SELECT handler, class, count(*) FROM dead_letters");
    filter.push_where(&mut q);
    q.push(" GROUP BY handler, class ORDER BY handler, class");
    let rows: Vec<(String, String, i64)> = q.build_query_as().fetch_all(pool).await?;
    Ok(rows.into_iter().map(|(handler, class, count)| Count { handler, class, count }).collect())
}

/// Ids of the open dead letters matching `filter`, in the order a bulk redrive takes them: per
/// order in the order they were consumed (by id, as they were written in that order per key).
pub async fn open_ids(pool: &PgPool, filter: &Filter, limit: i64) -> sqlx::Result<Vec<i64>> {
    let mut q = QueryBuilder::new("SELECT id FROM dead_letters");
    filter.push_where(&mut q);
    q.push(" AND state = 'open' ORDER BY id LIMIT ").push_bind(limit);
    let rows: Vec<(i64,)> = q.build_query_as().fetch_all(pool).await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// One dead letter and its record.
pub async fn get(pool: &PgPool, id: i64) -> sqlx::Result<Option<(DeadLetter, Incoming)>> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(Row::split))
}

/// SQLSTATE of `lock` finding the row locked by another transaction.
pub const LOCK_NOT_AVAILABLE: &str = "55P03";

/// One dead letter, locked for the caller's transaction. `NOWAIT`: while another redrive holds it,
/// this fails at once with `LOCK_NOT_AVAILABLE` instead of holding a connection while it waits.
pub async fn lock(conn: &mut PgConnection, id: i64) -> sqlx::Result<Option<(DeadLetter, Incoming)>> {
    let row: Option<Row> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1 FOR UPDATE NOWAIT"))
            .bind(id)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(Row::split))
}

/// An open dead letter of the same handler and order consumed before `id`: redrives of one
/// order's dead letters run in the order the events were consumed.
pub async fn earlier_open(
    conn: &mut PgConnection,
    handler: &str,
    order_id: Uuid,
    id: i64,
) -> sqlx::Result<Option<i64>> {
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT id FROM dead_letters WHERE handler = $1 AND order_id = $2 AND id < $3 AND state = 'open'
         ORDER BY id LIMIT 1",
    )
    .bind(handler)
    .bind(order_id)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(id,)| id))
}

/// Closes an open dead letter as redriven (by `resolution`, the version) or discarded (with the
/// operator's reason). `false` if it was not open.
pub async fn resolve(conn: &mut PgConnection, id: i64, state: State, resolution: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE dead_letters SET state = $2, resolution = $3, resolved_at = now() WHERE id = $1 AND state = 'open'",
    )
    .bind(id)
    .bind(state.as_str())
    .bind(storable(resolution))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Closes every open one of `ids` as `state` with `resolution`; returns those it closed, in id
/// order (one statement for a bulk discard).
pub async fn resolve_all(
    pool: &PgPool,
    ids: &[i64],
    state: State,
    resolution: &str,
) -> sqlx::Result<Vec<i64>> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "UPDATE dead_letters SET state = $2, resolution = $3, resolved_at = now()
         WHERE id = ANY($1) AND state = 'open' RETURNING id",
    )
    .bind(ids)
    .bind(state.as_str())
    .bind(storable(resolution))
    .fetch_all(pool)
    .await?;
    let mut closed: Vec<i64> = rows.into_iter().map(|(id,)| id).collect();
    closed.sort_unstable();
    Ok(closed)
}

/// Appends a failed redrive, inside the redrive's transaction; the dead letter stays open.
pub async fn add_failure(
    conn: &mut PgConnection,
    id: i64,
    version: &str,
    class: &str,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE dead_letters SET failures = failures || jsonb_build_array(jsonb_build_object(
             'at', now(), 'handler_version', $2::text, 'class', $3::text, 'reason', $4::text))
         WHERE id = $1",
    )
    .bind(id)
    .bind(version)
    .bind(class)
    .bind(storable(reason))
    .execute(conn)
    .await?;
    Ok(())
}
