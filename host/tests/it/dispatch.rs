//! The dispatcher in-process, against a real Postgres and the embedded Kafka-protocol broker:
//! orders walk to `shipped` through the real handler components, redeliveries change nothing,
//! flaky handlers are retried, poison events are dead-lettered without stalling their partition,
//! and one order's events are applied in order.

use std::time::Duration;

use crate::support::service::*;
use crate::support::{logs, metric_value};
use serde_json::{Value, json};

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
        assert!(h["consumed_topic"].as_str().is_some(), "{h}");
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
    // One partition: every event shares the poison one's partition. The poison event's retries
    // (1 s, then 2 s) are the window the healthy events must finish in, to show they were not held
    // behind it. With 300 ms (0.9 s in all) a loaded machine could take longer than that just to
    // publish and dispatch them, failing the test though nothing stalled.
    let extra = [("DISPATCH_MAX_ATTEMPTS", "3"), ("DISPATCH_RETRY_BASE_MS", "1000")];
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
                && l.fields.get("host_failures").and_then(|a| a.parse::<u32>().ok()).is_some_and(|a| a > 2)
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
    assert_eq!(failure.fields["attempt"], "1", "host failures spend none of the handler's attempts");
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
    assert_eq!(attempts, 1, "the handler itself never failed: its attempt count is untouched by the outage");
    assert_eq!(topic_size(&brokers, "order.dead-letter").await, 0, "a host failure was dead-lettered");
    t.host.shutdown().await.unwrap();
}

/// One metric's value from a text exposition: the line starting with `series` (name and labels).
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
                metric_value(
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
    let series = |s: &str| metric_value(&text, s).unwrap_or_else(|| panic!("no {s} in\n{text}"));
    assert_eq!(
        series(r#"order_host_handler_events_total{handler="order-processor",outcome="applied"}"#),
        4.0
    );
    assert_eq!(series(r#"order_host_handler_invocation_seconds_count{handler="notifier",result="ok"}"#), 4.0);
    // Records consumed, not events: a record handed over again after a rebalance counts again (and
    // is then found applied), so these are at least the events. The `applied` counts above are
    // what shows each event applied once.
    assert!(series(r#"order_host_events_consumed_total{topic="order.created"}"#) >= 1.0);
    assert!(series(r#"order_host_events_consumed_total{topic="order.status-updated"}"#) >= 3.0);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_are_dead_lettered_byte_for_byte_and_never_stall_their_key() {
    let dir = handlers_dir(&[("fixtures", "echo", &["status-updated"])]);
    // One partition, so every hostile record sits in front of the sentinel's partition position.
    let t = TestHost::start_with(Some(dir.path()), 1, &[]).await;
    let brokers = t.broker.bootstrap_servers().to_string();
    let (_, o) = t.post("/api/orders", &order_body("nul@x.io", &[("3", 1)])).await;
    let id = o["id"].as_str().unwrap().to_string();
    let topic = "order.status-updated";
    let update =
        json!({"order_id": id, "previous_status": "pending", "status": "processing", "caused_by": "test"})
            .to_string();

    // A key framed by a schema registry (leading NUL bytes, then non-UTF-8), a ce_id with a NUL,
    // a binary header and a value that is not JSON: undecodable.
    let framed_key: &[u8] = b"\x00\x00\x00\x00\x07order\xff\xfe";
    let binary: &[u8] = &[0, 159, 255, 0, 1];
    let hostile_headers: &[(&str, &[u8])] = &[("ce_id", b"evil\x00id"), ("bin", binary), ("empty", b"")];
    let undecodable = (framed_key, hostile_headers, b"\x00\xff not json".as_slice());
    let (_, off1) =
        produce_raw(&brokers, topic, Some(undecodable.0), undecodable.1, Some(undecodable.2)).await;
    // No key and no value at all.
    let (_, off2) =
        produce_raw(&brokers, topic, None, &[("ce_type", b"com.metalmart.order.status-updated")], None).await;
    // A good event whose handler answers with text Postgres cannot hold (the echoed header has a
    // NUL): the handler's fault, dead-lettered at once instead of retried forever as a host failure.
    let (_, off3) = produce_raw(
        &brokers,
        topic,
        Some(id.as_bytes()),
        &[("ce_id", b"nul-body"), ("seq", b"a\x00b")],
        Some(update.as_bytes()),
    )
    .await;
    // The same key carries on behind them.
    produce(&brokers, topic, &id, &[("ce_id", "after-the-nul"), ("seq", "42")], update.as_bytes()).await;
    eventually("the sentinel behind the hostile records to be applied", Duration::from_secs(30), || async {
        notifications(&t, &id).await.iter().any(|n| n["event_id"] == "after-the-nul").then_some(())
    })
    .await;

    // Dead letters go out through the outbox, at least once: one may be on the topic twice.
    let dead = consume_distinct(
        &brokers,
        "order.dead-letter",
        3,
        Duration::from_secs(30),
        |_| true,
        Consumed::dead_letter_id,
    )
    .await;
    let by_offset = |offset: i64| {
        dead.iter()
            .find(|d| d.headers.get("x-dlq-offset").map(String::as_str) == Some(offset.to_string().as_str()))
            .unwrap_or_else(|| panic!("no dead letter for offset {offset} in {dead:#?}"))
    };
    let original_headers = |d: &Consumed| -> Vec<(String, Vec<u8>)> {
        d.raw_headers.iter().filter(|(k, _)| !k.starts_with("x-dlq-")).cloned().collect()
    };

    let d1 = by_offset(off1);
    assert_eq!(d1.raw_key.as_deref(), Some(framed_key), "the key, byte for byte");
    assert_eq!(d1.raw_value.as_deref(), Some(undecodable.2), "the value, byte for byte");
    let want: Vec<(String, Vec<u8>)> =
        hostile_headers.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect();
    assert_eq!(original_headers(d1), want, "the headers, byte for byte and in order");
    assert_eq!(d1.headers["x-dlq-handler"], "dispatcher");
    assert_eq!(d1.headers["x-dlq-class"], "undecodable");
    assert!(d1.headers["x-dlq-error"].contains("not a usable event id"), "{:?}", d1.headers);

    let d2 = by_offset(off2);
    assert_eq!((d2.raw_key.as_deref(), d2.raw_value.as_deref()), (None, None), "absent stays absent");

    let d3 = by_offset(off3);
    assert_eq!(d3.raw_key.as_deref(), Some(id.as_bytes()));
    assert_eq!(d3.headers["x-dlq-handler"], "echo");
    assert_eq!(d3.headers["x-dlq-class"], "invalid-action");
    assert_eq!(d3.headers["x-dlq-attempts"], "1", "not retried: it can never succeed");
    assert!(d3.headers["x-dlq-error"].contains("NUL"), "{:?}", d3.headers);
    t.host.shutdown().await.unwrap();
}

/// Copies every file of `from` into `to`, the manifest last (renamed into place), as a deploy
/// would.
fn fill_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wasm") {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
    let staged = to.join(".handlers.toml.tmp");
    std::fs::copy(from.join("handlers.toml"), &staged).unwrap();
    std::fs::rename(&staged, to.join("handlers.toml")).unwrap();
}

fn empty_dir(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
}

/// order-processor with no stage delays (every order walks to shipped at once) and notifier.
fn instant_processor_and_notifier() -> tempfile::TempDir {
    handlers_dir_configured(&[
        ("handlers", "order-processor", SHIPPED, "STAGE_DELAYS_MS = \"0,0,0\""),
        ("handlers", "notifier", SHIPPED, ""),
    ])
}

async fn waiting_for_handler(t: &TestHost) -> Option<f64> {
    let text = t.http.get(t.url("/metrics")).send().await.ok()?.text().await.ok()?;
    metric_value(&text, "order_host_events_waiting_for_handler")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_while_no_handler_is_loaded_and_flow_once_one_is() {
    let live = tempfile::tempdir().unwrap();
    let full = handlers_dir(&[("handlers", "order-processor", SHIPPED), ("handlers", "notifier", SHIPPED)]);
    let extra = [("DEMO_MODE", "true"), ("HANDLERS_RESCAN_SECS", "1")];
    let t = TestHost::start_with(Some(live.path()), 3, &extra).await;

    // Started with an empty directory: not ready, and the order's events are held, not completed.
    let (code, ready) = t.get("/readyz").await;
    assert_eq!(code, 503, "{ready}");
    assert_eq!(ready["events_waiting_for_handler"], json!(["order-created", "status-updated"]), "{ready}");
    let (_, first) = t.post("/api/orders", &order_body("early@x.io", &[("1", 1)])).await;
    let first = first["id"].as_str().unwrap().to_string();
    eventually("the created event to wait for a handler", Duration::from_secs(20), || async {
        (waiting_for_handler(&t).await == Some(1.0)).then_some(())
    })
    .await;
    assert_eq!(status_of(&t, &first).await, "pending");
    assert_eq!(t.count("processed_events").await, 0, "nothing was completed without a handler");

    // The handlers arrive: the held event goes through, and so does everything after it.
    fill_dir(full.path(), live.path());
    eventually("the early order to ship once handlers arrive", Duration::from_secs(30), || async {
        (status_of(&t, &first).await == "shipped").then_some(())
    })
    .await;
    // Every event of the first order is handled (the notifier answers each of the four).
    eventually("the first order's four notifications", Duration::from_secs(20), || async {
        (notifications(&t, &first).await.len() == 4).then_some(())
    })
    .await;
    assert_eq!(waiting_for_handler(&t).await, Some(0.0));
    let (code, ready) = t.get("/readyz").await;
    assert_eq!((code, ready["events_waiting_for_handler"].clone()), (200, json!([])), "{ready}");

    // The directory empties at runtime (a ConfigMap briefly without its files): events wait again.
    empty_dir(live.path());
    eventually("the handlers to be unloaded", Duration::from_secs(10), || async {
        (t.get("/readyz").await.0 == 503).then_some(())
    })
    .await;
    let (_, second) = t.post("/api/orders", &order_body("gap@x.io", &[("1", 1)])).await;
    let second = second["id"].as_str().unwrap().to_string();
    eventually("the second order's event to wait", Duration::from_secs(20), || async {
        (waiting_for_handler(&t).await == Some(1.0)).then_some(())
    })
    .await;
    assert_eq!(status_of(&t, &second).await, "pending");
    fill_dir(full.path(), live.path());
    eventually("the second order to ship once the files are back", Duration::from_secs(30), || async {
        (status_of(&t, &second).await == "shipped").then_some(())
    })
    .await;
    let (_, history) = t.get(&format!("/api/orders/{second}/history")).await;
    let steps: Vec<&str> =
        history.as_array().unwrap().iter().map(|h| h["to_status"].as_str().unwrap()).collect();
    assert_eq!(steps, ["pending", "processing", "confirmed", "shipped"], "each step once");
    t.host.shutdown().await.unwrap();
}

/// One generated record, as sent.
#[derive(Debug, Clone)]
struct Generated {
    topic: &'static str,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    value: Option<Vec<u8>>,
}

impl Generated {
    fn ce_id(&self) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == "ce_id").and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Prints the seed if the test panics, so a failure can be replayed with `FUZZ_SEED`.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("fuzz tier failed with seed {0}: rerun with FUZZ_SEED={0}", self.0);
        }
    }
}

/// Hostile records: arbitrary bytes everywhere, valid-looking CloudEvents with hostile fields,
/// ids of real orders and of none.
mod hostile {
    use rand::rngs::StdRng;
    use rand::{Rng, RngCore};

    pub fn bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
        let mut b = vec![0u8; rng.random_range(0..=max)];
        rng.fill_bytes(&mut b);
        // Favour the bytes that break text columns and parsers.
        for x in b.iter_mut() {
            if rng.random_ratio(1, 6) {
                *x = [0u8, 0xff, b'"', b'\\', 0x80][rng.random_range(0..5)];
            }
        }
        b
    }

    pub fn text(rng: &mut StdRng) -> String {
        match rng.random_range(0..6) {
            0 => String::new(),
            1 => "\u{0}".repeat(rng.random_range(1..4)),
            2 => "x".repeat(rng.random_range(300..3000)),
            3 => "ü€\u{202e}😀".to_string(),
            4 => String::from_utf8_lossy(&bytes(rng, 20)).into_owned(),
            _ => format!("v{}", rng.random::<u32>()),
        }
    }

    const STATUSES: [&str; 7] =
        ["pending", "processing", "confirmed", "shipped", "delivered", "cancelled", "lost"];

    pub fn status(rng: &mut StdRng) -> serde_json::Value {
        match rng.random_range(0..8) {
            0 => serde_json::json!(rng.random::<i64>()),
            1 => serde_json::Value::Null,
            i => serde_json::json!(STATUSES[(i - 2) % STATUSES.len()]),
        }
    }

    pub fn order_id(rng: &mut StdRng, real: &[String]) -> serde_json::Value {
        match rng.random_range(0..5) {
            0 | 1 => serde_json::json!(real[rng.random_range(0..real.len())]),
            2 => serde_json::json!(uuid::Uuid::from_u128(rng.random()).to_string()),
            3 => serde_json::json!(text(rng)),
            _ => serde_json::json!(rng.random::<f64>()),
        }
    }

    /// A value: bytes, or JSON shaped like an event with hostile fields.
    pub fn value(rng: &mut StdRng, real: &[String]) -> Option<Vec<u8>> {
        match rng.random_range(0..8) {
            0 => None,
            1 | 2 => Some(bytes(rng, 64)),
            _ => {
                let v = serde_json::json!({
                    "order_id": order_id(rng, real),
                    "previous_status": status(rng),
                    "status": status(rng),
                    "changed_at": if rng.random() { serde_json::json!("2026-01-01T00:00:00Z") } else { serde_json::json!(text(rng)) },
                    "caused_by": text(rng),
                    "customer_email": text(rng),
                });
                Some(serde_json::to_vec(&v).unwrap())
            }
        }
    }

    pub fn key(rng: &mut StdRng, real: &[String]) -> Option<Vec<u8>> {
        match rng.random_range(0..4) {
            0 => None,
            1 => Some(real[rng.random_range(0..real.len())].clone().into_bytes()),
            _ => Some(bytes(rng, 24)),
        }
    }

    pub fn headers(rng: &mut StdRng, serial: usize) -> Vec<(String, Vec<u8>)> {
        let mut h = Vec::new();
        if rng.random_ratio(4, 5) {
            let id = match rng.random_range(0..6) {
                0 => bytes(rng, 40),
                1 => text(rng).into_bytes(),
                // An id seen before: a redelivery, as far as the idempotency records can tell.
                2 => format!("fuzz-{}", serial % 97).into_bytes(),
                _ => format!("fuzz-{serial}").into_bytes(),
            };
            h.push(("ce_id".to_string(), id));
        }
        if rng.random_ratio(2, 3) {
            let t = match rng.random_range(0..4) {
                0 => b"com.metalmart.order.created".to_vec(),
                1 => b"com.metalmart.order.status-updated".to_vec(),
                2 => bytes(rng, 30),
                _ => text(rng).into_bytes(),
            };
            h.push(("ce_type".to_string(), t));
        }
        for name in ["customer_email", "traceparent", "content-type", "seq", "x-\u{fc}ber", ""] {
            if rng.random_ratio(1, 3) {
                let v = if name == "traceparent" && rng.random() {
                    b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec()
                } else {
                    bytes(rng, 48)
                };
                h.push((name.to_string(), v));
            }
        }
        h
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_every_record_ends_applied_or_dead_lettered_byte_for_byte_and_nothing_stalls() {
    use rand::SeedableRng;
    let seed: u64 = std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    let count: usize = std::env::var("FUZZ_RECORDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let _guard = SeedGuard(seed);
    eprintln!("fuzz tier: seed {seed}, {count} generated records (FUZZ_SEED, FUZZ_RECORDS)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let dir = handlers_dir(&[("handlers", "order-processor", SHIPPED), ("handlers", "notifier", SHIPPED)]);
    let extra = [("DEMO_MODE", "true"), ("DISPATCH_RETRY_BASE_MS", "10"), ("DISPATCH_RETRY_MAX_MS", "50")];
    let t = TestHost::start_with(Some(dir.path()), 3, &extra).await;
    let brokers = t.broker.bootstrap_servers().to_string();
    let producer = RawProducer::new(&brokers);

    let mut real = Vec::new();
    let mut generated = Vec::with_capacity(count);
    for serial in 0..count {
        // Real orders interleaved with the hostile records, so they share partitions and keys.
        if serial % (count / 20).max(1) == 0 {
            let (code, o) =
                t.post("/api/orders", &order_body(&format!("fuzz{serial}@x.io"), &[("6", 1)])).await;
            assert_eq!(code, 201, "{o}");
            real.push(o["id"].as_str().unwrap().to_string());
        }
        let topic = if rand::Rng::random(&mut rng) { "order.created" } else { "order.status-updated" };
        let key = hostile::key(&mut rng, &real);
        let headers = hostile::headers(&mut rng, serial);
        let value = hostile::value(&mut rng, &real);
        let header_refs: Vec<(&str, &[u8])> =
            headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
        let (partition, offset) = producer.send(topic, key.as_deref(), &header_refs, value.as_deref()).await;
        generated.push(Generated { topic, partition, offset, key, headers, value });
    }

    // Nothing stalls: the group's committed offsets reach the end of every consumed partition.
    eventually("committed offsets at the end of every partition", Duration::from_secs(120), || async {
        let progress =
            group_progress(&brokers, "order-processor", &["order.created", "order.status-updated"]).await;
        progress.iter().all(|(_, _, committed, high)| committed == high).then_some(())
    })
    .await;
    for id in &real {
        eventually("every real order to ship", Duration::from_secs(60), || async {
            (status_of(&t, id).await == "shipped").then_some(())
        })
        .await;
    }
    // Hostile records name orders that do not exist; none of their rows may (migration 0013
    // dropped these tables' foreign keys: the writers hold or read the order they write for).
    for table in ["order_status_history", "notifications"] {
        let orphans = t
            .count(&format!("{table} r WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = r.order_id)"))
            .await;
        assert_eq!(orphans, 0, "{table} rows name orders that do not exist");
    }

    // Every generated record was applied or dead-lettered (or found already applied by its ce_id).
    let rows: Vec<(String, i32, i64, String, String)> = sqlx::query_as(
        "SELECT topic, kafka_partition, kafka_offset, event_id, outcome FROM processed_events",
    )
    .fetch_all(t.pool())
    .await
    .unwrap();
    let at = |g: &Generated| {
        rows.iter().filter(|r| r.0 == g.topic && r.1 == g.partition && r.2 == g.offset).collect::<Vec<_>>()
    };
    let dead_lettered_sources: usize =
        generated.iter().filter(|g| at(g).iter().any(|r| r.4 == "dead-lettered")).count();
    for g in &generated {
        let here = at(g);
        let duplicate = g.ce_id().is_some_and(|id| rows.iter().any(|r| r.3 == id));
        assert!(!here.is_empty() || duplicate, "record neither applied nor dead-lettered: {g:?}");
    }

    // Every dead letter carries its record's original bytes.
    let dead_rows = rows.iter().filter(|r| r.4 == "dead-lettered").count();
    // One dead letter per dead-lettered row, though the relay may have published one twice.
    let dead = consume_distinct(
        &brokers,
        "order.dead-letter",
        dead_rows,
        Duration::from_secs(60),
        |_| true,
        Consumed::dead_letter_id,
    )
    .await;
    for d in &dead {
        let source = (
            d.headers["x-dlq-topic"].clone(),
            d.headers["x-dlq-partition"].parse::<i32>().unwrap(),
            d.headers["x-dlq-offset"].parse::<i64>().unwrap(),
        );
        let g =
            generated.iter().find(|g| (g.topic.to_string(), g.partition, g.offset) == source).unwrap_or_else(
                || panic!("a dead letter of a record that was not generated (a real order's?): {d:#?}"),
            );
        let original: Vec<(String, Vec<u8>)> =
            d.raw_headers.iter().filter(|(k, _)| !k.starts_with("x-dlq-")).cloned().collect();
        assert_eq!(
            (&d.raw_key, &d.raw_value, &original),
            (&g.key, &g.value, &g.headers),
            "dead letter differs from {g:?}"
        );
    }
    eprintln!(
        "fuzz tier: {count} records, {} real orders shipped, {dead_lettered_sources} records dead-lettered ({} dead letters)",
        real.len(),
        dead.len()
    );
    t.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_that_fails_for_its_data_is_retried_alone_and_the_timers_behind_it_fire() {
    let t = TestHost::start().await;
    let mut ids = Vec::new();
    for who in ["bad", "good"] {
        let (_, o) = t.post("/api/orders", &order_body(&format!("{who}@x.io"), &[("2", 1)])).await;
        ids.push(uuid::Uuid::parse_str(o["id"].as_str().unwrap()).unwrap());
    }
    // Postgres refuses one timer's change for its values (an integrity violation), as it would a
    // value it cannot hold; the other timer is claimed in the same batch, behind it.
    sqlx::query(
        "ALTER TABLE order_status_history ADD CONSTRAINT test_refuse CHECK (cause <> 'handler:bad@0')",
    )
    .execute(t.pool())
    .await
    .unwrap();
    for (id, cause, due) in
        [(ids[0], "handler:bad@0", "now() - interval '2 seconds'"), (ids[1], "handler:good@0", "now()")]
    {
        sqlx::query(&format!(
            "INSERT INTO timers (order_id, to_status, due_at, cause, event_id, handler_version, consumed_topic)
             VALUES ($1, 'processing', {due}, $2, 'e', 'v', 't')"
        ))
        .bind(id)
        .bind(cause)
        .execute(t.pool())
        .await
        .unwrap();
    }
    eventually("the timer behind the failing one to fire", Duration::from_secs(20), || async {
        (status_of(&t, &ids[1].to_string()).await == "processing").then_some(())
    })
    .await;
    let (attempts, error, parked, later): (i32, Option<String>, bool, bool) = sqlx::query_as(
        "SELECT attempts, last_error, parked_at IS NOT NULL, due_at > now() FROM timers WHERE order_id = $1",
    )
    .bind(ids[0])
    .fetch_one(t.pool())
    .await
    .unwrap();
    assert!(attempts >= 1 && !parked && later, "retried alone, later: {attempts} {parked} {later}");
    assert!(error.as_deref().unwrap_or_default().contains("23514"), "{error:?}");
    assert_eq!(status_of(&t, &ids[0].to_string()).await, "pending");
    t.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_returning_malformed_values_is_blamed_retried_and_dead_lettered() {
    let dir = handlers_dir(&[("fixtures", "malformed", &["order-created"])]);
    let extra = [("DISPATCH_MAX_ATTEMPTS", "2"), ("DISPATCH_RETRY_BASE_MS", "20")];
    let t = TestHost::start_with(Some(dir.path()), 1, &extra).await;
    let (_, bad) = t.post("/api/orders", &order_body("malformed@x.io", &[("7", 1)])).await;
    let (_, good) = t.post("/api/orders", &order_body("fine@x.io", &[("7", 1)])).await;
    let (bad, good) = (bad["id"].as_str().unwrap().to_string(), good["id"].as_str().unwrap().to_string());
    let dead =
        consume(t.broker.bootstrap_servers(), "order.dead-letter", 1, Duration::from_secs(30), |_| true)
            .await;
    assert_eq!(dead[0].key, bad);
    assert_eq!(dead[0].headers["x-dlq-handler"], "malformed");
    assert_eq!(dead[0].headers["x-dlq-class"], "trap");
    assert_eq!(dead[0].headers["x-dlq-attempts"], "2", "the handler's fault spends its attempts");
    assert!(dead[0].headers["x-dlq-error"].contains("invalid return value"), "{:?}", dead[0].headers);
    eventually("the well-formed answer for the other order", Duration::from_secs(20), || async {
        notifications(&t, &good).await.iter().any(|n| n["body"] == "well-formed").then_some(())
    })
    .await;
    assert!(notifications(&t, &bad).await.is_empty());
    t.host.shutdown().await.unwrap();
}

/// A guest panic is dead-lettered with the panic message and the guest backtrace in one header, so
/// whoever reads the dead letter sees where in the handler it happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_handler_is_dead_lettered_with_its_guest_backtrace() {
    let dir = handlers_dir(&[("fixtures", "panicker", &["order-created"])]);
    let extra = [("DISPATCH_MAX_ATTEMPTS", "1")];
    let t = TestHost::start_with(Some(dir.path()), 1, &extra).await;
    let (_, order) = t.post("/api/orders", &order_body("panic@x.io", &[("7", 1)])).await;
    let dead =
        consume(t.broker.bootstrap_servers(), "order.dead-letter", 1, Duration::from_secs(30), |_| true)
            .await;
    assert_eq!(dead[0].key, order["id"].as_str().unwrap());
    let h = &dead[0].headers;
    assert_eq!((h["x-dlq-handler"].as_str(), h["x-dlq-class"].as_str()), ("panicker", "trap"));
    let error = &h["x-dlq-error"];
    assert!(error.contains("fixture panics on purpose") && error.contains("panicker/src/lib.rs:9"), "{h:?}");
    assert!(error.contains("; at <panicker::") && error.contains("_export_on_order_created_cabi"), "{h:?}");
    t.host.shutdown().await.unwrap();
}

/// Handler logic that panics: a bug in the host's own code on a key lane.
struct PanickingInvoker;

impl host::runtime::Invoke for PanickingInvoker {
    fn invoke<'a>(
        &'a self,
        _: &'a host::runtime::LoadedHandler,
        _: &'a host::runtime::Event,
        _: std::sync::Arc<dyn host::runtime::OrderSource>,
    ) -> host::runtime::InvokeFuture<'a> {
        Box::pin(async { panic!("a bug on the key lane") })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_key_lane_is_a_death_that_fails_readiness_and_commits_nothing_behind_it() {
    let dir = handlers_dir(&[("handlers", "notifier", SHIPPED)]);
    let invoker: std::sync::Arc<dyn host::runtime::Invoke> = std::sync::Arc::new(PanickingInvoker);
    let t = TestHost::start_invoking(Some(dir.path()), 1, &[], Some(invoker)).await;
    let (_, o) = t.post("/api/orders", &order_body("panic@x.io", &[("1", 1)])).await;
    assert!(o["id"].is_string(), "{o}");
    tokio::time::timeout(Duration::from_secs(30), t.host.died()).await.expect("the lane's death is noticed");
    let (code, ready) = t.get("/readyz").await;
    assert_eq!(code, 503, "{ready}");
    let failed = ready["failed_tasks"][0].as_str().unwrap_or_default();
    assert!(failed.starts_with("dispatch key lane: a bug on the key lane"), "{ready}");
    let text = t.http.get(t.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(
        metric_value(&text, r#"order_host_background_task_deaths_total{task="dispatch key lane"}"#),
        Some(1.0)
    );
    let brokers = t.broker.bootstrap_servers().to_string();
    tokio::time::timeout(Duration::from_secs(60), t.host.shutdown())
        .await
        .expect("a host with a dead task still shuts down")
        .unwrap();
    // The event the lane died on was never completed: the group has not committed past it, so
    // the next host gets it again.
    let progress = group_progress(&brokers, "order-processor", &["order.created"]).await;
    assert!(progress.iter().all(|(_, _, committed, high)| committed < high), "{progress:?}");
}

/// A producer that hits a fatal error (what an idempotent producer meets after a broker lost data
/// it had acknowledged) fails readiness at once; the relay's next publish fails, the relay replaces
/// the producer, and the order's records go out through the new one: it ships.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_with_a_fatal_error_fails_readiness_and_is_replaced_without_losing_a_record() {
    let dir = handlers_dir(&[("handlers", "order-processor", SHIPPED)]);
    let t = TestHost::start_with(Some(dir.path()), 3, &[("DEMO_MODE", "true")]).await;
    assert_eq!(t.get("/readyz").await.0, 200);

    t.host.inject_producer_fatal_error("test: the broker lost acknowledged records");
    let (code, ready) = t.get("/readyz").await;
    assert_eq!(code, 503, "{ready}");
    assert!(ready["kafka"].as_str().unwrap_or_default().contains("fatal error"), "{ready}");

    let (_, order) = t.post("/api/orders", &order_body("fatal@x.io", &[("7", 1)])).await;
    let id = order["id"].as_str().unwrap().to_string();
    eventually("the order to ship through the replaced producer", Duration::from_secs(60), || async {
        (status_of(&t, &id).await == "shipped").then_some(())
    })
    .await;
    let text = t.get_text("/metrics").await;
    assert_eq!(metric_value(&text, "order_host_kafka_producer_replaced_total"), Some(1.0), "{text}");
    assert_eq!(t.get("/readyz").await.0, 200, "ready again once replaced");
    t.host.shutdown().await.unwrap();
}

/// Due timers claimed by another replica (here a transaction of the test's holds the row lock, as
/// another scheduler's claim does) are left to it: the scheduler sleeps until a timer it could fire
/// is due (none here, so its 5 s safety net) instead of polling the held one, and fires the timer
/// once the holder lets it go unfired, as a replica that dies mid-pass does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_timer_held_by_another_replica_is_waited_for_without_spinning() {
    let t = TestHost::start().await;
    let (_, o) = t.post("/api/orders", &order_body("held@x.io", &[("2", 1)])).await;
    let id = uuid::Uuid::parse_str(o["id"].as_str().unwrap()).unwrap();
    let (timer,): (i64,) = sqlx::query_as(
        "INSERT INTO timers (order_id, to_status, due_at, cause, event_id, handler_version, consumed_topic)
         VALUES ($1, 'processing', now() + interval '2 seconds', 'handler:held@0', 'e', 'v', 't') RETURNING id",
    )
    .bind(id)
    .fetch_one(t.pool())
    .await
    .unwrap();
    // Claimed before it is due, so the scheduler cannot fire it first.
    let mut holder = t.pool().begin().await.unwrap();
    sqlx::query("SELECT id FROM timers WHERE id = $1 FOR UPDATE")
        .bind(timer)
        .execute(&mut *holder)
        .await
        .unwrap();

    let held =
        |text: &str| metric_value(text, "order_host_timer_scheduler_passes_total{found=\"held_elsewhere\"}");
    let first = eventually("the scheduler to find the timer held", Duration::from_secs(20), || async {
        held(&t.get_text("/metrics").await)
    })
    .await;
    // A measuring window, not a wait for a condition: a spinning scheduler makes thousands of
    // passes in it, one that polls the held timer every 200 ms about ten, this one at most one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let passes = held(&t.get_text("/metrics").await).unwrap() - first;
    assert!(passes <= 1.0, "{passes} passes in 2 s while another replica held the timer");
    assert_eq!(status_of(&t, &id.to_string()).await, "pending", "fired while held elsewhere");

    holder.rollback().await.unwrap();
    eventually("the released timer to fire", Duration::from_secs(20), || async {
        (status_of(&t, &id.to_string()).await == "processing").then_some(())
    })
    .await;
    t.host.shutdown().await.unwrap();
}

/// The dispatcher has a pool of its own: with every one of its connections stuck (the snapshot
/// reads wait on a lock the test holds on the idempotency table), orders are still taken, read and
/// listed, each answered as usual rather than after a pool timeout; once the lock goes, every
/// order ships.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_while_every_dispatcher_connection_is_stuck() {
    // One: the snapshot reader may take every queued event into one read, which then holds one
    // connection; with a pool of one, that is every connection the dispatcher has.
    const DISPATCH_POOL: i64 = 1;
    let dir = handlers_dir(&[("handlers", "order-processor", SHIPPED)]);
    let size = DISPATCH_POOL.to_string();
    let t = TestHost::start_with(
        Some(dir.path()),
        3,
        &[("DEMO_MODE", "true"), ("DISPATCH_POOL_SIZE", &size), ("DATABASE_POOL_SIZE", "4")],
    )
    .await;
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&t.database_url).await.unwrap();
    let mut holder = conn.begin().await.unwrap();
    sqlx::query("LOCK TABLE processed_events IN ACCESS EXCLUSIVE MODE").execute(&mut *holder).await.unwrap();

    let mut ids = Vec::new();
    for i in 0..10 {
        let (code, o) = t.post("/api/orders", &order_body(&format!("stuck{i}@x.io"), &[("3", 1)])).await;
        assert_eq!(code, 201, "{o}");
        ids.push(o["id"].as_str().unwrap().to_string());
    }
    // The test's own connections, so that what it observes does not depend on the host's pools.
    let observer = sqlx::PgPool::connect(&t.database_url).await.unwrap();
    let waiting = || async {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%processed_events%'",
        )
        .fetch_one(&observer)
        .await
        .unwrap();
        n
    };
    eventually("every dispatcher connection to wait on the lock", Duration::from_secs(30), || async {
        (waiting().await == DISPATCH_POOL).then_some(())
    })
    .await;

    for (i, id) in ids.iter().enumerate() {
        let (code, o) = t.post("/api/orders", &order_body(&format!("more{i}@x.io"), &[("3", 1)])).await;
        assert_eq!(code, 201, "POST while the dispatcher is stuck: {o}");
        let (code, got) = t.get(&format!("/api/orders/{id}")).await;
        assert_eq!((code, got["status"].as_str()), (200, Some("pending")), "{got}");
        let (code, list) = t.get("/api/orders?limit=5").await;
        assert_eq!(code, 200, "{list}");
    }
    assert_eq!(waiting().await, DISPATCH_POOL, "the dispatcher stayed stuck throughout");

    holder.rollback().await.unwrap();
    let (_, all) = t.get("/api/orders?limit=100").await;
    for o in all.as_array().unwrap() {
        let id = o["id"].as_str().unwrap();
        eventually("every order to ship once the lock is gone", Duration::from_secs(60), || async {
            (status_of(&t, id).await == "shipped").then_some(())
        })
        .await;
    }
    t.host.shutdown().await.unwrap();
}

/// One handler's answer is all or nothing, as the WIT says: when the state machine refuses its
/// immediate status change (the order moved on), its notification is not applied either, and the
/// event is dead-lettered for it with the reason, ready to be redriven or discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_status_change_rolls_back_the_whole_answer_and_is_dead_lettered() {
    // Started without handlers, so the created event waits while the order is cancelled.
    let live = tempfile::tempdir().unwrap();
    let t = TestHost::start_with(Some(live.path()), 3, &[("HANDLERS_RESCAN_SECS", "1")]).await;
    let (_, o) = t.post("/api/orders", &order_body("moved-on@x.io", &[("1", 1)])).await;
    let id = o["id"].as_str().unwrap().to_string();
    eventually("the created event to wait for a handler", Duration::from_secs(20), || async {
        (waiting_for_handler(&t).await == Some(1.0)).then_some(())
    })
    .await;
    let (code, cancelled) = t.put(&format!("/api/orders/{id}/status"), &json!({"status": "cancelled"})).await;
    assert_eq!(code, 200, "{cancelled}");

    // The mover notifies the customer, moves every new order to processing at once, and
    // notifies again: the refused change must take both notifications with it.
    let mover = handlers_dir(&[("fixtures", "mover", &["order-created"])]);
    fill_dir(mover.path(), live.path());
    let dead =
        consume(t.broker.bootstrap_servers(), "order.dead-letter", 1, Duration::from_secs(30), |_| true)
            .await;
    assert_eq!(dead[0].key, id);
    assert_eq!(
        (dead[0].headers["x-dlq-handler"].as_str(), dead[0].headers["x-dlq-class"].as_str()),
        ("mover", "refused-transition")
    );
    assert!(dead[0].headers["x-dlq-error"].contains("cancelled"), "{:?}", dead[0].headers);
    assert!(
        notifications(&t, &id).await.is_empty(),
        "the actions before and after the refused change were rolled back"
    );
    assert_eq!(status_of(&t, &id).await, "cancelled");
    assert_eq!(t.count("dead_letters WHERE class = 'refused-transition' AND state = 'open'").await, 1);
    t.host.shutdown().await.unwrap();
}

/// Group commit keeps failure isolation: twelve orders are released to the handlers at once, so
/// their applications share batches; shipping one of them breaks a stock constraint (its
/// reservation was tampered with). Only that application fails: it is dead-lettered as
/// `rejected-effects`, the notifier's answer to the same event and every other order's changes
/// commit, and each shipped order has each transition once.
async fn one_failing_application_fails_alone(batch_max: &str) {
    let live = tempfile::tempdir().unwrap();
    let extra = [
        ("HANDLERS_RESCAN_SECS", "1"),
        ("DISPATCH_BATCH_MAX", batch_max),
        ("DISPATCH_BATCH_WINDOW_MS", "500"),
    ];
    let t = TestHost::start_with(Some(live.path()), 3, &extra).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let product = if i == 5 { "4" } else { "1" };
        let (code, o) =
            t.post("/api/checkout", &order_body(&format!("batch{i}@x.io"), &[(product, 1)])).await;
        assert_eq!(code, 201, "{o}");
        ids.push(o["order_id"].as_str().unwrap().to_string());
    }
    let poisoned = ids[5].clone();
    sqlx::query("UPDATE inventory SET reserved = 0 WHERE product_id = '4'").execute(t.pool()).await.unwrap();
    eventually("the created events to wait for a handler", Duration::from_secs(20), || async {
        (waiting_for_handler(&t).await == Some(12.0)).then_some(())
    })
    .await;

    let full = instant_processor_and_notifier();
    fill_dir(full.path(), live.path());
    let dead =
        consume(t.broker.bootstrap_servers(), "order.dead-letter", 1, Duration::from_secs(60), |_| true)
            .await;
    assert_eq!(dead[0].key, poisoned);
    let h = &dead[0].headers;
    assert_eq!(
        (h["x-dlq-handler"].as_str(), h["x-dlq-class"].as_str()),
        ("order-processor", "rejected-effects")
    );
    assert!(h["x-dlq-error"].contains("inventory"), "{h:?}");

    for id in ids.iter().filter(|id| **id != poisoned) {
        eventually("every other order to ship", Duration::from_secs(60), || async {
            (status_of(&t, id).await == "shipped").then_some(())
        })
        .await;
        let (_, history) = t.get(&format!("/api/orders/{id}/history")).await;
        let steps: Vec<&str> =
            history.as_array().unwrap().iter().map(|r| r["to_status"].as_str().unwrap()).collect();
        assert_eq!(steps, ["pending", "processing", "confirmed", "shipped"], "{id}");
    }
    assert_eq!(status_of(&t, &poisoned).await, "confirmed", "the failing change was rolled back");
    let subjects = eventually("the notifier's answers to every event", Duration::from_secs(20), || async {
        let n = notifications(&t, &poisoned).await;
        (n.len() == 3).then_some(n)
    })
    .await;
    assert!(subjects[2].to_string().contains("is confirmed"), "{subjects:?}");
    // Each shipped order: four events, each settled by both handlers; the poisoned one: three.
    eventually("every event settled by both handlers", Duration::from_secs(30), || async {
        (t.count("processed_events").await == 11 * 8 + 6).then_some(())
    })
    .await;
    assert_eq!(t.count("processed_events WHERE outcome = 'dead-lettered'").await, 1);
    assert_eq!(t.count("notifications").await, 11 * 4 + 3, "each answer applied once");

    if batch_max != "1" {
        // The failing application was first part of a grouped batch, then isolated one by one
        // with the applications that shared its batch.
        let text = t.get_text("/metrics").await;
        let series = |s: &str| metric_value(&text, s).unwrap_or_else(|| panic!("no {s} in\n{text}"));
        let one_by_one_count = series("order_host_dispatch_batch_applications_count{path=\"one_by_one\"}");
        let one_by_one_sum = series("order_host_dispatch_batch_applications_sum{path=\"one_by_one\"}");
        assert_eq!(one_by_one_count, 1.0, "{text}");
        assert!(one_by_one_sum > 1.0, "the failing application was alone in its batch:\n{text}");
        let grouped = series("order_host_dispatch_batch_applications_sum{path=\"grouped\"}")
            / series("order_host_dispatch_batch_applications_count{path=\"grouped\"}");
        assert!(grouped > 1.0, "no batch grouped more than one application:\n{text}");
    }
    t.host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_application_in_a_grouped_batch_fails_alone() {
    one_failing_application_fails_alone("128").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_application_fails_alone_with_one_transaction_per_application() {
    one_failing_application_fails_alone("1").await;
}

/// A delivery racing another delivery of the same event: the other one commits the handler's
/// idempotency row after this one's snapshot read (which saw none) and before its group commit.
/// The batch's insert of that row fails, the batch is applied again one application at a time,
/// and the racing application comes out as a duplicate: nothing of it is written, it is not
/// dead-lettered, and the rest of its batch (the notifier's answer to the same event) commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_settled_meanwhile_by_another_is_a_duplicate_in_a_grouped_batch() {
    let live = tempfile::tempdir().unwrap();
    let extra = [("HANDLERS_RESCAN_SECS", "1"), ("DISPATCH_BATCH_WINDOW_MS", "200")];
    let t = TestHost::start_with(Some(live.path()), 3, &extra).await;
    let (code, o) = t.post("/api/orders", &order_body("racer@x.io", &[("1", 1)])).await;
    assert_eq!(code, 201, "{o}");
    let id = o["id"].as_str().unwrap().to_string();
    eventually("the created event to wait for a handler", Duration::from_secs(20), || async {
        (waiting_for_handler(&t).await == Some(1.0)).then_some(())
    })
    .await;
    let (event_id,): (String,) = sqlx::query_as(
        "SELECT convert_from(header_values[array_position(header_names, 'ce_id')], 'UTF8')
         FROM outbox WHERE key = convert_to($1, 'UTF8')",
    )
    .bind(&id)
    .fetch_one(t.pool())
    .await
    .unwrap();

    // The other delivery: it holds the order's lock, as a group commit does, and settles the
    // order-processor's application of the event; it commits once this host's batch waits.
    let mut other = t.pool().begin().await.unwrap();
    sqlx::query("SELECT id FROM orders WHERE id = $1::uuid FOR UPDATE")
        .bind(&id)
        .execute(&mut *other)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO processed_events
             (handler, event_id, handler_version, outcome, attempts, topic, kafka_partition, kafka_offset)
         VALUES ('order-processor', $1, 'the-other-delivery', 'applied', 1, 'order.created', 0, 0)",
    )
    .bind(&event_id)
    .execute(&mut *other)
    .await
    .unwrap();
    let full = instant_processor_and_notifier();
    fill_dir(full.path(), live.path());
    eventually("the group commit to wait for the order's lock", Duration::from_secs(30), || async {
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND query LIKE '%WHERE id = ANY($1) ORDER BY id FOR UPDATE%'",
        )
        .fetch_one(t.pool())
        .await
        .unwrap();
        (waiting > 0).then_some(())
    })
    .await;
    other.commit().await.unwrap();

    let notes = eventually("the notifier's answer to commit", Duration::from_secs(30), || async {
        let n = notifications(&t, &id).await;
        (!n.is_empty()).then_some(n)
    })
    .await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT handler, handler_version, outcome FROM processed_events WHERE event_id = $1 ORDER BY handler",
    )
    .bind(&event_id)
    .fetch_all(t.pool())
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].0, "notifier", "{rows:?}");
    assert_eq!(rows[0].2, "applied", "{rows:?}");
    assert_eq!(
        rows[1],
        ("order-processor".into(), "the-other-delivery".into(), "applied".into()),
        "the other delivery's row is the only one"
    );
    // The duplicate's answer (processing, then on) was not applied, and nothing was dead-lettered.
    assert_eq!(status_of(&t, &id).await, "pending");
    assert_eq!(t.count("order_status_history").await, 1, "only the order's creation");
    assert_eq!(t.count("processed_events WHERE outcome = 'dead-lettered'").await, 0);
    let text = t.get_text("/metrics").await;
    let series = |s: &str| metric_value(&text, s).unwrap_or_else(|| panic!("no {s} in\n{text}"));
    assert_eq!(series("order_host_dispatch_batch_applications_count{path=\"one_by_one\"}"), 1.0, "{text}");

    // Nothing stalls: the next order walks through.
    let (_, next) = t.post("/api/orders", &order_body("after@x.io", &[("1", 1)])).await;
    let next = next["id"].as_str().unwrap().to_string();
    eventually("the next order to ship", Duration::from_secs(60), || async {
        (status_of(&t, &next).await == "shipped").then_some(())
    })
    .await;
    t.host.shutdown().await.unwrap();
}

/// Deleting an order by hand (the host never does) takes its status history and notifications
/// with it, as the foreign keys' `ON DELETE CASCADE` did before migration 0013 replaced them
/// with a trigger; other orders' rows stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_order_deletes_its_history_and_notifications() {
    let dir = instant_processor_and_notifier();
    let t = TestHost::start_with(Some(dir.path()), 3, &[]).await;
    let mut ids = Vec::new();
    for i in 0..2 {
        let (code, o) = t.post("/api/orders", &order_body(&format!("deleted{i}@x.io"), &[("1", 1)])).await;
        assert_eq!(code, 201, "{o}");
        ids.push(o["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        eventually("each order's four notifications", Duration::from_secs(60), || async {
            (notifications(&t, id).await.len() == 4).then_some(())
        })
        .await;
    }
    let rows_of = |id: &str| {
        let id = id.to_string();
        let pool = t.pool().clone();
        async move {
            let (history, notes): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM order_status_history WHERE order_id = $1::uuid),
                        (SELECT count(*) FROM notifications WHERE order_id = $1::uuid)",
            )
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
            (history, notes)
        }
    };
    assert_eq!(rows_of(&ids[0]).await, (4, 4));
    sqlx::query("DELETE FROM orders WHERE id = $1::uuid").bind(&ids[0]).execute(t.pool()).await.unwrap();
    assert_eq!(rows_of(&ids[0]).await, (0, 0), "the deleted order's rows went with it");
    assert_eq!(rows_of(&ids[1]).await, (4, 4), "the other order's rows stay");
    t.host.shutdown().await.unwrap();
}

/// Retention prunes only what can no longer matter: published outbox rows and idempotency rows
/// past their windows go; recent ones, unpublished outbox rows and the idempotency row of an open
/// dead letter (its redrive needs it) stay. The pass then vacuums the churned tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_old_bookkeeping_and_keeps_what_a_redelivery_or_redrive_needs() {
    let dir = handlers_dir(&[("handlers", "order-processor", SHIPPED), ("handlers", "notifier", SHIPPED)]);
    let extra = [("DEMO_MODE", "true"), ("RETENTION_INTERVAL_SECS", "1")];
    let t = TestHost::start_with(Some(dir.path()), 3, &extra).await;
    let mut ids = Vec::new();
    for i in 0..2 {
        let (_, o) = t.post("/api/orders", &order_body(&format!("retention{i}@x.io"), &[("1", 1)])).await;
        ids.push(o["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        eventually("the order to ship", Duration::from_secs(30), || async {
            (status_of(&t, id).await == "shipped").then_some(())
        })
        .await;
    }
    eventually("every event settled and published", Duration::from_secs(30), || async {
        let settled = t.count("processed_events").await == 16;
        let published = t.count("outbox WHERE published_at IS NULL").await == 0;
        (settled && published).then_some(())
    })
    .await;
    let pool = t.pool();
    // The first order's bookkeeping is aged past both default windows (8 days, 1 day); one of its
    // idempotency rows stands for an open dead letter. An unpublished row is aged as well.
    let aged = sqlx::query(&format!(
        "UPDATE processed_events SET processed_at = now() - interval '9 days'
         WHERE event_id IN (SELECT event_id FROM notifications WHERE order_id = '{}')",
        ids[0]
    ))
    .execute(pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(aged, 8, "four events × two handlers");
    let (kept_event,): (String,) = sqlx::query_as(&format!(
        "SELECT event_id FROM notifications WHERE order_id = '{}' ORDER BY id LIMIT 1",
        ids[0]
    ))
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE processed_events SET outcome = 'dead-lettered' WHERE handler = 'notifier' AND event_id = $1",
    )
    .bind(&kept_event)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO dead_letters (handler, handler_version, event_id, class, reason, attempts, topic,
             kafka_partition, kafka_offset, header_names, header_values)
         VALUES ('notifier', 'v', $1, 'trap', 'test', 1, 'order.created', 0, 0, '{}', '{}')",
    )
    .bind(&kept_event)
    .execute(pool)
    .await
    .unwrap();
    let published = t.count("outbox").await;
    sqlx::query("UPDATE outbox SET published_at = now() - interval '2 days' WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT 3)")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO outbox (topic, key, payload, created_at, next_attempt_at)
         VALUES ('order.status-updated', 'k', 'v', now() - interval '30 days', now() + interval '1 day')",
    )
    .execute(pool)
    .await
    .unwrap();

    eventually("a retention pass to delete the aged rows", Duration::from_secs(20), || async {
        (t.count("processed_events").await == 9 && t.count("outbox").await == published - 2).then_some(())
    })
    .await;
    assert_eq!(
        t.count(&format!("processed_events WHERE event_id = '{kept_event}' AND handler = 'notifier'")).await,
        1,
        "the open dead letter's idempotency row was kept"
    );
    assert_eq!(t.count("outbox WHERE published_at IS NULL").await, 1, "the unpublished row was kept");
    let text = t.get_text("/metrics").await;
    assert_eq!(
        metric_value(&text, "order_host_retention_deleted_rows_total{table=\"processed_events\"}"),
        Some(7.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "order_host_retention_deleted_rows_total{table=\"outbox\"}"),
        Some(3.0),
        "{text}"
    );
    // And each pass vacuums what it pruned, rather than leave the dead rows to autovacuum.
    eventually("the retention pass to vacuum the outbox", Duration::from_secs(20), || async {
        let (vacuums,): (i64,) =
            sqlx::query_as("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'outbox'")
                .fetch_one(pool)
                .await
                .unwrap();
        (vacuums > 0).then_some(())
    })
    .await;
    t.host.shutdown().await.unwrap();
}

/// Per-key visibility: while one key's running event is stuck (a lock the test holds on the
/// idempotency table, which every outcome writes), the events queued behind it show up as that key's waiting events on
/// `/admin/dispatch/backlog` and as counts and ages on `/metrics`, with no per-key label; once
/// the lock goes, everything finishes and the counts return to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_key_shows_its_waiting_events_on_the_admin_api_and_in_metrics() {
    const TOKEN: &str = "backlog-token";
    let dir = handlers_dir(&[("handlers", "order-processor", SHIPPED)]);
    let t = TestHost::start_with(Some(dir.path()), 3, &[("DEMO_MODE", "true"), ("ADMIN_TOKEN", TOKEN)]).await;
    let backlog = |query: &'static str| {
        let t = &t;
        async move {
            let r = t.http.get(t.url(&format!("/admin/dispatch/backlog{query}"))).bearer_auth(TOKEN);
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&t.database_url).await.unwrap();
    let mut holder = conn.begin().await.unwrap();
    sqlx::query("LOCK TABLE processed_events IN ACCESS EXCLUSIVE MODE").execute(&mut *holder).await.unwrap();
    let brokers = t.broker.bootstrap_servers().to_string();
    for i in 0..5 {
        produce(&brokers, "order.created", "busy-key", &[], format!("{{\"n\":{i}}}").as_bytes()).await;
    }
    produce(&brokers, "order.created", "other-key", &[], b"{}").await;

    let view = eventually("four events to wait behind busy-key", Duration::from_secs(30), || async {
        let (_, v) = backlog("?top=1").await;
        (v["top_keys"][0]["waiting"] == 4).then_some(v)
    })
    .await;
    assert_eq!(view["top_keys"].as_array().unwrap().len(), 1, "top=1 lists one key: {view}");
    assert_eq!(view["top_keys"][0]["key"], "busy-key", "{view}");
    assert_eq!(view["events_waiting"], 4, "other-key has nothing queued: {view}");
    assert_eq!(view["keys_running"], 2, "{view}");
    let in_flight: u64 =
        view["partitions"].as_array().unwrap().iter().map(|p| p["in_flight"].as_u64().unwrap()).sum();
    assert_eq!(in_flight, 6, "{view}");
    let text = t.get_text("/metrics").await;
    assert_eq!(metric_value(&text, "order_host_dispatch_events_waiting_behind_key"), Some(4.0), "{text}");
    assert_eq!(metric_value(&text, "order_host_dispatch_keys_running"), Some(2.0), "{text}");
    let oldest: f64 = text
        .lines()
        .filter(|l| l.starts_with("order_host_dispatch_oldest_in_flight_seconds{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .fold(0.0, f64::max);
    assert!(oldest > 0.0, "a stuck event has an age: {text}");
    assert!(!text.contains("busy-key"), "keys are never labels");
    assert_eq!(backlog("?top=0").await.0, 400);
    assert_eq!(backlog("?top=many").await.0, 400);

    holder.rollback().await.unwrap();
    eventually("every event to finish", Duration::from_secs(30), || async {
        let (_, v) = backlog("").await;
        let done =
            v["keys_running"] == 0 && v["partitions"].as_array().unwrap().iter().all(|p| p["in_flight"] == 0);
        done.then_some(())
    })
    .await;
    t.host.shutdown().await.unwrap();
}

/// The snapshot reader's batched read gives every event what a read of its own gives it: its
/// order with its items (or none), and exactly the handlers that settled that event, also when
/// two events of a batch are about one order and one is about no order at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_snapshot_read_agrees_event_by_event_with_a_read_of_its_own() {
    use host::db::orders::{EventRef, for_event, for_events};
    let t = TestHost::start().await;
    let mut ids = Vec::new();
    for (email, lines) in
        [("a@metalbear.com", &[("1", 2), ("2", 1)][..]), ("b@metalbear.com", &[("3", 1)][..])]
    {
        let (code, order) = t.post("/api/orders", &order_body(email, lines)).await;
        assert_eq!(code, 201, "{order}");
        ids.push(uuid::Uuid::parse_str(order["id"].as_str().unwrap()).unwrap());
    }
    let missing = uuid::Uuid::new_v4();
    // e1 is settled by h1 only, e2 by both; e3 and e4 by neither.
    for (handler, event) in [("h1", "e1"), ("h1", "e2"), ("h2", "e2"), ("h2", "e9")] {
        sqlx::query(
            "INSERT INTO processed_events (handler, event_id, handler_version, outcome, attempts, topic, kafka_partition, kafka_offset)
             VALUES ($1, $2, 'v', 'applied', 1, 't', 0, 0)",
        )
        .bind(handler)
        .bind(event)
        .execute(t.pool())
        .await
        .unwrap();
    }
    let both = ["h1".to_string(), "h2".to_string()];
    let only_h1 = ["h1".to_string()];
    let wanted = [
        EventRef { order_id: ids[0], event_id: "e1", handlers: &both },
        EventRef { order_id: ids[1], event_id: "e2", handlers: &both },
        EventRef { order_id: ids[0], event_id: "e3", handlers: &only_h1 },
        EventRef { order_id: missing, event_id: "e4", handlers: &both },
    ];
    let read = for_events(t.pool(), &wanted).await.expect("the batched read");
    let mut orders_seen = 0;
    for w in &wanted {
        let names: Vec<&str> = w.handlers.iter().map(String::as_str).collect();
        let (order, settled) =
            for_event(t.pool(), w.order_id, w.event_id, &names).await.expect("a read of its own");
        let batched: Vec<&str> = names.iter().copied().filter(|h| read.settled(h, w.event_id)).collect();
        assert_eq!(batched, settled, "settled handlers of {}", w.event_id);
        match (order, read.orders.get(&w.order_id)) {
            (None, None) => assert_eq!(w.order_id, missing),
            (Some(own), Some(b)) => {
                orders_seen += 1;
                assert_eq!(format!("{own:?}"), format!("{b:?}"), "order of {}", w.event_id);
                assert!(!b.items.is_empty(), "{b:?}");
            }
            (own, b) => panic!("event {}: its own read found {own:?}, the batched one {b:?}", w.event_id),
        }
    }
    assert_eq!(orders_seen, 3);
    assert_eq!(read.orders.get(&ids[0]).map(|o| o.items.len()), Some(2));
    // The expected answers themselves, not only agreement.
    assert!(read.settled("h1", "e1") && !read.settled("h2", "e1"));
    assert!(read.settled("h1", "e2") && read.settled("h2", "e2"));
    assert!(!read.settled("h1", "e3"));
    assert!(!read.settled("h2", "e9"), "only the pairs asked for are read");
}
