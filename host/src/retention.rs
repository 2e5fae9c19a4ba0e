//! The retention pass: every `RETENTION_INTERVAL_SECS`, deletes published outbox rows,
//! idempotency rows and invocation journal entries past their retention (see
//! `config::RetentionConfig` for the safety argument), then vacuums the tables
//! every event churns (`db::retention::vacuum_churned` says why).
//! Every replica runs it; two passes racing delete each row once and the other finds it gone.

use std::sync::Arc;

use sqlx::PgPool;
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
        let mut conn = match pool.acquire().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "retention pass could not connect; trying again next interval");
                continue;
            }
        };
        if !config.outbox.is_zero() {
            report("outbox", retention::prune_outbox(&mut conn, config.outbox).await, &metrics);
        }
        if !config.idempotency.is_zero() {
            report(
                "processed_events",
                retention::prune_idempotency(&mut conn, config.idempotency).await,
                &metrics,
            );
        }
        if !config.journal.is_zero() {
            report("invocations", retention::prune_journal(&mut conn, config.journal).await, &metrics);
        }
        if let Err(e) = retention::vacuum_churned(&mut conn).await {
            tracing::warn!(error = %e, "vacuum after the retention pass failed; trying again next interval");
        }
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
