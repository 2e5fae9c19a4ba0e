//! Wires the running host together: Postgres, Kafka, handlers, the notification fan-out, the
//! dispatcher, the timer scheduler, the outbox relay and the HTTP server; and takes them down in
//! order on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, DatabaseUrl, EMBEDDED_BROKERS};
use crate::db;
use crate::db::listen::{self, Notices};
use crate::dispatch::redrive::Redriver;
use crate::dispatch::{self, Backlog, Shared, timers};
use crate::handler_set::HandlerSet;
use crate::handler_watch::{self, WatchConfig};
use crate::http::admin::Admin;
use crate::http::{self, AppState, Probes};
use crate::journal::Journal;
use crate::kafka::{Consumer, EmbeddedBroker, Producer};
use crate::metrics::Metrics;
use crate::relay::{self, RelayConfig};
use crate::retention;
use crate::runtime::{Invoke, Runtime};
use crate::shadow::ShadowSet;
use crate::supervise::Supervisor;

/// How long the producer retries one record before the relay sees it fail and backs off.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on flushing the producer at shutdown; the outbox keeps whatever did not make it.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Partitions of the embedded broker's topics, as in the k8s topic Job.
const EMBEDDED_PARTITIONS: i32 = 3;

/// A started host. Dropping it without `shutdown` aborts nothing gracefully; call `shutdown`.
pub struct Host {
    pub addr: SocketAddr,
    pub pool: PgPool,
    shutdown: watch::Sender<bool>,
    /// Stops the relay, after everything that writes outbox rows has stopped.
    relay_shutdown: watch::Sender<bool>,
    server: JoinHandle<anyhow::Result<()>>,
    background: Vec<JoinHandle<()>>,
    relay: JoinHandle<()>,
    /// Writes the invocation journal; stops with the relay.
    journal_writer: Option<JoinHandle<()>>,
    producer: Arc<Producer>,
    supervisor: Arc<Supervisor>,
    /// Kept alive for the host's lifetime when `KAFKA_BROKERS=embedded`.
    embedded: Option<EmbeddedBroker>,
}

impl Host {
    /// Connects, migrates, loads handlers and starts serving on `config.http_addr`.
    pub async fn start(config: &Config) -> anyhow::Result<Host> {
        Host::start_with(config, None).await
    }

    /// [`Host::start`], with handler logic run by `invoker` instead of the WASM runtime when it is
    /// given. Only the pipeline benchmark does that, for its native baseline; handlers are still
    /// loaded and routed from `HANDLERS_DIR` as usual.
    pub async fn start_with(config: &Config, invoker: Option<Arc<dyn Invoke>>) -> anyhow::Result<Host> {
        let Some(url) = config.database_url.as_ref().map(DatabaseUrl::expose) else {
            bail!("DATABASE_URL is not set (`cargo xtask dev` starts a local Postgres and sets it)");
        };
        let pool = db::connect(url, config.pools.api).await?;
        let dispatch_pool = db::pool(url, config.pools.dispatch).await?;
        let embedded = start_embedded_broker(config)?;
        let brokers = embedded.as_ref().map_or(config.kafka.brokers.as_str(), |b| b.bootstrap_servers());
        let producer =
            Arc::new(Producer::new(brokers, PRODUCE_TIMEOUT, config.kafka.producer_batch_records)?);
        let (runtime, handlers) = load_handlers(config).await?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let (relay_shutdown, relay_shutdown_rx) = watch::channel(false);
        let metrics = Arc::new(Metrics::new());
        let invoker = invoker.unwrap_or_else(|| runtime.clone());
        let (journal, journal_writer) =
            Journal::start(pool.clone(), config.journal.mode, metrics.clone(), relay_shutdown_rx.clone());
        let shadows = Arc::new(ShadowSet::new(handlers.clone(), invoker.clone(), metrics.clone()));
        let parts = Parts {
            pool: pool.clone(),
            runtime,
            handlers,
            producer: producer.clone(),
            invoker,
            notices: Notices::new(),
            backlog: Arc::new(Backlog::default()),
            journal: Arc::new(journal),
            shadows,
            supervisor: Supervisor::new(metrics.clone()),
            metrics,
            shutdown: shutdown_rx.clone(),
        };
        let relay = parts.spawn_relay(relay_shutdown_rx.clone());
        // The journal's writer stops with the relay, after the dispatcher has stopped recording.
        let journal_writer = journal_writer
            .map(|writer| parts.supervisor.spawn("journal writer", relay_shutdown_rx.clone(), writer));
        let backlog = parts.backlog.clone();
        let consumer = Consumer::new(
            brokers,
            &config.kafka,
            parts.metrics.clone(),
            Box::new(move |revoked| backlog.revoke(revoked)),
        )?;
        let dispatcher = Shared {
            pool: dispatch_pool,
            invoker: parts.invoker.clone(),
            handlers: parts.handlers.clone(),
            config: config.dispatch.clone(),
            kafka: config.kafka.clone(),
            topics: config.topics.clone(),
            shutdown: shutdown_rx.clone(),
            metrics: parts.metrics.clone(),
            supervisor: parts.supervisor.clone(),
            backlog: parts.backlog.clone(),
            journal: parts.journal.clone(),
            shadows: parts.shadows.clone(),
        };
        let mut background = parts.spawn_background(config);
        background.push(parts.supervisor.spawn(
            "dispatcher",
            shutdown_rx.clone(),
            dispatch::run(dispatcher, consumer),
        ));

        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding HTTP_ADDR {}", config.http_addr))?;
        let addr = listener.local_addr()?;
        let supervisor = parts.supervisor.clone();
        let server = tokio::spawn(http::serve(listener, parts.app_state(config), shutdown_rx));
        tracing::info!(%addr, "order-host listening");
        Ok(Host {
            addr,
            pool,
            shutdown,
            relay_shutdown,
            server,
            background,
            relay,
            journal_writer,
            producer,
            supervisor,
            embedded,
        })
    }

    /// Resolves when a background task has died; the caller should then shut down and exit
    /// with a failure status.
    pub async fn died(&self) {
        self.supervisor.first_death().await
    }

    /// Background tasks that died, as `task: reason`.
    pub fn deaths(&self) -> Vec<String> {
        self.supervisor.deaths()
    }

    /// Fault injection for tests: the producer hits a fatal error, as after a broker lost data.
    #[doc(hidden)]
    pub fn inject_producer_fatal_error(&self, reason: &str) {
        self.producer.inject_fatal_error(reason)
    }

    /// Stops accepting and fetching, lets in-flight requests and events finish (the dispatcher
    /// commits and leaves its group), then drains the relay and flushes the producer.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let Host {
            pool,
            shutdown,
            relay_shutdown,
            server,
            background,
            relay,
            journal_writer,
            producer,
            embedded,
            ..
        } = self;
        let _ = shutdown.send(true);
        let served = server.await.context("joining the HTTP server")?;
        for task in background {
            task.await.context("joining a background task")?;
        }
        let _ = relay_shutdown.send(true);
        relay.await.context("joining the outbox relay")?;
        if let Some(writer) = journal_writer {
            writer.await.context("joining the journal writer")?;
        }
        tokio::task::spawn_blocking(move || producer.flush(FLUSH_TIMEOUT)).await??;
        pool.close().await;
        // Last, once the producer is gone, so it does not log the broker vanishing.
        drop(embedded);
        served
    }
}

/// What start-up builds once and hands to every part it starts.
struct Parts {
    /// The API's pool, shared with the relay, the timers and the notification fan-out.
    pool: PgPool,
    runtime: Arc<Runtime>,
    handlers: Arc<HandlerSet>,
    producer: Arc<Producer>,
    /// Runs handler logic for the dispatcher and for redrives.
    invoker: Arc<dyn Invoke>,
    notices: Notices,
    /// The dispatcher's in-flight events, read by `/metrics` and the admin API.
    backlog: Arc<Backlog>,
    journal: Arc<Journal>,
    shadows: Arc<ShadowSet>,
    metrics: Arc<Metrics>,
    supervisor: Arc<Supervisor>,
    shutdown: watch::Receiver<bool>,
}

impl Parts {
    /// The relay stops on its own signal, after everything that writes outbox rows has stopped.
    fn spawn_relay(&self, relay_shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        self.supervisor.spawn(
            "outbox relay",
            relay_shutdown.clone(),
            relay::run(
                self.pool.clone(),
                self.producer.clone(),
                self.notices.outbox(),
                RelayConfig::default(),
                relay_shutdown,
                self.metrics.clone(),
            ),
        )
    }

    /// The notification fan-out, the timer scheduler and the handlers directory watcher.
    fn spawn_background(&self, config: &Config) -> Vec<JoinHandle<()>> {
        let shutdown = &self.shutdown;
        vec![
            self.supervisor.spawn(
                "notification fan-out",
                shutdown.clone(),
                listen::run(self.pool.clone(), self.notices.clone(), shutdown.clone()),
            ),
            self.supervisor.spawn(
                "timer scheduler",
                shutdown.clone(),
                timers::run(
                    self.pool.clone(),
                    config.topics.clone(),
                    self.notices.timers(),
                    self.metrics.clone(),
                    shutdown.clone(),
                ),
            ),
            self.supervisor.spawn(
                "retention",
                shutdown.clone(),
                retention::run(
                    self.pool.clone(),
                    config.retention.clone(),
                    self.metrics.clone(),
                    shutdown.clone(),
                ),
            ),
            self.supervisor.spawn(
                "handler watcher",
                shutdown.clone(),
                handler_watch::run(
                    self.runtime.clone(),
                    self.handlers.clone(),
                    WatchConfig {
                        dir: config.handlers_dir.clone(),
                        overlay: config.handler_config_overlay(),
                        rescan: config.admin.rescan,
                    },
                    shutdown.clone(),
                ),
            ),
        ]
    }

    /// What the HTTP handlers see; the admin API only when `ADMIN_TOKEN` is set.
    fn app_state(self, config: &Config) -> AppState {
        let handlers = self.handlers.clone();
        let probes = Probes {
            kafka: self.producer.clone(),
            handlers: Arc::new(move || {
                let current = handlers.current();
                (current.iter().count(), current.waiting_kinds())
            }),
            supervisor: self.supervisor.clone(),
        };
        let admin = config.admin.token.clone().map(|token| {
            Arc::new(Admin {
                token,
                runtime: self.runtime,
                handlers: self.handlers.clone(),
                overlay: config.handler_config_overlay(),
                max_upload_bytes: config.admin.max_upload_bytes,
                uploads: tokio::sync::Semaphore::new(crate::http::admin::MAX_CONCURRENT_UPLOADS),
                shadows: self.shadows.clone(),
                redriver: Redriver {
                    pool: self.pool.clone(),
                    invoker: self.invoker,
                    handlers: self.handlers.clone(),
                    kafka: config.kafka.clone(),
                    topics: config.topics.clone(),
                    metrics: self.metrics.clone(),
                },
            })
        });
        AppState {
            pool: self.pool,
            topics: Arc::new(config.topics.clone()),
            notices: self.notices,
            probes,
            admin,
            shutdown: self.shutdown,
            metrics: self.metrics,
            backlog: self.backlog,
        }
    }
}

/// With `KAFKA_BROKERS=embedded`, an in-memory broker holding every topic the host uses.
fn start_embedded_broker(config: &Config) -> anyhow::Result<Option<EmbeddedBroker>> {
    if config.kafka.brokers != EMBEDDED_BROKERS {
        return Ok(None);
    }
    let (t, k) = (&config.topics, &config.kafka);
    let mut names: Vec<&str> =
        [&t.order_created, &t.status_updated, &t.dead_letter, &k.created_topic, &k.status_topic]
            .iter()
            .map(|s| s.as_str())
            .collect();
    names.sort_unstable();
    names.dedup();
    let broker = EmbeddedBroker::start(&names, EMBEDDED_PARTITIONS)?;
    tracing::warn!(
        bootstrap = broker.bootstrap_servers(),
        "KAFKA_BROKERS=embedded: using an in-memory development broker; nothing survives a restart"
    );
    Ok(Some(broker))
}

/// The runtime and the initial handler set from `HANDLERS_DIR`. A missing directory means no
/// handlers yet: the API still serves, readiness says why it is not ready, and the watcher picks
/// the directory up when it appears.
async fn load_handlers(config: &Config) -> anyhow::Result<(Arc<Runtime>, Arc<HandlerSet>)> {
    let runtime_config = config.runtime.clone();
    let runtime = Arc::new(
        tokio::task::spawn_blocking(move || Runtime::new(&runtime_config))
            .await
            .context("joining the runtime start")??,
    );
    let handlers = Arc::new(HandlerSet::default());
    handler_watch::scan(&runtime, &handlers, &config.handlers_dir, &config.handler_config_overlay()).await;
    Ok((runtime, handlers))
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn termination_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    Ok(())
}
