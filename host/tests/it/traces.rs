//! One trace per order: spans recorded with an in-memory exporter show the HTTP request that
//! created an order as the ancestor of the dispatch of its `order.created` event and of each
//! handler invocation, linked through the `traceparent` header the record carried through Kafka,
//! and the status changes those handlers caused continuing the same trace.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::support::service::*;
use opentelemetry::trace::SpanId;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}

#[test]
fn an_orders_trace_runs_from_the_http_request_to_the_handler_invocations() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(host::telemetry::layer(&provider));
    let dispatch = tracing::Dispatch::new(subscriber);
    let _this_thread = tracing::dispatcher::set_default(&dispatch);
    runtime_reporting_to(dispatch).block_on(trace_one_order(exporter, provider));
}

/// A runtime whose every thread reports to `dispatch`. Not the process-wide subscriber: the tests
/// share one process, and that one belongs to `support::logs`.
fn runtime_reporting_to(dispatch: tracing::Dispatch) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            // The thread lives no longer than the runtime, so its default is never restored.
            std::mem::forget(tracing::dispatcher::set_default(&dispatch));
        })
        .build()
        .expect("a runtime")
}

async fn trace_one_order(exporter: InMemorySpanExporter, provider: SdkTracerProvider) {
    const BOTH: &[&str] = &["order-created", "status-updated"];
    let dir = handlers_dir(&[("handlers", "order-processor", BOTH), ("handlers", "notifier", BOTH)]);
    let t = TestHost::start_with(Some(dir.path()), 3, &[("DEMO_MODE", "true")]).await;
    let (code, order) = t.post("/api/orders", &order_body("traced@metalbear.com", &[("2", 1)])).await;
    assert_eq!(code, 201, "{order}");
    let id = order["id"].as_str().unwrap().to_string();
    eventually("the order to ship", Duration::from_secs(30), || async {
        (t.get(&format!("/api/orders/{id}")).await.1["status"] == "shipped").then_some(())
    })
    .await;

    // The record on Kafka carries the request's context.
    let created =
        consume(t.broker.bootstrap_servers(), "order.created", 1, Duration::from_secs(10), |c| c.key == id)
            .await;
    let traceparent =
        created[0].headers.get("traceparent").expect("order.created carries traceparent").clone();

    let spans = eventually("the order's invocation spans", Duration::from_secs(10), || async {
        provider.force_flush().ok()?;
        let spans = exporter.get_finished_spans().ok()?;
        let invocations = spans
            .iter()
            .filter(|s| s.name == "handler.invoke")
            .filter(|s| {
                spans.iter().any(|d| {
                    d.span_context.span_id() == s.parent_span_id && attr(d, "order_id") == Some(id.clone())
                })
            })
            .count();
        // 2 handlers × (created + 3 changes).
        (invocations >= 8).then_some(spans)
    })
    .await;
    let by_id: HashMap<SpanId, &SpanData> = spans.iter().map(|s| (s.span_context.span_id(), s)).collect();
    let request = spans
        .iter()
        .find(|s| {
            s.name == "http.request"
                && attr(s, "method").as_deref() == Some("POST")
                && attr(s, "path").as_deref() == Some("/api/orders")
        })
        .expect("the POST /api/orders span");
    let trace = request.span_context.trace_id();
    assert_eq!(
        traceparent,
        format!("00-{trace}-{}-01", request.span_context.span_id()),
        "the header names the request span"
    );

    // A record handed to the dispatcher again (after a rebalance) is dispatched again, in a span of
    // its own with the same event id: every dispatch of the order's events is checked, and counted
    // by event.
    let created_dispatches: Vec<&SpanData> = spans
        .iter()
        .filter(|s| {
            s.name == "dispatch"
                && attr(s, "order_id") == Some(id.clone())
                && attr(s, "topic").as_deref() == Some("order.created")
        })
        .collect();
    assert!(!created_dispatches.is_empty(), "no dispatch span of order.created");
    for d in &created_dispatches {
        assert_eq!(d.span_context.trace_id(), trace);
        assert_eq!(d.parent_span_id, request.span_context.span_id(), "dispatch is a child of the request");
    }

    let invocations: Vec<&SpanData> = spans
        .iter()
        .filter(|s| {
            s.name == "handler.invoke"
                && created_dispatches.iter().any(|d| s.parent_span_id == d.span_context.span_id())
        })
        .collect();
    let mut handlers: Vec<String> = invocations.iter().map(|s| attr(s, "handler").unwrap()).collect();
    handlers.sort();
    handlers.dedup();
    assert_eq!(handlers, ["notifier", "order-processor"]);
    assert!(invocations.iter().all(|s| attr(s, "version").is_some_and(|v| v.len() == 12)), "{invocations:?}");

    // Every span of this order's events is in the request's trace, down to the last change.
    let order_dispatches: Vec<&SpanData> =
        spans.iter().filter(|s| s.name == "dispatch" && attr(s, "order_id") == Some(id.clone())).collect();
    let events: BTreeSet<String> = order_dispatches
        .iter()
        .map(|d| attr(d, "event_id").unwrap_or_else(|| panic!("a dispatch span without its event id: {d:?}")))
        .collect();
    assert_eq!(events.len(), 4, "created + processing + confirmed + shipped: {events:?}");
    for d in &order_dispatches {
        assert_eq!(d.span_context.trace_id(), trace, "{} event left the trace", attr(d, "topic").unwrap());
        // Each status-updated dispatch descends from the Postgres apply that caused it (or, for a
        // delayed change, from the timer that fired it), never a trace of its own.
        let mut at = *d;
        while let Some(parent) = by_id.get(&at.parent_span_id) {
            at = parent;
        }
        assert_eq!(
            at.span_context.span_id(),
            request.span_context.span_id(),
            "{d:?} does not lead back to the request"
        );
    }
    let _ = provider.shutdown();
}
