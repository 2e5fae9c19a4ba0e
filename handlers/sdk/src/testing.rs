//! Native test support: a [`TestHost`] standing in for the real imports, and the golden cases in
//! each handler crate's `cases.json`, which the host replays through the built component too
//! (`cargo xtask handler-test NAME` runs both).

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{
    Action, Channel, EventMeta, Host, LineItem, LogLevel, Order, OrderStatus, ShippingAddress, StatusUpdate,
    Timestamp,
};

/// An in-memory [`Host`]: config values, known orders, a fixed clock, and the log lines written.
#[derive(Default)]
pub struct TestHost {
    pub config: BTreeMap<String, String>,
    pub orders: Vec<Order>,
    pub now: Timestamp,
    pub logs: RefCell<Vec<(LogLevel, String)>>,
}

impl TestHost {
    pub fn with_config(pairs: &[(&str, &str)]) -> TestHost {
        TestHost {
            config: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..TestHost::default()
        }
    }
}

impl Host for TestHost {
    fn get_order(&self, id: &str) -> Option<Order> {
        self.orders.iter().find(|o| o.id == id).cloned()
    }
    fn config(&self, key: &str) -> Option<String> {
        self.config.get(key).cloned()
    }
    fn log(&self, level: LogLevel, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }
    fn now(&self) -> Timestamp {
        self.now
    }
}

/// The order every golden case is about. `host/tests` builds the same one.
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

/// Event metadata for golden cases.
pub fn sample_event(topic: &str) -> EventMeta {
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

/// A status update from `previous` to `current` for the sample order.
pub fn sample_update(previous: OrderStatus, current: OrderStatus) -> StatusUpdate {
    StatusUpdate {
        order: sample_order(current),
        previous,
        current,
        changed_at: 1_790_000_005_000,
        cause: "handler:order-processor@0123456789ab".into(),
    }
}

/// One golden case: an event, the config, and the actions the handler must return. A handler's
/// cases live in its crate's `cases.json`, a JSON array of these.
#[derive(Debug, Deserialize)]
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
    /// Actions in [`describe`] form.
    pub actions: Vec<String>,
}

/// Parses a `cases.json`.
pub fn cases(json: &str) -> Vec<Case> {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("cases.json does not parse: {e}"))
}

pub fn parse_status(s: &str) -> OrderStatus {
    match s {
        "pending" => OrderStatus::Pending,
        "processing" => OrderStatus::Processing,
        "confirmed" => OrderStatus::Confirmed,
        "shipped" => OrderStatus::Shipped,
        "delivered" => OrderStatus::Delivered,
        "cancelled" => OrderStatus::Cancelled,
        other => panic!("unknown status {other:?} in cases.json"),
    }
}

/// The one-line form the golden cases use; `host/tests` renders the host's actions the same way.
pub fn describe(action: &Action) -> String {
    match action {
        Action::SetStatus(s) => match s.delay_ms {
            Some(ms) => format!("set-status {} after {ms}ms", s.status.as_str()),
            None => format!("set-status {}", s.status.as_str()),
        },
        Action::NotifyCustomer(n) => {
            let channel = match n.channel {
                Channel::Email => "email",
                Channel::Sms => "sms",
                Channel::Push => "push",
            };
            format!("notify {channel} [{}] {}", n.subject, n.body)
        }
        Action::Log(l) => {
            let level = match l.level {
                LogLevel::Trace => "trace",
                LogLevel::Debug => "debug",
                LogLevel::Info => "info",
                LogLevel::Warn => "warn",
                LogLevel::Error => "error",
            };
            format!("log {level} {}", l.message)
        }
    }
}

/// Runs the golden cases in `cases_json` through `H` natively and checks the answers. Use
/// [`check_cases!`](crate::check_cases), which reads the calling crate's own `cases.json`.
pub fn check_cases<H: crate::Handler>(cases_json: &str) {
    let cases = cases(cases_json);
    assert!(!cases.is_empty(), "cases.json has no golden cases: add at least one per event handled");
    for case in cases {
        let host = TestHost::with_config(&[("DEMO_MODE", if case.demo { "true" } else { "false" })]);
        let result = match case.event.as_str() {
            "order-created" => H::on_order_created(
                &host,
                &sample_event("order.created"),
                &sample_order(parse_status(&case.status)),
            ),
            "status-updated" => {
                let previous =
                    parse_status(case.previous.as_deref().expect("status-updated case has previous"));
                H::on_status_updated(
                    &host,
                    &sample_event("order.status-updated"),
                    &sample_update(previous, parse_status(&case.status)),
                )
            }
            other => panic!("unknown event {other:?} in cases.json"),
        };
        let got: Vec<String> =
            result.unwrap_or_else(|e| panic!("{case:?} failed: {e:?}")).iter().map(describe).collect();
        assert_eq!(got, case.actions, "{case:?}");
    }
}

/// Checks handler type `$ty` against the `cases.json` beside the calling crate's `Cargo.toml`.
#[macro_export]
macro_rules! check_cases {
    ($ty:ty) => {
        $crate::testing::check_cases::<$ty>(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/cases.json")))
    };
}
