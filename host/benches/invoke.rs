//! Per-invocation cost of a handler, side by side in one run: the same decision logic called
//! natively, a bare pooled instantiate of an empty component, the pieces of an invocation (WASI
//! context, instantiate) and the full `Runtime::invoke` of order-processor's `on-order-created`.
//! Figures and their reading live in BENCHMARKS.md. Needs `cargo xtask bench` (builds components).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use host::config::RuntimeConfig;
use host::runtime::wit::{EventMeta, LineItem, Order, OrderStatus, ShippingAddress};
use host::runtime::{Event, NoOrders, Registry, Runtime};
use sdk::Handler;

fn order() -> Order {
    Order {
        id: "6f1c2d3e-0000-4000-8000-000000000042".into(),
        order_number: "MM-10042".into(),
        customer_name: "Ada Lovelace".into(),
        customer_email: "ada@metalbear.com".into(),
        shipping_address: ShippingAddress {
            line1: "1 Analytical Way".into(),
            line2: String::new(),
            city: "London".into(),
            postal_code: "N1 9GU".into(),
            country: "GB".into(),
        },
        items: vec![LineItem {
            product_id: "1".into(),
            name: "MetalBear Mug".into(),
            quantity: 2,
            unit_price_cents: 1499,
        }],
        total_cents: 2998,
        status: OrderStatus::Pending,
        created_at: 1_790_000_000_000,
    }
}

fn meta() -> EventMeta {
    EventMeta {
        event_id: "evt-1".into(),
        topic: "order.created".into(),
        partition: 0,
        offset: 7,
        key: Some(order().id),
        headers: vec![("customer_email".into(), b"ada@metalbear.com".to_vec())],
        attempt: 1,
    }
}

fn invoke(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rt = Runtime::new(&RuntimeConfig::default()).unwrap();
    let overlay = BTreeMap::from([("DEMO_MODE".to_string(), "true".to_string())]);
    let (registry, problems) = Registry::load_dir(&rt, &root.join("target/handlers"), &overlay)
        .expect("target/handlers loads: run `cargo xtask bench`");
    assert!(problems.is_empty(), "{problems:?}");
    let processor = registry
        .get("order-processor")
        .expect("order-processor is built")
        .clone();
    let event = Event::OrderCreated {
        meta: meta(),
        order: order(),
    };

    let mut group = c.benchmark_group("invoke");

    let native_host = sdk::testing::TestHost::with_config(&[("DEMO_MODE", "true")]);
    let native_order = sdk::testing::sample_order(sdk::OrderStatus::Pending);
    let native_meta = sdk::testing::sample_event("order.created");
    group.bench_function("native order-processor on-order-created", |b| {
        b.iter(|| {
            order_processor::OrderProcessor::on_order_created(
                &native_host,
                &native_meta,
                &native_order,
            )
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

    group.bench_function("WASI context build", |b| {
        b.iter(|| {
            wasmtime_wasi::WasiCtx::builder()
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build()
        })
    });

    group.bench_function(
        "instantiate order-processor (fresh Store + WASI, no call)",
        |b| b.iter(|| tokio.block_on(rt.instantiate_only(&processor)).unwrap()),
    );

    group.bench_function(
        "invoke order-processor on-order-created (fresh instance)",
        |b| {
            b.iter(|| {
                tokio
                    .block_on(rt.invoke(&processor, &event, Arc::new(NoOrders)))
                    .unwrap()
            })
        },
    );
    group.finish();
}

criterion_group!(benches, invoke);
criterion_main!(benches);
