//! Everything the host keeps in Postgres, behind plain async functions. Only this module writes
//! SQL; callers pass a pool, or a connection inside their own transaction when several writes must
//! commit together (an order and its outbox row, a handler's actions and its idempotency record).

pub mod catalog;
pub mod dispatch;
pub mod listen;
pub mod orders;
pub mod outbox;

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub use sqlx::{PgConnection, Postgres, Transaction};

/// Migrations embedded in the binary, applied at start-up.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool and brings the schema up to date. Several replicas may start at once: sqlx takes
/// an advisory lock around migrations.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url.parse().context("parsing DATABASE_URL")?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        // A request waits this long for a connection before it fails with 503 rather than hanging.
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("connecting to Postgres")?;
    MIGRATOR.run(&pool).await.context("applying database migrations")?;
    Ok(pool)
}

/// `SELECT 1`, for readiness.
pub async fn ping(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("SELECT 1").execute(pool).await.context("pinging Postgres")?;
    Ok(())
}
