//! Conversions between the WIT types handlers see and the host's own: order and status, the
//! lowercase names WIT, JSON and the database share, the one-line form of an action, and a
//! handler's log level as a `tracing` level. One place, so each mapping is written once.

use super::wit;
use crate::db::orders::Order;
use crate::orders::Status;

impl wit::Channel {
    /// The lowercase name used in WIT, JSON and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            wit::Channel::Email => "email",
            wit::Channel::Sms => "sms",
            wit::Channel::Push => "push",
        }
    }
}

impl wit::OrderStatus {
    /// The lowercase name used in WIT, JSON and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            wit::OrderStatus::Pending => "pending",
            wit::OrderStatus::Processing => "processing",
            wit::OrderStatus::Confirmed => "confirmed",
            wit::OrderStatus::Shipped => "shipped",
            wit::OrderStatus::Delivered => "delivered",
            wit::OrderStatus::Cancelled => "cancelled",
        }
    }
}

/// One line per action, for logs; the SDK's `testing::describe` renders the same form, which is
/// how the golden cases compare native and in-component answers.
impl std::fmt::Display for wit::Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            wit::Action::SetStatus(s) => match s.delay_ms {
                Some(ms) => write!(f, "set-status {} after {ms}ms", s.status.as_str()),
                None => write!(f, "set-status {}", s.status.as_str()),
            },
            wit::Action::NotifyCustomer(n) => {
                write!(f, "notify {} [{}] {}", n.channel.as_str(), n.subject, n.body)
            }
            wit::Action::Log(l) => write!(f, "log {} {}", l.level.as_str(), l.message),
        }
    }
}

impl wit::LogLevel {
    /// The lowercase name used in WIT.
    pub fn as_str(self) -> &'static str {
        match self {
            wit::LogLevel::Trace => "trace",
            wit::LogLevel::Debug => "debug",
            wit::LogLevel::Info => "info",
            wit::LogLevel::Warn => "warn",
            wit::LogLevel::Error => "error",
        }
    }
}

/// Emits a `tracing` event at a handler's `wit::LogLevel`: `tracing` wants its level as a
/// constant, so the match is spelled out here once rather than at every call.
macro_rules! event_at {
    ($level:expr, $($rest:tt)+) => {
        match $level {
            $crate::runtime::wit::LogLevel::Trace => tracing::trace!($($rest)+),
            $crate::runtime::wit::LogLevel::Debug => tracing::debug!($($rest)+),
            $crate::runtime::wit::LogLevel::Info => tracing::info!($($rest)+),
            $crate::runtime::wit::LogLevel::Warn => tracing::warn!($($rest)+),
            $crate::runtime::wit::LogLevel::Error => tracing::error!($($rest)+),
        }
    };
}
pub(crate) use event_at;

impl From<&Order> for wit::Order {
    fn from(o: &Order) -> wit::Order {
        wit::Order {
            id: o.id.to_string(),
            order_number: o.order_number.clone(),
            customer_name: o.customer_name.clone(),
            customer_email: o.customer_email.clone(),
            shipping_address: wit::ShippingAddress {
                street: o.address.street.clone(),
                city: o.address.city.clone(),
                state: o.address.state.clone(),
                zip_code: o.address.zip_code.clone(),
                country: o.address.country.clone(),
            },
            items: o
                .items
                .iter()
                .map(|i| wit::LineItem {
                    product_id: i.product_id.clone(),
                    name: i.product_name.clone(),
                    quantity: i.quantity.max(0) as u32,
                    unit_price_cents: i.price_cents.max(0) as u64,
                })
                .collect(),
            total_cents: o.total_cents.max(0) as u64,
            status: o.status.into(),
            created_at: o.created_at.timestamp_millis().max(0) as u64,
        }
    }
}

impl From<Status> for wit::OrderStatus {
    fn from(s: Status) -> wit::OrderStatus {
        match s {
            Status::Pending => wit::OrderStatus::Pending,
            Status::Processing => wit::OrderStatus::Processing,
            Status::Confirmed => wit::OrderStatus::Confirmed,
            Status::Shipped => wit::OrderStatus::Shipped,
            Status::Delivered => wit::OrderStatus::Delivered,
            Status::Cancelled => wit::OrderStatus::Cancelled,
        }
    }
}

impl From<wit::OrderStatus> for Status {
    fn from(s: wit::OrderStatus) -> Status {
        match s {
            wit::OrderStatus::Pending => Status::Pending,
            wit::OrderStatus::Processing => Status::Processing,
            wit::OrderStatus::Confirmed => Status::Confirmed,
            wit::OrderStatus::Shipped => Status::Shipped,
            wit::OrderStatus::Delivered => Status::Delivered,
            wit::OrderStatus::Cancelled => Status::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::orders::{Address, Item};

    /// Each address field reaches the guest under its own name; `state` once went to `line2`.
    #[test]
    fn a_handler_sees_the_order_as_stored_field_for_field() {
        let id = uuid::Uuid::new_v4();
        let order = Order {
            id,
            order_number: "MM-10001".into(),
            tracking_token: "t".into(),
            customer_name: "Ada".into(),
            customer_email: "ada@example.com".into(),
            address: Address {
                street: "1 Main St".into(),
                city: "Springfield".into(),
                state: "IL".into(),
                zip_code: "62701".into(),
                country: "US".into(),
            },
            total_cents: 2500,
            status: Status::Confirmed,
            holds_stock: false,
            source_topic: None,
            created_at: chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
            updated_at: chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
            items: vec![Item {
                id: 1,
                order_id: id,
                product_id: "3".into(),
                product_name: "Mug".into(),
                quantity: 2,
                price_cents: 1250,
                created_at: chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
            }],
        };
        let seen = wit::Order::from(&order);
        let a = &seen.shipping_address;
        assert_eq!(
            [&a.street, &a.city, &a.state, &a.zip_code, &a.country],
            ["1 Main St", "Springfield", "IL", "62701", "US"]
        );
        assert_eq!(
            (seen.total_cents, seen.created_at, seen.status),
            (2500, 1_700_000_000_000, wit::OrderStatus::Confirmed)
        );
        assert_eq!((seen.items[0].quantity, seen.items[0].unit_price_cents), (2, 1250));
    }
}
