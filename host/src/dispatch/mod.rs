//! The event dispatcher: consumes order events, runs them through the subscribed handlers, and
//! commits offsets only behind completed work.
//!
//! Events with the same key (the order id) run one after another, in offset order; different
//! keys run in parallel, up to `max_in_flight` events in all, beyond which the consumer stops
//! fetching. A key waiting out a retry backoff holds up only itself. Offsets are stored up to the
//! contiguous prefix of completed events per partition, so a crash or a rebalance redelivers
//! exactly the unfinished ones; their effects are idempotent (`processed_events`).

mod backlog;
mod batching;
mod commit;
pub mod decode;
mod process;
pub mod redrive;
mod snapshot;
pub mod timers;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::{DispatchConfig, KafkaConfig, Topics};
use crate::handler_set::HandlerSet;
use crate::kafka::{Consumer, Incoming};
use crate::metrics::Metrics;
use crate::runtime::Invoke;
use crate::supervise::{Supervisor, panic_message};

pub use self::backlog::{Backlog, BusyKey, Lanes as LaneView, PartitionInFlight};
pub use self::process::DbOrders;

/// What every event's processing needs. Shared by all key tasks.
pub struct Shared {
    pub pool: PgPool,
    /// Runs handler logic: the WASM runtime (a benchmark swaps in native code).
    pub invoker: Arc<dyn Invoke>,
    /// The live handlers; each event routes by the snapshot taken when it starts.
    pub handlers: Arc<HandlerSet>,
    pub config: DispatchConfig,
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub shutdown: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
    /// Told when a key lane panics.
    pub supervisor: Arc<Supervisor>,
    /// What is in flight, kept where `/metrics` and the admin API can read it.
    pub backlog: Arc<Backlog>,
    /// Records the invocations `JOURNAL_MODE` selects.
    pub journal: Arc<crate::journal::Journal>,
    /// Candidates that run after the serving version and are only compared.
    pub shadows: Arc<crate::shadow::ShadowSet>,
}

/// How long shutdown waits for the consumer's final commit and group leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

struct Job {
    record: Incoming,
    /// Which assignment of its partition it was consumed under ([`Backlog`]): finishing it
    /// counts towards the committable prefix only while that assignment lasts.
    assignment: u64,
    /// When it was queued behind its key's running event, for the admin API's busy keys.
    queued_at: Instant,
    _permit: OwnedSemaphorePermit,
}

/// The tasks that gather many lanes' database work into one round trip: snapshot reads before
/// the handlers run, and group commit after.
pub(super) struct Batchers {
    committer: commit::Committer,
    snapshots: snapshot::Snapshots,
}

struct State {
    shared: Shared,
    batchers: Batchers,
    consumer: Consumer,
}

/// Consumes until `shutdown`, then stops fetching, gives in-flight events `drain_timeout` to
/// finish, commits what finished and leaves the group.
pub async fn run(shared: Shared, consumer: Consumer) {
    let mut shutdown = shared.shutdown.clone();
    let permits = Arc::new(Semaphore::new(shared.config.max_in_flight));
    let drain_timeout = shared.config.drain_timeout;
    let batchers = Batchers {
        committer: commit::Committer::start(&shared),
        snapshots: snapshot::Snapshots::start(&shared),
    };
    let state = Arc::new(State { shared, batchers, consumer });
    let mut tasks = JoinSet::new();
    'consume: loop {
        while let Some(joined) = tasks.try_join_next() {
            report_lane(&state.shared, joined);
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shutdown.wait_for(|s| *s) => break 'consume,
        };
        let record = loop {
            let next = tokio::select! {
                r = state.consumer.recv() => Some(r),
                // A lane that ends (or panics) while no record arrives is reported at once.
                Some(joined) = tasks.join_next() => {
                    report_lane(&state.shared, joined);
                    None
                }
                _ = shutdown.wait_for(|s| *s) => break 'consume,
            };
            match next {
                Some(Ok(r)) => break r,
                Some(Err(e)) => {
                    tracing::warn!(error = %format!("{e:#}"), "consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None => {}
            }
        };
        let assignment = state.shared.backlog.tracker().begin(&record.topic, record.partition, record.offset);
        // Records without a key keep their partition's order.
        let key = record
            .key
            .clone()
            .unwrap_or_else(|| format!("{}/{}", record.topic, record.partition).into_bytes());
        let job = Job { record, assignment, queued_at: Instant::now(), _permit: permit };
        let mut lanes = state.shared.backlog.lanes();
        match lanes.get_mut(&key) {
            Some(queue) => queue.push_back(job),
            None => {
                lanes.insert(key.clone(), VecDeque::new());
                tasks.spawn(run_key(state.clone(), key, job));
            }
        }
    }
    tracing::info!(in_flight = tasks.len(), "dispatcher stopping");
    let drain = async {
        while let Some(joined) = tasks.join_next().await {
            report_lane(&state.shared, joined);
        }
    };
    if tokio::time::timeout(drain_timeout, drain).await.is_err() {
        tracing::warn!("in-flight events abandoned at shutdown; they will be redelivered");
        tasks.abort_all();
    }
    drop(tasks);
    // Bounded, and on a thread of its own rather than the runtime's blocking pool: the Kafka client's
    // close can wait for good (a final commit against an unreachable broker, or a rebalance event
    // met while the client is destroyed, whose protocol query is never answered), and a runtime
    // waits for its blocking tasks when it is dropped. What was not committed is redelivered.
    let (closed, closed_rx) = tokio::sync::oneshot::channel();
    let closer = std::thread::Builder::new().name("consumer-close".into()).spawn(move || {
        state.consumer.close();
        drop(state);
        let _ = closed.send(());
    });
    if closer.is_err() || tokio::time::timeout(CLOSE_TIMEOUT, closed_rx).await.is_err() {
        tracing::warn!("the consumer did not close in time; uncommitted events will be redelivered");
    }
}

/// A key lane that panicked leaves its key's events unfinished (their offsets are never stored,
/// so they are redelivered after a restart) and its queue stuck: a death.
fn report_lane(shared: &Shared, joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        shared.supervisor.died("dispatch key lane", &panic_message(e.into_panic()));
    }
}

/// Processes one key's events in order until its queue is empty.
async fn run_key(state: Arc<State>, key: Vec<u8>, first: Job) {
    let mut job = first;
    loop {
        let r = &job.record;
        if process::handle(&state.shared, &state.batchers, r).await == process::Done::Abandoned {
            return;
        }
        {
            // Stored under the lock: two lanes of one partition finishing together must not store
            // their positions in the opposite order (the stored offset would move backwards).
            let mut tracker = state.shared.backlog.tracker();
            if let Some(next) = tracker.complete(&r.topic, r.partition, r.offset, job.assignment) {
                state.consumer.store(&r.topic, r.partition, next);
            }
        }
        drop(job);
        let mut lanes = state.shared.backlog.lanes();
        match lanes.get_mut(&key).and_then(VecDeque::pop_front) {
            Some(j) => job = j,
            None => {
                lanes.remove(&key);
                return;
            }
        }
    }
}
