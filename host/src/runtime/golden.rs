//! Golden cases replayed through a built component: the same `cases.json` a handler crate's
//! native test checks (`sdk::check_cases!`), answered by the `.wasm` the host would serve. A
//! difference between the two means the component is not the code its tests ran.
//!
//! The sample order and event are the ones `sdk::testing` builds; the format is documented there.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::Deserialize;

use super::wit::{EventMeta, LineItem, Order, OrderStatus, ShippingAddress, StatusUpdate};
use super::{Event, EventKind, NoOrders, Registry, Runtime};

/// One golden case (see `sdk::testing::Case`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// `order-created` or `status-updated`.
    pub event: String,
    /// For `status-updated`: the previous status.
    #[serde(default)]
    pub previous: Option<String>,
    /// The order's status (order-created) or the new status (status-updated).
    pub status: String,
    /// `DEMO_MODE` for this case.
    pub demo: bool,
    /// Actions in their one-line form (`Action`'s `Display`).
    pub actions: Vec<String>,
}

/// A case whose answer differed from the expected one.
#[derive(Debug)]
pub struct Mismatch {
    pub case: Case,
    /// The actions the component returned, or its error.
    pub got: Result<Vec<String>, String>,
}

/// Reads a `cases.json`.
pub fn read_cases(path: &Path) -> anyhow::Result<Vec<Case>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let cases: Vec<Case> =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if cases.is_empty() {
        bail!("{} has no golden cases", path.display());
    }
    Ok(cases)
}

/// Replays `cases` through handler `name` as loaded from `dir` (a handlers directory with its
/// manifest), with `DEMO_MODE` overlaid per case as the host does. Returns the cases that differ.
pub async fn replay(rt: &Runtime, dir: &Path, name: &str, cases: &[Case]) -> anyhow::Result<Vec<Mismatch>> {
    let mut mismatches = Vec::new();
    for demo in [false, true] {
        let overlay = BTreeMap::from([("DEMO_MODE".to_string(), demo.to_string())]);
        let (registry, problems) = Registry::load_dir(rt, dir, &overlay)?;
        if let Some(p) = problems.iter().find(|p| p.name.as_deref() == Some(name)) {
            bail!("{name} did not load from {}: {:#}", dir.display(), p.error);
        }
        let handler =
            registry.get(name).with_context(|| format!("no handler {name} in {}", dir.display()))?;
        for case in cases.iter().filter(|c| c.demo == demo) {
            let got = rt
                .invoke(handler, &event_for(case)?, Arc::new(NoOrders))
                .await
                .map(|actions| actions.iter().map(ToString::to_string).collect::<Vec<_>>())
                .map_err(|e| e.to_string());
            if got.as_ref() != Ok(&case.actions) {
                mismatches.push(Mismatch { case: case.clone(), got });
            }
        }
    }
    Ok(mismatches)
}

/// The event a case describes, about [`sample_order`].
pub fn event_for(case: &Case) -> anyhow::Result<Event> {
    let status = parse_status(&case.status)?;
    match case.event.parse::<EventKind>().map_err(anyhow::Error::msg)? {
        EventKind::OrderCreated => Ok(order_created(status)),
        EventKind::StatusUpdated => {
            let previous = case.previous.as_deref().context("a status-updated case needs `previous`")?;
            Ok(status_updated(parse_status(previous)?, status))
        }
    }
}

pub fn parse_status(s: &str) -> anyhow::Result<OrderStatus> {
    Ok(match s {
        "pending" => OrderStatus::Pending,
        "processing" => OrderStatus::Processing,
        "confirmed" => OrderStatus::Confirmed,
        "shipped" => OrderStatus::Shipped,
        "delivered" => OrderStatus::Delivered,
        "cancelled" => OrderStatus::Cancelled,
        other => bail!("unknown status {other:?}"),
    })
}

/// The order every golden case is about (`sdk::testing::sample_order` builds the same one).
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
