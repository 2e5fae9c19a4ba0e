//! The runtime against real components: the shipped handlers answer the golden cases exactly as
//! they do natively, hostile guests are stopped by the right limit without harming the runtime,
//! and malformed components are rejected with a message that says what is wrong.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use host::config::RuntimeConfig;
use host::runtime::wit::{HandlerError, Order, OrderStatus};
use host::runtime::{
    DispatchError, EventKind, HandlerManifest, HandlerSpec, Manifest, NoOrders, OrderSource, Origin,
    Registry, Runtime, StaticOrders, TrapKind, golden,
};

fn overlay(demo: bool) -> BTreeMap<String, String> {
    BTreeMap::from([("DEMO_MODE".to_string(), demo.to_string())])
}

/// The handlers `cargo xtask build-handlers` built, from its manifest: the tests discover them,
/// so a new handler crate is tested with no edit here.
fn built_handlers() -> Vec<HandlerManifest> {
    let path = root().join("target/handlers").join(host::runtime::manifest::MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("{}: {e}; build the handlers first with `cargo xtask test`", path.display())
    });
    let manifest = Manifest::parse(&text).expect("the built manifest parses");
    assert!(!manifest.handlers.is_empty(), "no handlers built");
    manifest.handlers
}

#[tokio::test]
async fn shipped_handlers_answer_the_golden_cases_like_their_native_tests() {
    let rt = runtime();
    let dir = root().join("target/handlers");
    for h in built_handlers() {
        let path = root().join("handlers").join(&h.name).join("cases.json");
        let cases = golden::read_cases(&path).unwrap_or_else(|e| panic!("{}: {e:#}", h.name));
        let mismatches = golden::replay(&rt, &dir, &h.name, &cases).await.unwrap();
        assert!(mismatches.is_empty(), "{}: {mismatches:#?}", h.name);
    }
}

#[test]
fn built_handlers_are_components_exporting_the_world() {
    let rt = runtime();
    let dir = root().join("target/handlers");
    let (registry, problems) = Registry::load_dir(&rt, &dir, &BTreeMap::new()).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let built = built_handlers();
    for kind in EventKind::ALL {
        let subscribers: Vec<&str> = registry.subscribers(kind).map(|h| h.name.as_str()).collect();
        let declared: Vec<&str> =
            built.iter().filter(|h| h.spec.events.contains(&kind)).map(|h| h.name.as_str()).collect();
        assert_eq!(subscribers, declared, "{kind}");
    }
    for entry in &built {
        let name = entry.name.as_str();
        let bytes = component("handlers", name);
        assert!(wasmparser_is_component(&bytes), "{name} is a component, not a core module");
        let h = registry.get(name).unwrap_or_else(|| panic!("{name} loaded from the manifest"));
        assert_eq!(h.version, host::runtime::sha256_hex(&bytes));
        assert_eq!(h.manifest.sha256.as_deref(), Some(h.version.as_str()), "manifest records the sha256");
        assert_eq!(h.cause(), format!("handler:{name}@{}", &h.version[..12]));
    }
}

fn wasmparser_is_component(bytes: &[u8]) -> bool {
    // The component preamble: magic, version 0x0d, layer 1.
    bytes.len() > 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [0x0d, 0x00, 0x01, 0x00]
}

/// After a hostile guest, the same runtime still serves a good handler.
async fn good_handler_still_works(rt: &host::runtime::Runtime) {
    let (registry, _) = Registry::load_dir(rt, &root().join("target/handlers"), &overlay(true)).unwrap();
    let actions = rt
        .invoke(
            registry.get("order-processor").unwrap(),
            &order_created(OrderStatus::Pending),
            Arc::new(NoOrders),
        )
        .await
        .expect("order-processor still works");
    assert_eq!(
        actions.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["set-status processing after 200ms"]
    );
}

/// Invokes a fixture's `on-order-created` with the given limits; it must fail. Also returns how
/// long the invocation alone took (loading is not timed).
async fn failing_fixture(
    rt: &host::runtime::Runtime,
    name: &str,
    timeout_ms: u64,
    memory: u64,
) -> (DispatchError, Duration) {
    let fixture = load_fixture(rt, name, timeout_ms, memory);
    let started = Instant::now();
    match rt.invoke(&fixture, &order_created(OrderStatus::Pending), Arc::new(NoOrders)).await {
        Ok(actions) => panic!("{name} returned {actions:?} instead of failing"),
        Err(e) => (e, started.elapsed()),
    }
}

#[tokio::test]
async fn an_infinite_loop_hits_the_deadline_within_twice_the_timeout() {
    let rt = runtime();
    let timeout_ms = 200;
    let (err, took) = failing_fixture(&rt, "looper", timeout_ms, 16 << 20).await;
    assert!(matches!(err, DispatchError::Trap { kind: TrapKind::Deadline, .. }), "{err}");
    assert!(took >= Duration::from_millis(timeout_ms), "stopped before its deadline: {took:?}");
    assert!(
        took < Duration::from_millis(2 * timeout_ms),
        "took {took:?}, over twice the {timeout_ms} ms deadline"
    );
    assert!(err.to_string().contains("200 ms deadline"), "{err}");
    good_handler_still_works(&rt).await;
}

#[tokio::test]
async fn a_memory_bomb_hits_the_memory_limit() {
    let rt = runtime();
    let (err, _) = failing_fixture(&rt, "memory-bomb", 5_000, 8 << 20).await;
    assert!(matches!(err, DispatchError::Trap { kind: TrapKind::MemoryLimit, .. }), "{err}");
    assert!(err.to_string().contains("8388608 byte memory limit"), "{err}");
    good_handler_still_works(&rt).await;
}

#[tokio::test]
async fn a_panic_is_a_trap_carrying_the_panic_message() {
    let rt = runtime();
    let (err, _) = failing_fixture(&rt, "panicker", 500, 16 << 20).await;
    assert!(matches!(err, DispatchError::Trap { kind: TrapKind::Panic, .. }), "{err}");
    assert!(err.to_string().contains("fixture panics on purpose for MM-10042"), "{err}");
    // The guest backtrace, one line, names the handler's function and leaves out the panic
    // machinery of the standard library.
    let message = err.to_string();
    let at = message.split_once("; at ").map(|(_, at)| at).unwrap_or_else(|| panic!("no backtrace: {err}"));
    assert!(
        at.starts_with("<panicker::") && at.contains(" <- sdk::bindings::_export_on_order_created_cabi"),
        "{err}"
    );
    assert!(!at.contains("std::") && !at.contains("abort") && !at.contains('\n'), "{err}");
    assert!(message.contains("panicker/src/lib.rs:9"), "the panic names its line: {err}");
    good_handler_still_works(&rt).await;
}

#[tokio::test]
async fn host_imports_answer_and_the_sandbox_grants_nothing() {
    let rt = runtime();
    let spec = HandlerSpec {
        config: BTreeMap::from([("GREETING".into(), "hello".into())]),
        ..HandlerSpec::default()
    };
    let noop = rt
        .load(spec.into_manifest("noop", "noop.wasm", None), &component("fixtures", "noop"), &BTreeMap::new())
        .unwrap();
    // One invocation, one Store: each call finds a fresh memory (`fresh=true`: its static call
    // counter at zero and a 512 KiB scratch area zeroed), though the one before dirtied both
    // in the same pooled slot (the pool gives a module back the slot it last freed), inside and
    // beyond the pages kept resident.
    for call in 1..=3 {
        let orders = Arc::new(StaticOrders(vec![sample_order(OrderStatus::Confirmed)]));
        let actions = rt.invoke(&noop, &order_created(OrderStatus::Pending), orders).await.unwrap();
        assert_eq!(
            actions.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "log info found=Some(\"MM-10042\") greeting=Some(\"hello\") clock=true env=0 fs=false net=false fresh=true"
            ],
            "call {call}"
        );
    }
    // The SDK default for an event the handler does not implement: no actions.
    let none = rt
        .invoke(&noop, &status_updated(OrderStatus::Pending, OrderStatus::Processing), Arc::new(NoOrders))
        .await;
    assert_eq!(none.unwrap(), vec![]);
}

struct BrokenDatabase;

impl OrderSource for BrokenDatabase {
    fn get_order<'a>(
        &'a self,
        _id: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Option<Order>>> + Send + 'a>> {
        Box::pin(async { Err(anyhow::anyhow!("connection refused")) })
    }
}

#[tokio::test]
async fn a_failing_import_is_a_host_failure_not_the_handlers_fault() {
    let rt = runtime();
    let noop = load_fixture(&rt, "noop", 500, 16 << 20);
    let err =
        rt.invoke(&noop, &order_created(OrderStatus::Pending), Arc::new(BrokenDatabase)).await.unwrap_err();
    assert!(matches!(err, DispatchError::Host(_)), "{err}");
    assert!(err.to_string().contains("connection refused"), "{err}");
    assert_eq!(err.disposition(), host::runtime::Disposition::RetryUntilRecovered);
}

#[test]
fn handler_errors_keep_their_case() {
    // The shipped order-processor returns invalid-event for an order without id.
    let rt = runtime();
    let (registry, _) = Registry::load_dir(&rt, &root().join("target/handlers"), &BTreeMap::new()).unwrap();
    let mut event = order_created(OrderStatus::Pending);
    if let host::runtime::Event::OrderCreated { order, .. } = &mut event {
        order.id.clear();
    }
    let err = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(rt.invoke(registry.get("order-processor").unwrap(), &event, Arc::new(NoOrders)))
        .unwrap_err();
    assert!(matches!(&err, DispatchError::Handler(HandlerError::InvalidEvent(_))), "{err}");
    assert_eq!(err.to_string(), "handler returned invalid-event: order-created event without an order id");
}

#[test]
fn components_of_another_world_are_rejected_with_what_is_wrong() {
    let rt = runtime();
    let load = |name: &str, bytes: &[u8]| {
        let manifest = HandlerSpec::default().into_manifest(name, &format!("{name}.wasm"), None);
        format!("{:#}", rt.load(manifest, bytes, &BTreeMap::new()).unwrap_err())
    };
    let half = load("half-world", &component("fixtures", "half-world"));
    assert!(half.contains("handler `half-world`: it does not export `on-status-updated`"), "{half}");
    assert!(!half.contains("`on-order-created`"), "only the missing export is named: {half}");

    let other = load("other-world", &component("fixtures", "other-world"));
    assert!(
        other.contains(
            "handler `other-world`: its exports do not match world metalmart:orders/order-handler@0.1.0"
        ),
        "{other}"
    );

    let core = load("core", b"\0asm\x01\0\0\0");
    assert!(core.contains("core WebAssembly module, not a component"), "{core}");
    let text = load("text", b"not wasm at all");
    assert!(text.contains("not a WebAssembly component"), "{text}");
}

#[test]
fn a_bad_file_in_the_handlers_dir_is_reported_and_the_rest_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("order-processor.wasm"), component("handlers", "order-processor"))
        .unwrap();
    std::fs::write(dir.path().join("garbage.wasm"), b"this is not wasm").unwrap();
    std::fs::write(dir.path().join("README.txt"), b"notes").unwrap();
    std::fs::write(dir.path().join("half-world.wasm"), component("fixtures", "half-world")).unwrap();

    let rt = runtime();
    let (registry, problems) = Registry::load_dir(&rt, dir.path(), &BTreeMap::new()).unwrap();
    assert_eq!(registry.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["order-processor"]);
    let report: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(report.len(), 3, "{report:#?}");
    assert!(
        report[0].ends_with("README.txt: ignored: not a .wasm component and not handlers.toml"),
        "{report:#?}"
    );
    assert!(
        report[1].contains("garbage.wasm: handler `garbage`: garbage.wasm is not a WebAssembly component"),
        "{report:#?}"
    );
    assert!(
        report[2].contains("half-world.wasm: handler `half-world`: it does not export `on-status-updated`"),
        "{report:#?}"
    );
}

#[test]
fn a_file_that_does_not_match_its_manifest_sha256_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = component("handlers", "notifier");
    // Half of the file, as a reader would see it during an in-place write.
    std::fs::write(dir.path().join("notifier.wasm"), &bytes[..bytes.len() / 2]).unwrap();
    let manifest = host::runtime::Manifest {
        handlers: vec![HandlerSpec::default().into_manifest(
            "notifier",
            "notifier.wasm",
            Some(host::runtime::sha256_hex(&bytes)),
        )],
    };
    std::fs::write(dir.path().join("handlers.toml"), manifest.to_toml()).unwrap();
    let (registry, problems) = Registry::load_dir(&runtime(), dir.path(), &BTreeMap::new()).unwrap();
    assert!(registry.is_empty());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].to_string().contains("the file changed after the manifest was written"),
        "{}",
        problems[0]
    );
}

#[test]
fn compiled_components_come_from_the_cache_after_the_first_load_and_a_bad_entry_is_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        pool_size: 4,
        cache_dir: Some(cache.path().to_path_buf()),
        ..RuntimeConfig::default()
    };
    let bytes = crate::support::component("handlers", "notifier");
    let load = |rt: &Runtime| {
        let manifest = HandlerSpec::default().into_manifest("notifier", "notifier.wasm", None);
        rt.load(manifest, &bytes, &Default::default()).expect("notifier loads").origin
    };

    let first = Runtime::new(&config).unwrap();
    assert_eq!(load(&first), Origin::Compiled);
    assert_eq!(load(&first), Origin::Memory, "a rollback or rescan does not recompile");
    // A restart: a new engine with the same settings reads the serialized artifact.
    let restarted = Runtime::new(&config).unwrap();
    assert_eq!(load(&restarted), Origin::Disk);

    let entries: Vec<std::path::PathBuf> =
        walk(cache.path()).into_iter().filter(|p| p.extension().is_some_and(|e| e == "cwasm")).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let sha = host::runtime::sha256_hex(&bytes);
    assert_eq!(entries[0].file_name().unwrap().to_string_lossy(), format!("{sha}.cwasm"));
    drop((first, restarted));
    std::fs::write(&entries[0], b"not a serialized component").unwrap();
    let after_corruption = Runtime::new(&config).unwrap();
    assert_eq!(load(&after_corruption), Origin::Compiled, "an unreadable entry is ignored and rewritten");
    assert_eq!(load(&Runtime::new(&config).unwrap()), Origin::Disk);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .flat_map(|e| if e.path().is_dir() { walk(&e.path()) } else { vec![e.path()] })
        .collect()
}

/// An order source that signals when a handler asks it for an order, then answers only once the
/// test releases it: holds an invocation (and its pool slot) open for exactly as long as needed.
struct GatedOrders {
    entered: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    release: tokio::sync::Notify,
}

impl OrderSource for GatedOrders {
    fn get_order<'a>(
        &'a self,
        _id: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Option<Order>>> + Send + 'a>> {
        Box::pin(async {
            if let Some(tx) = self.entered.lock().unwrap().take() {
                let _ = tx.send(());
            }
            self.release.notified().await;
            Ok(None)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_instance_pool_is_a_retried_host_failure_and_frees_up() {
    let rt = host::runtime::Runtime::new(&RuntimeConfig {
        pool_size: 1,
        cache_dir: None,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let noop = load_fixture(&rt, "noop", 5_000, 16 << 20);
    let (entered, entered_rx) = tokio::sync::oneshot::channel();
    let gate = Arc::new(GatedOrders {
        entered: std::sync::Mutex::new(Some(entered)),
        release: tokio::sync::Notify::new(),
    });

    let event = order_created(OrderStatus::Pending);
    let holding = rt.invoke(&noop, &event, gate.clone());
    let refused = async {
        entered_rx.await.expect("the first invocation reaches its get-order import");
        let err = rt.invoke(&noop, &event, Arc::new(NoOrders)).await;
        gate.release.notify_one();
        err
    };
    let (held, refused) = tokio::join!(holding, refused);
    let err = refused.expect_err("the only slot is taken");
    assert!(matches!(err, DispatchError::Host(_)), "not the handler's fault: {err}");
    assert!(err.to_string().contains("concurrent limit of 1 for component instances"), "{err}");
    assert_eq!(err.disposition(), host::runtime::Disposition::RetryUntilRecovered, "{err}");
    held.expect("the invocation holding the slot finishes normally");
    rt.invoke(&noop, &order_created(OrderStatus::Pending), Arc::new(NoOrders))
        .await
        .expect("the slot is free again once the first invocation ended");
}

/// Answers `get-order` after a delay, as a Postgres pool under load would.
struct SlowOrders(Duration);

impl OrderSource for SlowOrders {
    fn get_order<'a>(
        &'a self,
        _id: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Option<Order>>> + Send + 'a>> {
        Box::pin(async move {
            tokio::time::sleep(self.0).await;
            Ok(None)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_waiting_in_a_host_import_does_not_count_against_the_deadline() {
    let rt = runtime();
    // A 100 ms deadline, and a host import that takes four times that: the guest itself is quick.
    let noop = load_fixture(&rt, "noop", 100, 16 << 20);
    let event = order_created(OrderStatus::Pending);
    let started = std::time::Instant::now();
    let actions = rt.invoke(&noop, &event, Arc::new(SlowOrders(Duration::from_millis(400)))).await;
    assert!(started.elapsed() >= Duration::from_millis(400));
    let actions = actions.expect("the host's own slowness is not the guest's deadline");
    assert_eq!(actions.len(), 1, "{actions:?}");
    // The guest's own time still counts: an infinite loop is stopped as before.
    let (err, _) = failing_fixture(&rt, "looper", 100, 16 << 20).await;
    assert!(err.to_string().contains("deadline"), "{err}");
}

/// The host replays golden cases about its own copy of the sample order (`runtime::golden`, so
/// `order-host golden` needs no handler crate); it must be the order the handlers' native tests
/// use (`sdk::testing`), field for field, or the two runs would test different inputs.
#[test]
fn the_hosts_golden_sample_order_is_the_sdks() {
    for (host_status, sdk_status) in [
        (OrderStatus::Pending, sdk::OrderStatus::Pending),
        (OrderStatus::Cancelled, sdk::OrderStatus::Cancelled),
    ] {
        let (h, s) = (golden::sample_order(host_status), sdk::testing::sample_order(sdk_status));
        let (ha, sa) = (&h.shipping_address, &s.shipping_address);
        assert_eq!(
            (&h.id, &h.order_number, &h.customer_name, &h.customer_email, h.total_cents, h.created_at),
            (&s.id, &s.order_number, &s.customer_name, &s.customer_email, s.total_cents, s.created_at)
        );
        assert_eq!(
            [&ha.street, &ha.city, &ha.state, &ha.zip_code, &ha.country],
            [&sa.street, &sa.city, &sa.state, &sa.zip_code, &sa.country]
        );
        let host_items: Vec<_> =
            h.items.iter().map(|i| (&i.product_id, &i.name, i.quantity, i.unit_price_cents)).collect();
        let sdk_items: Vec<_> =
            s.items.iter().map(|i| (&i.product_id, &i.name, i.quantity, i.unit_price_cents)).collect();
        assert_eq!(host_items, sdk_items);
        assert_eq!(h.status.as_str(), s.status.as_str());
    }
}
