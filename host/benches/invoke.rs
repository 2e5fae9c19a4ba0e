//! Per-invocation cost of a handler, side by side in one run: the same decision logic called
//! natively, a bare pooled instantiate of an empty component, the pieces of an invocation (WASI
//! context, instantiate) and the full `Runtime::invoke` of order-processor's `on-order-created`.
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
    group.finish();
}

criterion_group!(benches, invoke);
criterion_main!(benches);
