//! MetalMart's "Order Processor" as a handler: walks each new order through
//! `processing → confirmed → shipped`, one durable delayed step per event.

use sdk::{Action, EventMeta, Handler, HandlerError, HandlerResult, Host, Order, OrderStatus, StatusUpdate};

pub struct OrderProcessor;

/// Stage delays in milliseconds: (to processing, to confirmed, to shipped). MetalMart's
/// processor sleeps 2 s / 3 s / 5 s; demos want the whole walk in well under a second.
fn delays(host: &dyn Host) -> [u64; 3] {
    if host.flag("DEMO_MODE") { [200, 200, 200] } else { [2_000, 3_000, 5_000] }
}

impl Handler for OrderProcessor {
    fn on_order_created(host: &dyn Host, _event: &EventMeta, order: &Order) -> HandlerResult {
        if order.id.is_empty() {
            return Err(HandlerError::InvalidEvent("order-created event without an order id".into()));
        }
        // A redelivered or late event for an order that already moved on needs nothing.
        if order.status != OrderStatus::Pending {
            return Ok(Vec::new());
        }
        Ok(vec![Action::set_status(OrderStatus::Processing, Some(delays(host)[0]))])
    }

    fn on_status_updated(host: &dyn Host, _event: &EventMeta, update: &StatusUpdate) -> HandlerResult {
        let [_, to_confirmed, to_shipped] = delays(host);
        Ok(match update.current {
            OrderStatus::Processing => vec![Action::set_status(OrderStatus::Confirmed, Some(to_confirmed))],
            OrderStatus::Confirmed => {
                vec![Action::set_status(OrderStatus::Shipped, Some(to_shipped))]
            }
            _ => Vec::new(),
        })
    }
}

sdk::export_handler!(OrderProcessor);

#[cfg(test)]
mod tests {
    use super::*;
    use sdk::testing::{TestHost, check_cases, sample_event, sample_order};

    #[test]
    fn golden_cases() {
        check_cases::<OrderProcessor>("order-processor");
    }

    #[test]
    fn demo_mode_flag_is_case_insensitive() {
        let host = TestHost::with_config(&[("DEMO_MODE", " TRUE ")]);
        let actions =
            OrderProcessor::on_order_created(&host, &sample_event("t"), &sample_order(OrderStatus::Pending));
        assert_eq!(actions, Ok(vec![Action::set_status(OrderStatus::Processing, Some(200))]));
    }

    #[test]
    fn missing_config_means_normal_delays() {
        let host = TestHost::default();
        let actions =
            OrderProcessor::on_order_created(&host, &sample_event("t"), &sample_order(OrderStatus::Pending));
        assert_eq!(actions, Ok(vec![Action::set_status(OrderStatus::Processing, Some(2_000))]));
    }

    #[test]
    fn order_without_id_is_an_invalid_event() {
        let mut order = sample_order(OrderStatus::Pending);
        order.id.clear();
        let result = OrderProcessor::on_order_created(&TestHost::default(), &sample_event("t"), &order);
        assert!(matches!(result, Err(HandlerError::InvalidEvent(_))), "{result:?}");
    }
}
