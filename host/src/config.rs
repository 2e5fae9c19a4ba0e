//! Typed configuration, read once from the environment at start and passed down explicitly.
//!
//! Names and defaults are listed in README's "Configuration"; runtime tuning knobs carry a
//! `HANDLER_` prefix.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

/// Everything the host reads from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `HTTP_ADDR`: where the API listens.
    pub http_addr: SocketAddr,
    /// `DATABASE_URL`: required to serve; `cargo xtask dev` supplies one.
    pub database_url: Option<DatabaseUrl>,
    pub kafka: KafkaConfig,
    /// Topics the host publishes to. Never derived from the consumed ones: mirrord renames those.
    pub topics: Topics,
    /// `LOG_FORMAT=json` switches logs to one JSON object per line.
    pub log_json: bool,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the OTLP/HTTP collector spans are exported to; unset or
    /// empty turns export (and `traceparent` headers) off.
    pub otlp_endpoint: Option<String>,
    /// `HANDLERS_DIR`: components plus `handlers.toml`.
    pub handlers_dir: PathBuf,
    /// `DEMO_MODE`: handed to every handler as its `DEMO_MODE` config value.
    pub demo_mode: bool,
    pub runtime: RuntimeConfig,
    pub dispatch: DispatchConfig,
    pub admin: AdminConfig,
    pub pools: PoolConfig,
    pub retention: RetentionConfig,
    pub journal: JournalConfig,
}

/// How long rows that exist only for the pipeline's own bookkeeping are kept. Orders, their
/// history and notifications are the shop's data and are never pruned; neither are unpublished or
/// parked outbox rows, parked timers, or the idempotency row of an open dead letter.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// `RETENTION_IDEMPOTENCY_SECS`: idempotency rows (`processed_events`) older than this are
    /// deleted. A redelivery of an event older than this would be applied again, so it must exceed
    /// how long a record can still be read again: the consumed topics' `retention.ms` (Kafka's
    /// default is 7 days; the default here is 8). `0` keeps them forever.
    pub idempotency: Duration,
    /// `RETENTION_OUTBOX_SECS`: published outbox rows older than this are deleted (they are kept
    /// only to answer "what did we publish"). `0` keeps them forever.
    pub outbox: Duration,
    /// `RETENTION_INTERVAL_SECS`: how often the pruning pass runs.
    pub interval: Duration,
    /// `JOURNAL_RETENTION_SECS`: invocation journal entries older than this are deleted (default
    /// 3 days; diagnostics only, nothing depends on them). `0` keeps them.
    pub journal: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            idempotency: Duration::from_secs(8 * 24 * 3600),
            outbox: Duration::from_secs(24 * 3600),
            interval: Duration::from_secs(60),
            journal: Duration::from_secs(3 * 24 * 3600),
        }
    }
}

/// Which handler invocations the journal records (`JOURNAL_MODE`): their input, answer, version
/// and duration, readable per order on the admin API and replayed by `cargo xtask replay`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum JournalMode {
    Off,
    /// Every invocation for a fraction of orders, chosen by a hash of the order id, so a sampled
    /// order's journal is complete: every handler, every attempt.
    Sampled(f64),
    All,
}

#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// `JOURNAL_MODE` (`off`, `sampled`, `all`; default `sampled`) with `JOURNAL_SAMPLE_RATE`
    /// (0 to 1, default 0.01: one order in a hundred). Its retention is
    /// `RetentionConfig::journal`.
    pub mode: JournalMode,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig { mode: JournalMode::Sampled(0.01) }
    }
}

/// `DATABASE_URL`, which may hold a password: its `Debug` (and so `Config`'s, and any log of
/// either) shows the URL with the password masked.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> DatabaseUrl {
        DatabaseUrl(url.into())
    }

    /// The URL itself, password included, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with the password of its user info (`user:secret@`) or of a `password=`
    /// parameter replaced by `***`.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let mut out = match url.split_once("://") {
            Some((scheme, rest)) => {
                let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
                let user_info = rest[..authority_end].rfind('@').map(|at| (&rest[..at], &rest[at..]));
                match user_info.and_then(|(info, host)| Some((info.split_once(':')?.0, host))) {
                    Some((user, host)) => format!("{scheme}://{user}:***{host}"),
                    None => url.clone(),
                }
            }
            None => url.clone(),
        };
        if let Some(start) = out.find("password=") {
            let value = start + "password=".len();
            let end = out[value..].find(['&', ' ']).map_or(out.len(), |e| value + e);
            out.replace_range(value..end, "***");
        }
        out
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DatabaseUrl").field(&self.redacted()).finish()
    }
}

/// Postgres connections, in two pools so that a dispatcher backlog (up to
/// `DISPATCH_MAX_IN_FLIGHT` events, each wanting a connection to read its order and apply its
/// actions) can never starve the API, the relay or the timers. Their sum, plus one `LISTEN`
/// connection, must fit the server's `max_connections` for every replica.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// `DATABASE_POOL_SIZE`: the HTTP API, the outbox relay, the timer scheduler and metrics.
    pub api: u32,
    /// `DISPATCH_POOL_SIZE`: the dispatcher (idempotency checks, order reads, applying actions,
    /// dead letters, `host.get-order`). Events beyond it wait for a connection, which is time
    /// not counted against a handler's deadline.
    pub dispatch: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig { api: 16, dispatch: 16 }
    }
}

/// The admin API and handler swapping.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `ADMIN_TOKEN`: the bearer token `/admin` requires. Unset: the admin API is off.
    pub token: Option<Secret>,
    /// `HANDLER_UPLOAD_MAX_BYTES`: the largest component `PUT /admin/handlers/{name}` accepts.
    pub max_upload_bytes: usize,
    /// `HANDLERS_RESCAN_SECS`: how often `HANDLERS_DIR` is rescanned when no filesystem event
    /// says it changed (some volume types deliver none).
    pub rescan: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { token: None, max_upload_bytes: 16 << 20, rescan: Duration::from_secs(30) }
    }
}

/// A value that must not reach logs: `Debug` prints a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Tuning of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// `DISPATCH_MAX_IN_FLIGHT`: events consumed but not finished, across all keys. When reached,
    /// the consumer stops fetching (backpressure) instead of queueing without bound.
    pub max_in_flight: usize,
    /// `DISPATCH_MAX_ATTEMPTS`: invocations of one handler for one event before a retryable
    /// failure is dead-lettered. Host failures are retried until they recover, regardless.
    pub max_attempts: u32,
    /// `DISPATCH_RETRY_BASE_MS`: the first retry's delay; each next one doubles, up to
    /// `DISPATCH_RETRY_MAX_MS`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long shutdown waits for in-flight events before abandoning them (uncommitted, so they
    /// are redelivered).
    pub drain_timeout: Duration,
    /// `DISPATCH_BATCH_MAX`: handler applications committed together in one transaction (group
    /// commit). `1` commits each application in its own transaction and reads each event's
    /// snapshot on its own, as before batching.
    pub batch_max: usize,
    /// `DISPATCH_BATCH_WINDOW_MS`: how long a batch waits for more applications after its first,
    /// unless it is full. Applications that arrive while the previous batch commits join the next
    /// one anyway, so under load batches fill without waiting; the window only trades a few
    /// milliseconds of a lone event's latency for bigger batches under light load.
    pub batch_window: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            // 512 events and 256 applications per commit: batches of about 250 under load, where
            // 256 and 128 gave about 125, so each batch's statements (the group commit's nine
            // round trips, the snapshot read's three) are shared by twice the rows. Measured side
            // by side (BENCHMARKS.md, 2026-12-07 "bigger batches"): 0.95-1.24x the events/s by the
            // median of rounds over eight measurements, 1.10x their median. A lone event still
            // waits at most the window.
            max_in_flight: 512,
            max_attempts: 5,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(15),
            batch_max: 256,
            batch_window: Duration::from_millis(2),
        }
    }
}

/// Where Kafka is and what the dispatcher consumes.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `KAFKA_BROKERS`: bootstrap servers, or `embedded` for the in-process development broker.
    pub brokers: String,
    /// `KAFKA_GROUP_ID`.
    pub group_id: String,
    /// `KAFKA_TOPIC`: order-created events are consumed from here.
    pub created_topic: String,
    /// `KAFKA_STATUS_TOPIC`: status-updated events are consumed from here.
    pub status_topic: String,
    /// `KAFKA_FETCH_WAIT_MS`: how long the broker may hold the dispatcher's fetch when no record
    /// is there yet (the Kafka client's `fetch.wait.max.ms`). A real broker answers as soon as a
    /// record arrives, so the value only sets how often an idle consumer asks: the client's
    /// default, 500 ms. The embedded broker (the Kafka client's mock cluster) holds an empty fetch
    /// for the whole wait and is not woken by a new record, so every hop of an order through it
    /// would cost up to the wait: `KAFKA_BROKERS=embedded` defaults to `EMBEDDED_FETCH_WAIT_MS`.
    pub fetch_wait: Duration,
    /// `KAFKA_PRODUCER_BATCH_RECORDS`: most records the relay's producer puts in one batch
    /// (`batch.num.messages`; the client's default, 10000). `1` gives every record a batch of its
    /// own, for a broker that answers a fetch starting inside a batch with the batch after it
    /// (tansu 0.6's memory and object-store engine does): a consumer resuming at a committed
    /// offset inside a batch would otherwise never see the rest of that batch.
    pub producer_batch_records: u32,
    /// `KAFKA_SESSION_TIMEOUT_MS`: how long the group waits for a silent member before moving its
    /// partitions (the Kafka client's `session.timeout.ms`; heartbeats go every third of it, at
    /// most every 3 s, the client's default). Real brokers keep the client's default, 45 s. The
    /// embedded broker (the Kafka client's mock cluster) holds every rebalance of a settled group
    /// for the session timeout less 1 s before it assigns anything, even once every member has
    /// rejoined, so a second member joining stalls the whole group for 44 s:
    /// `KAFKA_BROKERS=embedded` defaults to `EMBEDDED_SESSION_TIMEOUT_MS`.
    pub session_timeout: Duration,
}

/// The fetch wait for the embedded broker (see `KafkaConfig::fetch_wait`): short enough that a
/// hop costs about what it costs on a real broker, long enough that an idle host asks the
/// in-process broker 100 times a second per partition leader, not in a spin.
pub const EMBEDDED_FETCH_WAIT_MS: u64 = 10;
/// The Kafka client's default `fetch.wait.max.ms`, kept for real brokers.
pub const BROKER_FETCH_WAIT_MS: u64 = 500;

/// The session timeout for the embedded broker (see `KafkaConfig::session_timeout`): Kafka's own
/// lower bound (`group.min.session.timeout.ms`), so a join stalls the mock's group for 5 s.
pub const EMBEDDED_SESSION_TIMEOUT_MS: u64 = 6_000;
/// The Kafka client's default `session.timeout.ms`, kept for real brokers.
pub const BROKER_SESSION_TIMEOUT_MS: u64 = 45_000;

/// The value of `KAFKA_BROKERS` that starts the in-process development broker.
pub const EMBEDDED_BROKERS: &str = "embedded";

/// Topics the host produces to.
#[derive(Debug, Clone)]
pub struct Topics {
    /// `ORDER_CREATED_TOPIC`.
    pub order_created: String,
    /// `STATUS_UPDATED_TOPIC`.
    pub status_updated: String,
    /// `DEAD_LETTER_TOPIC`.
    pub dead_letter: String,
}

/// Sizing of the WebAssembly engine, shared by all handlers.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// `HANDLER_POOL_SIZE`: instances that can be alive at once across all handlers. Every
    /// invocation holds one; the pooling allocator reserves their slots up front.
    pub pool_size: u32,
    /// `HANDLER_MAX_MEMORY_BYTES`: the largest linear memory any handler may get. A manifest's
    /// `memory-limit-bytes` must not exceed it.
    pub max_memory_bytes: u64,
    /// `HANDLER_EPOCH_TICK_MS`: granularity of invocation deadlines. A deadline fires between
    /// `timeout` and `timeout + tick`.
    pub epoch_tick: Duration,
    /// `HANDLER_CACHE_DIR`: where compiled components are kept across restarts (default: a
    /// directory under the system temp dir; empty turns the disk cache off).
    pub cache_dir: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            pool_size: 64,
            max_memory_bytes: 64 << 20,
            epoch_tick: Duration::from_millis(5),
            cache_dir: Some(std::env::temp_dir().join("order-host-cache")),
        }
    }
}

impl Config {
    /// Values the host sets in every handler's config, over the manifest's own.
    pub fn handler_config_overlay(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("DEMO_MODE".to_string(), self.demo_mode.to_string())])
    }

    /// Reads the process environment.
    pub fn from_env() -> anyhow::Result<Config> {
        Config::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads configuration through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let defaults = RuntimeConfig::default();
        let pools = PoolConfig::default();
        let pool_size = |v: &str| -> anyhow::Result<u32> {
            let n: u32 = v.parse()?;
            anyhow::ensure!(n > 0, "must be at least 1");
            Ok(n)
        };
        let dispatch = DispatchConfig::default();
        let millis = |v: &str| -> anyhow::Result<Duration> { Ok(Duration::from_millis(v.parse()?)) };
        let secs = |v: &str| -> anyhow::Result<Duration> { Ok(Duration::from_secs(v.parse()?)) };
        let retention = RetentionConfig::default();
        let text = |key: &str, default: &str| {
            lookup(key)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.into())
        };
        // Read once: it also picks the fetch wait's and the session timeout's defaults.
        let brokers = text("KAFKA_BROKERS", "localhost:9092");
        let embedded = brokers == EMBEDDED_BROKERS;
        Ok(Config {
            http_addr: parse(&lookup, "HTTP_ADDR", SocketAddr::from(([0, 0, 0, 0], 8080)), |v| {
                Ok(v.parse()?)
            })?,
            database_url: lookup("DATABASE_URL").filter(|v| !v.trim().is_empty()).map(DatabaseUrl::new),
            kafka: KafkaConfig {
                // The Kafka client's own bounds for fetch.wait.max.ms.
                fetch_wait: millis_within(
                    &lookup,
                    "KAFKA_FETCH_WAIT_MS",
                    if embedded { EMBEDDED_FETCH_WAIT_MS } else { BROKER_FETCH_WAIT_MS },
                    1..=300_000,
                )?,
                producer_batch_records: parse(&lookup, "KAFKA_PRODUCER_BATCH_RECORDS", 10_000, |v| {
                    let n: u32 = v.parse()?;
                    // The Kafka client's own bounds for batch.num.messages.
                    anyhow::ensure!((1..=1_000_000).contains(&n), "must be between 1 and 1000000");
                    Ok(n)
                })?,
                // Kafka's default group.min/max.session.timeout.ms: a broker refuses a member
                // asking for less or more.
                session_timeout: millis_within(
                    &lookup,
                    "KAFKA_SESSION_TIMEOUT_MS",
                    if embedded { EMBEDDED_SESSION_TIMEOUT_MS } else { BROKER_SESSION_TIMEOUT_MS },
                    6_000..=1_800_000,
                )?,
                brokers,
                group_id: text("KAFKA_GROUP_ID", "order-processor"),
                created_topic: text("KAFKA_TOPIC", "order.created"),
                status_topic: text("KAFKA_STATUS_TOPIC", "order.status-updated"),
            },
            topics: Topics {
                order_created: text("ORDER_CREATED_TOPIC", "order.created"),
                status_updated: text("STATUS_UPDATED_TOPIC", "order.status-updated"),
                dead_letter: text("DEAD_LETTER_TOPIC", "order.dead-letter"),
            },
            log_json: match lookup("LOG_FORMAT").as_deref().map(str::trim) {
                None | Some("" | "text") => false,
                Some("json") => true,
                Some(other) => bail!("invalid LOG_FORMAT={other:?}: expected json or text"),
            },
            otlp_endpoint: lookup("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty()),
            handlers_dir: lookup("HANDLERS_DIR")
                .map_or_else(|| PathBuf::from("target/handlers"), PathBuf::from),
            demo_mode: parse(&lookup, "DEMO_MODE", false, parse_bool)?,
            admin: AdminConfig {
                token: lookup("ADMIN_TOKEN")
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .map(Secret),
                max_upload_bytes: parse(
                    &lookup,
                    "HANDLER_UPLOAD_MAX_BYTES",
                    AdminConfig::default().max_upload_bytes,
                    |v| Ok(v.parse()?),
                )?,
                rescan: parse(&lookup, "HANDLERS_RESCAN_SECS", AdminConfig::default().rescan, |v| {
                    let secs: u64 = v.parse()?;
                    anyhow::ensure!(secs > 0, "must be at least 1");
                    Ok(Duration::from_secs(secs))
                })?,
            },
            runtime: RuntimeConfig {
                pool_size: parse(&lookup, "HANDLER_POOL_SIZE", defaults.pool_size, |v| Ok(v.parse()?))?,
                max_memory_bytes: parse(
                    &lookup,
                    "HANDLER_MAX_MEMORY_BYTES",
                    defaults.max_memory_bytes,
                    |v| Ok(v.parse()?),
                )?,
                epoch_tick: parse(&lookup, "HANDLER_EPOCH_TICK_MS", defaults.epoch_tick, millis)?,
                cache_dir: match lookup("HANDLER_CACHE_DIR") {
                    None => defaults.cache_dir.clone(),
                    Some(v) if v.trim().is_empty() => None,
                    Some(v) => Some(PathBuf::from(v.trim())),
                },
            },
            pools: PoolConfig {
                api: parse(&lookup, "DATABASE_POOL_SIZE", pools.api, pool_size)?,
                dispatch: parse(&lookup, "DISPATCH_POOL_SIZE", pools.dispatch, pool_size)?,
            },
            retention: RetentionConfig {
                idempotency: parse(&lookup, "RETENTION_IDEMPOTENCY_SECS", retention.idempotency, secs)?,
                outbox: parse(&lookup, "RETENTION_OUTBOX_SECS", retention.outbox, secs)?,
                interval: parse(&lookup, "RETENTION_INTERVAL_SECS", retention.interval, |v| {
                    let d = secs(v)?;
                    anyhow::ensure!(!d.is_zero(), "must be at least 1");
                    Ok(d)
                })?,
                journal: parse(&lookup, "JOURNAL_RETENTION_SECS", retention.journal, secs)?,
            },
            journal: JournalConfig {
                mode: {
                    let rate = parse(&lookup, "JOURNAL_SAMPLE_RATE", 0.01, |v| {
                        let r: f64 = v.parse()?;
                        anyhow::ensure!((0.0..=1.0).contains(&r), "must be between 0 and 1");
                        Ok(r)
                    })?;
                    match text("JOURNAL_MODE", "sampled").as_str() {
                        "off" => JournalMode::Off,
                        "sampled" => JournalMode::Sampled(rate),
                        "all" => JournalMode::All,
                        other => bail!("invalid JOURNAL_MODE={other:?}: expected off, sampled or all"),
                    }
                },
            },
            dispatch: DispatchConfig {
                max_in_flight: parse(&lookup, "DISPATCH_MAX_IN_FLIGHT", dispatch.max_in_flight, |v| {
                    let n: usize = v.parse()?;
                    anyhow::ensure!(n > 0, "must be at least 1");
                    Ok(n)
                })?,
                max_attempts: parse(&lookup, "DISPATCH_MAX_ATTEMPTS", dispatch.max_attempts, |v| {
                    let n: u32 = v.parse()?;
                    anyhow::ensure!(n > 0, "must be at least 1");
                    Ok(n)
                })?,
                retry_base: parse(&lookup, "DISPATCH_RETRY_BASE_MS", dispatch.retry_base, millis)?,
                retry_max: parse(&lookup, "DISPATCH_RETRY_MAX_MS", dispatch.retry_max, millis)?,
                drain_timeout: dispatch.drain_timeout,
                batch_max: parse(&lookup, "DISPATCH_BATCH_MAX", dispatch.batch_max, |v| {
                    let n: usize = v.parse()?;
                    anyhow::ensure!((1..=4096).contains(&n), "must be between 1 and 4096");
                    Ok(n)
                })?,
                batch_window: parse(&lookup, "DISPATCH_BATCH_WINDOW_MS", dispatch.batch_window, millis)?,
            },
        })
    }
}

fn parse<T>(
    lookup: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: T,
    parse: impl Fn(&str) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    match lookup(key) {
        None => Ok(default),
        Some(raw) => parse(raw.trim()).with_context(|| format!("invalid {key}={raw:?}")),
    }
}

/// `key` as whole milliseconds within `bounds`, `default_ms` when unset.
fn millis_within(
    lookup: &impl Fn(&str) -> Option<String>,
    key: &str,
    default_ms: u64,
    bounds: std::ops::RangeInclusive<u64>,
) -> anyhow::Result<Duration> {
    parse(lookup, key, Duration::from_millis(default_ms), |v| {
        let ms: u64 = v.parse()?;
        anyhow::ensure!(bounds.contains(&ms), "must be between {} and {}", bounds.start(), bounds.end());
        Ok(Duration::from_millis(ms))
    })
}

pub fn parse_bool(value: &str) -> anyhow::Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => bail!("expected true or false"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> anyhow::Result<Config> {
        Config::from_lookup(|key| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = config(&[]).unwrap();
        assert_eq!(c.http_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(c.database_url, None);
        assert_eq!(c.kafka.brokers, "localhost:9092");
        assert_eq!(c.kafka.group_id, "order-processor");
        assert_eq!(c.kafka.created_topic, "order.created");
        assert_eq!(c.kafka.status_topic, "order.status-updated");
        assert_eq!(c.topics.order_created, "order.created");
        assert_eq!(c.topics.status_updated, "order.status-updated");
        assert_eq!(c.topics.dead_letter, "order.dead-letter");
        assert_eq!(c.handlers_dir, PathBuf::from("target/handlers"));
        assert!(!c.demo_mode);
        assert_eq!(c.runtime.pool_size, 64);
        // One source of defaults: an empty environment gives exactly `RuntimeConfig::default()`.
        let d = RuntimeConfig::default();
        assert_eq!(
            (c.runtime.pool_size, c.runtime.max_memory_bytes, c.runtime.epoch_tick, &c.runtime.cache_dir),
            (d.pool_size, d.max_memory_bytes, d.epoch_tick, &d.cache_dir)
        );
    }

    #[test]
    fn the_embedded_broker_gets_a_short_fetch_wait_and_session_and_real_brokers_the_clients_defaults() {
        let wait = |pairs: &[(&str, &str)]| config(pairs).map(|c| c.kafka.fetch_wait.as_millis());
        assert_eq!(wait(&[]).unwrap(), 500);
        assert_eq!(wait(&[("KAFKA_BROKERS", "kafka:9092")]).unwrap(), 500);
        assert_eq!(wait(&[("KAFKA_BROKERS", "embedded")]).unwrap(), 10);
        assert_eq!(wait(&[("KAFKA_BROKERS", "embedded"), ("KAFKA_FETCH_WAIT_MS", "250")]).unwrap(), 250);
        assert_eq!(wait(&[("KAFKA_FETCH_WAIT_MS", "50")]).unwrap(), 50);
        for bad in ["0", "300001", "soon", "-5"] {
            let e = format!("{:#}", wait(&[("KAFKA_FETCH_WAIT_MS", bad)]).unwrap_err());
            assert!(e.contains("KAFKA_FETCH_WAIT_MS"), "{bad}: {e}");
        }
        let session = |pairs: &[(&str, &str)]| config(pairs).map(|c| c.kafka.session_timeout.as_millis());
        assert_eq!(session(&[]).unwrap(), 45_000);
        assert_eq!(session(&[("KAFKA_BROKERS", "embedded")]).unwrap(), 6_000);
        assert_eq!(session(&[("KAFKA_SESSION_TIMEOUT_MS", "10000")]).unwrap(), 10_000);
        for bad in ["5999", "1800001", "long"] {
            let e = format!("{:#}", session(&[("KAFKA_SESSION_TIMEOUT_MS", bad)]).unwrap_err());
            assert!(e.contains("KAFKA_SESSION_TIMEOUT_MS"), "{bad}: {e}");
        }
        let batch =
            |v: &str| config(&[("KAFKA_PRODUCER_BATCH_RECORDS", v)]).map(|c| c.kafka.producer_batch_records);
        assert_eq!(config(&[]).unwrap().kafka.producer_batch_records, 10_000);
        assert_eq!(batch("1").unwrap(), 1);
        assert!(batch("0").is_err() && batch("1000001").is_err() && batch("many").is_err());
    }

    #[test]
    fn debug_never_shows_the_database_password() {
        for (url, shown) in [
            ("postgres://app:s3cret@db:5432/orders", "postgres://app:***@db:5432/orders"),
            ("postgres://app@db/orders", "postgres://app@db/orders"),
            (
                "postgres://db/orders?user=app&password=s3cret&sslmode=require",
                "postgres://db/orders?user=app&password=***&sslmode=require",
            ),
            ("host=db user=app password=s3cret dbname=orders", "host=db user=app password=*** dbname=orders"),
        ] {
            let c = config(&[("DATABASE_URL", url)]).unwrap();
            let debug = format!("{c:?}");
            assert!(!debug.contains("s3cret"), "{debug}");
            assert!(debug.contains(shown), "{shown} in {debug}");
            assert_eq!(c.database_url.as_ref().map(DatabaseUrl::expose), Some(url));
        }
    }

    #[test]
    fn values_are_parsed() {
        let c =
            config(&[("DEMO_MODE", "TRUE"), ("HANDLERS_DIR", "/h"), ("HANDLER_EPOCH_TICK_MS", "2")]).unwrap();
        assert!(c.demo_mode);
        assert_eq!(c.handlers_dir, PathBuf::from("/h"));
        assert_eq!(c.runtime.epoch_tick, Duration::from_millis(2));
    }

    #[test]
    fn consumed_topics_are_independent_of_published_ones() {
        let c = config(&[("KAFKA_TOPIC", "mirrord-tmp-abc-order.created")]).unwrap();
        assert_eq!(c.kafka.created_topic, "mirrord-tmp-abc-order.created");
        assert_eq!(c.topics.order_created, "order.created");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = config(&[("HTTP_ADDR", "nowhere")]).unwrap_err();
        assert!(format!("{err:#}").contains("HTTP_ADDR"), "{err:#}");
        let err = config(&[("LOG_FORMAT", "xml")]).unwrap_err();
        assert!(format!("{err:#}").contains("LOG_FORMAT"), "{err:#}");
        let err = config(&[("DEMO_MODE", "maybe")]).unwrap_err();
        assert!(format!("{err:#}").contains("DEMO_MODE"), "{err:#}");
        let err = config(&[("HANDLER_POOL_SIZE", "-3")]).unwrap_err();
        assert!(format!("{err:#}").contains("HANDLER_POOL_SIZE"), "{err:#}");
    }
}
