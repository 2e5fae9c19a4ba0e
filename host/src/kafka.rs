//! Kafka I/O. The only module that knows rdkafka: the outbox relay's idempotent producer and the
//! embedded development broker behind `KAFKA_BROKERS=embedded`.

use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use crate::events::Record;

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
    pub async fn publish(&self, records: &[Record]) -> Vec<anyhow::Result<()>> {
        let mut pending = Vec::with_capacity(records.len());
        for r in records {
            let payload = serde_json::to_vec(&r.payload).expect("a JSON value serialises");
            let headers =
                r.headers.iter().fold(OwnedHeaders::new_with_capacity(r.headers.len()), |h, (k, v)| {
                    h.insert(Header { key: k, value: Some(v.as_bytes()) })
                });
            let record = FutureRecord::to(&r.topic).key(&r.key).payload(&payload).headers(headers);
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

enum Command {
    BrokerDown(i32, mpsc::Sender<anyhow::Result<()>>),
    BrokerUp(i32, mpsc::Sender<anyhow::Result<()>>),
}

/// librdkafka's in-process mock cluster, speaking the real Kafka protocol over TCP on loopback.
/// Development and tests only: it keeps everything in memory and forgets it on exit.
///
/// The cluster lives on its own thread (librdkafka's handle is not `Send`); this handle is, and
/// dropping it stops the cluster.
pub struct EmbeddedBroker {
    bootstrap_servers: String,
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts a one-broker cluster with `topics` created with `partitions` partitions each.
    pub fn start(topics: &[&str], partitions: i32) -> anyhow::Result<EmbeddedBroker> {
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<String>>();
        let (commands, command_rx) = mpsc::channel::<Command>();
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

    fn command(&self, make: fn(i32, mpsc::Sender<anyhow::Result<()>>) -> Command) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel();
        let Some(commands) = &self.commands else { bail!("the embedded broker is stopped") };
        commands.send(make(1, tx)).map_err(|_| anyhow!("the embedded broker thread died"))?;
        rx.recv().context("the embedded broker thread died")?
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
