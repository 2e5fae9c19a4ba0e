//! One event through every subscribed handler: invoke, then apply the returned actions with the
//! idempotency record in one transaction; retry with backoff; dead-letter when retries run out or
//! the failure is final. Host failures (Postgres down) are retried until they recover, without
//! spending the handler's attempts. An event whose type has no handler waits for one (see
//! `Registry::route`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sqlx::PgPool;
use tracing::Instrument;
use uuid::Uuid;

use super::commit::{Application, Committed, DbFailure};
use super::decode::{Decoded, Happened, decode};
use super::snapshot::Snapshot;
use super::{Batchers, Shared};
use crate::config::Topics;
use crate::db::dead_letters::{self, NewDeadLetter};
use crate::db::effects::{self, LogPosition, NewNotification, NewTimer};
use crate::db::orders::{self, Cause, Order, StoreError};
use crate::db::{self, FailureClass, outbox};
use crate::events::Record;
use crate::kafka::Incoming;
use crate::metrics::Outcome;
use crate::orders::Status;
use crate::runtime::event_at;
use crate::runtime::wit::{self, Action};
use crate::runtime::{DispatchError, Disposition, Event, LoadedHandler, OrderSource, Route};
use crate::telemetry;

/// How handling an event ended for the consumer's bookkeeping.
#[derive(Debug, PartialEq, Eq)]
pub enum Done {
    /// Every handler applied it or dead-lettered it (or its type is deliberately unhandled): its
    /// offset may be committed.
    Completed,
    /// Shutdown came first: not committed, so it is redelivered.
    Abandoned,
}

/// Whether a wait ran its course or shutdown cut it short.
#[derive(Debug, PartialEq, Eq)]
enum Waited {
    Elapsed,
    ShuttingDown,
}

/// Who dead-letters records no handler could be given.
const DISPATCHER: &str = "dispatcher";

/// The longest delay a handler may ask for before a status change: far beyond any real use, and
/// well inside what Postgres timestamps can hold. A longer one is the handler's fault.
const MAX_DELAY_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// One consumed record being handled: what every step needs.
struct InFlight<'a> {
    shared: &'a Shared,
    batchers: &'a Batchers,
    record: &'a Incoming,
    position: LogPosition,
}

/// Why and by whom a record is dead-lettered.
struct DeadLetter<'a> {
    handler: &'a str,
    version: &'a str,
    event_id: &'a str,
    /// When the record decoded far enough to name its order.
    order_id: Option<Uuid>,
    /// Handler-caused attempts.
    attempts: u32,
    /// `x-dlq-class`: undecodable, handler-error, trap, rejected-effects, missing-order,
    /// invalid-action, refused-transition.
    class: &'static str,
    reason: String,
}

/// Handles one record inside a `dispatch` span, a child of the span that produced the record
/// when it carries a `traceparent`.
pub(super) async fn handle(shared: &Shared, batchers: &Batchers, record: &Incoming) -> Done {
    let span = tracing::info_span!("dispatch", topic = %record.topic, partition = record.partition,
        offset = record.offset, event_id = tracing::field::Empty, order_id = tracing::field::Empty);
    if let Some(tp) = record.header("traceparent").and_then(|v| std::str::from_utf8(v).ok()) {
        telemetry::set_parent(&span, tp);
    }
    handle_record(shared, batchers, record).instrument(span).await
}

async fn handle_record(shared: &Shared, batchers: &Batchers, record: &Incoming) -> Done {
    let position = LogPosition::from(record);
    let ev = InFlight { shared, batchers, record, position };
    shared.metrics.event_consumed(&record.topic);
    let decoded = match decode(record, &shared.kafka.created_topic, &shared.kafka.status_topic) {
        Ok(d) => d,
        Err(reason) => {
            tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, %reason, "undecodable event");
            let event_id = super::decode::event_id(record);
            let dl = DeadLetter {
                handler: DISPATCHER,
                version: env!("CARGO_PKG_VERSION"),
                event_id: &event_id,
                order_id: None,
                attempts: 1,
                class: "undecodable",
                reason,
            };
            return dead_letter(&ev, dl).await;
        }
    };
    let span = tracing::Span::current();
    span.record("event_id", decoded.event_id.as_str());
    span.record("order_id", tracing::field::display(decoded.order_id));
    // One snapshot for the whole event, retries included: each handler handles it with one version.
    let handlers = match route(shared, &decoded).await {
        Routed::Handlers(h) => h,
        Routed::Skipped => return Done::Completed,
        Routed::Abandoned => return Done::Abandoned,
    };
    // A failed read leaves each handler to read for itself, as a retry does.
    let snapshot = match ev.batchers.snapshots.read(decoded.order_id, &decoded.event_id, &handlers).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(event_id = %decoded.event_id, error = %e, "reading the event's order failed");
            None
        }
    };
    let first = snapshot.as_ref().map(|s| FirstTry::of(s, record, &decoded));
    // The handlers run side by side on the same snapshot; their answers commit independently.
    let done =
        futures_util::future::join_all(handlers.iter().map(|h| handle_for(&ev, &decoded, h, first.as_ref())))
            .await;
    match done.contains(&Done::Abandoned) {
        true => Done::Abandoned,
        false => Done::Completed,
    }
}

/// What every handler's first try starts from: the event's snapshot and, when its order exists,
/// the event as the guest sees it, built once for all handlers. (Built per handler it was 4% of
/// the dispatcher's CPU in a profile of the throughput drain: the record's headers, the order and
/// its items copied for each.)
struct FirstTry<'a> {
    snapshot: &'a Snapshot,
    event: Option<Event>,
}

impl<'a> FirstTry<'a> {
    fn of(snapshot: &'a Snapshot, record: &Incoming, decoded: &Decoded) -> FirstTry<'a> {
        let event = snapshot.order.as_deref().map(|order| wit_event(record, decoded, order, 1));
        FirstTry { snapshot, event }
    }
}

enum Routed {
    Handlers(Vec<Arc<LoadedHandler>>),
    Skipped,
    Abandoned,
}

/// The handlers for `ev`, waiting (uncompleted, so its offset stays uncommitted and the consumer
/// eventually stops fetching) while its type has none it should wait for.
async fn route(shared: &Shared, ev: &Decoded) -> Routed {
    let mut changes = shared.handlers.changes();
    let mut shutdown = shared.shutdown.clone();
    let mut waiting = false;
    let routed = loop {
        let registry = shared.handlers.current();
        match registry.route(ev.kind()) {
            Route::Handlers(h) => break Routed::Handlers(h.into_iter().cloned().collect()),
            Route::Skip(reason) => {
                tracing::info!(event_id = %ev.event_id, order_id = %ev.order_id, event_type = %ev.kind(),
                    reason = reason.as_str(), "no handler for this event type; completed without one");
                shared.metrics.event_skipped(reason.as_str());
                break Routed::Skipped;
            }
            Route::Wait => {}
        }
        if !waiting {
            waiting = true;
            shared.metrics.waiting_for_handler(1);
            tracing::warn!(event_id = %ev.event_id, order_id = %ev.order_id, event_type = %ev.kind(),
                "no handler loaded for this event type; the event waits for one");
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break Routed::Abandoned },
            _ = shutdown.wait_for(|s| *s) => break Routed::Abandoned,
        }
    };
    if waiting {
        shared.metrics.waiting_for_handler(-1);
    }
    routed
}

/// What one attempt came to.
enum Attempt {
    /// Applied now.
    Done,
    /// Found already applied: a redelivery.
    Duplicate,
    Failed(DispatchError),
    /// Not going to get better by retrying: dead-letter with this class and reason.
    Final(&'static str, String),
}

async fn handle_for(
    ev: &InFlight<'_>,
    decoded: &Decoded,
    h: &Arc<LoadedHandler>,
    first: Option<&FirstTry<'_>>,
) -> Done {
    let shared = ev.shared;
    // The event's snapshot serves the first try; every retry reads afresh.
    let mut first = first;
    // Attempts the handler is answerable for; host failures are counted apart and never spend them.
    let mut attempt: u32 = 1;
    let mut host_failures: u32 = 0;
    let (class, reason) = loop {
        let failure = match try_once(ev, decoded, h, attempt, first.take()).await {
            Attempt::Done => {
                shared.metrics.handler_event(&h.name, Outcome::applied);
                return Done::Completed;
            }
            Attempt::Duplicate => {
                shared.metrics.handler_event(&h.name, Outcome::duplicate);
                return Done::Completed;
            }
            Attempt::Final(class, reason) => break (class, reason),
            Attempt::Failed(e) => e,
        };
        let wait = match failure.disposition() {
            Disposition::DeadLetter => break (failure_class(&failure), failure.to_string()),
            Disposition::Retry if attempt >= shared.config.max_attempts => {
                break (failure_class(&failure), failure.to_string());
            }
            Disposition::Retry => {
                tracing::warn!(handler = %h.cause(), event_id = %decoded.event_id, order_id = %decoded.order_id,
                    attempt, error = %failure, "handler invocation failed; retrying");
                attempt += 1;
                attempt - 1
            }
            Disposition::RetryUntilRecovered => {
                host_failures += 1;
                tracing::warn!(handler = %h.cause(), event_id = %decoded.event_id, order_id = %decoded.order_id,
                    attempt, host_failures, error = %failure, "host failure; retrying until it recovers");
                host_failures
            }
        };
        shared.metrics.handler_event(&h.name, Outcome::retried);
        if backoff(shared, wait).await == Waited::ShuttingDown {
            return Done::Abandoned;
        }
    };
    let dl = DeadLetter {
        handler: &h.name,
        version: &h.version,
        event_id: &decoded.event_id,
        order_id: Some(decoded.order_id),
        attempts: attempt,
        class,
        reason,
    };
    dead_letter(ev, dl).await
}

/// `x-dlq-class` of a handler failure.
pub(super) fn failure_class(e: &DispatchError) -> &'static str {
    match e {
        DispatchError::Handler(_) => "handler-error",
        DispatchError::Trap { .. } => "trap",
        DispatchError::Host(_) => "host",
    }
}

/// A Postgres failure while handling an event: an unavailable Postgres or a host bug is the
/// host's and is retried; values that cannot be stored end in a dead letter.
fn db_failure(f: DbFailure) -> Attempt {
    let DbFailure { what, class, error } = f;
    match class {
        FailureClass::Unavailable | FailureClass::HostBug => {
            Attempt::Failed(DispatchError::Host(anyhow::anyhow!("{what}: {error}")))
        }
        FailureClass::BadValues => {
            Attempt::Final("rejected-effects", format!("{what}: Postgres refused it: {error}"))
        }
    }
}

/// The order and whether `h` already settled the event: from the event's snapshot on a first
/// try, read afresh otherwise.
async fn order_for(
    shared: &Shared,
    decoded: &Decoded,
    h: &LoadedHandler,
    snapshot: Option<&Snapshot>,
) -> Result<Option<Arc<Order>>, Attempt> {
    if let Some(s) = snapshot {
        return match s.settled.contains(&h.name) {
            true => Err(Attempt::Duplicate),
            false => Ok(s.order.clone()),
        };
    }
    match orders::for_event(&shared.pool, decoded.order_id, &decoded.event_id, &[h.name.as_str()]).await {
        Ok((_, settled)) if !settled.is_empty() => Err(Attempt::Duplicate),
        Ok((order, _)) => Ok(order.map(Arc::new)),
        Err(e) => Err(db_failure(DbFailure::new("reading the order", &e))),
    }
}

async fn try_once(
    ev: &InFlight<'_>,
    decoded: &Decoded,
    h: &Arc<LoadedHandler>,
    attempt: u32,
    first: Option<&FirstTry<'_>>,
) -> Attempt {
    let shared = ev.shared;
    let order = match order_for(shared, decoded, h, first.map(|f| f.snapshot)).await {
        Ok(Some(o)) => o,
        Ok(None) => {
            return Attempt::Final("missing-order", format!("order {} does not exist", decoded.order_id));
        }
        Err(settled) => return settled,
    };
    let built;
    let event = match first.and_then(|f| f.event.as_ref()) {
        Some(event) => event,
        None => {
            built = wit_event(ev.record, decoded, &order, attempt);
            &built
        }
    };
    let orders: Arc<dyn OrderSource> = Arc::new(DbOrders(shared.pool.clone()));
    let started = std::time::Instant::now();
    let invoke_span =
        tracing::info_span!("handler.invoke", handler = %h.name, version = %h.short_version(), attempt);
    let result = shared.invoker.invoke(h, event, orders.clone()).instrument(invoke_span).await;
    let took = started.elapsed();
    h.stats.record(took, result.is_ok());
    shared.metrics.invocation(&h.name, result.is_ok(), took);
    if shared.journal.wants(order.id) {
        shared.journal.record(h, event, order.id, &result, took);
    }
    shared.shadows.observe(h, event, order.id, &result, took, orders);
    let actions = match result {
        Ok(a) => a,
        Err(e) => return Attempt::Failed(e),
    };
    tracing::debug!(handler = %h.cause(), event_id = %decoded.event_id, took = ?started.elapsed(), actions = actions.len(), "handler invoked");
    if let Err(reason) = check_actions(&actions) {
        return Attempt::Final("invalid-action", reason);
    }
    let app = Application {
        handler: h.clone(),
        event_id: decoded.event_id.clone(),
        position: ev.position.clone(),
        order,
        actions,
        attempt,
        span: tracing::Span::current(),
    };
    let apply_span = tracing::info_span!("db.apply", handler = %h.name, actions = app.actions.len());
    match ev.batchers.committer.apply(app).instrument(apply_span).await {
        Committed::Applied => Attempt::Done,
        Committed::Duplicate => Attempt::Duplicate,
        Committed::Failed(f) => db_failure(f),
        Committed::Refused(reason) => Attempt::Final("refused-transition", reason),
    }
}

/// The event as the guest sees it.
pub(super) fn wit_event(record: &Incoming, decoded: &Decoded, order: &Order, attempt: u32) -> Event {
    let meta = wit::EventMeta {
        event_id: decoded.event_id.clone(),
        topic: record.topic.clone(),
        partition: record.partition,
        offset: record.offset,
        key: record.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
        headers: record.headers.clone(),
        attempt,
    };
    match &decoded.happened {
        Happened::Created => Event::OrderCreated { meta, order: order.into() },
        Happened::StatusUpdated(u) => Event::StatusUpdated {
            meta,
            update: wit::StatusUpdate {
                order: order.into(),
                previous: u.previous.into(),
                current: u.current.into(),
                changed_at: u.changed_at.timestamp_millis().max(0) as u64,
                cause: u.caused_by.clone(),
            },
        },
    }
}

/// Refuses actions the host could never carry out, before anything is written: the handler's
/// fault, dead-lettered with the reason.
pub(super) fn check_actions(actions: &[Action]) -> Result<(), String> {
    for action in actions {
        match action {
            Action::SetStatus(s) if s.delay_ms.is_some_and(|ms| ms > MAX_DELAY_MS) => {
                return Err(format!(
                    "set-status {} asks for a delay of {} ms, more than the maximum of {MAX_DELAY_MS} ms",
                    s.status.as_str(),
                    s.delay_ms.unwrap_or_default()
                ));
            }
            Action::NotifyCustomer(n) if n.subject.contains('\0') || n.body.contains('\0') => {
                return Err("notify-customer text contains a NUL byte, which cannot be stored".into());
            }
            _ => {}
        }
    }
    Ok(())
}

/// The delay of a status change that is to wait (a durable timer); `None` for one applied with
/// the event's own actions.
pub(super) fn delay_of(s: &wit::SetStatus) -> Option<u64> {
    s.delay_ms.filter(|ms| *ms > 0)
}

/// Why a handler's answer was not applied.
pub(super) enum Unapplied {
    Db(DbStep),
    /// The state machine refused a status change; nothing of the answer was applied.
    Refused(String),
}

impl From<DbStep> for Unapplied {
    fn from(step: DbStep) -> Unapplied {
        Unapplied::Db(step)
    }
}

/// A failed database step while applying: what was being done, and the error.
pub(super) type DbStep = (&'static str, sqlx::Error);

pub(super) fn at(what: &'static str) -> impl Fn(sqlx::Error) -> DbStep {
    move |e| (what, e)
}

/// One handler's answer to one event, being applied inside its transaction.
pub(super) struct Applying<'a> {
    topics: &'a Topics,
    position: &'a LogPosition,
    event_id: &'a str,
    h: &'a LoadedHandler,
    order: &'a Order,
    /// `handler:<name>@<version>`, recorded with every effect.
    cause: String,
    traceparent: Option<String>,
    /// Status changes the state machine refused: the whole answer is then refused.
    refused: Vec<String>,
}

impl<'a> Applying<'a> {
    pub(super) fn new(
        topics: &'a Topics,
        position: &'a LogPosition,
        event_id: &'a str,
        h: &'a LoadedHandler,
        order: &'a Order,
    ) -> Applying<'a> {
        Applying {
            topics,
            position,
            event_id,
            h,
            order,
            cause: h.cause(),
            traceparent: telemetry::current_traceparent(),
            refused: Vec::new(),
        }
    }

    /// Every action in order, all or nothing: a refused status change refuses the whole answer
    /// (the caller's transaction, left uncommitted, rolls the rest back).
    pub(super) async fn all(
        &mut self,
        tx: &mut sqlx::PgConnection,
        actions: &[Action],
    ) -> Result<(), Unapplied> {
        for action in actions {
            self.one(tx, action).await?;
        }
        match self.refused.is_empty() {
            true => Ok(()),
            false => Err(Unapplied::Refused(self.refused.join("; "))),
        }
    }

    async fn one(&mut self, tx: &mut sqlx::PgConnection, action: &Action) -> Result<(), DbStep> {
        let (order, event_id) = (self.order, self.event_id);
        match action {
            Action::SetStatus(s) => match delay_of(s) {
                Some(delay_ms) => self.schedule(tx, s.status.into(), delay_ms).await,
                None => self.change_status(tx, s.status.into()).await,
            },
            Action::NotifyCustomer(n) => {
                let note = NewNotification {
                    order_id: order.id,
                    channel: n.channel.as_str(),
                    subject: &n.subject,
                    body: &n.body,
                    cause: &self.cause,
                    event_id,
                };
                // `false` would mean the order is gone; it was read for this very event.
                effects::notify(tx, &note).await.map(|_| ()).map_err(at("recording a notification"))
            }
            Action::Log(l) => {
                let order_id = order.id;
                event_at!(l.level, handler = %self.cause, %order_id, event_id, "{}", l.message);
                Ok(())
            }
        }
    }

    async fn schedule(&self, tx: &mut sqlx::PgConnection, to: Status, delay_ms: u64) -> Result<(), DbStep> {
        let timer = NewTimer {
            order_id: self.order.id,
            to,
            delay_ms,
            cause: &self.cause,
            event_id: self.event_id,
            handler_version: &self.h.version,
            consumed_topic: &self.position.topic,
            traceparent: self.traceparent.as_deref(),
        };
        effects::schedule(tx, &timer).await.map_err(at("scheduling a timer"))
    }

    /// A change the state machine refuses is logged and recorded in `refused`.
    async fn change_status(&mut self, tx: &mut sqlx::PgConnection, to: Status) -> Result<(), DbStep> {
        let (h, event_id) = (self.h, self.event_id);
        let why = Cause::handler(&self.cause, event_id, &h.version, &self.position.topic);
        match orders::change_status(tx, self.order.id, to, &why, self.topics).await {
            Ok(_) => Ok(()),
            Err(StoreError::Db(e)) => Err(("changing the status", e)),
            Err(e) => {
                tracing::warn!(handler = %self.cause, order_id = %self.order.id, %event_id, error = %e,
                    "status change refused by the state machine");
                self.refused.push(e.to_string());
                Ok(())
            }
        }
    }
}

/// Publishes the original record (key, value and headers, byte for byte) to the dead-letter topic
/// with the failure in `x-dlq-*` headers, through the outbox, together with the idempotency record.
/// Retried until Postgres takes it: an event is never dropped. Every value written to a text
/// column here is validated on the way in (handler names, event ids, topics), so only a transient
/// failure can stop it.
async fn dead_letter(ev: &InFlight<'_>, dl: DeadLetter<'_>) -> Done {
    let (shared, record) = (ev.shared, ev.record);
    let mut headers = record.headers.clone();
    headers.extend(
        [
            ("x-dlq-handler", dl.handler.to_string()),
            ("x-dlq-handler-version", dl.version.to_string()),
            ("x-dlq-attempts", dl.attempts.to_string()),
            ("x-dlq-class", dl.class.to_string()),
            ("x-dlq-error", dl.reason.clone()),
            ("x-dlq-topic", record.topic.clone()),
            ("x-dlq-partition", record.partition.to_string()),
            ("x-dlq-offset", record.offset.to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v.into_bytes())),
    );
    let dlq = Record {
        topic: shared.topics.dead_letter.clone(),
        key: record.key.clone(),
        headers,
        payload: record.payload.clone(),
    };
    let mut failures = 0;
    loop {
        let result: Result<bool, sqlx::Error> = async {
            let mut tx = shared.pool.begin().await?;
            let fresh = effects::record_processed(
                &mut tx,
                dl.handler,
                dl.event_id,
                dl.version,
                "dead-lettered",
                dl.attempts,
                &ev.position,
            )
            .await?;
            if fresh {
                outbox::enqueue(&mut tx, &dlq).await?;
                let row = NewDeadLetter {
                    handler: dl.handler,
                    handler_version: dl.version,
                    event_id: dl.event_id,
                    order_id: dl.order_id,
                    class: dl.class,
                    reason: &dl.reason,
                    attempts: dl.attempts,
                    record,
                };
                dead_letters::insert(&mut tx, &row).await?;
            }
            tx.commit().await?;
            Ok(fresh)
        }
        .await;
        match result {
            // A redelivery of an event already settled (applied or dead-lettered) for this
            // handler: nothing was written, so nothing is counted as a new dead letter.
            Ok(false) => {
                shared.metrics.handler_event(dl.handler, Outcome::duplicate);
                tracing::info!(
                    handler = dl.handler,
                    event_id = dl.event_id,
                    "redelivery of a settled event; nothing to do"
                );
                return Done::Completed;
            }
            Ok(true) => {
                shared.metrics.handler_event(dl.handler, Outcome::dead_lettered);
                tracing::error!(handler = dl.handler, event_id = dl.event_id, attempts = dl.attempts, class = dl.class,
                    reason = %dl.reason, topic = %record.topic, partition = record.partition, offset = record.offset,
                    "event dead-lettered");
                return Done::Completed;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, sqlstate = ?db::sqlstate(&e), failures, "dead-lettering failed; retrying");
                if backoff(shared, failures).await == Waited::ShuttingDown {
                    return Done::Abandoned;
                }
            }
        }
    }
}

/// Waits before retry `attempt + 1` (exponential, capped), or gives up at shutdown.
async fn backoff(shared: &Shared, attempt: u32) -> Waited {
    let delay = shared
        .config
        .retry_base
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(shared.config.retry_max);
    let mut shutdown = shared.shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(delay) => Waited::Elapsed,
        _ = shutdown.wait_for(|s| *s) => Waited::ShuttingDown,
    }
}

/// `host.get-order`, answered from Postgres.
pub struct DbOrders(pub PgPool);

impl OrderSource for DbOrders {
    fn get_order<'a>(
        &'a self,
        id: &'a str,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<Option<wit::Order>>> + Send + 'a>> {
        Box::pin(async move {
            let Ok(id) = Uuid::parse_str(id) else { return Ok(None) };
            let order = orders::get(&self.0, id)
                .await
                .map_err(|e| anyhow::Error::new(e).context("reading an order for a handler"))?;
            Ok(order.as_ref().map(wit::Order::from))
        })
    }
}
