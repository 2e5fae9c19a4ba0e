//! The Kafka records the host produces: MetalMart-compatible JSON values and the CloudEvents
//! binary-mode headers every record carries (README, "Events").
//!
//! Records are built here, stored in the outbox by `db`, and published by the relay; nothing in
//! this module does I/O.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::orders::Status;

pub const CE_SPECVERSION: &str = "1.0";
pub const CE_SOURCE: &str = "/metalmart/order-host";
pub const TYPE_ORDER_CREATED: &str = "com.metalmart.order.created";
pub const TYPE_STATUS_UPDATED: &str = "com.metalmart.order.status-updated";

/// A record waiting to be published: what an outbox row holds. Key, header values and value are
/// bytes, not text: a dead letter carries the consumed record exactly as it was (a key framed by a
/// schema registry starts with 0x00, which no Postgres TEXT or JSONB column can hold).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: String,
    /// The order id, so all records of one order land on one partition, in order. `None` only for
    /// a dead letter of a record that had no key.
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record value: JSON for everything the host builds; a dead-lettered record keeps the
    /// original bytes, whatever they were (`None`: it had no value).
    pub payload: Option<Vec<u8>>,
}

/// The value of an `order.created` record, with MetalMart's field names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrderCreated {
    pub order_id: Uuid,
    pub order_number: String,
    pub customer_email: String,
    pub customer_name: String,
    pub total_amount: f64,
    pub status: Status,
    pub created_at: DateTime<Utc>,
    pub items: Vec<OrderCreatedItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrderCreatedItem {
    pub product_id: String,
    pub product_name: String,
    pub quantity: i32,
    pub price: f64,
}

/// The value of an `order.status-updated` record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusUpdated {
    pub order_id: Uuid,
    pub order_number: String,
    pub customer_email: String,
    pub previous_status: Status,
    pub status: Status,
    pub changed_at: DateTime<Utc>,
    /// `api` or `handler:<name>@<version>`.
    pub caused_by: String,
}

/// Builds a record with the standard headers. `event_id` becomes `ce_id`, which consumers use as
/// their idempotency key.
pub fn record(
    topic: &str,
    ce_type: &str,
    event_id: Uuid,
    time: DateTime<Utc>,
    key: Uuid,
    customer_email: &str,
    payload: &impl Serialize,
) -> Record {
    let headers = [
        ("customer_email", customer_email.to_string()),
        ("ce_specversion", CE_SPECVERSION.to_string()),
        ("ce_id", event_id.to_string()),
        ("ce_type", ce_type.to_string()),
        ("ce_source", CE_SOURCE.to_string()),
        ("ce_time", time.to_rfc3339_opts(SecondsFormat::Millis, true)),
        ("content-type", "application/json".to_string()),
    ];
    // The current span (the HTTP request, or the handler application that caused a change)
    // becomes the parent of whatever consumes this record.
    let traceparent = crate::telemetry::current_traceparent().map(|tp| ("traceparent", tp));
    Record {
        topic: topic.to_string(),
        key: Some(key.to_string().into_bytes()),
        headers: headers
            .into_iter()
            .chain(traceparent)
            .map(|(k, v)| (k.to_string(), v.into_bytes()))
            .collect(),
        payload: Some(serde_json::to_vec(payload).expect("event payloads serialise")),
    }
}

impl Record {
    /// A header's value as text, when it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_every_standard_header() {
        let id = Uuid::new_v4();
        let order = Uuid::new_v4();
        let r = record("t", TYPE_ORDER_CREATED, id, Utc::now(), order, "a@b.co", &serde_json::json!({}));
        assert_eq!(r.key, Some(order.to_string().into_bytes()));
        let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["customer_email", "ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time", "content-type"]
        );
        assert_eq!(r.header("ce_id"), Some(id.to_string().as_str()));
        assert_eq!(r.header("customer_email"), Some("a@b.co"));
    }
}
