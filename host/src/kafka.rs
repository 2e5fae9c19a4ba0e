//! Kafka I/O. The only module that knows rdkafka: the outbox relay's idempotent producer, the
//! dispatcher's consumer, and the embedded development broker behind `KAFKA_BROKERS=embedded`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::events::Record;
use crate::metrics::Metrics;

/// How often librdkafka reports statistics (consumer lag): often enough for a scrape every 15 s,
/// rare enough that parsing its JSON costs nothing noticeable.
const STATS_INTERVAL_MS: &str = "5000";

/// The idempotent producer every record leaves through.
pub struct Producer {
    inner: FutureProducer,
}

impl Producer {
    /// `message_timeout` bounds how long librdkafka keeps retrying one record (for example while
    /// the brokers are unreachable) before reporting it failed; the outbox row then stays
    /// unpublished and the relay tries again later.
    pub fn new(brokers: &str, message_timeout: Duration) -> anyhow::Result<Producer> {
        let inner: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", "order-host")
            // No duplicates or reordering from producer retries; acks=all is implied but explicit.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", message_timeout.as_millis().to_string())
            // Records are batched by the relay already; a short linger keeps publish latency low.
            .set("linger.ms", "5")
            .create()
            .context("creating the Kafka producer")?;
        Ok(Producer { inner })
    }

    /// Publishes `records` in order and reports each one's fate, in the same order. All are
    /// enqueued before any is awaited, so a batch costs one round trip, and the idempotent
    /// producer keeps them in order within each partition.
    pub async fn publish<'a>(
        &self,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Vec<anyhow::Result<()>> {
        let mut pending = Vec::new();
        for r in records {
            let headers =
                r.headers.iter().fold(OwnedHeaders::new_with_capacity(r.headers.len()), |h, (k, v)| {
                    h.insert(Header { key: k, value: Some(v.as_bytes()) })
                });
            let record = FutureRecord::to(&r.topic).key(&r.key).payload(&r.payload).headers(headers);
            pending.push(self.inner.send_result(record).map_err(|(e, _)| anyhow!(e)));
        }
        let mut results = Vec::with_capacity(pending.len());
        for p in pending {
            results.push(match p {
                Err(e) => Err(e.context("enqueueing a record")),
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(anyhow!(e).context("delivering a record")),
                    Err(_) => Err(anyhow!("the producer was dropped before delivery")),
                },
            });
        }
        results
    }

    /// Waits for everything in flight to be delivered, for a clean shutdown.
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        self.inner.flush(timeout).context("flushing the Kafka producer")
    }

    /// Whether the brokers answer a metadata request within `timeout`, for readiness.
    pub async fn check(&self, timeout: Duration) -> anyhow::Result<()> {
        let producer = self.inner.clone();
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

/// Partitions this consumer lost, reported before they go so in-flight bookkeeping can be dropped.
#[derive(Debug, Clone)]
pub struct Revoked(pub Vec<(String, i32)>);

struct DispatchContext {
    revoked: mpsc::UnboundedSender<Revoked>,
    metrics: Arc<Metrics>,
}

impl ClientContext for DispatchContext {
    /// librdkafka's statistics (every `STATS_INTERVAL`): the per-partition consumer lag.
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a lag of -1 means unknown.
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics.consumer_lag(topic, *partition, p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for DispatchContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Commit the completed prefix now: the next owner starts exactly there. Offsets are
            // only ever stored for completed work, so nothing beyond it is committed.
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "commit on revoke (nothing stored yet is normal)");
            }
            let parts = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
            let _ = self.revoked.send(Revoked(parts));
        }
    }
}

/// The dispatcher's group consumer. Offsets are stored explicitly (`store`) for completed work
/// only and committed in the background, on revocation and on close.
pub struct Consumer {
    inner: StreamConsumer<DispatchContext>,
}

impl Consumer {
    /// Joins `group_id` on `topics`. The settings mirrord's queue splitting relies on: earliest
    /// offsets for a new group, the default assignment strategy, no static membership.
    pub fn new(
        brokers: &str,
        group_id: &str,
        topics: &[&str],
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(Consumer, mpsc::UnboundedReceiver<Revoked>)> {
        let (revoked, revoked_rx) = mpsc::unbounded_channel();
        let inner: StreamConsumer<DispatchContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group_id)
            .set("client.id", "order-host-dispatcher")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "1000")
            .set("statistics.interval.ms", STATS_INTERVAL_MS)
            .create_with_context(DispatchContext { revoked, metrics })
            .context("creating the Kafka consumer")?;
        inner.subscribe(topics).context("subscribing to the consumed topics")?;
        Ok((Consumer { inner }, revoked_rx))
    }

    /// The next record. Errors are per-fetch (an unknown topic, a broker hiccup) and not fatal.
    pub async fn recv(&self) -> anyhow::Result<Incoming> {
        let m = self.inner.recv().await.context("consuming")?;
        let headers = m
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
            .unwrap_or_default();
        Ok(Incoming {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
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
