//! One `LISTEN` connection per process, fanned out in memory: status changes to live order
//! streams, outbox inserts to the relay, new timers to the scheduler. Notifications are sent by triggers and delivered on
//! commit, so whatever replica wrote a change, every replica hears about it.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, broadcast, watch};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub enum Notice {
    /// Orders whose status changed in one committed statement (the `order_status` trigger's
    /// payload, migration 0012): a watcher of one of them reads its new history rows itself.
    Changed(Arc<[Uuid]>),
    /// The listening connection dropped and was re-established; notifications in between were
    /// lost, so subscribers should re-read what they show.
    Resync,
}

/// Handles to the fan-out. Cheap to clone.
#[derive(Clone)]
pub struct Notices {
    status: broadcast::Sender<Notice>,
    outbox: Arc<Notify>,
    timers: Arc<Notify>,
}

/// Per-subscriber buffer of status notices; a subscriber that falls further behind gets a lag
/// error and re-reads from the database.
const STATUS_BUFFER: usize = 1024;

impl Notices {
    pub fn new() -> Notices {
        Notices {
            status: broadcast::channel(STATUS_BUFFER).0,
            outbox: Arc::new(Notify::new()),
            timers: Arc::new(Notify::new()),
        }
    }

    pub fn subscribe_status(&self) -> broadcast::Receiver<Notice> {
        self.status.subscribe()
    }

    /// Wakes when outbox rows may be waiting.
    pub fn outbox(&self) -> Arc<Notify> {
        self.outbox.clone()
    }

    /// Wakes when a timer was created (the earliest due time may have moved).
    pub fn timers(&self) -> Arc<Notify> {
        self.timers.clone()
    }
}

impl Default for Notices {
    fn default() -> Notices {
        Notices::new()
    }
}

/// Listens until `shutdown` turns true. Connection failures are retried with a capped backoff;
/// each recovery tells subscribers to resync and wakes the relay.
pub async fn run(pool: PgPool, notices: Notices, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match connect(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot listen for notifications; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // Anything committed before LISTEN took effect is unknown to us.
        let _ = notices.status.send(Notice::Resync);
        notices.outbox.notify_one();
        notices.timers.notify_one();
        loop {
            let next = tokio::select! {
                n = listener.try_recv() => n,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            match next {
                Ok(Some(n)) if n.channel() == "outbox" => notices.outbox.notify_one(),
                Ok(Some(n)) if n.channel() == "timers" => notices.timers.notify_one(),
                // Nobody watching is the normal case, and then the payload is not even parsed.
                Ok(Some(_)) if notices.status.receiver_count() == 0 => {}
                Ok(Some(n)) => match changed_orders(n.payload()) {
                    Some(ids) => {
                        let _ = notices.status.send(Notice::Changed(ids));
                    }
                    None => {
                        // A payload of another shape (the per-row JSON of the trigger before
                        // migration 0012): which orders changed is unknown, so every watcher
                        // re-reads.
                        tracing::warn!(payload = n.payload(), "undecodable status notice");
                        let _ = notices.status.send(Notice::Resync);
                    }
                },
                Ok(None) => {
                    tracing::warn!("notification connection lost; reconnecting");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "notification connection failed; reconnecting");
                    break;
                }
            }
        }
    }
}

/// The order ids of an `order_status` payload: UUIDs separated by commas.
fn changed_orders(payload: &str) -> Option<Arc<[Uuid]>> {
    payload.split(',').map(|id| id.parse().ok()).collect()
}

async fn connect(pool: &PgPool) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen_all(["order_status", "outbox", "timers"]).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_payload_is_its_order_ids() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(changed_orders(&format!("{a},{b}")).as_deref(), Some(&[a, b][..]));
        assert_eq!(changed_orders(&a.to_string()).as_deref(), Some(&[a][..]));
    }

    #[test]
    fn a_payload_of_another_shape_is_refused() {
        assert_eq!(changed_orders(r#"{"id":1,"order_id":"x"}"#), None);
        assert_eq!(changed_orders(""), None);
    }
}
