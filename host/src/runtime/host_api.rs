//! What a guest can reach while it runs: the per-invocation Store state (a WASI context with no
//! capabilities, a memory limiter) and the host's side of the `host` WIT interface.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::LoadedHandler;
use super::wit::{self, LogLevel, Order, Timestamp};

/// Where `host.get-order` reads orders from: Postgres in the server, a fixed set in tests and CLIs.
pub trait OrderSource: Send + Sync {
    fn get_order<'a>(
        &'a self,
        id: &'a str,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<Option<Order>>> + Send + 'a>>;
}

/// Knows no orders.
pub struct NoOrders;

impl OrderSource for NoOrders {
    fn get_order<'a>(
        &'a self,
        _id: &'a str,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<Option<Order>>> + Send + 'a>> {
        Box::pin(async { Ok(None) })
    }
}

/// A fixed set of orders.
pub struct StaticOrders(pub Vec<Order>);

impl OrderSource for StaticOrders {
    fn get_order<'a>(
        &'a self,
        id: &'a str,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<Option<Order>>> + Send + 'a>> {
        Box::pin(async move { Ok(self.0.iter().find(|o| o.id == id).cloned()) })
    }
}

/// A failure on the host's side of an import. Raised as a trap so the guest never sees it, and
/// recognised after the call so the event is retried rather than blamed on the handler.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HostFailure(pub String);

/// Caps a Store's linear memories and tables, and remembers whether the cap was hit so a failed
/// invocation can be reported as a memory-limit error rather than whatever the guest did next
/// (Rust's allocator aborts, which looks like a panic).
pub struct Limiter {
    limit_bytes: usize,
    exceeded: bool,
}

impl Limiter {
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }

    pub fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit_bytes {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a decision function needs a few hundred at most.
        Ok(desired <= 100_000)
    }
}

/// The WASI context of every invocation: no preopened directories, no environment, no arguments,
/// no network (the defaults deny addresses; these switch the socket interfaces off entirely).
pub fn sandbox_wasi_ctx() -> WasiCtx {
    WasiCtx::builder().allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false).build()
}

/// The data of one invocation's Store.
pub struct StoreState {
    /// Built on the guest's first WASI call, if it makes one: the project's handlers make none
    /// in a normal invocation, and building a context was about 1.5% of the dispatcher's CPU in
    /// a batched drain (BENCHMARKS.md).
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    pub limiter: Limiter,
    pub timeout_ms: u64,
    /// The last `error` line the guest logged: the SDK's panic hook writes the panic message there.
    pub last_error_log: Option<String>,
    handler: String,
    version: String,
    event_id: String,
    config: Arc<BTreeMap<String, String>>,
    orders: Arc<dyn OrderSource>,
    /// When the Store was made, and how long the guest has waited in host imports since: the
    /// deadline counts only the difference.
    started: std::time::Instant,
    in_host: std::time::Duration,
}

impl StoreState {
    pub fn new(handler: &LoadedHandler, event_id: String, orders: Arc<dyn OrderSource>) -> StoreState {
        StoreState {
            wasi: None,
            table: ResourceTable::new(),
            limiter: Limiter {
                limit_bytes: usize::try_from(handler.manifest.spec.memory_limit_bytes).unwrap_or(usize::MAX),
                exceeded: false,
            },
            timeout_ms: handler.manifest.spec.timeout_ms,
            last_error_log: None,
            handler: handler.name.clone(),
            version: handler.short_version().to_string(),
            event_id,
            config: handler.config.clone(),
            orders,
            started: std::time::Instant::now(),
            in_host: std::time::Duration::ZERO,
        }
    }

    /// Time the guest itself has run (wall time less time waiting in host imports).
    pub fn guest_time(&self) -> std::time::Duration {
        self.started.elapsed().saturating_sub(self.in_host)
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: self.wasi.get_or_insert_with(sandbox_wasi_ctx), table: &mut self.table }
    }
}

impl wit::metalmart::orders::types::Host for StoreState {}

impl wit::metalmart::orders::host::Host for StoreState {
    async fn get_order(&mut self, id: String) -> wasmtime::Result<Option<Order>> {
        let waiting = std::time::Instant::now();
        let result = self.orders.get_order(&id).await;
        self.in_host += waiting.elapsed();
        result.map_err(|e| wasmtime::Error::new(HostFailure(format!("reading order {id}: {e:#}"))))
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }

    fn log(&mut self, level: LogLevel, message: String) {
        let (handler, version, event_id) = (&self.handler, &self.version, &self.event_id);
        super::event_at!(level, handler, version, event_id, "{message}");
        if level == LogLevel::Error {
            self.last_error_log = Some(message);
        }
    }

    fn now(&mut self) -> Timestamp {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}
