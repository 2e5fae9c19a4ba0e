//! Shared by the integration tests: where the built components are, and the sample order the
//! golden cases in `handlers/testdata/cases.json` are about (the same one `sdk::testing` builds).

pub mod logs;
pub mod mirrord;
pub mod process;
pub mod service;

use std::path::PathBuf;
use std::sync::Arc;

use host::config::RuntimeConfig;
use host::runtime::wit::{EventMeta, LineItem, Order, OrderStatus, ShippingAddress, StatusUpdate};
use host::runtime::{Event, HandlerSpec, LoadedHandler, Runtime};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Bytes of a built component: `handlers` or `fixtures`, by name.
pub fn component(kind: &str, name: &str) -> Vec<u8> {
    let path = root().join("target").join(kind).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{}: {e}; build the components first with `cargo xtask test`", path.display())
    })
}

pub fn runtime() -> Runtime {
    Runtime::new(&RuntimeConfig { pool_size: 8, ..RuntimeConfig::default() }).expect("runtime starts")
}

/// Loads a fixture with default limits, or the given ones.
pub fn load_fixture(rt: &Runtime, name: &str, timeout_ms: u64, memory: u64) -> Arc<LoadedHandler> {
    let spec = HandlerSpec { timeout_ms, memory_limit_bytes: memory, ..HandlerSpec::default() };
    let manifest = spec.into_manifest(name, &format!("{name}.wasm"), None);
    Arc::new(rt.load(manifest, &component("fixtures", name), &Default::default()).expect("fixture loads"))
}

pub fn sample_order(status: OrderStatus) -> Order {
    Order {
        id: "6f1c2d3e-0000-4000-8000-000000000042".into(),
        order_number: "MM-10042".into(),
        customer_name: "Ada Lovelace".into(),
        customer_email: "ada@metalbear.com".into(),
        shipping_address: ShippingAddress {
            street: "1 Analytical Way".into(),
            city: "London".into(),
            state: String::new(),
            zip_code: "N1 9GU".into(),
            country: "GB".into(),
        },
        items: vec![
            LineItem {
                product_id: "1".into(),
                name: "MetalBear Mug".into(),
                quantity: 2,
                unit_price_cents: 1499,
            },
            LineItem {
                product_id: "7".into(),
                name: "MetalBear Cap".into(),
                quantity: 1,
                unit_price_cents: 2199,
            },
        ],
        total_cents: 2 * 1499 + 2199,
        status,
        created_at: 1_790_000_000_000,
    }
}

pub fn sample_meta(topic: &str) -> EventMeta {
    EventMeta {
        event_id: "evt-1".into(),
        topic: topic.into(),
        partition: 0,
        offset: 7,
        key: Some(sample_order(OrderStatus::Pending).id),
        headers: vec![("customer_email".into(), b"ada@metalbear.com".to_vec())],
        attempt: 1,
    }
}

pub fn order_created(status: OrderStatus) -> Event {
    Event::OrderCreated { meta: sample_meta("order.created"), order: sample_order(status) }
}

pub fn status_updated(previous: OrderStatus, current: OrderStatus) -> Event {
    Event::StatusUpdated {
        meta: sample_meta("order.status-updated"),
        update: StatusUpdate {
            order: sample_order(current),
            previous,
            current,
            changed_at: 1_790_000_005_000,
            cause: "handler:order-processor@0123456789ab".into(),
        },
    }
}

pub fn parse_status(s: &str) -> OrderStatus {
    match s {
        "pending" => OrderStatus::Pending,
        "processing" => OrderStatus::Processing,
        "confirmed" => OrderStatus::Confirmed,
        "shipped" => OrderStatus::Shipped,
        "delivered" => OrderStatus::Delivered,
        "cancelled" => OrderStatus::Cancelled,
        other => panic!("unknown status {other:?}"),
    }
}

/// The same component with a custom section appended: identical behaviour, a different sha256,
/// so a test or benchmark has distinct versions to swap between.
pub fn versioned(bytes: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            out.push(if n == 0 { byte } else { byte | 0x80 });
            if n == 0 {
                break;
            }
        }
    }
    let name = b"order-host-test-version";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}
