//! Shared by the service tests: one throwaway Postgres cluster per test binary with a fresh
//! database per test, an in-process Kafka-protocol broker per test, a started host, and a
//! consumer that reads what the host published.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use devpg::LocalPostgres;
use host::config::Config;
use host::kafka::EmbeddedBroker;
use host::serve::Host;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::PgPool;

static CLUSTER: OnceLock<LocalPostgres> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

fn cluster() -> &'static LocalPostgres {
    CLUSTER.get_or_init(|| {
        let base = std::env::temp_dir();
        // Clusters of earlier runs that were killed before cleaning up after themselves.
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("order-host-test-pg-")
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = base.join(format!("order-host-test-pg-{}", std::process::id()));
        LocalPostgres::start(&dir).expect("a throwaway Postgres starts (PostgreSQL 15 binaries needed)")
    })
}

/// A new, empty database on the shared cluster; returns its URL.
pub async fn fresh_database() -> String {
    let pg = cluster();
    let name = format!("t{}_{}", std::process::id(), NEXT_DB.fetch_add(1, Ordering::Relaxed));
    let admin = PgPool::connect(&pg.url("postgres")).await.expect("connect to the test cluster");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.expect("create a test database");
    admin.close().await;
    pg.url(&name)
}

/// Starts (`down`) or ends an outage of the database at `database_url` as its clients see it: new
/// connections are refused and open ones are terminated.
pub async fn database_outage(database_url: &str, down: bool) {
    let without_query = database_url.split('?').next().unwrap_or_default();
    let name = without_query.rsplit('/').next().expect("a database name");
    let admin = PgPool::connect(&cluster().url("postgres")).await.expect("connect to the test cluster");
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {}", !down))
        .execute(&admin)
        .await
        .expect("toggle connections");
    if down {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(name)
            .execute(&admin)
            .await
            .expect("terminate the database's connections");
    }
    admin.close().await;
}

pub fn test_config(database_url: &str, brokers: &str, extra: &[(&str, &str)]) -> Config {
    let mut vars: BTreeMap<&str, String> = BTreeMap::from([
        ("HTTP_ADDR", "127.0.0.1:0".to_string()),
        ("DATABASE_URL", database_url.to_string()),
        ("KAFKA_BROKERS", brokers.to_string()),
        // `brokers` is an embedded broker (the mock cluster) started by the test: give it the
        // session timeout `KAFKA_BROKERS=embedded` gets, or a second host joining a settled
        // group stalls it for 44 s (`KafkaConfig::session_timeout`).
        ("KAFKA_SESSION_TIMEOUT_MS", host::config::EMBEDDED_SESSION_TIMEOUT_MS.to_string()),
        // No handlers: these tests are about the order service.
        ("HANDLERS_DIR", "/nonexistent/order-host-test-handlers".to_string()),
    ]);
    for (k, v) in extra {
        vars.insert(k, v.to_string());
    }
    Config::from_lookup(|k| vars.get(k).cloned()).expect("test config is valid")
}

/// A started host on a fresh database and its own embedded broker.
pub struct TestHost {
    pub host: Host,
    /// Never dropped: a test ends by dropping its `TestHost`, but the host's tasks (and so its
    /// consumer) live until the test's runtime shuts down afterwards, and closing a consumer waits
    /// for its broker. A broker torn down first left that close polling for minutes, or forever
    /// after a failed assertion. Its threads end with the test process.
    pub broker: std::mem::ManuallyDrop<EmbeddedBroker>,
    pub base: String,
    pub http: reqwest::Client,
    pub database_url: String,
}

pub const TOPICS: [&str; 3] = ["order.created", "order.status-updated", "order.dead-letter"];

impl TestHost {
    /// A host with no handlers.
    pub async fn start() -> TestHost {
        TestHost::start_with(None, 3, &[]).await
    }

    /// A host loading `handlers` (a directory with `handlers.toml`), on topics of `partitions`
    /// partitions, with extra environment.
    pub async fn start_with(
        handlers: Option<&std::path::Path>,
        partitions: i32,
        extra: &[(&str, &str)],
    ) -> TestHost {
        TestHost::start_invoking(handlers, partitions, extra, None).await
    }

    /// As [`TestHost::start_with`], with handler logic run by `invoker` when it is given (the
    /// `runtime::Invoke` seam), for faults the real runtime cannot be made to show.
    pub async fn start_invoking(
        handlers: Option<&std::path::Path>,
        partitions: i32,
        extra: &[(&str, &str)],
        invoker: Option<std::sync::Arc<dyn host::runtime::Invoke>>,
    ) -> TestHost {
        let broker = EmbeddedBroker::start(&TOPICS, partitions).expect("embedded broker starts");
        let database_url = fresh_database().await;
        let dir = handlers.map(|d| d.display().to_string());
        let mut vars: Vec<(&str, &str)> = extra.to_vec();
        if let Some(d) = &dir {
            vars.push(("HANDLERS_DIR", d));
        }
        let config = test_config(&database_url, broker.bootstrap_servers(), &vars);
        let host = Host::start_with(&config, invoker).await.expect("host starts");
        let base = format!("http://{}", host.addr);
        TestHost {
            host,
            broker: std::mem::ManuallyDrop::new(broker),
            base,
            http: reqwest::Client::new(),
            database_url,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.host.pool
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.http.get(self.url(path)).send().await.expect("GET is answered");
        decode(r).await
    }

    /// A GET answered with text (`/metrics`).
    pub async fn get_text(&self, path: &str) -> String {
        let r = self.http.get(self.url(path)).send().await.expect("GET is answered");
        r.text().await.expect("a text body")
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let r = self.http.post(self.url(path)).json(body).send().await.expect("POST is answered");
        decode(r).await
    }

    pub async fn put(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let r = self.http.put(self.url(path)).json(body).send().await.expect("PUT is answered");
        decode(r).await
    }

    /// An admin API request with the bearer `token`; a body is a component, sent as
    /// `application/wasm`.
    pub async fn admin(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        component: Option<Vec<u8>>,
    ) -> (u16, serde_json::Value) {
        let mut r = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(bytes) = component {
            r = r.header("content-type", "application/wasm").body(bytes);
        }
        decode(r.send().await.expect("admin request answered")).await
    }

    /// Sends raw bytes with the given content type.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, serde_json::Value) {
        let r = self
            .http
            .request(method, self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request is answered");
        decode(r).await
    }

    pub async fn count(&self, table: &str) -> i64 {
        let (n,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(self.pool())
            .await
            .expect("count rows");
        n
    }
}

async fn decode(r: reqwest::Response) -> (u16, serde_json::Value) {
    let status = r.status().as_u16();
    let text = r.text().await.expect("body is readable");
    let json =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("status {status}: body is not JSON: {text:?}"));
    (status, json)
}

/// A valid order body for product `product_id`.
pub fn order_body(email: &str, lines: &[(&str, i64)]) -> serde_json::Value {
    serde_json::json!({
        "customer_email": email,
        "customer_name": "Ada Lovelace",
        "shipping_address": {"street": "1 Analytical St", "city": "London", "state": "", "zip_code": "N1", "country": "UK"},
        "items": lines.iter().map(|(p, q)| serde_json::json!({"product_id": p, "quantity": q})).collect::<Vec<_>>(),
    })
}

/// A record as the tests inspect it.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub topic: String,
    pub key: String,
    pub headers: BTreeMap<String, String>,
    /// The value as JSON, or `Null` when it is not JSON (a dead-lettered garbage record).
    pub value: serde_json::Value,
    pub raw: Vec<u8>,
    /// Exactly as on the wire: `None` for a missing key or value.
    pub raw_key: Option<Vec<u8>>,
    pub raw_value: Option<Vec<u8>>,
    pub raw_headers: Vec<(String, Vec<u8>)>,
}

impl Consumed {
    /// The `ce_id` header, the event's id: the same on every copy of a record the relay
    /// published more than once. Empty when the record has none.
    pub fn ce_id(&self) -> &str {
        self.headers.get("ce_id").map_or("", String::as_str)
    }

    /// Which dead letter this is: the handler that gave up and where its source record sat. There
    /// is one per (event, handler), however often the relay published it; unlike `ce_id` this
    /// also tells apart dead letters of records without a usable event id.
    pub fn dead_letter_id(&self) -> String {
        let h = |k: &str| self.headers.get(k).map_or("", String::as_str);
        format!("{} {}/{}@{}", h("x-dlq-handler"), h("x-dlq-topic"), h("x-dlq-partition"), h("x-dlq-offset"))
    }
}

/// Reads `topic` from the beginning until `want` records for which `keep` holds have arrived, or
/// fails after `within`. Returns them in arrival order, copies included: the relay publishes at
/// least once, so count distinct records with [`consume_distinct`] instead.
pub async fn consume(
    brokers: &str,
    topic: &str,
    want: usize,
    within: Duration,
    keep: impl Fn(&Consumed) -> bool,
) -> Vec<Consumed> {
    read_until(brokers, topic, want, within, "records", keep).await
}

/// As [`consume`], until `want` distinct records (told apart by `identity`, such as
/// [`Consumed::ce_id`]) for which `keep` holds have arrived. Returns the first copy of each, in
/// arrival order: a record the relay published twice appears once, and a key's records in the
/// order they first arrived (a repeat may come after later records, but never a first copy).
pub async fn consume_distinct(
    brokers: &str,
    topic: &str,
    want: usize,
    within: Duration,
    keep: impl Fn(&Consumed) -> bool,
    identity: impl Fn(&Consumed) -> String,
) -> Vec<Consumed> {
    let mut seen = std::collections::HashSet::new();
    read_until(brokers, topic, want, within, "distinct records", |c| keep(c) && seen.insert(identity(c)))
        .await
}

/// Every record on `topic` now, copies included, read from the beginning: as many as its high
/// watermarks add up to. That count is of records only because no producer here is
/// transactional (a transaction's commit marker takes an offset of its own).
pub async fn whole_topic(brokers: &str, topic: &str) -> Vec<Consumed> {
    let size = topic_size(brokers, topic).await as usize;
    consume(brokers, topic, size, Duration::from_secs(60), |_| true).await
}

/// Reads `topic` from the beginning until `take` has taken `want` records (`what`, in the failure
/// message), or fails after `within` listing what it took.
async fn read_until(
    brokers: &str,
    topic: &str,
    want: usize,
    within: Duration,
    what: &str,
    mut take: impl FnMut(&Consumed) -> bool,
) -> Vec<Consumed> {
    let deadline = Instant::now() + within;
    let consumer = assigned_from_start(brokers, topic, within).await;
    let mut got = Vec::new();
    while got.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match tokio::time::timeout(left, consumer.recv()).await {
            Ok(m) => m.expect("consume"),
            Err(_) => {
                panic!("only {} of {want} {what} arrived on {topic} within {within:?}: {got:#?}", got.len())
            }
        };
        let c = consumed(&msg);
        if take(&c) {
            got.push(c);
        }
    }
    got
}

/// A consumer of every partition of `topic` from its first offset. The partitions are assigned,
/// not subscribed to: joining a fresh consumer group took seconds on a loaded machine, out of the
/// caller's time to wait for records. librdkafka wants a `group.id` all the same; it is never
/// joined, and nothing is committed.
async fn assigned_from_start(brokers: &str, topic: &str, within: Duration) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("test consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in partitions(brokers, topic, within).await {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).expect("a partition to read");
    }
    consumer.assign(&assignment).expect("assign the topic's partitions");
    consumer
}

/// The partitions of `topic`, waiting up to `within` for it to exist with at least one (a broker
/// process started moments ago may not have created it yet).
async fn partitions(brokers: &str, topic: &str, within: Duration) -> Vec<i32> {
    let (brokers, name) = (brokers.to_string(), topic.to_string());
    let found = tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("metadata consumer");
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = left.clamp(Duration::from_millis(100), Duration::from_secs(5));
            let answer = match consumer.fetch_metadata(Some(&name), timeout) {
                Ok(metadata) => match metadata.topics().first() {
                    Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                        return Ok(t.partitions().iter().map(|p| p.id()).collect());
                    }
                    Some(t) => format!("{} partitions, error {:?}", t.partitions().len(), t.error()),
                    None => "not in the metadata".to_string(),
                },
                Err(e) => format!("metadata: {e}"),
            };
            if Instant::now() >= deadline {
                return Err(answer);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .expect("the metadata task");
    found.unwrap_or_else(|last| panic!("topic {topic} had no partitions within {within:?}: {last}"))
}

/// What the tests inspect of a record read.
fn consumed(msg: &rdkafka::message::BorrowedMessage<'_>) -> Consumed {
    let headers = msg
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    Consumed {
        topic: msg.topic().to_string(),
        key: String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned(),
        headers,
        value: serde_json::from_slice(msg.payload().unwrap_or_default()).unwrap_or_default(),
        raw: msg.payload().unwrap_or_default().to_vec(),
        raw_key: msg.key().map(<[u8]>::to_vec),
        raw_value: msg.payload().map(<[u8]>::to_vec),
        raw_headers: msg
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
            .unwrap_or_default(),
    }
}

/// Records in `topic` across all partitions (the sum of high watermarks).
pub async fn topic_size(brokers: &str, topic: &str) -> i64 {
    let brokers = brokers.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("metadata consumer");
        let timeout = Duration::from_secs(10);
        let metadata = consumer.fetch_metadata(Some(&topic), timeout).expect("topic metadata");
        let partitions = metadata.topics()[0].partitions().len() as i32;
        (0..partitions).map(|p| consumer.fetch_watermarks(&topic, p, timeout).expect("watermarks").1).sum()
    })
    .await
    .unwrap()
}

/// A handlers directory for a test: `(kind, name, events)` where kind is `handlers` (shipped) or
/// `fixtures` (test-only), all with their default limits.
pub fn handlers_dir(entries: &[(&str, &str, &[&str])]) -> tempfile::TempDir {
    let configured: Vec<_> = entries.iter().map(|(kind, name, events)| (*kind, *name, *events, "")).collect();
    handlers_dir_configured(&configured)
}

/// As [`handlers_dir`], with each handler's `[handler.config]` table body (TOML lines).
pub fn handlers_dir_configured(entries: &[(&str, &str, &[&str], &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut manifest = String::new();
    for (kind, name, events, config) in entries {
        std::fs::write(dir.path().join(format!("{name}.wasm")), super::component(kind, name)).unwrap();
        let events: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
        manifest.push_str(&format!(
            "[[handler]]\nname = {name:?}\nfile = \"{name}.wasm\"\nevents = [{}]\n\n[handler.config]\n{config}\n\n",
            events.join(", ")
        ));
    }
    std::fs::write(dir.path().join("handlers.toml"), manifest).unwrap();
    dir
}

/// Produces one record, as another service (or a redelivery) would.
pub async fn produce(brokers: &str, topic: &str, key: &str, headers: &[(&str, &str)], value: &[u8]) {
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    produce_raw(brokers, topic, Some(key.as_bytes()), &headers, Some(value)).await;
}

/// Produces one record byte for byte (a missing key or value stays missing); returns its
/// partition and offset.
pub async fn produce_raw(
    brokers: &str,
    topic: &str,
    key: Option<&[u8]>,
    headers: &[(&str, &[u8])],
    value: Option<&[u8]>,
) -> (i32, i64) {
    RawProducer::new(brokers).send(topic, key, headers, value).await
}

/// A producer for many records, each sent byte for byte.
pub struct RawProducer(rdkafka::producer::FutureProducer);

impl RawProducer {
    pub fn new(brokers: &str) -> RawProducer {
        RawProducer(ClientConfig::new().set("bootstrap.servers", brokers).create().expect("test producer"))
    }

    /// Sends one record and waits for its delivery; returns its partition and offset.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        value: Option<&[u8]>,
    ) -> (i32, i64) {
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::FutureRecord;
        let headers = headers
            .iter()
            .fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: Some(*v) }));
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        let d = self.0.send(record, Duration::from_secs(10)).await.expect("test record delivered");
        (d.partition, d.offset)
    }
}

/// Committed offsets of consumer group `group` and high watermarks, per partition of `topics`:
/// `(topic, partition, committed, high)`; `committed` is -1 when nothing is committed.
pub async fn group_progress(brokers: &str, group: &str, topics: &[&str]) -> Vec<(String, i32, i64, i64)> {
    let (brokers, group) = (brokers.to_string(), group.to_string());
    let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("progress consumer");
        let timeout = Duration::from_secs(10);
        let mut tpl = rdkafka::TopicPartitionList::new();
        let mut highs = Vec::new();
        for topic in &topics {
            let metadata = consumer.fetch_metadata(Some(topic), timeout).expect("topic metadata");
            for p in metadata.topics()[0].partitions() {
                tpl.add_partition(topic, p.id());
                highs.push((
                    topic.clone(),
                    p.id(),
                    consumer.fetch_watermarks(topic, p.id(), timeout).expect("watermarks").1,
                ));
            }
        }
        let committed = consumer.committed_offsets(tpl, timeout).expect("committed offsets");
        highs
            .into_iter()
            .map(|(topic, partition, high)| {
                let c = committed
                    .find_partition(&topic, partition)
                    .and_then(|e| e.offset().to_raw())
                    .unwrap_or(-1);
                (topic, partition, c, high)
            })
            .collect()
    })
    .await
    .unwrap()
}

/// Polls `check` until it returns `Some`, or fails naming `what` after `within`.
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
