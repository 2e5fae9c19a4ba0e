//! Per-invocation cost of a handler, side by side in one run: the same decision logic called
//! natively, a bare pooled instantiate of an empty component, the pieces of an invocation (WASI
//! context, instantiate) and the full `Runtime::invoke` of order-processor's `on-order-created`,
//! alone, on two threads at once and with cold caches.
//! Figures and their reading live in BENCHMARKS.md. Needs `cargo xtask bench` (builds components).

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use host::config::RuntimeConfig;
use host::runtime::wit::OrderStatus;
use host::runtime::{NoOrders, Registry, Runtime};
use sdk::Handler;

#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code, unused_imports)] // the benchmark uses a few of the tests' helpers and re-exports
mod support;

fn invoke(c: &mut Criterion) {
    let root = support::root();
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let rt = Runtime::new(&RuntimeConfig::default()).unwrap();
    let overlay = BTreeMap::from([("DEMO_MODE".to_string(), "true".to_string())]);
    let (registry, problems) = Registry::load_dir(&rt, &root.join("target/handlers"), &overlay)
        .expect("target/handlers loads: run `cargo xtask bench`");
    assert!(problems.is_empty(), "{problems:?}");
    let processor = registry.get("order-processor").expect("order-processor is built").clone();
    let event = support::order_created(OrderStatus::Pending);

    let mut group = c.benchmark_group("invoke");

    let native_host = sdk::testing::TestHost::with_config(&[("DEMO_MODE", "true")]);
    let native_order = sdk::testing::sample_order(sdk::OrderStatus::Pending);
    let native_meta = sdk::testing::sample_event("order.created");
    group.bench_function("native order-processor on-order-created", |b| {
        b.iter(|| {
            order_processor::OrderProcessor::on_order_created(&native_host, &native_meta, &native_order)
        })
    });

    // The component binary preamble alone is a valid, empty component.
    let empty = wasmtime::component::Component::new(rt.engine(), b"\0asm\x0d\0\x01\0").unwrap();
    let linker = wasmtime::component::Linker::<()>::new(rt.engine());
    let empty_pre = linker.instantiate_pre(&empty).unwrap();
    group.bench_function("bare pooled instantiate (empty component)", |b| {
        b.iter(|| {
            let mut store = wasmtime::Store::new(rt.engine(), ());
            empty_pre.instantiate(&mut store).unwrap();
        })
    });

    group.bench_function("WASI context build", |b| b.iter(host::runtime::sandbox_wasi_ctx));

    group.bench_function("instantiate order-processor (fresh Store + WASI, no call)", |b| {
        b.iter(|| tokio.block_on(rt.instantiate_only(&processor)).unwrap())
    });

    group.bench_function("invoke order-processor on-order-created (fresh instance)", |b| {
        b.iter(|| tokio.block_on(rt.invoke(&processor, &event, Arc::new(NoOrders))).unwrap())
    });

    // Why an invocation costs about twice as much in the pipeline as above (BENCHMARKS.md): there
    // two dispatcher threads instantiate at once, sharing the engine's pool and counters, and
    // Kafka, Postgres and the dispatcher's own work run between two invocations. These two
    // measure each effect alone. Two threads: CPU per invocation is twice the time reported.
    group.bench_function("invoke, two threads at once (wall per invocation)", |b| {
        let (rt, processor, event) = (&rt, &processor, &event);
        b.iter_custom(|iters| {
            on_two_threads(iters, || {
                let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                move || tokio.block_on(rt.invoke(processor, event, Arc::new(NoOrders))).unwrap()
            })
        })
    });
    // The control: the same logic natively shares nothing between the threads, so how it scales
    // is this VM's own (two vCPUs may be one core's hyperthreads).
    group.bench_function("native order-processor, two threads at once (wall per call)", |b| {
        let (meta, order) = (&native_meta, &native_order);
        b.iter_custom(|iters| {
            on_two_threads(iters, || {
                let host = sdk::testing::TestHost::with_config(&[("DEMO_MODE", "true")]);
                move || order_processor::OrderProcessor::on_order_created(&host, meta, order).unwrap()
            })
        })
    });
    // Caches emptied before each invocation by writing a line in every 64 bytes of 4 MiB; only the
    // invocation is timed.
    let mut sweep = vec![0u8; 4 << 20];
    group.bench_function("invoke after a 4 MiB sweep", |b| {
        b.iter_custom(|iters| {
            let mut spent = std::time::Duration::ZERO;
            for i in 0..iters {
                for chunk in sweep.chunks_mut(64) {
                    chunk[0] = chunk[0].wrapping_add(i as u8);
                }
                let start = std::time::Instant::now();
                tokio.block_on(rt.invoke(&processor, &event, Arc::new(NoOrders))).unwrap();
                spent += start.elapsed();
            }
            spent
        })
    });
    group.finish();
}

/// Runs `iters` calls split over two threads and returns the wall time. Each thread first makes
/// its call with `setup` (a current-thread runtime or a test host: microseconds, inside the timed
/// window, against the thousands of calls timed).
fn on_two_threads<S, F, T>(iters: u64, setup: S) -> std::time::Duration
where
    S: Fn() -> F + Sync,
    F: FnMut() -> T,
{
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        for share in [iters - iters / 2, iters / 2] {
            let setup = &setup;
            s.spawn(move || {
                let mut call = setup();
                for _ in 0..share {
                    std::hint::black_box(call());
                }
            });
        }
    });
    start.elapsed()
}

criterion_group!(benches, invoke);
criterion_main!(benches);
