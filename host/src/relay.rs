//! The outbox relay: publishes committed outbox rows to Kafka in order and marks them published.
//!
//! It wakes on the `outbox` notification sent when a transaction that wrote rows commits, so a
//! record normally leaves within milliseconds; a slow poll is only a safety net for missed
//! notifications. While Kafka is unreachable it backs off, and the rows wait in Postgres.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, watch};

use crate::db;
use crate::kafka::Producer;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows claimed and published per transaction.
    pub batch: i64,
    /// Safety-net poll when no notification arrives (another replica held the claim, or the
    /// listening connection was down).
    pub poll_interval: Duration,
    /// Ceiling of the exponential backoff after a failed pass.
    pub max_backoff: Duration,
    /// How long a shutting-down relay keeps draining before it gives up.
    pub drain_timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> RelayConfig {
        RelayConfig {
            batch: 256,
            poll_interval: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// What one pass achieved.
#[derive(Debug, PartialEq, Eq)]
enum Pass {
    /// Published this many rows (fewer than a batch: nothing more right now).
    Published(usize),
    /// A full batch went out; there may be more.
    Full,
}

/// Runs until `shutdown` turns true, then drains what it can within `drain_timeout`.
pub async fn run(
    pool: PgPool,
    producer: Arc<Producer>,
    wake: Arc<Notify>,
    config: RelayConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if *shutdown.borrow() {
            break;
        }
        match pass(&pool, &producer, config.batch).await {
            Ok(Pass::Full) => continue,
            Ok(Pass::Published(n)) => {
                if n > 0 {
                    tracing::debug!(published = n, "outbox relay pass");
                }
                backoff = Duration::from_millis(50);
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(config.poll_interval) => {}
                    _ = shutdown.wait_for(|s| *s) => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "outbox relay pass failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|s| *s) => {}
                }
                backoff = (backoff * 2).min(config.max_backoff);
            }
        }
    }
    let drain = async { while let Ok(Pass::Full) = pass(&pool, &producer, config.batch).await {} };
    if tokio::time::timeout(config.drain_timeout, drain).await.is_err() {
        tracing::warn!("outbox relay stopped before draining; the rest is published after restart");
    }
}

/// Claims a batch, publishes it, and marks what was delivered. For each key only the delivered
/// prefix is marked: if an earlier record of an order failed, its later ones are published again
/// after it (a duplicate, which consumers drop by `ce_id`) rather than ahead of it.
async fn pass(pool: &PgPool, producer: &Producer, batch: i64) -> anyhow::Result<Pass> {
    let mut tx = pool.begin().await?;
    let claimed = db::outbox::claim(&mut tx, batch).await?;
    if claimed.is_empty() {
        tx.commit().await?;
        return Ok(Pass::Published(0));
    }
    let results = producer.publish(claimed.iter().map(|p| &p.record)).await;
    let mut failed_keys = HashSet::new();
    let mut delivered = Vec::with_capacity(claimed.len());
    let mut first_error = None;
    for (p, result) in claimed.iter().zip(results) {
        match result {
            Ok(()) if !failed_keys.contains(&p.record.key) => delivered.push(p.id),
            Ok(()) => {}
            Err(e) => {
                failed_keys.insert(p.record.key.clone());
                first_error.get_or_insert(e);
            }
        }
    }
    db::outbox::mark_published(&mut tx, &delivered).await?;
    tx.commit().await?;
    match first_error {
        Some(e) => Err(e.context(format!(
            "{} of {} records not delivered",
            claimed.len() - delivered.len(),
            claimed.len()
        ))),
        None if claimed.len() as i64 == batch => Ok(Pass::Full),
        None => Ok(Pass::Published(claimed.len())),
    }
}
