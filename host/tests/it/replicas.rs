//! Several replicas on one Postgres and one broker: the outbox relay shares its key-hash slots
//! among the live relays and keeps each key's order; the multi-process tier (rolling restart,
//! SIGKILL, a joining replica, on tansu) is in `replicas::processes`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::service::*;
use host::kafka::EmbeddedBroker;
use host::serve::Host;

/// A topic of the test's own, so the hosts' consumers leave its records alone.
const CHECK_TOPIC: &str = "relay.check";

async fn metric(http: &reqwest::Client, host: &Host, name: &str) -> f64 {
    let text = http.get(format!("http://{}/metrics", host.addr)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

/// Writes `rows` outbox rows for `CHECK_TOPIC` in one transaction, spread over `keys` keys, each
/// key's payloads numbered upwards from `first`.
async fn enqueue(pool: &sqlx::PgPool, first: i64, rows: i64, keys: i64) {
    sqlx::query(
        "INSERT INTO outbox (topic, key, payload)
         SELECT $1, convert_to('key-' || (i % $4), 'UTF8'), convert_to(i::text, 'UTF8')
         FROM generate_series($2::bigint, $2 + $3 - 1) i",
    )
    .bind(CHECK_TOPIC)
    .bind(first)
    .bind(rows)
    .bind(keys)
    .execute(pool)
    .await
    .unwrap();
}

async fn drained(pool: &sqlx::PgPool, within: Duration) {
    eventually("the outbox to drain", within, || async {
        let (left,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(pool)
            .await
            .unwrap();
        (left == 0).then_some(())
    })
    .await;
}

/// Two relays split the 16 slots evenly and both publish; when one leaves, the other takes its
/// slots. On the topic every key's records are in commit (payload) order, none lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_share_the_slots_and_keep_each_keys_order() {
    let broker = EmbeddedBroker::start(&[&TOPICS[..], &[CHECK_TOPIC]].concat(), 3).expect("broker");
    let brokers = broker.bootstrap_servers().to_string();
    let database_url = fresh_database().await;
    let config = test_config(&database_url, &brokers, &[]);
    let a = Host::start_with(&config, None).await.expect("replica a starts");
    let b = Host::start_with(&config, None).await.expect("replica b starts");
    let http = reqwest::Client::new();
    let slots = "order_host_relay_slots_owned";
    eventually("the relays to take 8 slots each", Duration::from_secs(20), || async {
        let owned = (metric(&http, &a, slots).await, metric(&http, &b, slots).await);
        (owned == (8.0, 8.0)).then_some(())
    })
    .await;

    enqueue(&a.pool, 0, 2000, 40).await;
    drained(&a.pool, Duration::from_secs(60)).await;
    let published = "order_host_relay_published_total";
    let (by_a, by_b) = (metric(&http, &a, published).await, metric(&http, &b, published).await);
    assert!(by_a > 0.0 && by_b > 0.0, "both relays publish: {by_a} and {by_b}");
    assert_eq!(by_a + by_b, 2000.0, "each row published once");

    b.shutdown().await.expect("replica b stops");
    eventually("the remaining relay to take every slot", Duration::from_secs(20), || async {
        (metric(&http, &a, slots).await == 16.0).then_some(())
    })
    .await;
    enqueue(&a.pool, 2000, 400, 40).await;
    drained(&a.pool, Duration::from_secs(60)).await;

    let records = consume(&brokers, CHECK_TOPIC, 2400, Duration::from_secs(60), |_| true).await;
    let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in &records {
        let n: i64 = String::from_utf8_lossy(&r.raw).parse().unwrap();
        by_key.entry(r.key.clone()).or_default().push(n);
    }
    assert_eq!(by_key.len(), 40);
    for (key, seen) in &by_key {
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(seen, &sorted, "{key}'s records left out of commit order, or twice");
        assert_eq!(seen.len(), 60, "{key}: {seen:?}");
    }
    a.shutdown().await.expect("replica a stops");
    std::mem::forget(broker);
}
