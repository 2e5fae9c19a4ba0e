//! MetalMart's "Order Processor" as a handler: walks each new order through
//! `processing → confirmed → shipped`, one durable delayed step per event.

use sdk::{Action, EventMeta, Handler, HandlerError, HandlerResult, Host, Order, OrderStatus, StatusUpdate};

pub struct OrderProcessor;

/// Stage delays in milliseconds: (to processing, to confirmed, to shipped). MetalMart's
/// processor sleeps 2 s / 3 s / 5 s; demos want the whole walk in well under a second. A manifest
/// may set its own as `STAGE_DELAYS_MS = "a,b,c"` (the throughput benchmark uses `0,0,0`).
fn delays(host: &dyn Host) -> [u64; 3] {
    if let Some(custom) = host.config("STAGE_DELAYS_MS").and_then(|v| parse_delays(&v)) {
        return custom;
    }
    if host.flag("DEMO_MODE") { [200, 200, 200] } else { [2_000, 3_000, 5_000] }
}

fn parse_delays(v: &str) -> Option<[u64; 3]> {
    let parsed: Vec<u64> = v.split(',').map(|p| p.trim().parse().ok()).collect::<Option<_>>()?;
    parsed.try_into().ok()
}

/// Moves to `status` after `delay_ms`, or at once when it is zero.
fn step(status: OrderStatus, delay_ms: u64) -> Action {
    Action::set_status(status, (delay_ms > 0).then_some(delay_ms))
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
        Ok(vec![step(OrderStatus::Processing, delays(host)[0])])
    }

    fn on_status_updated(host: &dyn Host, _event: &EventMeta, update: &StatusUpdate) -> HandlerResult {
        let [_, to_confirmed, to_shipped] = delays(host);
        Ok(match update.current {
            OrderStatus::Processing => vec![step(OrderStatus::Confirmed, to_confirmed)],
            OrderStatus::Confirmed => vec![step(OrderStatus::Shipped, to_shipped)],
            _ => Vec::new(),
        })
    }
}

sdk::export_handler!(OrderProcessor);

#[cfg(test)]
mod tests {
    use super::*;
    use sdk::testing::{TestHost, sample_event, sample_order};

    #[test]
    fn golden_cases() {
        sdk::check_cases!(OrderProcessor);
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
    fn manifest_stage_delays_win_and_zero_means_at_once() {
        let host = TestHost::with_config(&[("STAGE_DELAYS_MS", "0, 50,0"), ("DEMO_MODE", "true")]);
        let created =
            OrderProcessor::on_order_created(&host, &sample_event("t"), &sample_order(OrderStatus::Pending));
        assert_eq!(created, Ok(vec![Action::set_status(OrderStatus::Processing, None)]));
        let update = sdk::testing::sample_update(OrderStatus::Pending, OrderStatus::Processing);
        let updated = OrderProcessor::on_status_updated(&host, &sample_event("t"), &update);
        assert_eq!(updated, Ok(vec![Action::set_status(OrderStatus::Confirmed, Some(50))]));
    }

    #[test]
    fn malformed_stage_delays_fall_back_to_the_defaults() {
        for bad in ["", "1,2", "1,2,3,4", "a,b,c", "-1,0,0"] {
            let host = TestHost::with_config(&[("STAGE_DELAYS_MS", bad)]);
            let created = OrderProcessor::on_order_created(
                &host,
                &sample_event("t"),
                &sample_order(OrderStatus::Pending),
            );
            assert_eq!(
                created,
                Ok(vec![Action::set_status(OrderStatus::Processing, Some(2_000))]),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn order_without_id_is_an_invalid_event() {
        let mut order = sample_order(OrderStatus::Pending);
        order.id.clear();
        let result = OrderProcessor::on_order_created(&TestHost::default(), &sample_event("t"), &order);
        assert!(matches!(result, Err(HandlerError::InvalidEvent(_))), "{result:?}");
    }
}
