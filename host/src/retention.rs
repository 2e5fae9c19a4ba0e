//! The retention pass: every `RETENTION_INTERVAL_SECS`, deletes published outbox rows,
//! idempotency rows and invocation journal entries past their retention (see
//! `config::RetentionConfig` for the safety argument), then vacuums the tables
//! every event churns (`db::retention::vacuum_churned` says why).
//! Every replica ticks; one pass at a time runs, and about one per interval between all replicas
//! (`db::retention::begin_pass`), so N replicas do not vacuum the same tables N times.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use crate::config::RetentionConfig;
use crate::db::retention;
use crate::metrics::Metrics;

pub async fn run(
    pool: PgPool,
    config: RetentionConfig,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        // Detached from the pool: the pass holds a session lock, and a connection that closes
        // when this one is dropped (a failed or cancelled pass) releases it, where a pooled one
        // would go back to the pool still holding it and stop every replica's passes.
        let mut conn = match pool.acquire().await {
            Ok(c) => c.detach(),
            Err(e) => {
                tracing::warn!(error = %e, "retention pass could not connect; trying again next interval");
                continue;
            }
        };
        match retention::begin_pass(&mut conn, min_gap(config.interval)).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "retention pass could not start; trying again next interval");
                continue;
            }
        }
        prune_and_vacuum(&mut conn, &config, &metrics).await;
        if let Err(e) = retention::end_pass(&mut conn).await {
            tracing::warn!(error = %e, "ending the retention pass failed; its connection closes");
        }
    }
}

/// The least time between two passes by any replicas: nine tenths of the interval, so a lone
/// replica, whose ticks are an interval plus a pass apart, never skips its own pass.
fn min_gap(interval: Duration) -> Duration {
    interval.mul_f64(0.9)
}

async fn prune_and_vacuum(conn: &mut PgConnection, config: &RetentionConfig, metrics: &Metrics) {
    if !config.outbox.is_zero() {
        report("outbox", retention::prune_outbox(conn, config.outbox).await, metrics);
    }
    if !config.idempotency.is_zero() {
        report("processed_events", retention::prune_idempotency(conn, config.idempotency).await, metrics);
    }
    if !config.journal.is_zero() {
        report("invocations", retention::prune_journal(conn, config.journal).await, metrics);
    }
    if let Err(e) = retention::vacuum_churned(conn).await {
        tracing::warn!(error = %e, "vacuum after the retention pass failed; trying again next interval");
    }
}

/// A failed pass is logged and tried again next interval: nothing depends on it but table size.
fn report(table: &'static str, deleted: sqlx::Result<u64>, metrics: &Metrics) {
    match deleted {
        Ok(0) => {}
        Ok(n) => {
            metrics.retention_deleted(table, n);
            tracing::debug!(table, deleted = n, "retention pass");
        }
        Err(e) => tracing::warn!(table, error = %e, "retention pass failed; trying again next interval"),
    }
}
