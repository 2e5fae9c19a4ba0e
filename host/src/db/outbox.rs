//! The transactional outbox: rows written with the change they announce, claimed and marked by
//! the relay.

use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::events::Record;

/// Adds a record to the outbox inside the caller's transaction.
pub async fn enqueue(conn: &mut PgConnection, record: &Record) -> sqlx::Result<()> {
    let headers: Vec<[&str; 2]> = record.headers.iter().map(|(k, v)| [k.as_str(), v.as_str()]).collect();
    sqlx::query("INSERT INTO outbox (topic, key, headers, payload) VALUES ($1, $2, $3, $4)")
        .bind(&record.topic)
        .bind(&record.key)
        .bind(sqlx::types::Json(headers))
        .bind(&record.payload)
        .execute(conn)
        .await?;
    Ok(())
}

/// An unpublished row, locked by the claiming transaction.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub record: Record,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    topic: String,
    key: String,
    headers: sqlx::types::Json<Vec<(String, String)>>,
    payload: Vec<u8>,
}

/// Claims up to `limit` unpublished rows in id order, or none if another relay holds the claim.
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
        "SELECT id, topic, key, headers, payload FROM outbox
         WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Pending {
            id: r.id,
            record: Record { topic: r.topic, key: r.key, headers: r.headers.0, payload: r.payload },
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

/// Rows not yet published (the relay's backlog).
pub async fn backlog(pool: &PgPool) -> sqlx::Result<i64> {
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(pool).await?;
    Ok(n)
}
