//! Kafka I/O. The only module that knows rdkafka: the outbox relay's idempotent producer, the
//! dispatcher's consumer, and the embedded development broker behind `KAFKA_BROKERS=embedded`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::events::Record;
use crate::metrics::Metrics;

/// How often librdkafka reports statistics (consumer lag): often enough for a scrape every 15 s,
/// rare enough that parsing its JSON costs nothing noticeable.
const STATS_INTERVAL_MS: &str = "5000";

/// The idempotent producer every record leaves through.
///
/// An idempotent producer can hit a fatal error (for example when the broker lost data it had
/// acknowledged, after an unclean restart): from then on every send fails. The relay asks
/// [`Producer::recover`] after failures, which replaces the client with a fresh one (a new producer
/// id); nothing is lost because undelivered rows stay in the outbox.
pub struct Producer {
    config: ClientConfig,
    inner: std::sync::RwLock<FutureProducer>,
}

/// Why one record was not delivered.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PublishError {
    /// Resending the same record cannot succeed (too large, unknown topic, not authorised), as
    /// opposed to a broker that is unreachable or busy.
    pub permanent: bool,
    pub message: String,
}

impl PublishError {
    fn from_kafka(e: &KafkaError, what: &str) -> PublishError {
        use rdkafka::types::RDKafkaErrorCode as C;
        let permanent = matches!(
            e.rdkafka_error_code(),
            Some(
                C::MessageSizeTooLarge
                    | C::MessageBatchTooLarge
                    | C::InvalidMessageSize
                    | C::UnknownTopicOrPartition
                    | C::UnknownTopic
                    | C::UnknownPartition
                    | C::InvalidTopic
                    | C::TopicAuthorizationFailed
                    | C::InvalidRecord
            )
        );
        PublishError { permanent, message: format!("{what}: {e}") }
    }
}

impl Producer {
    /// `message_timeout` bounds how long librdkafka keeps retrying one record (for example while
    /// the brokers are unreachable) before reporting it failed; the outbox row then stays
    /// unpublished and the relay tries again later. `batch_records` caps a batch
    /// (`KafkaConfig::producer_batch_records`).
    pub fn new(brokers: &str, message_timeout: Duration, batch_records: u32) -> anyhow::Result<Producer> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("client.id", "order-host")
            // No duplicates or reordering from producer retries; acks=all is implied but explicit.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", message_timeout.as_millis().to_string())
            // Records are batched by the relay already; a short linger keeps publish latency low.
            .set("linger.ms", "5")
            .set("batch.num.messages", batch_records.to_string());
        let inner = config.create().context("creating the Kafka producer")?;
        Ok(Producer { config, inner: std::sync::RwLock::new(inner) })
    }

    fn client(&self) -> FutureProducer {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Publishes `records` and reports each one's fate, in the same order. All are enqueued before
    /// any is awaited, so a batch costs one round trip. The caller decides what may go in one
    /// batch: records sent together can be delivered in any combination.
    pub async fn publish<'a>(
        &self,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Vec<Result<(), PublishError>> {
        let producer = self.client();
        let mut pending = Vec::new();
        for r in records {
            let headers =
                r.headers.iter().fold(OwnedHeaders::new_with_capacity(r.headers.len()), |h, (k, v)| {
                    h.insert(Header { key: k, value: Some(v.as_slice()) })
                });
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&r.topic).headers(headers);
            if let Some(key) = &r.key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = &r.payload {
                record = record.payload(payload.as_slice());
            }
            pending.push(
                producer.send_result(record).map_err(|(e, _)| PublishError::from_kafka(&e, "enqueueing")),
            );
        }
        let mut results = Vec::with_capacity(pending.len());
        for p in pending {
            results.push(match p {
                Err(e) => Err(e),
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(PublishError::from_kafka(&e, "delivering")),
                    Err(_) => Err(PublishError {
                        permanent: false,
                        message: "the producer was dropped before delivery".into(),
                    }),
                },
            });
        }
        results
    }

    /// The client's fatal error, if it has one.
    pub fn fatal_error(&self) -> Option<String> {
        self.client().client().fatal_error().map(|(code, reason)| format!("{code:?}: {reason}"))
    }

    /// Replaces a producer that hit a fatal error with a fresh one; returns the error it had.
    pub fn recover(&self) -> anyhow::Result<Option<String>> {
        let Some(fatal) = self.fatal_error() else { return Ok(None) };
        let fresh: FutureProducer = self.config.create().context("recreating the Kafka producer")?;
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(Some(fatal))
    }

    /// Fault injection for tests: raises a fatal error in the client through librdkafka's own test
    /// hook (`rd_kafka_test_fatal_error`), the error an idempotent producer meets when a broker
    /// lost acknowledged data, so the recovery path can be exercised without such a broker.
    #[doc(hidden)]
    pub fn inject_fatal_error(&self, reason: &str) {
        use rdkafka::bindings as rd;
        let reason = std::ffi::CString::new(reason.replace('\0', " ")).expect("no NUL bytes");
        let producer = self.client();
        // SAFETY: the client pointer is live while `producer` (a reference-counted handle) is, and
        // librdkafka copies the reason before returning.
        unsafe {
            rd::rd_kafka_test_fatal_error(
                producer.client().native_ptr(),
                rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            );
        }
    }

    /// Waits for everything in flight to be delivered, for a clean shutdown.
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        self.client().flush(timeout).context("flushing the Kafka producer")
    }

    /// Whether the producer is usable and the brokers answer a metadata request within
    /// `timeout`, for readiness.
    pub async fn check(&self, timeout: Duration) -> anyhow::Result<()> {
        if let Some(fatal) = self.fatal_error() {
            bail!("the Kafka producer hit a fatal error: {fatal}");
        }
        let producer = self.client();
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout).map(|_| ()))
            .await
            .context("joining the Kafka metadata probe")?
            .context("fetching Kafka metadata")
    }
}

/// A consumed record, detached from the client.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Incoming {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }
}

/// Told, inside the rebalance callback, which partitions this consumer is losing, before any
/// record of the next assignment can be received: in-flight bookkeeping for them must end there.
pub type OnRevoke = Box<dyn Fn(&[(String, i32)]) + Send + Sync>;

struct DispatchContext {
    on_revoke: OnRevoke,
    metrics: Arc<Metrics>,
    /// When this member last gave up its partitions: the group is stopped from then until the
    /// next assignment (an eager rebalance), which `order_host_rebalance_pause_seconds` measures.
    revoked_at: std::sync::Mutex<Option<std::time::Instant>>,
}

impl ClientContext for DispatchContext {
    /// librdkafka's statistics (every `STATS_INTERVAL`): the per-partition consumer lag.
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a lag of -1 means unknown.
                // librdkafka keeps reporting partitions it no longer holds (`desired` false): their
                // series were removed at revocation and must not come back.
                if *partition >= 0 && p.desired && p.consumer_lag >= 0 {
                    self.metrics.consumer_lag(topic, *partition, p.consumer_lag);
                }
            }
        }
    }
}

/// Partitions as `topic/partition` for a log line.
fn partition_names(tpl: &TopicPartitionList) -> String {
    let names: Vec<String> =
        tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect();
    names.join(",")
}

impl ConsumerContext for DispatchContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let paused = self.revoked_at.lock().unwrap().take().map(|at| at.elapsed());
                if let Some(paused) = paused {
                    self.metrics.rebalance_pause(paused);
                }
                tracing::info!(partitions = %partition_names(tpl), ?paused, "partitions assigned")
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(partitions = %partition_names(tpl), "partitions revoked");
            *self.revoked_at.lock().unwrap() = Some(std::time::Instant::now());
            // Commit the completed prefix now, so the next owner starts there. Offsets are only
            // ever stored for completed work, so nothing beyond it is committed. Asynchronous:
            // this callback runs inside a poll on an async worker thread, and a synchronous commit
            // against an unreachable coordinator blocked it for good. Should the commit be lost,
            // the next owner redelivers a little more, which the idempotency records absorb.
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
                tracing::debug!(error = %e, "commit on revoke (nothing stored yet is normal)");
            }
            // Synchronously, not through a channel: the dispatcher must not take a record of the
            // next assignment while its bookkeeping still holds this one's partitions.
            let parts: Vec<(String, i32)> =
                tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
            (self.on_revoke)(&parts);
            self.metrics.consumer_lag_revoked(&parts);
        }
    }
}

/// The dispatcher's group consumer. Offsets are stored explicitly (`store`) for completed work
/// only and committed in the background, on revocation and on close.
pub struct Consumer {
    inner: StreamConsumer<DispatchContext>,
}

impl Consumer {
    /// Joins the configured group on the two consumed topics at `brokers` (the configured ones,
    /// or the embedded broker's address). The settings mirrord's queue splitting relies on:
    /// earliest offsets for a new group, the default assignment strategy, no static membership.
    pub fn new(
        brokers: &str,
        config: &KafkaConfig,
        metrics: Arc<Metrics>,
        on_revoke: OnRevoke,
    ) -> anyhow::Result<Consumer> {
        let inner: StreamConsumer<DispatchContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", &config.group_id)
            .set("client.id", "order-host-dispatcher")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "1000")
            // The session timeout is librdkafka's default (45 s) on a real broker and the
            // rebalance timeout (300 s) always is. 10 s and 60 s sessions were tried: against
            // tansu, which re-assigns a killed member that has not yet timed out, a host killed
            // and restarted at once then found half its partitions held by its dead predecessor
            // for longer than the fault test waits. The embedded broker gets a short one
            // (`KafkaConfig::session_timeout` says why).
            .set("session.timeout.ms", config.session_timeout.as_millis().to_string())
            .set("heartbeat.interval.ms", heartbeat_interval(config.session_timeout).as_millis().to_string())
            .set("fetch.wait.max.ms", config.fetch_wait.as_millis().to_string())
            .set("statistics.interval.ms", STATS_INTERVAL_MS)
            .create_with_context(DispatchContext { on_revoke, metrics, revoked_at: Default::default() })
            .context("creating the Kafka consumer")?;
        inner
            .subscribe(&[&config.created_topic, &config.status_topic])
            .context("subscribing to the consumed topics")?;
        Ok(Consumer { inner })
    }

    /// The next record. Errors are per-fetch (an unknown topic, a broker hiccup) and not fatal.
    pub async fn recv(&self) -> anyhow::Result<Incoming> {
        let m = self.inner.recv().await.context("consuming")?;
        Ok(Incoming {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: headers_of(&m),
        })
    }

    /// Marks everything before `next_offset` in this partition as done; committed in the
    /// background. A partition no longer assigned is ignored.
    pub fn store(&self, topic: &str, partition: i32, next_offset: i64) {
        let mut tpl = TopicPartitionList::new();
        if tpl.add_partition_offset(topic, partition, Offset::Offset(next_offset)).is_ok()
            && let Err(e) = self.inner.store_offsets(&tpl)
        {
            tracing::debug!(error = %e, topic, partition, "offset not stored (partition revoked?)");
        }
    }

    /// Commits what is stored and leaves the group, so the partitions move to another member
    /// at once rather than after a session timeout.
    /// Blocking; the group is left for good when the consumer is dropped.
    pub fn close(&self) {
        if let Err(e) = self.inner.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final commit (nothing stored is normal)");
        }
        self.inner.unsubscribe();
    }
}

/// A third of the session, as Kafka advises, and never less often than the client's default 3 s.
pub fn heartbeat_interval(session: Duration) -> Duration {
    (session / 3).min(Duration::from_secs(3))
}

/// A record's headers, read through librdkafka's C API. Hand-written because rdkafka's `Headers`
/// iterator unwraps the header name as UTF-8 and so panics on a hostile record. A name that is not
/// UTF-8 is converted lossily (names are strings in Kafka); values are kept byte for byte, a null
/// value as empty.
fn headers_of(m: &BorrowedMessage<'_>) -> Vec<(String, Vec<u8>)> {
    use rdkafka::bindings as rd;
    let mut hdrs: *mut rd::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `m.ptr()` is a live message for the borrow of `m`; librdkafka returns a pointer to
    // headers owned by that message, valid as long as it is, and we copy everything out before
    // returning.
    unsafe {
        if rd::rd_kafka_message_headers(m.ptr(), &mut hdrs)
            != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            || hdrs.is_null()
        {
            return Vec::new();
        }
        let count = rd::rd_kafka_header_cnt(hdrs);
        let mut out = Vec::with_capacity(count);
        for idx in 0..count {
            let mut name: *const std::os::raw::c_char = std::ptr::null();
            let mut value: *const std::os::raw::c_void = std::ptr::null();
            let mut size = 0usize;
            if rd::rd_kafka_header_get_all(hdrs, idx, &mut name, &mut value, &mut size)
                != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                || name.is_null()
            {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned();
            let value = if value.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(value.cast::<u8>(), size).to_vec()
            };
            out.push((name, value));
        }
        out
    }
}

enum Command {
    BrokerDown(i32, std::sync::mpsc::Sender<anyhow::Result<()>>),
    BrokerUp(i32, std::sync::mpsc::Sender<anyhow::Result<()>>),
}

/// librdkafka's in-process mock cluster, speaking the real Kafka protocol over TCP on loopback.
/// Development and tests only: it keeps everything in memory and forgets it on exit.
///
/// The cluster lives on its own thread (librdkafka's handle is not `Send`); this handle is, and
/// dropping it stops the cluster.
pub struct EmbeddedBroker {
    bootstrap_servers: String,
    commands: Option<std::sync::mpsc::Sender<Command>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts a one-broker cluster with `topics` created with `partitions` partitions each.
    pub fn start(topics: &[&str], partitions: i32) -> anyhow::Result<EmbeddedBroker> {
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<String>>();
        let (commands, command_rx) = std::sync::mpsc::channel::<Command>();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(c) => c,
                    Err(e) => {
                        return drop(ready_tx.send(Err(anyhow!(e).context("starting the mock cluster"))));
                    }
                };
                for t in &topics {
                    if let Err(e) = cluster.create_topic(t, partitions, 1) {
                        return drop(ready_tx.send(Err(anyhow!(e).context(format!("creating topic {t}")))));
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Serve commands until every sender is gone.
                for command in command_rx {
                    match command {
                        Command::BrokerDown(id, reply) => {
                            let _ = reply.send(cluster.broker_down(id).map_err(|e| anyhow!(e)));
                        }
                        Command::BrokerUp(id, reply) => {
                            let _ = reply.send(cluster.broker_up(id).map_err(|e| anyhow!(e)));
                        }
                    }
                }
            })
            .context("spawning the embedded broker thread")?;
        let bootstrap_servers = ready_rx.recv().context("the embedded broker thread died")??;
        Ok(EmbeddedBroker { bootstrap_servers, commands: Some(commands), thread: Some(thread) })
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// Makes the broker unreachable (connections refused or dropped) until `broker_up`.
    pub fn broker_down(&self) -> anyhow::Result<()> {
        self.command(Command::BrokerDown)
    }

    pub fn broker_up(&self) -> anyhow::Result<()> {
        self.command(Command::BrokerUp)
    }

    fn command(
        &self,
        make: fn(i32, std::sync::mpsc::Sender<anyhow::Result<()>>) -> Command,
    ) -> anyhow::Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let Some(commands) = &self.commands else { bail!("the embedded broker is stopped") };
        commands.send(make(1, tx)).map_err(|_| anyhow!("the embedded broker thread died"))?;
        rx.recv().context("the embedded broker thread died")?
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(t) = self.thread.take() {
            // Tearing the cluster down waits for its clients to disconnect. While unwinding from a
            // panic the clients may never get to, so the thread is left to die with the process
            // rather than turning a failure into a hang.
            if !std::thread::panicking() {
                let _ = t.join();
            }
        }
    }
}
