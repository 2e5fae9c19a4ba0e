//! The invocation journal's rows (`invocations`, migration 0009): written in batches by the
//! journal's writer, read per order by the admin API and per handler by replay.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

/// One invocation as recorded.
#[derive(Debug, Clone)]
pub struct NewInvocation {
    pub handler: String,
    pub version: String,
    pub event_id: String,
    pub order_id: Uuid,
    pub attempt: i32,
    /// The WIT event as handed to the guest.
    pub input: serde_json::Value,
    /// `actions`, `handler-error`, `trap` or `host`.
    pub outcome: &'static str,
    /// The actions (JSON array) or the error (JSON string).
    pub output: serde_json::Value,
    pub duration_us: i64,
}

/// One journal entry as read back.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Invocation {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub handler: String,
    /// The component's sha256.
    pub version: String,
    pub event_id: String,
    pub order_id: Uuid,
    pub attempt: i32,
    /// The event exactly as the guest received it, order snapshot included.
    #[schema(value_type = Object)]
    pub input: serde_json::Value,
    /// `actions`, `handler-error`, `trap` or `host`.
    pub outcome: String,
    /// The returned actions, or the error text.
    #[schema(value_type = Object)]
    pub output: serde_json::Value,
    pub duration_us: i64,
}

const COLUMNS: &str =
    "id, at, handler, version, event_id, order_id, attempt, input, outcome, output, duration_us";

/// Inserts `rows` in one statement.
pub async fn insert(pool: &PgPool, rows: &[NewInvocation]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut q = QueryBuilder::new(
        "INSERT INTO invocations (handler, version, event_id, order_id, attempt, input, outcome, output, duration_us) ",
    );
    q.push_values(rows, |mut b, r| {
        b.push_bind(&r.handler)
            .push_bind(&r.version)
            .push_bind(&r.event_id)
            .push_bind(r.order_id)
            .push_bind(r.attempt)
            .push_bind(&r.input)
            .push_bind(r.outcome)
            .push_bind(&r.output)
            .push_bind(r.duration_us);
    });
    q.build().execute(pool).await.map(|_| ())
}

/// An order's invocations, oldest first.
pub async fn for_order(pool: &PgPool, order_id: Uuid, limit: i64) -> sqlx::Result<Vec<Invocation>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM invocations WHERE order_id = $1 ORDER BY id LIMIT $2"))
        .bind(order_id)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// A handler's invocations that answered (actions or a handler error) in the last `since`,
/// oldest first: what replay runs a candidate on.
pub async fn answered_by(
    pool: &PgPool,
    handler: &str,
    since: std::time::Duration,
    limit: i64,
) -> sqlx::Result<Vec<Invocation>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM invocations
         WHERE handler = $1 AND at >= now() - make_interval(secs => $2)
           AND outcome IN ('actions', 'handler-error')
         ORDER BY id LIMIT $3"
    ))
    .bind(handler)
    .bind(since.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await
}
