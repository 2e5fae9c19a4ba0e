//! One event through every subscribed handler: invoke, then apply the returned actions with the
//! idempotency record in one transaction; retry with backoff; dead-letter when retries run out or
//! the failure is final. Host failures (Postgres down) are retried until they recover.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use sqlx::PgPool;
use tracing::Instrument;
use uuid::Uuid;

use super::Shared;
use super::decode::{Decoded, decode};
use crate::db::dispatch::{self as store, NewNotification, NewTimer, Source};
use crate::db::orders::{self, Cause, Order, StoreError};
use crate::db::outbox;
use crate::events::Record;
use crate::kafka::Incoming;
use crate::metrics::Outcome;
use crate::orders::Status;
use crate::runtime::wit::{self, Action};
use crate::runtime::{DispatchError, Disposition, Event, LoadedHandler, OrderSource};
use crate::telemetry;

/// How handling an event ended for the consumer's bookkeeping.
#[derive(Debug, PartialEq, Eq)]
pub enum Done {
    /// Every handler applied it or dead-lettered it: its offset may be committed.
    Completed,
    /// Shutdown came first: not committed, so it is redelivered.
    Abandoned,
}

/// Who dead-letters records no handler could be given.
const DISPATCHER: &str = "dispatcher";

/// Handles one record inside a `dispatch` span, a child of the span that produced the record
/// when it carries a `traceparent`.
pub async fn handle(shared: &Shared, record: &Incoming) -> Done {
    let span = tracing::info_span!("dispatch", topic = %record.topic, partition = record.partition,
        offset = record.offset, event_id = tracing::field::Empty, order_id = tracing::field::Empty);
    if let Some(tp) = record.header("traceparent").and_then(|v| std::str::from_utf8(v).ok()) {
        telemetry::set_parent(&span, tp);
    }
    handle_record(shared, record).instrument(span).await
}

async fn handle_record(shared: &Shared, record: &Incoming) -> Done {
    let source = Source { topic: record.topic.clone(), partition: record.partition, offset: record.offset };
    shared.metrics.event_consumed(&record.topic);
    let decoded = match decode(record, &shared.kafka.created_topic, &shared.kafka.status_topic) {
        Ok(d) => d,
        Err(reason) => {
            tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, %reason, "undecodable event");
            let id = super::decode::event_id(record);
            let version = env!("CARGO_PKG_VERSION");
            return dead_letter(shared, record, &source, DISPATCHER, version, &id, 1, &reason).await;
        }
    };
    let span = tracing::Span::current();
    span.record("event_id", decoded.event_id.as_str());
    span.record("order_id", tracing::field::display(decoded.order_id));
    // One snapshot for the whole event, retries included: each handler handles it with one version.
    let handlers: Vec<Arc<LoadedHandler>> =
        shared.handlers.current().subscribers(decoded.kind).cloned().collect();
    for h in handlers {
        if handle_for(shared, record, &source, &decoded, &h).await == Done::Abandoned {
            return Done::Abandoned;
        }
    }
    Done::Completed
}

/// What one attempt came to.
enum Attempt {
    /// Applied now.
    Done,
    /// Found already applied: a redelivery.
    Duplicate,
    Failed(DispatchError),
    /// Not the handler's fault and not going to get better: dead-letter with this reason.
    Final(String),
}

async fn handle_for(
    shared: &Shared,
    record: &Incoming,
    source: &Source,
    ev: &Decoded,
    h: &LoadedHandler,
) -> Done {
    let mut attempt: u32 = 1;
    let reason = loop {
        let failure = match try_once(shared, record, source, ev, h, attempt).await {
            Attempt::Done => {
                shared.metrics.handler_event(&h.name, Outcome::applied);
                return Done::Completed;
            }
            Attempt::Duplicate => {
                shared.metrics.handler_event(&h.name, Outcome::duplicate);
                return Done::Completed;
            }
            Attempt::Final(reason) => break reason,
            Attempt::Failed(e) => e,
        };
        let disposition = failure.disposition();
        let exhausted = disposition == Disposition::Retry && attempt >= shared.config.max_attempts;
        if disposition == Disposition::DeadLetter || exhausted {
            break failure.to_string();
        }
        tracing::warn!(handler = %h.cause(), event_id = %ev.event_id, order_id = %ev.order_id, attempt,
            error = %failure, "handler invocation failed; retrying");
        shared.metrics.handler_event(&h.name, Outcome::retried);
        if backoff(shared, attempt).await == Done::Abandoned {
            return Done::Abandoned;
        }
        attempt += 1;
    };
    dead_letter(shared, record, source, &h.name, &h.version, &ev.event_id, attempt, &reason).await
}

async fn try_once(
    shared: &Shared,
    record: &Incoming,
    source: &Source,
    ev: &Decoded,
    h: &LoadedHandler,
    attempt: u32,
) -> Attempt {
    let host = |e: anyhow::Error| Attempt::Failed(DispatchError::Host(e));
    match store::already_processed(&shared.pool, &h.name, &ev.event_id).await {
        Ok(true) => return Attempt::Duplicate,
        Ok(false) => {}
        Err(e) => return host(anyhow::Error::new(e).context("checking the idempotency record")),
    }
    let order = match orders::get(&shared.pool, ev.order_id).await {
        Ok(Some(o)) => o,
        Ok(None) => return Attempt::Final(format!("order {} does not exist", ev.order_id)),
        Err(e) => return host(anyhow::Error::new(e).context("reading the order")),
    };
    let meta = wit::EventMeta {
        event_id: ev.event_id.clone(),
        topic: record.topic.clone(),
        partition: record.partition,
        offset: record.offset,
        key: record.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
        headers: record.headers.clone(),
        attempt,
    };
    let event = match &ev.update {
        None => Event::OrderCreated { meta, order: to_wit(&order) },
        Some(u) => Event::StatusUpdated {
            meta,
            update: wit::StatusUpdate {
                order: to_wit(&order),
                previous: u.previous.into(),
                current: u.current.into(),
                changed_at: u.changed_at.timestamp_millis().max(0) as u64,
                cause: u.caused_by.clone(),
            },
        },
    };
    let orders: Arc<dyn OrderSource> = Arc::new(DbOrders(shared.pool.clone()));
    let started = std::time::Instant::now();
    let invoke_span =
        tracing::info_span!("handler.invoke", handler = %h.name, version = %h.short_version(), attempt);
    let result = shared.invoker.invoke(h, &event, orders).instrument(invoke_span).await;
    h.stats.record(started.elapsed(), result.is_ok());
    shared.metrics.invocation(&h.name, result.is_ok(), started.elapsed());
    let actions = match result {
        Ok(a) => a,
        Err(e) => return Attempt::Failed(e),
    };
    tracing::debug!(handler = %h.cause(), event_id = %ev.event_id, took = ?started.elapsed(), actions = actions.len(), "handler invoked");
    let apply_span = tracing::info_span!("db.apply", handler = %h.name, actions = actions.len());
    match apply(shared, source, ev, h, &order, &actions, attempt).instrument(apply_span).await {
        Ok(()) => Attempt::Done,
        Err(e) => host(e),
    }
}

/// Applies a handler's actions and its idempotency record in one transaction. An action the
/// state machine refuses is logged and skipped, never applied; the others still are.
async fn apply(
    shared: &Shared,
    source: &Source,
    ev: &Decoded,
    h: &LoadedHandler,
    order: &Order,
    actions: &[Action],
    attempt: u32,
) -> anyhow::Result<()> {
    let mut tx = shared.pool.begin().await.context("starting the apply transaction")?;
    if !store::record_processed(&mut tx, &h.name, &ev.event_id, &h.version, "applied", attempt, source)
        .await?
    {
        // Another delivery of this event committed first.
        return Ok(());
    }
    let cause = h.cause();
    let traceparent = telemetry::current_traceparent();
    for action in actions {
        match action {
            Action::SetStatus(s) => {
                let to: Status = s.status.into();
                match s.delay_ms.filter(|ms| *ms > 0) {
                    Some(delay_ms) => {
                        let timer = NewTimer {
                            order_id: order.id,
                            to,
                            delay_ms,
                            cause: &cause,
                            event_id: &ev.event_id,
                            handler_version: &h.version,
                            consumed_topic: &source.topic,
                            traceparent: traceparent.as_deref(),
                        };
                        store::schedule(&mut tx, &timer).await?;
                    }
                    None => {
                        let why = Cause::handler(&cause, &ev.event_id, &h.version, &source.topic);
                        match orders::change_status(&mut tx, order.id, to, &why, &shared.topics).await {
                            Ok(_) => {}
                            Err(
                                e @ (StoreError::IllegalTransition { .. } | StoreError::OrderNotFound(_)),
                            ) => {
                                tracing::warn!(handler = %cause, order_id = %order.id, event_id = %ev.event_id,
                                    error = %e, "status change refused by the state machine");
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
            }
            Action::NotifyCustomer(n) => {
                let note = NewNotification {
                    order_id: order.id,
                    channel: n.channel.as_str(),
                    subject: &n.subject,
                    body: &n.body,
                    cause: &cause,
                    event_id: &ev.event_id,
                };
                store::notify(&mut tx, &note).await?;
            }
            Action::Log(l) => {
                let (order_id, event_id) = (order.id, ev.event_id.as_str());
                match l.level {
                    wit::LogLevel::Error => {
                        tracing::error!(handler = %cause, %order_id, event_id, "{}", l.message)
                    }
                    wit::LogLevel::Warn => {
                        tracing::warn!(handler = %cause, %order_id, event_id, "{}", l.message)
                    }
                    wit::LogLevel::Info => {
                        tracing::info!(handler = %cause, %order_id, event_id, "{}", l.message)
                    }
                    _ => tracing::debug!(handler = %cause, %order_id, event_id, "{}", l.message),
                }
            }
        }
    }
    tx.commit().await.context("committing the handler's actions")?;
    Ok(())
}

/// Publishes the original record (key, value, headers) to the dead-letter topic with the failure
/// in `x-dlq-*` headers, through the outbox, together with the idempotency record. Retried until
/// Postgres takes it: an event is never dropped.
#[allow(clippy::too_many_arguments)]
async fn dead_letter(
    shared: &Shared,
    record: &Incoming,
    source: &Source,
    handler: &str,
    version: &str,
    event_id: &str,
    attempts: u32,
    reason: &str,
) -> Done {
    let mut headers: Vec<(String, String)> =
        record.headers.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect();
    headers.extend([
        ("x-dlq-handler".to_string(), handler.to_string()),
        ("x-dlq-handler-version".to_string(), version.to_string()),
        ("x-dlq-attempts".to_string(), attempts.to_string()),
        ("x-dlq-error".to_string(), reason.to_string()),
        ("x-dlq-topic".to_string(), record.topic.clone()),
        ("x-dlq-partition".to_string(), record.partition.to_string()),
        ("x-dlq-offset".to_string(), record.offset.to_string()),
    ]);
    let dlq = Record {
        topic: shared.topics.dead_letter.clone(),
        key: record.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
        headers,
        payload: record.payload.clone().unwrap_or_default(),
    };
    let mut failures = 0;
    loop {
        let result: anyhow::Result<()> = async {
            let mut tx = shared.pool.begin().await?;
            if store::record_processed(&mut tx, handler, event_id, version, "dead-lettered", attempts, source)
                .await?
            {
                outbox::enqueue(&mut tx, &dlq).await?;
            }
            tx.commit().await?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                shared.metrics.handler_event(handler, Outcome::dead_lettered);
                tracing::error!(handler, event_id, attempts, reason, topic = %record.topic, partition = record.partition,
                    offset = record.offset, "event dead-lettered");
                return Done::Completed;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %format!("{e:#}"), "dead-lettering failed; retrying");
                if backoff(shared, failures).await == Done::Abandoned {
                    return Done::Abandoned;
                }
            }
        }
    }
}

/// Waits before retry `attempt + 1` (exponential, capped), or gives up at shutdown.
async fn backoff(shared: &Shared, attempt: u32) -> Done {
    let delay = shared
        .config
        .retry_base
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(shared.config.retry_max);
    let mut shutdown = shared.shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(delay) => Done::Completed,
        _ = shutdown.wait_for(|s| *s) => Done::Abandoned,
    }
}

/// `host.get-order`, answered from Postgres.
struct DbOrders(PgPool);

impl OrderSource for DbOrders {
    fn get_order<'a>(
        &'a self,
        id: &'a str,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<Option<wit::Order>>> + Send + 'a>> {
        Box::pin(async move {
            let Ok(id) = Uuid::parse_str(id) else { return Ok(None) };
            Ok(orders::get(&self.0, id).await.context("reading an order for a handler")?.as_ref().map(to_wit))
        })
    }
}

fn to_wit(o: &Order) -> wit::Order {
    wit::Order {
        id: o.id.to_string(),
        order_number: o.order_number.clone(),
        customer_name: o.customer_name.clone(),
        customer_email: o.customer_email.clone(),
        shipping_address: wit::ShippingAddress {
            line1: o.address.street.clone(),
            line2: o.address.state.clone(),
            city: o.address.city.clone(),
            postal_code: o.address.zip_code.clone(),
            country: o.address.country.clone(),
        },
        items: o
            .items
            .iter()
            .map(|i| wit::LineItem {
                product_id: i.product_id.clone(),
                name: i.product_name.clone(),
                quantity: i.quantity.max(0) as u32,
                unit_price_cents: i.price_cents.max(0) as u64,
            })
            .collect(),
        total_cents: o.total_cents.max(0) as u64,
        status: o.status.into(),
        created_at: o.created_at.timestamp_millis().max(0) as u64,
    }
}

impl From<Status> for wit::OrderStatus {
    fn from(s: Status) -> wit::OrderStatus {
        match s {
            Status::Pending => wit::OrderStatus::Pending,
            Status::Processing => wit::OrderStatus::Processing,
            Status::Confirmed => wit::OrderStatus::Confirmed,
            Status::Shipped => wit::OrderStatus::Shipped,
            Status::Delivered => wit::OrderStatus::Delivered,
            Status::Cancelled => wit::OrderStatus::Cancelled,
        }
    }
}

impl From<wit::OrderStatus> for Status {
    fn from(s: wit::OrderStatus) -> Status {
        match s {
            wit::OrderStatus::Pending => Status::Pending,
            wit::OrderStatus::Processing => Status::Processing,
            wit::OrderStatus::Confirmed => Status::Confirmed,
            wit::OrderStatus::Shipped => Status::Shipped,
            wit::OrderStatus::Delivered => Status::Delivered,
            wit::OrderStatus::Cancelled => Status::Cancelled,
        }
    }
}
