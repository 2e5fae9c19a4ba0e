//! The transactional outbox: rows written with the change they announce, claimed and marked by
//! the relay. Keys, header values and values are stored as bytes, exactly as they will be sent.

use sqlx::{PgConnection, PgPool};

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

/// How many slots the outbox is split into by key hash (migration 0008: the `slot` column).
pub const SLOTS: i16 = 16;
/// Advisory lock class of a relay slot, `(SLOT_LOCK, slot)`: owned by one relay session at a time.
const SLOT_LOCK: i32 = 0x4f48_5253;
/// Advisory lock `(MEMBER_LOCK, 0)`, held shared by every running relay so they can count
/// each other.
const MEMBER_LOCK: i32 = 0x4f48_524d;

/// Counts this session among the running relays; held until the session ends.
pub async fn join_relays(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_lock_shared($1, 0)").bind(MEMBER_LOCK).execute(conn).await?;
    Ok(())
}

/// Running relays on this database (sessions holding the member lock), this one included.
pub async fn relay_members(conn: &mut PgConnection) -> sqlx::Result<i64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND classid = $1::int8::oid AND objid = 0 AND objsubid = 2
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(MEMBER_LOCK)
    .fetch_one(conn)
    .await?;
    Ok(n)
}

/// Takes `slot` for this session if no other session owns it.
pub async fn try_take_slot(conn: &mut PgConnection, slot: i16) -> sqlx::Result<bool> {
    let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1, $2)")
        .bind(SLOT_LOCK)
        .bind(i32::from(slot))
        .fetch_one(conn)
        .await?;
    Ok(got)
}

/// Gives `slot` back, for another relay to take.
pub async fn release_slot(conn: &mut PgConnection, slot: i16) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_unlock($1, $2)")
        .bind(SLOT_LOCK)
        .bind(i32::from(slot))
        .execute(conn)
        .await?;
    Ok(())
}

/// Claims up to `limit` unpublished rows of the caller's `slots` in id order. A row waiting out
/// its own retry delay, or parked, holds back every later row of its key and nothing else.
///
/// The caller owns `slots` (session advisory locks), so no other relay publishes these keys
/// meanwhile: that, not the row locks, keeps a key's rows in order, since row locks alone would
/// let a second relay claim a later row of a key while the first still publishes an earlier one.
///
/// Why the shared transaction lock on `order-host:outbox-relay`: relays from before migration
/// 0008 take it exclusively and publish every slot, so during a rolling upgrade an old relay and
/// a new one never publish at the same time.
pub async fn claim(conn: &mut PgConnection, slots: &[i16], limit: i64) -> sqlx::Result<Vec<Pending>> {
    // The claim is a queue pop whose right plan is known whatever the statistics say: walk the
    // unpublished rows in id order and stop at `limit`. For the rest of this transaction the
    // planner may not scan the table, bitmap-scan it or sort it, which leaves it only that
    // walk. On an outbox not yet analysed (the first minute of a deployment's first burst) it
    // otherwise read the whole backlog, and sorted it, for every batch.
    let (got,): (bool,) = sqlx::query_as(
        "SELECT pg_try_advisory_xact_lock_shared(hashtext('order-host:outbox-relay')),
                set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true),
                set_config('enable_sort', 'off', true)",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !got || slots.is_empty() {
        return Ok(Vec::new());
    }
    // The keys held back are read first, once, from the small index of refused rows
    // (migration 0010), and each candidate is checked against that set, so no plan re-reads
    // the backlog per candidate. The earlier form, a correlated check of each candidate against
    // every unpublished row, was planned on a never-analysed outbox as a rescan of the backlog
    // per candidate: a 20,000-order burst held the relay in one statement for minutes.
    // `refused` is materialised with nothing but the index's own predicate, so that index is the
    // only one that can serve it, never a walk of the whole backlog through `outbox_unpublished`.
    let rows: Vec<Row> = sqlx::query_as(
        "WITH refused AS MATERIALIZED (
             SELECT key, id, published_at, parked_at, next_attempt_at FROM outbox
             WHERE parked_at IS NOT NULL OR next_attempt_at IS NOT NULL),
         held AS MATERIALIZED (
             SELECT key, min(id) AS from_id FROM refused
             WHERE published_at IS NULL AND key IS NOT NULL AND (parked_at IS NOT NULL OR next_attempt_at > now())
             GROUP BY key)
         SELECT id, attempts, topic, key, header_names, header_values, payload FROM outbox o
         WHERE slot = ANY($2) AND published_at IS NULL AND parked_at IS NULL
           AND (next_attempt_at IS NULL OR next_attempt_at <= now())
           AND NOT EXISTS (SELECT 1 FROM held h WHERE h.key = o.key AND h.from_id < o.id)
         ORDER BY id LIMIT $1 FOR UPDATE OF o SKIP LOCKED",
    )
    .bind(limit)
    .bind(slots)
    .fetch_all(conn)
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

/// Marks rows delivered. A row once refused loses its `next_attempt_at`, which takes it out of
/// `outbox_refused`: the claim reads that index whole, so it must hold only rows still waiting.
pub async fn mark_published(conn: &mut PgConnection, ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query("UPDATE outbox SET published_at = now(), next_attempt_at = NULL WHERE id = ANY($1)")
        .bind(ids)
        .execute(conn)
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
    conn: &mut PgConnection,
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
    .execute(conn)
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
        // The rows each parked row holds back are read in one pass over the backlog (its keys
        // matched as a hashed array), then counted per parked row: no index by key is kept for
        // this rare listing (migration 0012), and a join per parked row would rescan the backlog.
        "WITH parked AS MATERIALIZED (
             SELECT id, topic, key, attempts, last_error, created_at, parked_at FROM outbox
             WHERE parked_at IS NOT NULL AND published_at IS NULL),
         held AS MATERIALIZED (
             SELECT key, id FROM outbox
             WHERE published_at IS NULL AND key = ANY(ARRAY(SELECT key FROM parked WHERE key IS NOT NULL)))
         SELECT id, topic, key, attempts, last_error, created_at, parked_at,
                (SELECT count(*) FROM held h WHERE h.key = p.key AND h.id > p.id)
         FROM parked p ORDER BY id",
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
