//! The shipped handlers' logic called natively, behind the same [`Invoke`] seam the WASM runtime
//! sits behind: the baseline for "what does the component boundary cost in the pipeline".
//! Converts the host's WIT types to the SDK's and back, as lifting and lowering do for a component.

use std::sync::Arc;

use host::runtime::wit;
use host::runtime::{DispatchError, Event, Invoke, InvokeFuture, LoadedHandler, OrderSource};
use sdk::Handler;

pub struct NativeHandlers;

impl Invoke for NativeHandlers {
    fn invoke<'a>(
        &'a self,
        handler: &'a LoadedHandler,
        event: &'a Event,
        orders: Arc<dyn OrderSource>,
    ) -> InvokeFuture<'a> {
        Box::pin(async move {
            let host = NativeHost { handler, orders };
            let result = match (handler.name.as_str(), event) {
                ("order-processor", Event::OrderCreated { meta, order }) => {
                    order_processor::OrderProcessor::on_order_created(&host, &to_meta(meta), &to_order(order))
                }
                ("order-processor", Event::StatusUpdated { meta, update }) => {
                    order_processor::OrderProcessor::on_status_updated(
                        &host,
                        &to_meta(meta),
                        &to_update(update),
                    )
                }
                ("notifier", Event::OrderCreated { meta, order }) => {
                    notifier::Notifier::on_order_created(&host, &to_meta(meta), &to_order(order))
                }
                ("notifier", Event::StatusUpdated { meta, update }) => {
                    notifier::Notifier::on_status_updated(&host, &to_meta(meta), &to_update(update))
                }
                (name, _) => panic!("no native build of handler {name}"),
            };
            match result {
                Ok(actions) => Ok(actions.into_iter().map(from_action).collect()),
                Err(e) => Err(DispatchError::Handler(from_error(e))),
            }
        })
    }
}

struct NativeHost<'a> {
    handler: &'a LoadedHandler,
    orders: Arc<dyn OrderSource>,
}

impl sdk::Host for NativeHost<'_> {
    fn get_order(&self, id: &str) -> Option<sdk::Order> {
        let found = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(self.orders.get_order(id))
        });
        found.ok().flatten().as_ref().map(to_order)
    }
    fn config(&self, key: &str) -> Option<String> {
        self.handler.config().get(key).cloned()
    }
    fn log(&self, level: sdk::LogLevel, message: &str) {
        if matches!(level, sdk::LogLevel::Warn | sdk::LogLevel::Error) {
            eprintln!("{}: {message}", self.handler.name);
        }
    }
    fn now(&self) -> sdk::Timestamp {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    }
}

fn to_meta(m: &wit::EventMeta) -> sdk::EventMeta {
    sdk::EventMeta {
        event_id: m.event_id.clone(),
        topic: m.topic.clone(),
        partition: m.partition,
        offset: m.offset,
        key: m.key.clone(),
        headers: m.headers.clone(),
        attempt: m.attempt,
    }
}

fn to_order(o: &wit::Order) -> sdk::Order {
    let a = &o.shipping_address;
    sdk::Order {
        id: o.id.clone(),
        order_number: o.order_number.clone(),
        customer_name: o.customer_name.clone(),
        customer_email: o.customer_email.clone(),
        shipping_address: sdk::ShippingAddress {
            street: a.street.clone(),
            city: a.city.clone(),
            state: a.state.clone(),
            zip_code: a.zip_code.clone(),
            country: a.country.clone(),
        },
        items: o
            .items
            .iter()
            .map(|i| sdk::LineItem {
                product_id: i.product_id.clone(),
                name: i.name.clone(),
                quantity: i.quantity,
                unit_price_cents: i.unit_price_cents,
            })
            .collect(),
        total_cents: o.total_cents,
        status: to_status(o.status),
        created_at: o.created_at,
    }
}

fn to_update(u: &wit::StatusUpdate) -> sdk::StatusUpdate {
    sdk::StatusUpdate {
        order: to_order(&u.order),
        previous: to_status(u.previous),
        current: to_status(u.current),
        changed_at: u.changed_at,
        cause: u.cause.clone(),
    }
}

fn to_status(s: wit::OrderStatus) -> sdk::OrderStatus {
    match s {
        wit::OrderStatus::Pending => sdk::OrderStatus::Pending,
        wit::OrderStatus::Processing => sdk::OrderStatus::Processing,
        wit::OrderStatus::Confirmed => sdk::OrderStatus::Confirmed,
        wit::OrderStatus::Shipped => sdk::OrderStatus::Shipped,
        wit::OrderStatus::Delivered => sdk::OrderStatus::Delivered,
        wit::OrderStatus::Cancelled => sdk::OrderStatus::Cancelled,
    }
}

fn from_status(s: sdk::OrderStatus) -> wit::OrderStatus {
    match s {
        sdk::OrderStatus::Pending => wit::OrderStatus::Pending,
        sdk::OrderStatus::Processing => wit::OrderStatus::Processing,
        sdk::OrderStatus::Confirmed => wit::OrderStatus::Confirmed,
        sdk::OrderStatus::Shipped => wit::OrderStatus::Shipped,
        sdk::OrderStatus::Delivered => wit::OrderStatus::Delivered,
        sdk::OrderStatus::Cancelled => wit::OrderStatus::Cancelled,
    }
}

fn from_action(a: sdk::Action) -> wit::Action {
    match a {
        sdk::Action::SetStatus(s) => {
            wit::Action::SetStatus(wit::SetStatus { status: from_status(s.status), delay_ms: s.delay_ms })
        }
        sdk::Action::NotifyCustomer(n) => wit::Action::NotifyCustomer(wit::Notification {
            channel: match n.channel {
                sdk::Channel::Email => wit::Channel::Email,
                sdk::Channel::Sms => wit::Channel::Sms,
                sdk::Channel::Push => wit::Channel::Push,
            },
            subject: n.subject,
            body: n.body,
        }),
        sdk::Action::Log(l) => wit::Action::Log(wit::LogEntry {
            level: match l.level {
                sdk::LogLevel::Trace => wit::LogLevel::Trace,
                sdk::LogLevel::Debug => wit::LogLevel::Debug,
                sdk::LogLevel::Info => wit::LogLevel::Info,
                sdk::LogLevel::Warn => wit::LogLevel::Warn,
                sdk::LogLevel::Error => wit::LogLevel::Error,
            },
            message: l.message,
        }),
    }
}

fn from_error(e: sdk::HandlerError) -> wit::HandlerError {
    match e {
        sdk::HandlerError::InvalidEvent(m) => wit::HandlerError::InvalidEvent(m),
        sdk::HandlerError::RetryLater(m) => wit::HandlerError::RetryLater(m),
        sdk::HandlerError::Reject(m) => wit::HandlerError::Reject(m),
        sdk::HandlerError::Other(m) => wit::HandlerError::Other(m),
    }
}
