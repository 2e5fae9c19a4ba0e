//! The dispatcher in-process, against a real Postgres and the embedded Kafka-protocol broker:
//! orders walk to `shipped` through the real handler components, redeliveries change nothing,
//! flaky handlers are retried, poison events are dead-lettered without stalling their partition,
//! and one order's events are applied in order.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::logs;
use support::service::*;

const SHIPPED: &[&str] = &["order-created", "status-updated"];

async fn status_of(t: &TestHost, id: &str) -> String {
    t.get(&format!("/api/orders/{id}")).await.1["status"].as_str().unwrap().to_string()
}

async fn notifications(t: &TestHost, id: &str) -> Vec<Value> {
    let (code, n) = t.get(&format!("/api/orders/{id}/notifications")).await;
    assert_eq!(code, 200, "{n}");
    n.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_ships_through_the_real_handlers_and_a_redelivery_changes_nothing() {
    let dir = handlers_dir(&[("handlers", "order-processor", SHIPPED), ("handlers", "notifier", SHIPPED)]);
    let t = TestHost::start_with(Some(dir.path()), 3, &[("DEMO_MODE", "true")]).await;
    let (code, ready) = t.get("/readyz").await;
    assert_eq!((code, ready["handlers_loaded"].as_u64()), (200, Some(2)), "{ready}");

    let (_, order) = t.post("/api/orders", &order_body("e2e@metalbear.com", &[("2", 1)])).await;
    let id = order["id"].as_str().unwrap().to_string();
    eventually("the order to ship", Duration::from_secs(30), || async {
        (status_of(&t, &id).await == "shipped").then_some(())
    })
    .await;

    let (_, history) = t.get(&format!("/api/orders/{id}/history")).await;
    let rows = history.as_array().unwrap();
    let steps: Vec<&str> = rows.iter().map(|h| h["to_status"].as_str().unwrap()).collect();
    assert_eq!(steps, ["pending", "processing", "confirmed", "shipped"]);
    for h in &rows[1..] {
        assert!(h["cause"].as_str().unwrap().starts_with("handler:order-processor@"), "{h}");
        assert_eq!(h["handler_version"].as_str().unwrap().len(), 64, "{h}");
        assert_eq!(h["consumed_topic"].as_str().is_some(), true, "{h}");
        assert!(h["event_id"].as_str().is_some(), "{h}");
    }
    let (_, o) = t.get(&format!("/api/orders/{id}")).await;
    assert_eq!(
        (o["source"].as_str(), o["source_topic"].as_str()),
        (Some("cluster"), Some("order.status-updated"))
    );

    // The notifier answered the creation and each of the three changes.
    let notes = eventually("four notifications", Duration::from_secs(10), || async {
        let n = notifications(&t, &id).await;
        (n.len() == 4).then_some(n)
    })
    .await;
    let subjects: Vec<&str> = notes.iter().map(|n| n["subject"].as_str().unwrap()).collect();
    let number = order["order_number"].as_str().unwrap();
    assert_eq!(
        subjects,
        [
            format!("Order {number} received"),
            format!("Order {number} is processing"),
            format!("Order {number} is confirmed"),
            format!("Order {number} is shipped"),
        ]
    );
    assert!(notes.iter().all(|n| n["recipient"] == "e2e@metalbear.com"
        && n["cause"].as_str().unwrap().starts_with("handler:notifier@")));

    let updates =
        consume(t.broker.bootstrap_servers(), "order.status-updated", 3, Duration::from_secs(20), |c| {
            c.key == id
        })
        .await;
    for u in &updates {
        assert_eq!(u.headers["customer_email"], "e2e@metalbear.com");
        assert_eq!(u.headers["ce_type"], "com.metalmart.order.status-updated");
        assert!(
            u.value["caused_by"].as_str().unwrap().starts_with("handler:order-processor@"),
            "{:?}",
            u.value
        );
    }

    // Redeliver the original order.created record and the first status update, byte for byte.
    let created =
        consume(t.broker.bootstrap_servers(), "order.created", 1, Duration::from_secs(10), |c| c.key == id)
            .await;
    let counts = || async {
        [t.count("order_status_history").await, t.count("notifications").await, t.count("timers").await]
    };
    let before = counts().await;
    for r in [&created[0], &updates[0]] {
        let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        produce(t.broker.bootstrap_servers(), &r.topic, &id, &headers, r.value.to_string().as_bytes()).await;
    }
    // A fresh event for the same order, behind the duplicates in its key's order: once its
    // notification exists, the duplicates have been handled.
    let sentinel = json!({"order_id": id, "order_number": number, "customer_email": "e2e@metalbear.com",
        "previous_status": "confirmed", "status": "shipped", "changed_at": "2026-01-01T00:00:00Z", "caused_by": "test"});
    produce(
        t.broker.bootstrap_servers(),
        "order.status-updated",
        &id,
        &[("ce_id", "sentinel-1"), ("ce_type", "com.metalmart.order.status-updated")],
        sentinel.to_string().as_bytes(),
    )
    .await;
    eventually("the sentinel's notification", Duration::from_secs(20), || async {
        notifications(&t, &id).await.iter().any(|n| n["event_id"] == "sentinel-1").then_some(())
    })
    .await;
    let after = counts().await;
    assert_eq!(after, [before[0], before[1] + 1, before[2]], "only the sentinel's notification is new");
    assert_eq!(status_of(&t, &id).await, "shipped");
    t.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_handlers_are_retried_and_poison_is_dead_lettered_without_stalling_the_partition() {
    let dir = handlers_dir(&[
        ("fixtures", "flaky", &["order-created"]),
        ("fixtures", "poison", &["order-created"]),
    ]);
    // One partition: every event shares the poison one's partition.
    let extra = [("DISPATCH_MAX_ATTEMPTS", "3"), ("DISPATCH_RETRY_BASE_MS", "300")];
    let t = TestHost::start_with(Some(dir.path()), 1, &extra).await;

    let (_, poison) = t.post("/api/orders", &order_body("poison@x.io", &[("1", 1)])).await;
    let poison_id = poison["id"].as_str().unwrap().to_string();
    let mut healthy = Vec::new();
    for i in 0..5 {
        let (_, o) = t.post("/api/orders", &order_body(&format!("ok{i}@x.io"), &[("1", 1)])).await;
        healthy.push(o["id"].as_str().unwrap().to_string());
    }

    let dead =
        consume(t.broker.bootstrap_servers(), "order.dead-letter", 1, Duration::from_secs(30), |_| true)
            .await;
    let d = &dead[0];
    assert_eq!(d.key, poison_id);
    assert_eq!(d.value["order_id"], json!(poison_id), "the original value");
    assert_eq!(d.headers["customer_email"], "poison@x.io", "the original headers");
    assert!(d.headers.contains_key("ce_id"));
    assert_eq!(d.headers["x-dlq-handler"], "poison");
    assert_eq!(d.headers["x-dlq-handler-version"].len(), 64);
    assert_eq!(d.headers["x-dlq-attempts"], "3");
    assert!(d.headers["x-dlq-error"].contains("cannot digest"), "{:?}", d.headers);
    assert_eq!(d.headers["x-dlq-topic"], "order.created");
    assert_eq!(d.headers["x-dlq-partition"], "0");
    assert!(d.headers["x-dlq-offset"].parse::<i64>().is_ok());

    for id in healthy.iter().chain([&poison_id]) {
        let notes = eventually("the flaky handler's third attempt", Duration::from_secs(20), || async {
            let n = notifications(&t, id).await;
            n.iter().any(|n| n["subject"] == "flaky").then_some(n)
        })
        .await;
        let flaky = notes.iter().find(|n| n["subject"] == "flaky").unwrap();
        assert!(flaky["body"].as_str().unwrap().ends_with("succeeded on attempt 3"), "{flaky}");
        let digested = notes.iter().any(|n| n["subject"] == "poison");
        assert_eq!(digested, id != &poison_id, "order {id}");
    }
    let rows: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT handler, outcome, attempts FROM processed_events WHERE event_id IN (SELECT event_id FROM processed_events WHERE handler = 'poison' AND outcome = 'dead-lettered')")
            .fetch_all(t.pool())
            .await
            .unwrap();
    assert!(rows.contains(&("poison".into(), "dead-lettered".into(), 3)), "{rows:?}");
    assert!(rows.contains(&("flaky".into(), "applied".into(), 3)), "{rows:?}");

    // The healthy orders behind the poison one in the same partition were not held up by its
    // retries: they were all done before it was dead-lettered.
    let (healthy_done, poison_done): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "SELECT (SELECT max(processed_at) FROM processed_events WHERE handler = 'poison' AND outcome = 'applied'),
                (SELECT processed_at FROM processed_events WHERE handler = 'poison' AND outcome = 'dead-lettered')",
    )
    .fetch_one(t.pool())
    .await
    .unwrap();
    assert!(healthy_done < poison_done, "healthy {healthy_done} should finish before poison {poison_done}");
    t.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_orders_events_apply_in_order_and_undecodable_ones_are_dead_lettered() {
    let dir = handlers_dir(&[("fixtures", "echo", &["status-updated"])]);
    let t = TestHost::start_with(Some(dir.path()), 3, &[]).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let (_, o) = t.post("/api/orders", &order_body(&format!("seq{i}@x.io"), &[("3", 1)])).await;
        ids.push(o["id"].as_str().unwrap().to_string());
    }
    let brokers = t.broker.bootstrap_servers().to_string();
    produce(&brokers, "order.status-updated", &ids[0], &[("ce_id", "garbage-1")], b"\x00not json").await;
    for seq in 0..30 {
        for id in &ids {
            let value = json!({"order_id": id, "previous_status": "pending", "status": "processing", "caused_by": "test"});
            let ce_id = format!("{id}-{seq}");
            let seq = seq.to_string();
            produce(
                &brokers,
                "order.status-updated",
                id,
                &[("ce_id", &ce_id), ("seq", &seq)],
                value.to_string().as_bytes(),
            )
            .await;
        }
    }
    for id in &ids {
        let notes = eventually("30 echoes", Duration::from_secs(30), || async {
            let n = notifications(&t, id).await;
            (n.len() == 30).then_some(n)
        })
        .await;
        let seqs: Vec<u32> = notes.iter().map(|n| n["body"].as_str().unwrap().parse().unwrap()).collect();
        assert_eq!(seqs, (0..30).collect::<Vec<_>>(), "order {id} applied out of order");
    }
    let dead = consume(&brokers, "order.dead-letter", 1, Duration::from_secs(20), |_| true).await;
    assert_eq!(dead[0].headers["x-dlq-handler"], "dispatcher");
    assert!(dead[0].headers["x-dlq-error"].contains("not the expected JSON"), "{:?}", dead[0].headers);
    assert_eq!(dead[0].headers["ce_id"], "garbage-1");
    assert_eq!(dead[0].raw, b"\x00not json", "the original bytes");
    t.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_is_retried_past_the_attempt_limit_and_never_dead_lettered() {
    logs::capture();
    let dir = handlers_dir(&[("fixtures", "echo", &["status-updated"])]);
    let extra =
        [("DISPATCH_MAX_ATTEMPTS", "2"), ("DISPATCH_RETRY_BASE_MS", "20"), ("DISPATCH_RETRY_MAX_MS", "100")];
    let t = TestHost::start_with(Some(dir.path()), 1, &extra).await;
    let brokers = t.broker.bootstrap_servers().to_string();
    let (_, o) = t.post("/api/orders", &order_body("outage@x.io", &[("4", 1)])).await;
    let id = o["id"].as_str().unwrap().to_string();
    let update = |ce_id: &'static str, seq: &'static str| {
        let (brokers, id) = (brokers.clone(), id.clone());
        async move {
            let value = json!({"order_id": id, "previous_status": "pending", "status": "processing", "caused_by": "test"});
            produce(
                &brokers,
                "order.status-updated",
                &id,
                &[("ce_id", ce_id), ("seq", seq)],
                value.to_string().as_bytes(),
            )
            .await;
        }
    };
    // The consumer is assigned and applying events before the outage starts.
    update("before-outage", "0").await;
    eventually("the first echo", Duration::from_secs(20), || async {
        (notifications(&t, &id).await.len() == 1).then_some(())
    })
    .await;

    database_outage(&t.database_url, true).await;
    update("during-outage", "1").await;
    let retried_past_limit = || {
        logs::logged(|l| {
            l.fields.get("event_id").map(String::as_str) == Some("during-outage")
                && l.fields.get("attempt").and_then(|a| a.parse::<u32>().ok()).is_some_and(|a| a > 2)
        })
    };
    let failure = eventually(
        "the event to fail more often than DISPATCH_MAX_ATTEMPTS",
        Duration::from_secs(30),
        || {
            let seen = retried_past_limit();
            async move { seen.into_iter().next() }
        },
    )
    .await;
    assert!(failure.fields["error"].starts_with("host failure: "), "{failure:?}");
    database_outage(&t.database_url, false).await;

    let notes = eventually("the echo once Postgres is back", Duration::from_secs(30), || async {
        let n = t.http.get(t.url(&format!("/api/orders/{id}/notifications"))).send().await.ok()?;
        let n: Vec<Value> = n.json().await.ok()?;
        (n.len() == 2).then_some(n)
    })
    .await;
    assert_eq!(notes[1]["event_id"], "during-outage");
    let (outcome, attempts): (String, i32) =
        sqlx::query_as("SELECT outcome, attempts FROM processed_events WHERE event_id = 'during-outage'")
            .fetch_one(t.pool())
            .await
            .unwrap();
    assert_eq!(outcome, "applied");
    assert!(attempts > 2, "applied on attempt {attempts}, which is within the limit: no outage was seen");
    assert_eq!(topic_size(&brokers, "order.dead-letter").await, 0, "a host failure was dead-lettered");
    t.host.shutdown().await.unwrap();
}

/// One metric's value from a text exposition: the line starting with `series` (name and labels).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_pipeline_did() {
    let dir = handlers_dir(&[("handlers", "order-processor", SHIPPED), ("handlers", "notifier", SHIPPED)]);
    let t = TestHost::start_with(Some(dir.path()), 3, &[("DEMO_MODE", "true")]).await;
    let (_, order) = t.post("/api/orders", &order_body("metrics@metalbear.com", &[("1", 1)])).await;
    let id = order["id"].as_str().unwrap().to_string();
    eventually("the order to ship", Duration::from_secs(30), || async {
        (status_of(&t, &id).await == "shipped").then_some(())
    })
    .await;
    let _ = t.get("/no/such/route/4711").await;

    // Lag comes from librdkafka's statistics, every few seconds.
    let text = eventually(
        "a scrape with both handlers' 4 events and zero consumer lag",
        Duration::from_secs(20),
        || async {
            let r = t.http.get(t.url("/metrics")).send().await.ok()?;
            assert!(
                r.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text")
            );
            let text = r.text().await.ok()?;
            let applied = |h: &str| {
                metric(
                    &text,
                    &format!(r#"order_host_handler_events_total{{handler="{h}",outcome="applied"}}"#),
                )
            };
            let done = applied("notifier") == Some(4.0) && applied("order-processor") == Some(4.0);
            let lags: Vec<f64> = text
                .lines()
                .filter(|l| l.starts_with("order_host_consumer_lag{"))
                .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
                .collect();
            // Statistics lag behind by up to one interval: wait for one taken after the last commit.
            (done && !lags.is_empty() && lags.iter().all(|l| *l == 0.0)).then_some(text)
        },
    )
    .await;
    let series = |s: &str| metric(&text, s).unwrap_or_else(|| panic!("no {s} in\n{text}"));
    assert_eq!(
        series(r#"order_host_handler_events_total{handler="order-processor",outcome="applied"}"#),
        4.0
    );
    assert_eq!(series(r#"order_host_handler_invocation_seconds_count{handler="notifier",result="ok"}"#), 4.0);
    assert_eq!(series(r#"order_host_events_consumed_total{topic="order.created"}"#), 1.0);
    assert_eq!(series(r#"order_host_events_consumed_total{topic="order.status-updated"}"#), 3.0);
    assert_eq!(
        series(r#"order_host_http_request_seconds_count{method="POST",route="/api/orders",status="201"}"#),
        1.0
    );
    assert!(
        series(
            r#"order_host_http_request_seconds_count{method="GET",route="/api/orders/{id}",status="200"}"#
        ) >= 1.0
    );
    assert!(!text.contains("4711"), "unmatched paths are not labels");
    assert_eq!(series("order_host_handlers_loaded"), 2.0);
    assert_eq!(series("order_host_timers_scheduled"), 0.0);
    assert_eq!(series("order_host_outbox_backlog"), 0.0);
}
