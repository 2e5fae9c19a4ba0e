//! The outbox relay: publishes committed outbox rows to Kafka in order and marks them published.
//!
//! It wakes on the `outbox` notification sent when a transaction that wrote rows commits, so a
//! record normally leaves within milliseconds; a slow poll is only a safety net for missed
//! notifications. While Kafka is unreachable it backs off, and the rows wait in Postgres.
//!
//! Per-key order is strict: a key's next row is sent only after its previous one was delivered,
//! and a key stops at its first undelivered row. A row the broker refuses for good (too large, an
//! unknown topic) is retried on its own schedule a bounded number of times, then parked: it and the
//! later rows of its key wait for an operator, visible in `/admin/outbox/parked`, the
//! `order_host_outbox_parked` gauge and the log, while every other key flows on.
//!
//! Several replicas publish at once: the outbox is split into slots by key hash, and each relay
//! publishes only the slots it owns ([`slots`]).

mod slots;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Acquire, PgConnection, PgPool};
use tokio::sync::{Notify, watch};

use self::slots::{REBALANCE_EVERY, Slots};
use crate::db;
use crate::db::outbox::{Pending, Refusal, SLOTS};
use crate::kafka::Producer;
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows claimed and published per transaction.
    pub batch: i64,
    /// Safety-net poll when no notification arrives (another replica held the claim, or the
    /// listening connection was down).
    pub poll_interval: Duration,
    /// Ceiling of the exponential backoff after a pass that hit an unreachable broker.
    pub max_backoff: Duration,
    /// How long a shutting-down relay keeps draining before it gives up.
    pub drain_timeout: Duration,
    /// Deliveries of one row the broker refuses for good before it is parked.
    pub max_attempts: i32,
    /// First delay before a refused row is tried again; doubles per attempt up to `max_backoff`.
    pub refused_retry_base: Duration,
}

impl Default for RelayConfig {
    fn default() -> RelayConfig {
        RelayConfig {
            batch: 256,
            poll_interval: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            max_attempts: 5,
            refused_retry_base: Duration::from_millis(200),
        }
    }
}

/// What one pass achieved.
#[derive(Debug, Default, PartialEq, Eq)]
struct Pass {
    claimed: usize,
    published: usize,
    /// Rows the broker refused for good this pass; when the earliest may be tried again.
    refused_retry_in: Option<Duration>,
    /// The first error of a row that failed for a reason that may pass (broker unreachable).
    transient: Option<String>,
    /// Slots this relay owned during the pass.
    owned: usize,
}

/// Runs until `shutdown` turns true, then drains what it can within `drain_timeout`.
pub async fn run(
    pool: PgPool,
    producer: Arc<Producer>,
    wake: Arc<Notify>,
    config: RelayConfig,
    mut shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    let relay = Relay { pool: &pool, producer: &producer, config: &config, metrics: &metrics };
    let mut slots = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let sleep = match relay.pass(&mut slots).await {
            Ok(p) if p.transient.is_none() && p.claimed as i64 == config.batch => continue,
            Ok(p) => {
                if p.published > 0 {
                    tracing::debug!(published = p.published, "outbox relay pass");
                }
                match p.transient {
                    None => {
                        backoff = Duration::from_millis(50);
                        let idle =
                            p.refused_retry_in.map_or(config.poll_interval, |d| d.min(config.poll_interval));
                        // Slots nobody owns (their relay died) are taken at the next rebalance.
                        if p.owned < SLOTS as usize { idle.min(REBALANCE_EVERY) } else { idle }
                    }
                    Some(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "outbox relay could not deliver");
                        bump(&mut backoff, config.max_backoff)
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "outbox relay pass failed");
                // Its session may be gone, and its slots with it: start over with a new one.
                if let Some(s) = slots.take() {
                    s.leave().await;
                }
                metrics.relay_slots_owned(0);
                bump(&mut backoff, config.max_backoff)
            }
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
    }
    let drain = async {
        while let Ok(p) = relay.pass(&mut slots).await
            && p.transient.is_none()
            && p.claimed as i64 == config.batch
        {}
    };
    if tokio::time::timeout(config.drain_timeout, drain).await.is_err() {
        tracing::warn!("outbox relay stopped before draining; the rest is published after restart");
    }
    if let Some(s) = slots.take() {
        s.leave().await;
    }
    metrics.relay_slots_owned(0);
}

/// Returns the current backoff and doubles it for next time.
fn bump(backoff: &mut Duration, max: Duration) -> Duration {
    let now = *backoff;
    *backoff = (*backoff * 2).min(max);
    now
}

/// Claims a batch, publishes it in waves (the n-th row of every key in wave n, so a key's row
/// leaves only after its predecessor was delivered), marks what was delivered and records what
/// was refused. A fatal producer error is recovered from by replacing the producer.
struct Relay<'a> {
    pool: &'a PgPool,
    producer: &'a Producer,
    config: &'a RelayConfig,
    metrics: &'a Metrics,
}

impl Relay<'_> {
    /// Joins the relays if `slots` is empty, rebalances, then publishes one batch of the owned
    /// slots.
    async fn pass(&self, slots: &mut Option<Slots>) -> anyhow::Result<Pass> {
        let slots = match slots {
            Some(s) => s,
            None => slots.insert(Slots::join(self.pool).await?),
        };
        slots.rebalance().await?;
        self.metrics.relay_slots_owned(slots.owned().len());
        let owned = slots.owned().to_vec();
        let mut tx = slots.conn().begin().await?;
        let outcome = self.publish(&mut tx, &owned).await?;
        tx.commit().await?;
        if outcome.transient.is_some() || outcome.refused_retry_in.is_some() {
            self.recover_producer();
        }
        Ok(outcome)
    }

    async fn publish(&self, tx: &mut PgConnection, owned: &[i16]) -> anyhow::Result<Pass> {
        let Relay { producer, config, .. } = *self;
        let claimed = db::outbox::claim(tx, owned, config.batch).await?;
        let mut outcome = Pass { claimed: claimed.len(), owned: owned.len(), ..Pass::default() };
        if claimed.is_empty() {
            return Ok(outcome);
        }
        let mut lanes = lanes_by_key(&claimed);
        let mut delivered = Vec::with_capacity(claimed.len());
        let mut refused = Vec::new();
        loop {
            let wave: Vec<(usize, &Pending)> =
                lanes.iter_mut().enumerate().filter_map(|(i, lane)| lane.pop().map(|p| (i, p))).collect();
            if wave.is_empty() {
                break;
            }
            let results = producer.publish(wave.iter().map(|(_, p)| &p.record)).await;
            for ((lane, p), result) in wave.into_iter().zip(results) {
                match result {
                    Ok(()) => delivered.push(p.id),
                    Err(e) => {
                        // The key stops here; its later rows stay unpublished behind this one.
                        lanes[lane].clear();
                        if e.permanent {
                            refused.push((p, e.message));
                        } else {
                            outcome.transient.get_or_insert(e.message);
                        }
                    }
                }
            }
        }
        db::outbox::mark_published(tx, &delivered).await?;
        outcome.published = delivered.len();
        self.metrics.relay_published(delivered.len());
        for (p, error) in refused {
            let attempt = p.attempts + 1;
            let refusal = if attempt >= config.max_attempts {
                tracing::error!(outbox_id = p.id, topic = %p.record.topic, attempts = attempt, %error,
                "outbox row parked: the broker refused it for good; later rows of its key wait behind it");
                Refusal::Park
            } else {
                let delay = config
                    .refused_retry_base
                    .saturating_mul(1 << (attempt - 1).clamp(0, 16))
                    .min(config.max_backoff);
                tracing::warn!(outbox_id = p.id, topic = %p.record.topic, attempt, %error, retry_in = ?delay,
                "outbox row refused by the broker");
                outcome.refused_retry_in = Some(outcome.refused_retry_in.map_or(delay, |d| d.min(delay)));
                Refusal::RetryAfterMs(delay.as_millis() as i64)
            };
            db::outbox::record_refusal(tx, p.id, &error, refusal).await?;
        }
        Ok(outcome)
    }

    /// After a pass that met delivery errors: replaces the producer if it hit a fatal error.
    fn recover_producer(&self) {
        match self.producer.recover() {
            Ok(Some(fatal)) => {
                self.metrics.producer_replaced();
                tracing::error!(error = %fatal, "Kafka producer hit a fatal error; replaced it")
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "replacing the failed Kafka producer failed")
            }
        }
    }
}

/// The claimed rows grouped by key, each group in id order and reversed (so `pop` yields the
/// earliest). Rows without a key have no order to keep: each is its own group.
fn lanes_by_key(claimed: &[Pending]) -> Vec<Vec<&Pending>> {
    let mut index: HashMap<&[u8], usize> = HashMap::new();
    let mut lanes: Vec<Vec<&Pending>> = Vec::new();
    for p in claimed {
        match p.record.key.as_deref() {
            Some(key) => {
                let i = *index.entry(key).or_insert_with(|| {
                    lanes.push(Vec::new());
                    lanes.len() - 1
                });
                lanes[i].push(p);
            }
            None => lanes.push(vec![p]),
        }
    }
    for lane in &mut lanes {
        lane.reverse();
    }
    lanes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Record;

    fn row(id: i64, key: Option<&str>) -> Pending {
        Pending {
            id,
            attempts: 0,
            record: Record {
                topic: "t".into(),
                key: key.map(|k| k.as_bytes().to_vec()),
                headers: Vec::new(),
                payload: None,
            },
        }
    }

    #[test]
    fn waves_take_one_row_per_key_in_id_order() {
        let rows = [row(1, Some("a")), row(2, Some("b")), row(3, Some("a")), row(4, None), row(5, Some("a"))];
        let mut lanes = lanes_by_key(&rows);
        let mut waves = Vec::new();
        loop {
            let wave: Vec<i64> = lanes.iter_mut().filter_map(|l| l.pop().map(|p| p.id)).collect();
            if wave.is_empty() {
                break;
            }
            waves.push(wave);
        }
        assert_eq!(waves, [vec![1, 2, 4], vec![3], vec![5]]);
    }
}
