//! The WebAssembly runtime: one `Engine` with a pooling allocator and epoch deadlines, a `Linker`
//! offering sandboxed WASI p2 plus the `host` interface, component loading with a check against the
//! `order-handler` world, and invocation with a fresh Store per event.
//!
//! Only this module knows wasmtime. Callers see [`LoadedHandler`], [`Event`], [`wit`] values and
//! [`DispatchError`].

mod backtrace;
mod cache;
mod convert;
mod error;
pub mod golden;
mod host_api;
mod registry;
mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use anyhow::{Context, bail};
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentNamedList, HasSelf, Instance, InstancePre, Linker, Lower,
    TypedFunc,
};
use wasmtime::{Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

use crate::config::RuntimeConfig;
pub use cache::Origin;
pub(crate) use convert::event_at;
pub use error::{DispatchError, Disposition, TrapKind, describe_handler_error};
/// `handlers.toml`, in a crate of its own so that xtask reads and writes it without the runtime.
pub use handler_manifest as manifest;
pub use handler_manifest::sha256_hex;
use host_api::StoreState;
pub use host_api::{NoOrders, OrderSource, StaticOrders, sandbox_wasi_ctx};
pub use manifest::{EventKind, HandlerManifest, HandlerSpec, Manifest};
pub use registry::{LoadProblem, Registry, Route, RoutePolicy, SkipReason};
pub use stats::{InvocationStats, StatsSnapshot};

/// Rust types generated from `wit/`; the host's side of the contract.
pub mod wit {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "metalmart:orders/order-handler",
        imports: {
            // Reads Postgres; a failure traps the guest as a host failure instead of reaching it.
            "metalmart:orders/host.get-order": async | trappable,
            default: tracing,
        },
        exports: { default: async },
        // serde: the invocation journal records events and answers, and replay reads them back.
        additional_derives: [PartialEq, serde::Serialize, serde::Deserialize],
    });

    pub use metalmart::orders::types::*;
}

/// The world's name, as component authors know it.
pub const WORLD: &str = "metalmart:orders/order-handler@0.1.0";

/// One event for a handler.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    OrderCreated { meta: wit::EventMeta, order: wit::Order },
    StatusUpdated { meta: wit::EventMeta, update: wit::StatusUpdate },
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::OrderCreated { .. } => EventKind::OrderCreated,
            Event::StatusUpdated { .. } => EventKind::StatusUpdated,
        }
    }

    pub fn meta(&self) -> &wit::EventMeta {
        match self {
            Event::OrderCreated { meta, .. } | Event::StatusUpdated { meta, .. } => meta,
        }
    }
}

/// A compiled, type-checked handler ready to be instantiated.
pub struct LoadedHandler {
    pub name: String,
    /// Hex sha256 of the component bytes: the handler's version.
    pub version: String,
    pub manifest: HandlerManifest,
    pub loaded_at: SystemTime,
    /// Manifest config overlaid with the host's values, as `host.config` answers it.
    config: Arc<std::collections::BTreeMap<String, String>>,
    /// Whether loading compiled it or found it in the compile cache.
    pub origin: Origin,
    /// This version's invocations, recorded by the dispatcher.
    pub stats: InvocationStats,
    entry: Entry,
}

/// How to instantiate a loaded component and where its two exports are, their types checked once
/// at load.
///
/// The generated `OrderHandlerPre` checks the exports' types when it is built and then again on
/// every instantiation (`get_typed_func` in its `load`): 2.5% of the dispatcher's CPU in a profile
/// of the throughput drain, for a check whose answer cannot change between two instances of one
/// component. This keeps the first check and skips the rest: an instantiation in
/// `benches/invoke.rs` went from 9.0–9.2 µs to 7.9–8.7 µs (BENCHMARKS.md, 2026-12-07 morning).
struct Entry {
    pre: InstancePre<StoreState>,
    on_order_created: ComponentExportIndex,
    on_status_updated: ComponentExportIndex,
}

/// What either export answers.
type Answer = (Result<Vec<wit::Action>, wit::HandlerError>,);

impl Entry {
    /// `exports` are the component's own, as [`Runtime::exports`] found them.
    fn new(
        instance_pre: InstancePre<StoreState>,
        [on_order_created, on_status_updated]: [ComponentExportIndex; 2],
    ) -> anyhow::Result<Entry> {
        // Type-checks both exports against the world (the generated bindings' own check).
        wasm_err(wit::OrderHandlerPre::new(instance_pre.clone()))
            .with_context(|| format!("its exports do not match world {WORLD}"))?;
        Ok(Entry { pre: instance_pre, on_order_created, on_status_updated })
    }

    /// Calls the export for `event`'s kind on `instance`.
    async fn call(
        &self,
        store: &mut Store<StoreState>,
        instance: Instance,
        event: &Event,
    ) -> wasmtime::Result<Result<Vec<wit::Action>, wit::HandlerError>> {
        match event {
            Event::OrderCreated { meta, order } => {
                // SAFETY: `Entry::new` type-checked `on-order-created` against the world, whose
                // bindings give it exactly the parameters (meta, order) and `Answer`.
                unsafe { call_unchecked(store, instance, &self.on_order_created, (meta, order)) }.await
            }
            Event::StatusUpdated { meta, update } => {
                // SAFETY: as above, for `on-status-updated` and (meta, update).
                unsafe { call_unchecked(store, instance, &self.on_status_updated, (meta, update)) }.await
            }
        }
    }
}

/// Calls export `index` of `instance` with `params`, without checking its type.
///
/// # Safety
///
/// The export must take `P` and answer [`Answer`] (as `TypedFunc::new_unchecked` requires), checked
/// against the component `instance` was made from; this is what the generated bindings' `call_*`
/// methods rely on after their own check.
async unsafe fn call_unchecked<P>(
    store: &mut Store<StoreState>,
    instance: Instance,
    index: &ComponentExportIndex,
    params: P,
) -> wasmtime::Result<Result<Vec<wit::Action>, wit::HandlerError>>
where
    P: ComponentNamedList + Lower + Send + Sync,
{
    let func = instance
        .get_func(&mut *store, index)
        .ok_or_else(|| wasmtime::format_err!("the component lost an export it was loaded with"))?;
    // SAFETY: the caller's promise, above.
    let typed = unsafe { TypedFunc::<P, Answer>::new_unchecked(func) };
    let (answer,) = typed.call_async(&mut *store, params).await?;
    Ok(answer)
}

/// The first 12 hex digits of a version (sha256), as causes and logs show it.
pub fn short_version(version: &str) -> &str {
    version.get(..12).unwrap_or(version)
}

impl LoadedHandler {
    /// First 12 hex digits of the version, as used in causes and logs.
    pub fn short_version(&self) -> &str {
        short_version(&self.version)
    }

    /// `handler:<name>@<short sha>`: recorded with everything this handler causes.
    pub fn cause(&self) -> String {
        format!("handler:{}@{}", self.name, self.short_version())
    }

    pub fn subscribes_to(&self, kind: EventKind) -> bool {
        self.manifest.spec.events.contains(&kind)
    }

    /// Manifest config overlaid with the host's values: what `host.config` answers.
    pub fn config(&self) -> &std::collections::BTreeMap<String, String> {
        &self.config
    }
}

/// A future an [`Invoke`] returns.
pub type InvokeFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<wit::Action>, DispatchError>> + Send + 'a>>;

/// Runs a loaded handler's logic for one event. [`Runtime`] is the only implementation the host
/// uses; the pipeline benchmark substitutes the same logic compiled natively, to measure what the
/// WASM boundary costs with everything else (Kafka, Postgres, dispatch) unchanged.
pub trait Invoke: Send + Sync {
    fn invoke<'a>(
        &'a self,
        handler: &'a LoadedHandler,
        event: &'a Event,
        orders: Arc<dyn OrderSource>,
    ) -> InvokeFuture<'a>;
}

impl Invoke for Runtime {
    fn invoke<'a>(
        &'a self,
        handler: &'a LoadedHandler,
        event: &'a Event,
        orders: Arc<dyn OrderSource>,
    ) -> InvokeFuture<'a> {
        Box::pin(Runtime::invoke(self, handler, event, orders))
    }
}

impl std::fmt::Debug for LoadedHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedHandler").field("name", &self.name).field("version", &self.version).finish()
    }
}

/// The engine, the linker and the epoch ticker. Cheap to share behind an `Arc`; dropping the last
/// one stops the ticker thread.
pub struct Runtime {
    engine: Engine,
    linker: Linker<StoreState>,
    config: RuntimeConfig,
    cache: cache::ComponentCache,
    _ticker: Ticker,
}

/// Advances the engine's epoch every tick so that deadlines fire; stops when the runtime drops.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Runtime {
    pub fn new(config: &RuntimeConfig) -> anyhow::Result<Runtime> {
        let mut pool = PoolingAllocationConfig::default();
        // A wit-component output has one main module plus small shim modules and tables; these
        // multipliers leave headroom for that without reserving much.
        let n = config.pool_size;
        pool.total_component_instances(n)
            .total_core_instances(n * 4)
            .total_memories(n * 2)
            .total_tables(n * 4)
            .total_stacks(n)
            // Every invocation is a fresh instance in a recycled slot. Keeping the low pages of
            // each memory resident (where a 64 KiB-stack guest keeps its stack, data and early
            // heap) resets them with a memcpy instead of an madvise plus page faults on the next
            // instance. Measured in benches/invoke.rs: 64 KiB leaves the heap faulting (23 µs per
            // invoke), 1 MiB spends more on the memcpy than it saves (37 µs), 256 KiB gives 12 µs.
            // (Those figures predate the PAGEMAP_SCAN reset below; with it, 1 MiB and 256 KiB
            // measure the same.)
            .linear_memory_keep_resident(256 << 10)
            .table_keep_resident(16 << 10)
            // PAGEMAP_SCAN (Linux 6.7+; off elsewhere): the reset finds the pages the instance
            // actually dirtied and restores only those, instead of a memset of the whole
            // resident 256 KiB. See BENCHMARKS.md for what it saves per invocation.
            .pagemap_scan(Enabled::Auto)
            .max_memory_size(
                usize::try_from(config.max_memory_bytes).context("max memory does not fit usize")?,
            );

        let mut wasm = wasmtime::Config::new();
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .wasm_component_model(true);
        let engine = wasm_err(Engine::new(&wasm)).context("creating the wasmtime engine")?;

        let mut linker = Linker::new(&engine);
        wasm_err(wasmtime_wasi::p2::add_to_linker_async(&mut linker)).context("linking WASI p2")?;
        wasm_err(wit::OrderHandler::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s))
            .context("linking the host interface")?;

        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (engine, stop, tick) = (engine.weak(), stop.clone(), config.epoch_tick);
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::park_timeout(tick);
                        match engine.upgrade() {
                            Some(engine) => engine.increment_epoch(),
                            None => break,
                        }
                    }
                })
                .context("starting the epoch ticker")?
        };

        let cache = cache::ComponentCache::new(&engine, config.cache_dir.as_deref());
        Ok(Runtime {
            engine,
            linker,
            config: config.clone(),
            cache,
            _ticker: Ticker { stop, thread: Some(thread) },
        })
    }

    /// Compiles `bytes` and checks them against the world. CPU-bound (Cranelift): call it off the
    /// async worker threads. Every error names the handler and what is wrong.
    pub fn load(
        &self,
        manifest: HandlerManifest,
        bytes: &[u8],
        config_overlay: &std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<LoadedHandler> {
        let name = manifest.name.clone();
        self.load_inner(manifest, bytes, config_overlay).with_context(|| format!("handler `{name}`"))
    }

    fn load_inner(
        &self,
        manifest: HandlerManifest,
        bytes: &[u8],
        config_overlay: &std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<LoadedHandler> {
        manifest.spec.validate().map_err(anyhow::Error::msg)?;
        validate_name(&manifest.name)?;
        if manifest.spec.memory_limit_bytes > self.config.max_memory_bytes {
            bail!(
                "memory-limit-bytes {} is above the host's HANDLER_MAX_MEMORY_BYTES {}",
                manifest.spec.memory_limit_bytes,
                self.config.max_memory_bytes
            );
        }
        let version = sha256_hex(bytes);
        if let Some(expected) = &manifest.sha256
            && !expected.eq_ignore_ascii_case(&version)
        {
            bail!(
                "{} has sha256 {version} but the manifest says {expected}: the file changed after the \
                 manifest was written (or is still being written)",
                manifest.file
            );
        }
        if wasmtime::wasmparser::Parser::is_core_wasm(bytes) {
            bail!(
                "{} is a core WebAssembly module, not a component: build it for wasm32-wasip2",
                manifest.file
            );
        }
        if !wasmtime::wasmparser::Parser::is_component(bytes) {
            bail!("{} is not a WebAssembly component (no component header)", manifest.file);
        }
        let (component, origin) =
            self.cache.get_or_compile(&self.engine, &version, bytes).context("compiling the component")?;
        let exports = self.exports(&component)?;
        let instance_pre = wasm_err(self.linker.instantiate_pre(&component))
            .with_context(|| format!("it imports something the host does not provide (world {WORLD})"))?;
        let entry = Entry::new(instance_pre, exports)?;

        let mut config = manifest.spec.config.clone();
        config.extend(config_overlay.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(LoadedHandler {
            name: manifest.name.clone(),
            version,
            manifest,
            loaded_at: SystemTime::now(),
            config: Arc::new(config),
            origin,
            stats: InvocationStats::default(),
            entry,
        })
    }

    /// The world's exports, in `EventKind::ALL` order, naming every missing one up front;
    /// `Entry::new` then checks their types.
    fn exports(&self, component: &Component) -> anyhow::Result<[ComponentExportIndex; 2]> {
        let found = EventKind::ALL.map(|k| component.get_export_index(None, k.export_name()));
        let missing: Vec<String> = EventKind::ALL
            .iter()
            .zip(&found)
            .filter(|(_, index)| index.is_none())
            .map(|(k, _)| format!("`{}`", k.export_name()))
            .collect();
        if !missing.is_empty() {
            bail!(
                "it does not export {}: build it against world {WORLD} (wit/ in this repository)",
                missing.join(" and ")
            );
        }
        Ok(found.map(|index| index.expect("checked above")))
    }

    /// Runs one event through one handler in a fresh Store: its own WASI context (no files, no
    /// sockets, no environment), its memory cap and its deadline. The Store is dropped afterwards
    /// whatever happened, so a trap leaves nothing behind.
    pub async fn invoke(
        &self,
        handler: &LoadedHandler,
        event: &Event,
        orders: Arc<dyn OrderSource>,
    ) -> Result<Vec<wit::Action>, DispatchError> {
        let mut store = self.new_store(handler, event.meta().event_id.clone(), orders);
        let instance = match handler.entry.pre.instantiate_async(&mut store).await {
            Ok(i) => i,
            Err(e) => return Err(classify_instantiation(e, store.data())),
        };
        let outcome = handler.entry.call(&mut store, instance, event).await;
        match outcome {
            Ok(Ok(actions)) => Ok(actions),
            Ok(Err(e)) => Err(DispatchError::Handler(e)),
            Err(e) => Err(classify(e, store.data())),
        }
    }

    /// Instantiates `handler` in a fresh Store exactly as [`Runtime::invoke`] does, without calling
    /// it: lets the benchmark split instantiation from the call.
    #[doc(hidden)]
    pub async fn instantiate_only(&self, handler: &LoadedHandler) -> anyhow::Result<()> {
        let mut store = self.new_store(handler, String::new(), Arc::new(NoOrders));
        wasm_err(handler.entry.pre.instantiate_async(&mut store).await)?;
        Ok(())
    }

    /// A Store for one invocation, with the handler's memory cap and deadline.
    fn new_store(
        &self,
        handler: &LoadedHandler,
        event_id: String,
        orders: Arc<dyn OrderSource>,
    ) -> Store<StoreState> {
        let mut store = Store::new(&self.engine, StoreState::new(handler, event_id, orders));
        store.limiter(|s| &mut s.limiter);
        let tick = self.config.epoch_tick;
        let timeout = std::time::Duration::from_millis(handler.manifest.spec.timeout_ms);
        store.set_epoch_deadline(deadline_ticks(timeout, tick));
        // The deadline counts the guest's own time only: time spent waiting in a host import
        // (`get-order` waiting for a Postgres connection) is the host's, and is added back here.
        store.epoch_deadline_callback(move |ctx| {
            let guest_time = ctx.data().guest_time();
            if guest_time >= timeout {
                Ok(wasmtime::UpdateDeadline::Interrupt)
            } else {
                Ok(wasmtime::UpdateDeadline::Continue(deadline_ticks(timeout - guest_time, tick)))
            }
        });
        store
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// A handler's name is written to Postgres with everything it causes and used in metric labels
/// and URLs: 1 to 64 ASCII letters, digits, `-`, `_` or `.`.
pub fn validate_name(name: &str) -> anyhow::Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    anyhow::ensure!(ok, "invalid handler name {name:?}: use 1 to 64 ASCII letters, digits, '-', '_' or '.'");
    Ok(())
}

/// Epoch ticks for `left`; +1 because the current epoch may be about to tick, so `n` ticks can be
/// as short as `n - 1`.
fn deadline_ticks(left: std::time::Duration, tick: std::time::Duration) -> u64 {
    let tick = u64::try_from(tick.as_millis()).unwrap_or(u64::MAX).max(1);
    // Saturating: the manifest caps deadlines at a minute, but an overflow here would wrap to a
    // deadline of zero ticks and trap every invocation at once.
    u64::try_from(left.as_millis()).unwrap_or(u64::MAX).div_ceil(tick).saturating_add(1)
}

/// An instantiation that failed: no pool slot is the host's capacity, a trapping start function
/// is the handler's.
fn classify_instantiation(error: wasmtime::Error, state: &StoreState) -> DispatchError {
    if error.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some()
        || error.downcast_ref::<Trap>().is_none()
    {
        return DispatchError::Host(anyhow::anyhow!("instantiating: {:#}", anyhow::Error::from(error)));
    }
    classify(error, state)
}

/// A call that failed. Everything but a host import's own failure is the handler's doing: a trap,
/// a limit, or a return value the component ABI rejects (bad UTF-8, a bad discriminant, a pointer
/// out of bounds), which wasmtime reports as a plain error rather than a trap.
fn classify(error: wasmtime::Error, state: &StoreState) -> DispatchError {
    if let Some(failure) = error.downcast_ref::<host_api::HostFailure>() {
        return DispatchError::Host(anyhow::anyhow!("{}", failure.0));
    }
    let trap = error.downcast_ref::<Trap>().copied();
    let at = error.downcast_ref::<wasmtime::WasmBacktrace>().and_then(backtrace::render);
    let error = anyhow::Error::from(error);
    let detail = match &at {
        // The chain's own rendering of the backtrace is many lines of addresses; the trap's
        // message and the compact form say the same on one line.
        Some(at) => format!("{}; {at}", error.root_cause()),
        None => format!("{error:#}"),
    };
    let with_at = |message: String| match &at {
        Some(at) => format!("{message}; {at}"),
        None => message,
    };
    if state.limiter.exceeded() {
        let message = format!(
            "the guest asked for more than its {} byte memory limit ({detail})",
            state.limiter.limit_bytes()
        );
        return DispatchError::Trap { kind: TrapKind::MemoryLimit, message };
    }
    match trap {
        Some(Trap::Interrupt) => DispatchError::Trap {
            kind: TrapKind::Deadline,
            message: with_at(format!("did not finish within its {} ms deadline", state.timeout_ms)),
        },
        Some(Trap::UnreachableCodeReached) => DispatchError::Trap {
            kind: TrapKind::Panic,
            message: match &state.last_error_log {
                Some(panic) => with_at(panic.clone()),
                None => detail,
            },
        },
        Some(_) => DispatchError::Trap { kind: TrapKind::Other, message: detail },
        None => DispatchError::Trap { kind: TrapKind::InvalidValue, message: detail },
    }
}

/// wasmtime has its own error type; the host's plumbing speaks anyhow.
fn wasm_err<T>(result: wasmtime::Result<T>) -> anyhow::Result<T> {
    result.map_err(anyhow::Error::from)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn deadline_ticks_round_up_and_saturate() {
        let ms = Duration::from_millis;
        assert_eq!(super::deadline_ticks(ms(500), ms(10)), 51);
        assert_eq!(super::deadline_ticks(ms(501), ms(10)), 52);
        assert_eq!(super::deadline_ticks(ms(5), Duration::ZERO), 6, "a zero tick counts as 1 ms");
        assert_eq!(super::deadline_ticks(Duration::MAX, ms(1)), u64::MAX);
    }
}
