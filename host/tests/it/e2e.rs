//! The end-to-end tier: the real `order-host` binary against tansu, a separate Kafka-compatible
//! broker process, with the shipped handler components in DEMO_MODE. An order placed over HTTP
//! ships through three handler-caused transitions, the notifier's messages are recorded, and the
//! status-updated records on the broker carry their headers. The binary logs JSON and exports its
//! spans over OTLP/HTTP to a stand-in collector.

use std::time::Duration;

use crate::support::process::*;
use crate::support::service::*;
use serde_json::Value;

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
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str()), ON_TANSU],
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

    // Published at least once: a change may be on the topic twice, its first copies in order.
    let updates = consume_distinct(
        &brokers,
        "order.status-updated",
        3,
        Duration::from_secs(30),
        |c| c.key == id,
        |c| c.ce_id().to_string(),
    )
    .await;
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

/// Sends `signal` (`STOP`, `CONT`) to a process.
fn signal(process: &Process, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), process.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} failed");
}

/// Fault tier on the real binary and tansu, one fault after another under a stream of orders:
/// started with an empty handlers directory (events are held, not completed), then filled; the
/// broker frozen with SIGSTOP for 20 s; Postgres cut off for 5 s (connections terminated and
/// refused); the host killed with SIGKILL mid-flight and started again. Every accepted order ships
/// with each transition recorded exactly once, and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_one_after_another_lose_nothing_and_apply_nothing_twice() {
    let _alone = crate::support::process::exclusive().await;
    let database_url = fresh_database().await;
    let (tansu, brokers) = start_tansu(&TOPICS).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let live = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let live_dir = live.path().to_str().unwrap().to_string();
    let env = [("HANDLERS_DIR", live_dir.as_str()), ("HANDLERS_RESCAN_SECS", "1"), ON_TANSU];
    let mut host =
        start_host_logging_json(&database_url, &brokers, port, &logs.path().join("first.log"), &env);
    let ready = || async {
        let r = http.get(format!("{base}/readyz")).send().await.ok()?;
        Some((r.status().as_u16(), r.json::<Value>().await.ok()?))
    };
    let (code, body) = eventually("the host to answer /readyz", Duration::from_secs(60), || async {
        ready().await.filter(|(_, b)| b["kafka"] == "ok")
    })
    .await;
    assert_eq!(code, 503, "no handlers: not ready: {body}");

    // An order the API accepted (201), or `None` when it refused it (503 while Postgres is away).
    let post = |i: usize| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let r = http
                .post(format!("{base}/api/orders"))
                .json(&order_body(&format!("fault{i}@x.io"), &[("9", 1)]))
                .send()
                .await
                .ok()?;
            let status = r.status().as_u16();
            let body = r.json::<Value>().await.ok()?;
            assert!(matches!(status, 201 | 503), "{status} {body}");
            Some(body["id"].as_str()?.to_string())
        }
    };
    let mut ids = Vec::new();
    let mut serial = 0;
    for _ in 0..20 {
        ids.push(post(serial).await.expect("accepted"));
        serial += 1;
    }
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_as::<_, (i64,)>(sql).fetch_one(&pool).await.unwrap().0 }
    };
    // The created events reach the dispatcher and wait there.
    eventually("the orders to be announced on the broker", Duration::from_secs(30), || async {
        (count("SELECT count(*) FROM outbox WHERE published_at IS NULL").await == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count("SELECT count(*) FROM processed_events").await, 0, "completed without a handler");

    // Handlers arrive: the held events go through.
    let built = crate::support::root().join("target/handlers");
    for f in ["order-processor.wasm", "notifier.wasm"] {
        std::fs::copy(built.join(f), live.path().join(f)).unwrap();
    }
    std::fs::copy(built.join("handlers.toml"), live.path().join(".staged")).unwrap();
    std::fs::rename(live.path().join(".staged"), live.path().join("handlers.toml")).unwrap();
    eventually("ready once handlers are loaded", Duration::from_secs(30), || async {
        ready().await.filter(|(c, _)| *c == 200)
    })
    .await;

    // The broker freezes for 20 s while orders keep coming.
    signal(&tansu, "STOP");
    let frozen_at = std::time::Instant::now();
    while frozen_at.elapsed() < Duration::from_secs(20) {
        ids.push(post(serial).await.expect("accepted while Kafka is frozen"));
        serial += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    signal(&tansu, "CONT");

    // Postgres goes away for 5 s: orders are refused (503) meanwhile, accepted ones are kept.
    database_outage(&database_url, true).await;
    let outage_at = std::time::Instant::now();
    while outage_at.elapsed() < Duration::from_secs(5) {
        ids.extend(post(serial).await);
        serial += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    database_outage(&database_url, false).await;
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_as::<_, (i64,)>(sql).fetch_one(&pool).await.unwrap().0 }
    };

    // Killed mid-flight, then started again.
    for _ in 0..30 {
        if let Some(id) = post(serial).await {
            ids.push(id);
        }
        serial += 1;
    }
    host.0.kill().unwrap();
    host.0.wait().unwrap();
    host = start_host_logging_json(&database_url, &brokers, port, &logs.path().join("second.log"), &env);
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let (stuck,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM orders WHERE id = ANY($1) AND status <> 'shipped'")
                .bind(ids.iter().map(|id| id.parse::<uuid::Uuid>().unwrap()).collect::<Vec<_>>())
                .fetch_one(&pool)
                .await
                .unwrap();
        if stuck == 0 {
            break;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "{stuck} accepted orders did not ship within 180 s\n{}",
                diagnose(&pool, logs.path(), &brokers).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A request cut off by the outage after its commit answered no 201 but did create its order;
    // that order ships too.
    eventually("every stored order to ship", Duration::from_secs(60), || async {
        (count("SELECT count(*) FROM orders WHERE status <> 'shipped'").await == 0).then_some(())
    })
    .await;
    let orders = count("SELECT count(*) FROM orders").await;
    assert!(orders >= ids.len() as i64 && ids.len() >= 80, "{} accepted, {orders} stored", ids.len());
    assert_eq!(count("SELECT count(*) FROM order_status_history").await, 4 * orders, "each step once");
    assert_eq!(
        count("SELECT count(*) FROM (SELECT order_id, to_status FROM order_status_history GROUP BY 1, 2 HAVING count(*) > 1) d").await,
        0,
        "a transition was recorded twice"
    );
    assert_eq!(count("SELECT count(*) FROM processed_events WHERE outcome <> 'applied'").await, 0);
    drop(host);
}

/// On the real binary and tansu, two faults that belong to one handler or one record: a handler
/// returning values the component ABI rejects is blamed, retried and dead-lettered for its own
/// events only, while the shipped handlers ship every order; an outbox row that can never be
/// delivered (2 MB, over the producer's limit) is parked and holds back only its own key. Every
/// order ships with each transition once, and the host stays ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_handler_and_a_poison_outbox_row_hold_back_nothing_else() {
    const SHIPPED: &[&str] = &["order-created", "status-updated"];
    let database_url = fresh_database().await;
    let (_tansu, brokers) = start_tansu(&TOPICS).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let dir = handlers_dir(&[
        ("handlers", "order-processor", SHIPPED),
        ("handlers", "notifier", SHIPPED),
        ("fixtures", "malformed", &["order-created"]),
    ]);
    let logs = tempfile::tempdir().unwrap();
    let env = [
        ("HANDLERS_DIR", dir.path().to_str().unwrap()),
        ("ADMIN_TOKEN", "secret"),
        ("DISPATCH_MAX_ATTEMPTS", "2"),
        ("DISPATCH_RETRY_BASE_MS", "20"),
        ON_TANSU,
    ];
    let _host = start_host_logging_json(&database_url, &brokers, port, &logs.path().join("host.log"), &env);
    wait_ready(&http, &base).await;
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_as::<_, (i64,)>(sql).fetch_one(&pool).await.unwrap().0 }
    };

    let insert = |key: &'static str, size: usize| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i64,)>(
                "INSERT INTO outbox (topic, key, payload) VALUES ('order.status-updated', $1, $2) RETURNING id",
            )
            .bind(key.as_bytes())
            .bind(vec![b'x'; size])
            .fetch_one(&pool)
            .await
            .unwrap()
            .0
        }
    };
    let poison = insert("poison-key", 2_000_000).await;
    let behind = insert("poison-key", 10).await;
    sqlx::query("SELECT pg_notify('outbox', '')").execute(&pool).await.unwrap();

    let mut ids = Vec::new();
    for i in 0..12 {
        let who = if i % 3 == 0 { "malformed" } else { "fine" };
        let r = http
            .post(format!("{base}/api/orders"))
            .json(&order_body(&format!("{who}{i}@x.io"), &[("4", 1)]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        ids.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        eventually("every order to ship", Duration::from_secs(90), || async {
            let o: Value =
                http.get(format!("{base}/api/orders/{id}")).send().await.ok()?.json().await.ok()?;
            (o["status"] == "shipped").then_some(())
        })
        .await;
    }

    // Dead letters go out through the outbox, at least once: one may be on the topic twice.
    let dead = consume_distinct(
        &brokers,
        "order.dead-letter",
        4,
        Duration::from_secs(60),
        |_| true,
        Consumed::dead_letter_id,
    )
    .await;
    let mut dead_keys: Vec<&str> = dead.iter().map(|d| d.key.as_str()).collect();
    dead_keys.sort_unstable();
    let mut malformed: Vec<&str> = ids.iter().step_by(3).map(String::as_str).collect();
    malformed.sort_unstable();
    assert_eq!(dead_keys, malformed, "exactly the malformed handler's answers are dead-lettered");
    for d in &dead {
        assert_eq!(
            (d.headers["x-dlq-handler"].as_str(), d.headers["x-dlq-class"].as_str()),
            ("malformed", "trap")
        );
    }
    assert_eq!(count("SELECT count(*) FROM processed_events WHERE outcome <> 'applied'").await, 4);
    assert_eq!(
        count("SELECT count(*) FROM processed_events WHERE outcome <> 'applied' AND handler <> 'malformed'")
            .await,
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM order_status_history").await,
        4 * ids.len() as i64,
        "each step once"
    );

    let parked = eventually("the poison row to be parked", Duration::from_secs(60), || async {
        let r = http.get(format!("{base}/admin/outbox/parked")).bearer_auth("secret").send().await.ok()?;
        let parked: Value = r.json().await.ok()?;
        (parked[0]["id"] == poison).then_some(parked)
    })
    .await;
    assert_eq!(parked[0]["held_back"], 1, "{parked}");
    let (published,): (bool,) = sqlx::query_as("SELECT published_at IS NOT NULL FROM outbox WHERE id = $1")
        .bind(behind)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!published, "a later row of the parked row's key never overtakes it");
    assert_eq!(
        count("SELECT count(*) FROM outbox WHERE published_at IS NULL").await,
        2,
        "only the poison key waits"
    );
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "a parked row is an operator's matter, not a restart's");
}

/// What a stuck pipeline looks like, for a failure message: orders not shipped with their last
/// step, outbox rows not published (parked or not), timers, and the end of each host log.
async fn diagnose(pool: &sqlx::PgPool, logs: &std::path::Path, brokers: &str) -> String {
    let rows = |sql: &'static str| async move {
        let rows: Vec<(String,)> = sqlx::query_as(sql).fetch_all(pool).await.unwrap_or_default();
        rows.into_iter().map(|(r,)| r).collect::<Vec<_>>().join("\n")
    };
    let mut out = String::new();
    out += "orders not shipped:\n";
    out += &rows("SELECT o.id || ' ' || o.status || ' since ' || o.updated_at FROM orders o WHERE status <> 'shipped' LIMIT 20").await;
    out += "\noutbox not published:\n";
    out += &rows("SELECT id || ' ' || topic || ' attempts ' || attempts || ' parked ' || (parked_at IS NOT NULL) || ' ' || coalesce(last_error, '') FROM outbox WHERE published_at IS NULL LIMIT 20").await;
    out += "\nwhat the handlers settled for the unshipped orders' events:\n";
    out += &rows("SELECT o.id || ' ' || p.handler || ' ' || p.outcome || ' ' || p.topic || '/' || p.kafka_partition || '@' || p.kafka_offset || ' at ' || p.processed_at
                  FROM orders o JOIN processed_events p ON p.event_id IN (SELECT convert_from(header_values[array_position(header_names, 'ce_id')], 'UTF8') FROM outbox WHERE key = convert_to(o.id::text, 'UTF8'))
                  WHERE o.status <> 'shipped' LIMIT 40").await;
    out += "\nthe unshipped orders' outbox records:\n";
    out += &rows("SELECT o.id || ' ' || x.topic || ' published ' || coalesce(x.published_at::text, 'no') FROM orders o JOIN outbox x ON x.key = convert_to(o.id::text, 'UTF8') WHERE o.status <> 'shipped' LIMIT 40").await;
    out += "\nthe group's committed offsets (topic, partition, committed, high watermark):\n";
    out += &format!(
        "{:?}",
        group_progress(brokers, "order-processor", &["order.created", "order.status-updated"]).await
    );
    out += "\ntimers:\n";
    out += &rows("SELECT order_id || ' ' || to_status || ' due ' || due_at || ' attempts ' || attempts FROM timers LIMIT 20").await;
    for log in ["first.log", "second.log"] {
        let text = std::fs::read_to_string(logs.join(log)).unwrap_or_default();
        let assignments: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("partitions assigned") || l.contains("partitions revoked"))
            .collect();
        out += &format!("\nassignments in {log}:\n{}", assignments.join("\n"));
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
        out += &format!(
            "\nlast warnings and errors in {log}:\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        );
    }
    out
}
