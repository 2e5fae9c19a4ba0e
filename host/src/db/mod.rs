//! Everything the host keeps in Postgres, behind plain async functions. Only this module writes
//! SQL; callers pass a pool, or a connection inside their own transaction when several writes must
//! commit together (an order and its outbox row, a handler's actions and its idempotency record).

pub mod batch;
pub mod catalog;
pub mod dead_letters;
pub mod effects;
pub mod journal;
pub mod listen;
pub mod orders;
pub mod outbox;
pub mod retention;

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// What a Postgres failure says about the work that met it. The dispatcher retries
/// `Unavailable` and `HostBug` and dead-letters (or parks) `BadValues`; the API answers them with
/// 503, 500 and 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Postgres cannot be reached or used right now: connection lost, pool exhausted or closed,
    /// a terminated backend, too many connections, a serialization failure or deadlock. It passes
    /// by itself; retry.
    Unavailable,
    /// The same statement with the same values fails the same way every time (a data exception
    /// such as a NUL byte in text or an out-of-range interval, an integrity violation, a value too
    /// large for an index row): retrying cannot help.
    BadValues,
    /// Anything else (a syntax or undefined-object error): the host's own bug, independent of
    /// the values. The dispatcher retries it rather than dead-lettering every event until a fix.
    HostBug,
}

/// Classifies by error kind and SQLSTATE class.
pub fn classify(e: &sqlx::Error) -> FailureClass {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => FailureClass::Unavailable,
        sqlx::Error::Database(db) => match db.code().as_deref().and_then(|c| c.get(..2)) {
            // 08: connection exception; 40: transaction rollback (serialization, deadlock);
            // 53: insufficient resources; 55: object not in prerequisite state (a database not
            // accepting connections, a lock not available); 57: operator intervention (shutdown,
            // cannot connect now).
            Some("08" | "40" | "53" | "55" | "57") => FailureClass::Unavailable,
            // 22: data exception; 23: integrity constraint violation; 54: program limit exceeded.
            Some("22" | "23" | "54") => FailureClass::BadValues,
            _ => FailureClass::HostBug,
        },
        // A value the driver could not encode for the wire is a property of the value.
        sqlx::Error::Encode(_) => FailureClass::BadValues,
        _ => FailureClass::HostBug,
    }
}

/// The SQLSTATE of a database error, for reasons people read.
pub fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned())
}

/// Migrations embedded in the binary, applied at start-up.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool and brings the schema up to date. Several replicas may start at once: sqlx takes
/// an advisory lock around migrations.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let pool = pool(url, max_connections).await?;
    MIGRATOR.run(&pool).await.context("applying database migrations")?;
    Ok(pool)
}

/// Opens a further pool on a database `connect` has migrated.
pub async fn pool(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url.parse().context("parsing DATABASE_URL")?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        // A request waits this long for a connection before it fails with 503 rather than hanging.
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("connecting to Postgres")
}

/// `SELECT 1`, for readiness.
pub async fn ping(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("SELECT 1").execute(pool).await.context("pinging Postgres")?;
    Ok(())
}
