//! Snapshot reads for many events at once: what each event's handlers start from (its order, and
//! which of its handlers already settled it) read by one task in three statements per batch.
//!
//! Read per event, a snapshot was a pool acquire and release (sqlx pings the connection on both)
//! and two queries: four round trips, and a third of the dispatcher's CPU in a `perf` profile of
//! the throughput drain (BENCHMARKS.md). Lanes now hand their request to this task; it reads
//! whatever is queued when a reader is free, so batches grow with the load and a lone event
//! waits for nothing but its own read.
//!
//! A lane asks only after its key's previous event committed, so a batched read sees that
//! event's effects exactly as a read of its own would: per-key order is unchanged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::Shared;
use super::batching::{self, Batching};
use crate::db::orders::{self, EventRef, Order};
use crate::runtime::LoadedHandler;

/// What every subscribed handler's first attempt starts from, read once for the event: the order
/// and the handlers that already settled the event (a redelivery).
pub(super) struct Snapshot {
    pub order: Option<Arc<Order>>,
    pub settled: Vec<String>,
}

/// Reads at once. Two let one batch form while the other is read; more only contend with the
/// committers for the same connections and cores.
const READERS: usize = 2;

/// Requests in one read: half the default in-flight cap (`DISPATCH_MAX_IN_FLIGHT`), so a full
/// dispatcher's waiting events fit the two readers' reads; it bounds the statements' arrays
/// beyond that.
const MAX_BATCH: usize = 256;

/// One lane's ask, answered on `reply`.
pub(super) struct Request {
    order_id: Uuid,
    event_id: String,
    handlers: Vec<String>,
    reply: oneshot::Sender<Result<Snapshot, String>>,
}

/// Where lanes ask for snapshots.
pub(super) enum Snapshots {
    /// `DISPATCH_BATCH_MAX = 1`: no database work is batched, so each lane reads its own (the
    /// path before batching, kept as the benchmark's baseline).
    PerEvent { pool: PgPool },
    /// To the reading task.
    Batched { queue: mpsc::Sender<Request> },
}

impl Snapshots {
    /// The reader for `shared.config`; the batched one runs as a supervised task until every lane
    /// (every sender) is gone.
    pub(super) fn start(shared: &Shared) -> Snapshots {
        if shared.config.batch_max <= 1 {
            return Snapshots::PerEvent { pool: shared.pool.clone() };
        }
        let (queue, rx) = mpsc::channel(shared.config.max_in_flight.max(1));
        shared.supervisor.spawn(
            "dispatch snapshot reads",
            shared.shutdown.clone(),
            run(shared.pool.clone(), rx),
        );
        Snapshots::Batched { queue }
    }

    /// The snapshot of `event_id` about `order_id` for `handlers`. An error is the read's (Postgres
    /// unavailable, or the task gone); the caller reads afresh per handler, as a retry does.
    pub(super) async fn read(
        &self,
        order_id: Uuid,
        event_id: &str,
        handlers: &[Arc<LoadedHandler>],
    ) -> Result<Snapshot, String> {
        let queue = match self {
            Snapshots::PerEvent { pool } => return read_one(pool, order_id, event_id, handlers).await,
            Snapshots::Batched { queue } => queue,
        };
        let (reply, answer) = oneshot::channel();
        let handlers = handlers.iter().map(|h| h.name.clone()).collect();
        let request = Request { order_id, event_id: event_id.to_owned(), handlers, reply };
        let gone = || "the snapshot reader is not running".to_string();
        queue.send(request).await.map_err(|_| gone())?;
        answer.await.unwrap_or_else(|_| Err(gone()))
    }
}

/// One event's snapshot on its own: the order with the settled handlers, then its items.
async fn read_one(
    pool: &PgPool,
    order_id: Uuid,
    event_id: &str,
    handlers: &[Arc<LoadedHandler>],
) -> Result<Snapshot, String> {
    let names: Vec<&str> = handlers.iter().map(|h| h.name.as_str()).collect();
    match orders::for_event(pool, order_id, event_id, &names).await {
        Ok((order, settled)) => Ok(Snapshot { order: order.map(Arc::new), settled }),
        Err(e) => Err(format!("reading the event's order: {e}")),
    }
}

async fn run(pool: PgPool, queue: mpsc::Receiver<Request>) {
    // No window: a read takes what is queued, and a lone event waits for nothing but its read.
    let batching = Batching { workers: READERS, max: MAX_BATCH, window: Duration::ZERO };
    batching::run(batching, queue, |batch| {
        let pool = pool.clone();
        async move { read_and_reply(&pool, batch).await }
    })
    .await;
}

async fn read_and_reply(pool: &PgPool, batch: Vec<Request>) {
    let wanted: Vec<EventRef<'_>> = batch
        .iter()
        .map(|r| EventRef { order_id: r.order_id, event_id: &r.event_id, handlers: &r.handlers })
        .collect();
    let read = orders::for_events(pool, &wanted).await;
    drop(wanted);
    let mut read = match read {
        Ok(read) => read,
        Err(e) => {
            let error = format!("reading the events' orders: {e}");
            for r in batch {
                let _ = r.reply.send(Err(error.clone()));
            }
            return;
        }
    };
    // Shared: two events of a batch may be about one order (a record keyed by something else).
    let orders: HashMap<Uuid, Arc<Order>> =
        std::mem::take(&mut read.orders).into_iter().map(|(id, o)| (id, Arc::new(o))).collect();
    for r in batch {
        let settled = r.handlers.iter().filter(|h| read.settled(h, &r.event_id)).cloned().collect();
        let order = orders.get(&r.order_id).cloned();
        let _ = r.reply.send(Ok(Snapshot { order, settled }));
    }
}
