//! `cargo xtask bench pipeline`: the whole pipeline in DEMO_MODE. 1,000 orders are created as fast
//! as the API takes them, against a private Postgres and the embedded broker, through the real
//! handler components; reports orders/s accepted and shipped, and created→shipped latency.
//!
//! Not a criterion benchmark: one run is minutes of wall-clock behaviour, not a micro-timing.

use std::time::{Duration, Instant};

use host::config::Config;
use host::devdb::LocalPostgres;
use host::kafka::EmbeddedBroker;
use host::serve::Host;

const ORDERS: usize = 1_000;
const CONCURRENCY: usize = 32;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; a name filter selects benchmarks.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if !args.is_empty() && !args.iter().any(|a| "pipeline".contains(a.as_str())) {
        return Ok(());
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let dir = std::env::temp_dir().join(format!("order-host-bench-pg-{}", std::process::id()));
    let pg = LocalPostgres::start(&dir)?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(run(&pg, &root));
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(pg: &LocalPostgres, root: &std::path::Path) -> anyhow::Result<()> {
    let broker = EmbeddedBroker::start(&["order.created", "order.status-updated", "order.dead-letter"], 3)?;
    let handlers = root.join("target/handlers").display().to_string();
    let url = pg.url("postgres");
    let vars = [
        ("HTTP_ADDR", "127.0.0.1:0"),
        ("DATABASE_URL", url.as_str()),
        ("KAFKA_BROKERS", broker.bootstrap_servers()),
        ("HANDLERS_DIR", handlers.as_str()),
        ("DEMO_MODE", "true"),
    ];
    let config = Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))?;
    let host = Host::start(&config).await?;
    let base = format!("http://{}", host.addr);
    let http = reqwest::Client::new();

    let started = Instant::now();
    let bodies: Vec<serde_json::Value> = (0..ORDERS)
        .map(|i| {
            serde_json::json!({"customer_email": format!("bench{i}@x.io"), "customer_name": "Bench",
                "items": [{"product_id": ((i % 10) + 1).to_string(), "quantity": 1}]})
        })
        .collect();
    for chunk in bodies.chunks(CONCURRENCY) {
        let sent = futures_util::future::join_all(
            chunk.iter().map(|b| http.post(format!("{base}/api/orders")).json(b).send()),
        )
        .await;
        for r in sent {
            anyhow::ensure!(r?.status() == 201, "an order was refused");
        }
    }
    let accepted = started.elapsed();

    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders WHERE status = 'shipped'")
            .fetch_one(&host.pool)
            .await?;
        if n == ORDERS as i64 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "only {n} of {ORDERS} orders shipped within 10 minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shipped = started.elapsed();
    let mut latencies: Vec<f64> = sqlx::query_as::<_, (f64,)>(
        "SELECT EXTRACT(EPOCH FROM (s.at - c.at))::float8 * 1000 FROM order_status_history c
         JOIN order_status_history s ON s.order_id = c.order_id AND s.to_status = 'shipped'
         WHERE c.from_status IS NULL",
    )
    .fetch_all(&host.pool)
    .await?
    .into_iter()
    .map(|(ms,)| ms)
    .collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!("pipeline (DEMO_MODE, 3 × 200 ms stages, {ORDERS} orders, {CONCURRENCY} concurrent clients)");
    println!(
        "  accepted   {:>8.1} orders/s  ({:.2} s)",
        ORDERS as f64 / accepted.as_secs_f64(),
        accepted.as_secs_f64()
    );
    println!(
        "  shipped    {:>8.1} orders/s  (all shipped after {:.2} s)",
        ORDERS as f64 / shipped.as_secs_f64(),
        shipped.as_secs_f64()
    );
    println!("  created→shipped  p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms", pct(0.5), pct(0.99), pct(1.0));
    host.shutdown().await?;
    Ok(())
}
