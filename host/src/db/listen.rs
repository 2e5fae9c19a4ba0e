//! One `LISTEN` connection per process, fanned out in memory: status changes to live order
//! streams, outbox inserts to the relay, new timers to the scheduler. Notifications are sent by triggers and delivered on
//! commit, so whatever replica wrote a change, every replica hears about it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, broadcast, watch};
use uuid::Uuid;

/// A committed status-history row, as the `order_status` trigger announces it.
#[derive(Debug, Clone, Deserialize)]
pub struct StatusNotice {
    pub id: i64,
    pub order_id: Uuid,
    pub from_status: Option<String>,
    pub to_status: String,
    pub cause: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub enum Notice {
    Status(StatusNotice),
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
                Ok(Some(n)) => match serde_json::from_str::<StatusNotice>(n.payload()) {
                    Ok(s) => {
                        // No receivers is normal: nobody is watching.
                        let _ = notices.status.send(Notice::Status(s));
                    }
                    Err(e) => tracing::warn!(error = %e, payload = n.payload(), "undecodable status notice"),
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

async fn connect(pool: &PgPool) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen_all(["order_status", "outbox", "timers"]).await?;
    Ok(listener)
}
