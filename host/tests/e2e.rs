//! The end-to-end tier: the real `order-host` binary against tansu, a separate Kafka-compatible
//! broker process, with the shipped handler components in DEMO_MODE. An order placed over HTTP
//! ships through three handler-caused transitions, the notifier's messages are recorded, and the
//! status-updated records on the broker carry their headers. The binary logs JSON and exports its
//! spans over OTLP/HTTP to a stand-in collector.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::process::*;
use support::service::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_binary_ships_an_order_through_a_separate_tansu_broker() {
    let database_url = fresh_database().await;
    let (_tansu, brokers) = start_tansu(&TOPICS).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("order-host.log");
    let (collector, mut exports) = start_collector().await;
    let _host = start_host_logging_json(
        &database_url,
        &brokers,
        port,
        &log,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str())],
    );
    wait_ready(&http, &base).await;

    let get = |path: String| {
        let http = http.clone();
        async move { http.get(path).send().await.ok()?.json::<Value>().await.ok() }
    };
    let placed: Value = http
        .post(format!("{base}/api/orders"))
        .json(&order_body("tansu@metalbear.com", &[("5", 2)]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = placed["id"].as_str().expect("an order id").to_string();
    eventually("the order to ship", Duration::from_secs(60), || async {
        let o = get(format!("{base}/api/orders/{id}")).await?;
        (o["status"] == "shipped").then_some(())
    })
    .await;

    let history = get(format!("{base}/api/orders/{id}/history")).await.unwrap();
    let rows = history.as_array().unwrap();
    let steps: Vec<&str> = rows.iter().map(|h| h["to_status"].as_str().unwrap()).collect();
    assert_eq!(steps, ["pending", "processing", "confirmed", "shipped"]);
    let handler_caused =
        rows.iter().filter(|h| h["cause"].as_str().unwrap().starts_with("handler:order-processor@"));
    assert_eq!(handler_caused.count(), 3, "{history}");

    let notes = eventually("the notifier's four messages", Duration::from_secs(20), || async {
        let n = get(format!("{base}/api/orders/{id}/notifications")).await?;
        (n.as_array()?.len() == 4).then_some(n)
    })
    .await;
    assert!(notes.as_array().unwrap().iter().all(|n| n["recipient"] == "tansu@metalbear.com"), "{notes}");

    let updates =
        consume(&brokers, "order.status-updated", 3, Duration::from_secs(30), |c| c.key == id).await;
    let statuses: Vec<&str> = updates.iter().map(|u| u.value["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["processing", "confirmed", "shipped"]);
    for u in &updates {
        assert_eq!(u.headers["customer_email"], "tansu@metalbear.com");
        assert_eq!(u.headers["ce_type"], "com.metalmart.order.status-updated");
        assert!(!u.headers["ce_id"].is_empty());
    }

    // LOG_FORMAT=json: one JSON object per line, and the order's events are findable by order id
    // (the timers that moved it log it in their span and fields).
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["fields"]["message"] == "order-host listening"), "{text}");
    let about_order = lines
        .iter()
        .filter(|l| l["fields"]["order_id"] == id.as_str() || l["span"]["order_id"] == id.as_str())
        .count();
    assert!(about_order >= 3, "expected the order's three timer firings in the log:\n{text}");

    // The batch exporter ships spans within its 5 s schedule.
    let export = tokio::time::timeout(Duration::from_secs(20), exports.recv())
        .await
        .expect("no OTLP export reached the collector within 20 s")
        .unwrap();
    assert_eq!(export.0, "application/x-protobuf");
    assert!(export.1 > 100, "an export of {} bytes", export.1);
}

/// A stand-in OTLP/HTTP collector: accepts `POST /v1/traces` and reports each body's content type
/// and size. Returns its base URL.
async fn start_collector() -> (String, tokio::sync::mpsc::UnboundedReceiver<(String, usize)>) {
    use axum::http::HeaderMap;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let content_type =
                headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let _ = tx.send((content_type, body.len()));
            async { "" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}
