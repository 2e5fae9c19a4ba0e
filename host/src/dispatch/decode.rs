//! From a consumed Kafka record to an event the dispatcher can route, or the reason it cannot.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use crate::events::{TYPE_ORDER_CREATED, TYPE_STATUS_UPDATED};
use crate::kafka::Incoming;
use crate::orders::Status;
use crate::runtime::EventKind;

/// What the dispatcher needs from a record. The order itself is read fresh from Postgres.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// `ce_id`, the idempotency key; records without one get a stable id from their position.
    pub event_id: String,
    pub order_id: Uuid,
    pub happened: Happened,
}

/// What the record says happened to the order.
#[derive(Debug, Clone, PartialEq)]
pub enum Happened {
    Created,
    /// Its status changed, as the event says.
    StatusUpdated(Update),
}

impl Decoded {
    pub fn kind(&self) -> EventKind {
        match self.happened {
            Happened::Created => EventKind::OrderCreated,
            Happened::StatusUpdated(_) => EventKind::StatusUpdated,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub previous: Status,
    pub current: Status,
    pub changed_at: DateTime<Utc>,
    pub caused_by: String,
}

#[derive(Deserialize)]
struct Value {
    order_id: Option<String>,
    previous_status: Option<String>,
    status: Option<String>,
    changed_at: Option<DateTime<Utc>>,
    caused_by: Option<String>,
}

/// Decodes `record`, consumed from one of the two topics the dispatcher was configured with.
/// The event type comes from `ce_type` when present, else from which topic it was consumed from
/// (mirrord renames topics, so names are compared with configuration, never parsed).
pub fn decode(record: &Incoming, created_topic: &str, status_topic: &str) -> Result<Decoded, String> {
    let kind = match record.header("ce_type") {
        Some(t) if t == TYPE_ORDER_CREATED.as_bytes() => EventKind::OrderCreated,
        Some(t) if t == TYPE_STATUS_UPDATED.as_bytes() => EventKind::StatusUpdated,
        Some(t) => return Err(format!("unknown ce_type {:?}", String::from_utf8_lossy(t))),
        None if record.topic == created_topic => EventKind::OrderCreated,
        None if record.topic == status_topic => EventKind::StatusUpdated,
        None => return Err(format!("no ce_type header and {:?} is not a configured topic", record.topic)),
    };
    if let Some(id) = record.header("ce_id")
        && usable_id(id).is_none()
    {
        return Err(format!(
            "ce_id header is not a usable event id (empty, not UTF-8, over {MAX_EVENT_ID_BYTES} bytes, or with control characters): {:?}",
            String::from_utf8_lossy(&id[..id.len().min(64)])
        ));
    }
    let event_id = event_id(record);
    let payload = record.payload.as_deref().ok_or("record has no value")?;
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| format!("value is not the expected JSON: {e}"))?;
    let order_id = value.order_id.ok_or("value has no order_id")?;
    let order_id = Uuid::parse_str(&order_id).map_err(|_| format!("order_id {order_id:?} is not a UUID"))?;
    let status = |field: &str, v: Option<String>| -> Result<Status, String> {
        v.ok_or_else(|| format!("value has no {field}"))?.parse().map_err(|e| format!("{field}: {e}"))
    };
    let happened = match kind {
        EventKind::OrderCreated => Happened::Created,
        EventKind::StatusUpdated => Happened::StatusUpdated(Update {
            previous: status("previous_status", value.previous_status)?,
            current: status("status", value.status)?,
            changed_at: value.changed_at.unwrap_or_else(Utc::now),
            caused_by: value.caused_by.unwrap_or_default(),
        }),
    };
    Ok(Decoded { event_id, order_id, happened })
}

/// The longest `ce_id` used as an idempotency key. It is part of a btree primary key, whose
/// entries Postgres caps at about 2.7 KB; real ids (UUIDs) are 36 bytes.
const MAX_EVENT_ID_BYTES: usize = 256;

/// `id` as an event id, if Postgres text can hold it and people can read it.
fn usable_id(id: &[u8]) -> Option<&str> {
    let id = std::str::from_utf8(id).ok()?;
    let ok = !id.trim().is_empty() && id.len() <= MAX_EVENT_ID_BYTES && !id.chars().any(char::is_control);
    ok.then_some(id)
}

/// The record's `ce_id`, or, without a usable one, an id fixed by its position in the log (the
/// same on every redelivery).
pub fn event_id(record: &Incoming) -> String {
    match record.header("ce_id").and_then(usable_id) {
        Some(id) => id.to_string(),
        None => format!("kafka:{}/{}/{}", record.topic, record.partition, record.offset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, headers: &[(&str, &str)], value: &str) -> Incoming {
        Incoming {
            topic: topic.into(),
            partition: 1,
            offset: 7,
            key: None,
            payload: Some(value.as_bytes().to_vec()),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect(),
        }
    }

    const ID: &str = "6f1c2d3e-0000-4000-8000-000000000042";

    #[test]
    fn kind_comes_from_ce_type_or_the_configured_topic() {
        let v = format!(r#"{{"order_id":"{ID}"}}"#);
        let d = decode(
            &record("mirrord-tmp-1-x", &[("ce_type", TYPE_ORDER_CREATED), ("ce_id", "e1")], &v),
            "a",
            "b",
        );
        assert_eq!(d.unwrap().kind(), EventKind::OrderCreated);
        let d = decode(&record("a", &[], &v), "a", "b").unwrap();
        assert_eq!((d.kind(), d.event_id.as_str()), (EventKind::OrderCreated, "kafka:a/1/7"));
        assert!(decode(&record("c", &[], &v), "a", "b").unwrap_err().contains("not a configured topic"));
    }

    #[test]
    fn status_updates_need_both_statuses() {
        let v = format!(
            r#"{{"order_id":"{ID}","previous_status":"pending","status":"processing","caused_by":"api"}}"#
        );
        let d = decode(&record("b", &[], &v), "a", "b").unwrap();
        let Happened::StatusUpdated(u) = d.happened else { panic!("not an update: {d:?}") };
        assert_eq!(
            (u.previous, u.current, u.caused_by.as_str()),
            (Status::Pending, Status::Processing, "api")
        );
        let v = format!(r#"{{"order_id":"{ID}","status":"processing"}}"#);
        assert_eq!(decode(&record("b", &[], &v), "a", "b").unwrap_err(), "value has no previous_status");
        let v = format!(r#"{{"order_id":"{ID}","previous_status":"pending","status":"lost"}}"#);
        assert!(decode(&record("b", &[], &v), "a", "b").unwrap_err().starts_with("status: unknown status"));
    }

    #[test]
    fn an_unusable_ce_id_is_refused_and_replaced_by_the_position() {
        for bad in ["a\0b", "", " ", &"x".repeat(300), "tab\there"] {
            let r = record("a", &[("ce_id", bad)], &format!(r#"{{"order_id":"{ID}"}}"#));
            assert!(decode(&r, "a", "b").unwrap_err().contains("not a usable event id"), "{bad:?}");
            assert_eq!(event_id(&r), "kafka:a/1/7", "{bad:?}");
        }
    }

    #[test]
    fn undecodable_values_say_why() {
        assert!(
            decode(&record("a", &[], "{not json"), "a", "b").unwrap_err().contains("not the expected JSON")
        );
        assert_eq!(decode(&record("a", &[], "{}"), "a", "b").unwrap_err(), "value has no order_id");
        assert!(
            decode(&record("a", &[], r#"{"order_id":"7"}"#), "a", "b").unwrap_err().contains("not a UUID")
        );
        let mut r = record("a", &[], "{}");
        r.payload = None;
        assert_eq!(decode(&r, "a", "b").unwrap_err(), "record has no value");
        assert!(
            decode(&record("a", &[("ce_type", "x")], "{}"), "a", "b")
                .unwrap_err()
                .contains("unknown ce_type")
        );
    }
}
