//! Customer notifications: an order confirmation on creation, a message naming each new status,
//! and an apology when an order is cancelled.

use sdk::{Action, EventMeta, Handler, HandlerResult, Host, Order, OrderStatus, StatusUpdate};

pub struct Notifier;

fn dollars(cents: u64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}

impl Handler for Notifier {
    fn on_order_created(_host: &dyn Host, _event: &EventMeta, order: &Order) -> HandlerResult {
        let units: u32 = order.items.iter().map(|i| i.quantity).sum();
        Ok(vec![Action::email(
            format!("Order {} received", order.order_number),
            format!(
                "Hi {}, thanks for your order {}: {} item(s), {} in total. We will let you know as it moves along.",
                order.customer_name,
                order.order_number,
                units,
                dollars(order.total_cents)
            ),
        )])
    }

    fn on_status_updated(_host: &dyn Host, _event: &EventMeta, update: &StatusUpdate) -> HandlerResult {
        let order = &update.order;
        let action = match update.current {
            OrderStatus::Cancelled => Action::email(
                format!("Order {} cancelled", order.order_number),
                format!(
                    "Hi {}, we are sorry: your order {} has been cancelled. We apologise for the trouble; \
                     nothing will be charged.",
                    order.customer_name, order.order_number
                ),
            ),
            status => Action::email(
                format!("Order {} is {}", order.order_number, status.as_str()),
                format!(
                    "Hi {}, your order {} is now {}.",
                    order.customer_name,
                    order.order_number,
                    status.as_str()
                ),
            ),
        };
        Ok(vec![action])
    }
}

#[cfg(feature = "export")]
sdk::export_handler!(Notifier);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_cases() {
        sdk::check_cases!(Notifier);
    }

    #[test]
    fn amounts_keep_their_cents() {
        assert_eq!(dollars(5197), "$51.97");
        assert_eq!(dollars(5), "$0.05");
    }
}
