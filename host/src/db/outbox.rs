//! The transactional outbox: rows written with the change they announce, claimed and marked by
//! the relay. Keys, header values and values are stored as bytes, exactly as they will be sent.

use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::events::Record;

/// Adds a record to the outbox inside the caller's transaction.
pub async fn enqueue(conn: &mut PgConnection, record: &Record) -> sqlx::Result<()> {
    let (names, values): (Vec<&str>, Vec<&[u8]>) =
        record.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).unzip();
    sqlx::query(
        "INSERT INTO outbox (topic, key, header_names, header_values, payload) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&record.topic)
    .bind(&record.key)
    .bind(names)
    .bind(values)
    .bind(&record.payload)
    .execute(conn)
    .await?;
    Ok(())
}

/// An unpublished row, locked by the claiming transaction.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    /// Failed deliveries so far.
    pub attempts: i32,
    pub record: Record,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    attempts: i32,
    topic: String,
    key: Option<Vec<u8>>,
    header_names: Vec<String>,
    header_values: Vec<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

/// Claims up to `limit` unpublished rows in id order, or none if another relay holds the claim.
/// A row waiting out its own retry delay, or parked, holds back every later row of its key and
/// nothing else.
///
/// Why a transaction-scoped advisory lock as well as `FOR UPDATE SKIP LOCKED`: row locks alone
/// would let a second replica claim a later row of the same order while the first is still
/// publishing an earlier one, breaking per-key order. One relay at a time publishes; the others
/// skip instantly instead of queueing on locks.
pub async fn claim(tx: &mut Transaction<'_, Postgres>, limit: i64) -> sqlx::Result<Vec<Pending>> {
    let (got,): (bool,) =
        sqlx::query_as("SELECT pg_try_advisory_xact_lock(hashtext('order-host:outbox-relay'))")
            .fetch_one(&mut **tx)
            .await?;
    if !got {
        return Ok(Vec::new());
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, attempts, topic, key, header_names, header_values, payload FROM outbox o
         WHERE published_at IS NULL AND parked_at IS NULL
           AND (next_attempt_at IS NULL OR next_attempt_at <= now())
           AND NOT EXISTS (
               SELECT 1 FROM outbox e
               WHERE e.key = o.key AND e.published_at IS NULL AND e.id < o.id
                 AND (e.parked_at IS NOT NULL OR e.next_attempt_at > now()))
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Pending {
            id: r.id,
            attempts: r.attempts,
            record: Record {
                topic: r.topic,
                key: r.key,
                headers: r.header_names.into_iter().zip(r.header_values).collect(),
                payload: r.payload,
            },
        })
        .collect())
}

pub async fn mark_published(tx: &mut Transaction<'_, Postgres>, ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// What became of a row the broker refused for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Try again after this many milliseconds.
    RetryAfterMs(i64),
    /// No more attempts: the row waits for an operator.
    Park,
}

/// Records a failed delivery of row `id`.
pub async fn record_refusal(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    error: &str,
    refusal: Refusal,
) -> sqlx::Result<()> {
    let (retry_ms, park) = match refusal {
        Refusal::RetryAfterMs(ms) => (Some(ms), false),
        Refusal::Park => (None, true),
    };
    sqlx::query(
        "UPDATE outbox SET attempts = attempts + 1, last_error = $2,
             next_attempt_at = now() + make_interval(secs => coalesce($3, 0)::float8 / 1000),
             parked_at = CASE WHEN $4 THEN now() END
         WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .bind(retry_ms)
    .bind(park)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A row the relay gave up on, as the admin API lists it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Parked {
    pub id: i64,
    pub topic: String,
    /// The key as text when it is printable UTF-8, else `hex:` and its bytes in hex.
    pub key: Option<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub parked_at: chrono::DateTime<chrono::Utc>,
    /// Unpublished rows of the same key held back behind this one.
    pub held_back: i64,
}

pub async fn parked(pool: &PgPool) -> sqlx::Result<Vec<Parked>> {
    type ParkedRow = (
        i64,
        String,
        Option<Vec<u8>>,
        i32,
        Option<String>,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
        i64,
    );
    let rows: Vec<ParkedRow> = sqlx::query_as(
        "SELECT id, topic, key, attempts, last_error, created_at, parked_at,
                (SELECT count(*) FROM outbox l WHERE l.key = o.key AND l.published_at IS NULL AND l.id > o.id)
         FROM outbox o WHERE parked_at IS NOT NULL AND published_at IS NULL ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, topic, key, attempts, last_error, created_at, parked_at, held_back)| Parked {
            id,
            topic,
            key: key.as_deref().map(printable),
            attempts,
            last_error,
            created_at,
            parked_at,
            held_back,
        })
        .collect())
}

/// Bytes as text for people: the text itself when it is printable UTF-8, else `hex:…`.
pub fn printable(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_string(),
        _ => format!("hex:{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    }
}

/// Rows not yet published (the relay's backlog) and, of those, the parked ones.
pub async fn backlog(pool: &PgPool) -> sqlx::Result<(i64, i64)> {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE parked_at IS NOT NULL) FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await
}
