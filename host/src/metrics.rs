//! Prometheus metrics: one `Metrics` value built at start and handed to the pieces that count
//! (dispatcher, consumer, HTTP layer); `/metrics` encodes it together with the gauges read from
//! Postgres at scrape time. Only this module knows `prometheus_client`.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// What became of one event for one handler.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // the variant names are the label values Prometheus shows
pub enum Outcome {
    /// Its actions were committed.
    applied,
    /// A redelivery of an event already applied: nothing changed.
    duplicate,
    /// An attempt failed and will be retried.
    retried,
    /// Sent to the dead-letter topic.
    dead_lettered,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    handler: String,
    outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InvocationLabels {
    handler: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Invocations take from ~10 µs to the deadline (seconds): 20 µs … 5.2 s.
fn invocation_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_02, 2.0, 19))
}

/// HTTP answers: 0.5 ms … 4 s.
fn http_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_5, 2.0, 14))
}

pub struct Metrics {
    registry: Registry,
    events_consumed: Family<TopicLabels, Counter>,
    handler_events: Family<OutcomeLabels, Counter>,
    invocations: HistogramFamily<InvocationLabels>,
    consumer_lag: Family<PartitionLabels, Gauge>,
    http_requests: HistogramFamily<HttpLabels>,
    outbox_backlog: Gauge,
    outbox_parked: Gauge,
    timers_due: Gauge,
    timers_scheduled: Gauge,
    timers_parked: Gauge,
    handlers_loaded: Gauge,
    waiting_for_handler: Gauge,
    events_skipped: Family<ReasonLabels, Counter>,
    task_deaths: Family<TaskLabels, Counter>,
    producer_replaced: Counter,
    timer_passes: Family<PassLabels, Counter>,
    dead_letters_open: Family<DeadLetterLabels, Gauge>,
    redrives: Family<RedriveLabels, Counter>,
    batches: HistogramFamily<BatchLabels>,
    retention_deleted: Family<TableLabels, Counter>,
    relay_slots_owned: Gauge,
    relay_published: Counter,
    oldest_in_flight: Family<PartitionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    in_flight: Family<PartitionLabels, Gauge>,
    keys_running: Gauge,
    events_waiting_behind_key: Gauge,
    admin_uploads: Gauge,
    rebalance_pause: Histogram,
    journal_dropped: Counter,
    shadow_comparisons: Family<InvocationLabels, Counter>,
    shadow_decisions: Family<DecisionLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    handler: String,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BatchLabels {
    path: BatchPath,
}

/// How the dispatcher committed a batch of handler applications.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // the variant names are the label values Prometheus shows
pub enum BatchPath {
    /// One statement per table for the whole batch.
    grouped,
    /// After a failure in the grouped path: one savepoint per application, so only the failing
    /// one fails.
    one_by_one,
    /// Not committed: Postgres was unavailable; every application retries.
    failed,
}

/// Applications per batch: 1 … 512.
fn batch_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 10))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeadLetterLabels {
    handler: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedriveLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassLabels {
    found: TimerPass,
}

/// What one pass of the timer scheduler found.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // the variant names are the label values Prometheus shows
pub enum TimerPass {
    /// It claimed due timers and fired them (or retried them later).
    fired,
    /// Due timers existed but every one was claimed by another replica.
    held_elsewhere,
    /// Nothing was due.
    none_due,
    /// Postgres failed; the scheduler backs off.
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: &'static str,
}

/// What `/metrics` reads at scrape time rather than counting as it happens.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub outbox_backlog: i64,
    pub outbox_parked: i64,
    pub timers_due: i64,
    pub timers_scheduled: i64,
    pub timers_parked: i64,
    pub handlers_loaded: i64,
    /// Open dead letters as `(handler, class, count)`.
    pub dead_letters_open: Vec<(String, String, i64)>,
    /// The dispatcher's unfinished events per assigned partition.
    pub partitions: Vec<crate::dispatch::PartitionInFlight>,
    /// Keys with an event running, and events queued behind them.
    pub keys_running: i64,
    pub events_waiting_behind_key: i64,
    /// Components the admin API is receiving, compiling or replaying now (0 with it off).
    pub admin_uploads: i64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::with_prefix("order_host"),
            events_consumed: Family::default(),
            handler_events: Family::default(),
            invocations: Family::new_with_constructor(invocation_buckets),
            consumer_lag: Family::default(),
            http_requests: Family::new_with_constructor(http_buckets),
            outbox_backlog: Gauge::default(),
            outbox_parked: Gauge::default(),
            timers_due: Gauge::default(),
            timers_scheduled: Gauge::default(),
            timers_parked: Gauge::default(),
            handlers_loaded: Gauge::default(),
            waiting_for_handler: Gauge::default(),
            events_skipped: Family::default(),
            task_deaths: Family::default(),
            producer_replaced: Counter::default(),
            timer_passes: Family::default(),
            dead_letters_open: Family::default(),
            redrives: Family::default(),
            batches: Family::new_with_constructor(batch_buckets),
            retention_deleted: Family::default(),
            relay_slots_owned: Gauge::default(),
            relay_published: Counter::default(),
            journal_dropped: Counter::default(),
            shadow_comparisons: Family::default(),
            shadow_decisions: Family::default(),
            oldest_in_flight: Family::default(),
            in_flight: Family::default(),
            keys_running: Gauge::default(),
            events_waiting_behind_key: Gauge::default(),
            admin_uploads: Gauge::default(),
            rebalance_pause: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
        };
        m.register()
    }

    /// Registers every metric with the registry (the families are shared handles).
    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register("events_consumed", "Records consumed, by topic", self.events_consumed.clone());
        r.register(
            "handler_events",
            "Events per handler by outcome (applied, duplicate, retried, dead_lettered)",
            self.handler_events.clone(),
        );
        r.register(
            "handler_invocation_seconds",
            "Handler invocation time, by handler and result (ok, error)",
            self.invocations.clone(),
        );
        r.register(
            "consumer_lag",
            "Records behind the partition's high watermark, per consumed partition (from the Kafka client's statistics)",
            self.consumer_lag.clone(),
        );
        r.register(
            "http_request_seconds",
            "HTTP requests by method, matched route and status: time to the response head",
            self.http_requests.clone(),
        );
        r.register(
            "outbox_backlog",
            "Outbox records not yet published to Kafka",
            self.outbox_backlog.clone(),
        );
        r.register(
            "timers_due",
            "Delayed status changes past their due time, not yet fired",
            self.timers_due.clone(),
        );
        r.register(
            "timers_scheduled",
            "Delayed status changes waiting in Postgres",
            self.timers_scheduled.clone(),
        );
        r.register("handlers_loaded", "Handlers serving", self.handlers_loaded.clone());
        r.register(
            "outbox_parked",
            "Outbox records the broker refused too often, waiting for an operator (with their key's later records)",
            self.outbox_parked.clone(),
        );
        r.register(
            "timers_parked",
            "Delayed status changes that failed too often, waiting for an operator",
            self.timers_parked.clone(),
        );
        r.register(
            "events_waiting_for_handler",
            "Events held (not completed, offsets not committed) because no handler is loaded for their type",
            self.waiting_for_handler.clone(),
        );
        r.register(
            "events_skipped",
            "Events completed without a handler, by reason (unsubscribed: through the admin API; not_configured: no handler was ever configured for the type)",
            self.events_skipped.clone(),
        );
        r.register(
            "background_task_deaths",
            "Background tasks that ended unexpectedly (the process then shuts down)",
            self.task_deaths.clone(),
        );
        r.register(
            "kafka_producer_replaced",
            "Kafka producers replaced after a fatal error",
            self.producer_replaced.clone(),
        );
        r.register(
            "timer_scheduler_passes",
            "Timer scheduler passes by what they found (fired, held_elsewhere: due timers all claimed by another replica, none_due, failed)",
            self.timer_passes.clone(),
        );
        r.register(
            "dead_letters_open",
            "Open dead letters (not redriven or discarded) by handler and class, read from Postgres at scrape time",
            self.dead_letters_open.clone(),
        );
        r.register(
            "dead_letter_redrives",
            "Dead-letter redrives by outcome (applied, failed: stays open, refused: not run, error: the host could not run it)",
            self.redrives.clone(),
        );
        r.register(
            "dispatch_batch_applications",
            "Handler applications per group-commit transaction, by path (grouped; one_by_one: a failure in the batch isolated with a savepoint per application; failed: Postgres unavailable, all retried)",
            self.batches.clone(),
        );
        r.register(
            "relay_slots_owned",
            "Outbox slots (of 16, by key hash) this replica's relay publishes; the live relays share them evenly",
            self.relay_slots_owned.clone(),
        );
        r.register("relay_published", "Outbox records this replica published", self.relay_published.clone());
        r.register(
            "dispatch_oldest_in_flight_seconds",
            "Per assigned partition: seconds since the oldest event consumed and not yet finished was consumed (0 when none)",
            self.oldest_in_flight.clone(),
        );
        r.register(
            "dispatch_in_flight",
            "Per assigned partition: events consumed and not yet finished",
            self.in_flight.clone(),
        );
        r.register(
            "rebalance_pause_seconds",
            "From giving up partitions in an eager rebalance to the next assignment: the time this member consumed nothing",
            self.rebalance_pause.clone(),
        );
        r.register("dispatch_keys_running", "Keys (orders) with an event running", self.keys_running.clone());
        r.register(
            "admin_uploads_in_progress",
            "Components being received, compiled or replayed through the admin API (beyond its limit, 429)",
            self.admin_uploads.clone(),
        );
        r.register(
            "dispatch_events_waiting_behind_key",
            "Events queued behind a running event of their key; the busiest keys are listed at /admin/dispatch/backlog",
            self.events_waiting_behind_key.clone(),
        );
        r.register(
            "retention_deleted_rows",
            "Rows deleted by the retention pass, by table (outbox: published records; processed_events: idempotency rows; invocations: journal entries)",
            self.retention_deleted.clone(),
        );
        r.register(
            "journal_dropped",
            "Invocation journal entries dropped because the writer's queue was full",
            self.journal_dropped.clone(),
        );
        r.register(
            "shadow_comparisons",
            "Shadow candidate invocations compared with the serving version, by result (identical, different, candidate_error, skipped: no capacity)",
            self.shadow_comparisons.clone(),
        );
        r.register(
            "shadow_decisions",
            "Shadow candidates ended, by decision (promoted, aborted, dropped)",
            self.shadow_decisions.clone(),
        );
        self
    }

    pub fn journal_dropped(&self) {
        self.journal_dropped.inc();
    }

    pub fn shadow_compared(&self, handler: &str, result: &'static str) {
        self.shadow_comparisons
            .get_or_create(&InvocationLabels { handler: handler.to_string(), result })
            .inc();
    }

    pub fn shadow_decided(&self, handler: &str, decision: &'static str) {
        self.shadow_decisions.get_or_create(&DecisionLabels { handler: handler.to_string(), decision }).inc();
    }

    pub fn retention_deleted(&self, table: &'static str, rows: u64) {
        self.retention_deleted.get_or_create(&TableLabels { table }).inc_by(rows);
    }

    pub fn dispatch_batch(&self, path: BatchPath, applications: usize) {
        self.batches.get_or_create(&BatchLabels { path }).observe(applications as f64);
    }

    pub fn redrive(&self, outcome: &'static str) {
        self.redrives.get_or_create(&RedriveLabels { outcome }).inc();
    }

    pub fn timer_pass(&self, found: TimerPass) {
        self.timer_passes.get_or_create(&PassLabels { found }).inc();
    }

    /// An event is held, or no longer held, for want of a handler.
    pub fn waiting_for_handler(&self, delta: i64) {
        self.waiting_for_handler.inc_by(delta);
    }

    pub fn event_skipped(&self, reason: &'static str) {
        self.events_skipped.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn task_died(&self, task: &'static str) {
        self.task_deaths.get_or_create(&TaskLabels { task }).inc();
    }

    pub fn rebalance_pause(&self, paused: Duration) {
        self.rebalance_pause.observe(paused.as_secs_f64());
    }

    pub fn relay_slots_owned(&self, slots: usize) {
        self.relay_slots_owned.set(slots as i64);
    }

    pub fn relay_published(&self, records: usize) {
        self.relay_published.inc_by(records as u64);
    }

    pub fn producer_replaced(&self) {
        self.producer_replaced.inc();
    }

    pub fn event_consumed(&self, topic: &str) {
        self.events_consumed.get_or_create(&TopicLabels { topic: topic.to_string() }).inc();
    }

    pub fn handler_event(&self, handler: &str, outcome: Outcome) {
        self.handler_events.get_or_create(&OutcomeLabels { handler: handler.to_string(), outcome }).inc();
    }

    pub fn invocation(&self, handler: &str, ok: bool, took: Duration) {
        let labels =
            InvocationLabels { handler: handler.to_string(), result: if ok { "ok" } else { "error" } };
        self.invocations.get_or_create(&labels).observe(took.as_secs_f64());
    }

    pub fn consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag.get_or_create(&PartitionLabels { topic: topic.to_string(), partition }).set(lag);
    }

    /// Partitions this consumer no longer holds show no lag (rather than their last value).
    pub fn consumer_lag_revoked(&self, partitions: &[(String, i32)]) {
        for (topic, partition) in partitions {
            self.consumer_lag.remove(&PartitionLabels { topic: topic.clone(), partition: *partition });
        }
    }

    /// `route` is the matched route template (`/api/orders/{id}`), never the raw path, so the
    /// label set stays bounded whatever clients send.
    pub fn http_request(&self, method: &str, route: String, status: u16, took: Duration) {
        let labels = HttpLabels { method: method.to_string(), route, status };
        self.http_requests.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// The text exposition (OpenMetrics, which Prometheus scrapes natively).
    pub fn encode(&self, snapshot: Snapshot) -> String {
        self.outbox_backlog.set(snapshot.outbox_backlog);
        self.outbox_parked.set(snapshot.outbox_parked);
        self.timers_due.set(snapshot.timers_due);
        self.timers_scheduled.set(snapshot.timers_scheduled);
        self.timers_parked.set(snapshot.timers_parked);
        self.handlers_loaded.set(snapshot.handlers_loaded);
        // Handler and class names come from the table, a bounded set; a pair with none open
        // disappears rather than lingering at its last value.
        self.dead_letters_open.clear();
        for (handler, class, count) in snapshot.dead_letters_open {
            self.dead_letters_open.get_or_create(&DeadLetterLabels { handler, class }).set(count);
        }
        // Partitions come and go with rebalances: one no longer assigned disappears.
        self.oldest_in_flight.clear();
        self.in_flight.clear();
        for p in snapshot.partitions {
            let labels = PartitionLabels { topic: p.topic, partition: p.partition };
            self.oldest_in_flight.get_or_create(&labels).set(p.oldest.as_secs_f64());
            self.in_flight.get_or_create(&labels).set(p.events as i64);
        }
        self.keys_running.set(snapshot.keys_running);
        self.admin_uploads.set(snapshot.admin_uploads);
        self.events_waiting_behind_key.set(snapshot.events_waiting_behind_key);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_up_with_their_labels() {
        let m = Metrics::new();
        m.event_consumed("order.created");
        m.handler_event("notifier", Outcome::applied);
        m.handler_event("notifier", Outcome::applied);
        m.handler_event("notifier", Outcome::dead_lettered);
        m.invocation("notifier", true, Duration::from_micros(50));
        m.consumer_lag("order.created", 2, 7);
        m.http_request("POST", "/api/orders".into(), 201, Duration::from_millis(3));
        let text = m.encode(Snapshot {
            outbox_backlog: 4,
            timers_due: 1,
            timers_scheduled: 2,
            handlers_loaded: 2,
            admin_uploads: 1,
            ..Snapshot::default()
        });
        for line in [
            r#"order_host_events_consumed_total{topic="order.created"} 1"#,
            r#"order_host_handler_events_total{handler="notifier",outcome="applied"} 2"#,
            r#"order_host_handler_events_total{handler="notifier",outcome="dead_lettered"} 1"#,
            r#"order_host_handler_invocation_seconds_count{handler="notifier",result="ok"} 1"#,
            r#"order_host_consumer_lag{topic="order.created",partition="2"} 7"#,
            r#"order_host_http_request_seconds_count{method="POST",route="/api/orders",status="201"} 1"#,
            "order_host_outbox_backlog 4",
            "order_host_timers_due 1",
            "order_host_timers_scheduled 2",
            "order_host_handlers_loaded 2",
            "order_host_admin_uploads_in_progress 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
