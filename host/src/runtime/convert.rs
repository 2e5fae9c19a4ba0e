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
                line1: o.address.street.clone(),
                line2: o.address.state.clone(),
                city: o.address.city.clone(),
                postal_code: o.address.zip_code.clone(),
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
