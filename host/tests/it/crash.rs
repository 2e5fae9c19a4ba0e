//! The real `order-host` binary, killed with SIGKILL while hundreds of DEMO_MODE orders are in
//! flight, then started again: every order ships, no transition is recorded twice, nothing is
//! lost. The broker runs in its own process (`order-host dev-broker`) so it outlives the host.

use std::time::Duration;

use crate::support::process::*;
use crate::support::service::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_loses_nothing_and_applies_nothing_twice() {
    const ORDERS: usize = 500;
    let database_url = fresh_database().await;
    let (_broker, brokers) = start_dev_broker();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    let mut host = start_host(&database_url, &brokers, port, &[ON_DEV_BROKER]);
    wait_ready(&http, &base).await;
    let bodies: Vec<_> = (0..ORDERS).map(|i| order_body(&format!("crash{i}@x.io"), &[("1", 1)])).collect();
    for chunk in bodies.chunks(25) {
        let sent = futures_util::future::join_all(
            chunk.iter().map(|b| http.post(format!("{base}/api/orders")).json(b).send()),
        )
        .await;
        assert!(sent.into_iter().all(|r| r.unwrap().status() == 201));
    }
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_as::<_, (i64,)>(sql).fetch_one(&pool).await.unwrap().0 }
    };
    // Kill it mid-flight: some orders have moved, most have not finished.
    eventually("some handler work to be committed", Duration::from_secs(60), || async {
        (count("SELECT count(*) FROM order_status_history WHERE cause <> 'api'").await > 50).then_some(())
    })
    .await;
    host.0.kill().unwrap();
    host.0.wait().unwrap();
    let shipped_at_kill = count("SELECT count(*) FROM orders WHERE status = 'shipped'").await;
    assert!(shipped_at_kill < ORDERS as i64, "the kill came too late to test anything");

    let _host = start_host(&database_url, &brokers, port, &[ON_DEV_BROKER]);
    wait_ready(&http, &base).await;
    eventually("every order to ship after the restart", Duration::from_secs(180), || async {
        (count("SELECT count(*) FROM orders WHERE status = 'shipped'").await == ORDERS as i64).then_some(())
    })
    .await;

    assert_eq!(count("SELECT count(*) FROM orders").await, ORDERS as i64);
    assert_eq!(
        count("SELECT count(*) FROM order_status_history").await,
        4 * ORDERS as i64,
        "pending, processing, confirmed, shipped: once each"
    );
    assert_eq!(
        count("SELECT count(*) FROM (SELECT order_id, to_status FROM order_status_history GROUP BY 1, 2 HAVING count(*) > 1) d").await,
        0,
        "a transition was recorded twice"
    );
    // The notifier's confirmation and three status messages, each exactly once.
    eventually("every notification", Duration::from_secs(60), || async {
        (count("SELECT count(*) FROM notifications").await == 4 * ORDERS as i64).then_some(())
    })
    .await;
    assert_eq!(count("SELECT count(*) FROM timers").await, 0);
    // Records are at-least-once (a batch published but not yet marked when the host died goes out
    // again, with the same ce_id); effects above are exactly-once.
    assert!(topic_size(&brokers, "order.created").await >= ORDERS as i64, "an order was never announced");
}
