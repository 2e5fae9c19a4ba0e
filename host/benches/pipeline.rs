//! `cargo xtask bench pipeline`: the whole pipeline against a private Postgres and the embedded
//! broker, through the real handler components. Two parts, selectable by name:
//!
//! - `pipeline-demo`: 1,000 DEMO_MODE orders created as fast as the API takes them; orders/s
//!   accepted and shipped, and created→shipped latency.
//! - `pipeline-throughput`: a backlog of orders with no stage delays, consumed by a fresh host;
//!   events/s through consume → handler → Postgres → produce, with the handlers run as WASM
//!   components and, in the same run, natively (rounds interleaved against drift).
//!
//! Not criterion benchmarks: one run is seconds to minutes of wall-clock behaviour.

#[path = "pipeline/native.rs"]
mod native;

use std::sync::Arc;
use std::time::{Duration, Instant};

use devpg::LocalPostgres;
use host::config::Config;
use host::kafka::EmbeddedBroker;
use host::runtime::Invoke;
use host::serve::Host;

const ORDERS: usize = 1_000;
const CONCURRENCY: usize = 32;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; a name filter selects the parts whose names contain it.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let selected = |name: &str| args.is_empty() || args.iter().any(|a| name.contains(a.as_str()));
    let (demo, throughput) = (selected("pipeline-demo"), selected("pipeline-throughput"));
    if !demo && !throughput {
        return Ok(());
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let dir = std::env::temp_dir().join(format!("order-host-bench-pg-{}", std::process::id()));
    let pg = LocalPostgres::start(&dir)?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        if demo {
            run_demo(&pg, &root).await?;
        }
        if throughput {
            run_throughput(&pg, &root).await?;
        }
        anyhow::Ok(())
    });
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn config(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
    Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
}

async fn run_demo(pg: &LocalPostgres, root: &std::path::Path) -> anyhow::Result<()> {
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
    let host = Host::start(&config(&vars)?).await?;
    let base = format!("http://{}", host.addr);
    let http = reqwest::Client::new();

    let started = Instant::now();
    create_orders(&http, &base, ORDERS).await?;
    let accepted = started.elapsed();

    wait_for(&host.pool, "SELECT count(*) FROM orders WHERE status = 'shipped'", ORDERS as i64).await?;
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

/// Creates `n` orders through the API, `CONCURRENCY` at a time.
async fn create_orders(http: &reqwest::Client, base: &str, n: usize) -> anyhow::Result<()> {
    let bodies: Vec<serde_json::Value> = (0..n)
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
    Ok(())
}

const BACKLOG: usize = 1_000;
const ROUNDS: usize = 3;

/// What one throughput run measured.
struct Run {
    /// Handler applications (a processed_events row each): every event × every subscriber.
    applications: i64,
    /// Distinct events consumed.
    events: i64,
    /// From the first application committed to the last.
    window: Duration,
}

async fn run_throughput(pg: &LocalPostgres, root: &std::path::Path) -> anyhow::Result<()> {
    // Rounds interleave WASM and native so drift on a noisy machine hits both alike.
    let modes: Vec<(&str, Option<Arc<dyn Invoke>>)> = (0..ROUNDS)
        .flat_map(|_| [("wasm", None), ("native", Some(Arc::new(native::NativeHandlers) as Arc<dyn Invoke>))])
        .collect();
    let topics: Vec<String> =
        (0..modes.len()).flat_map(|i| ["created", "status", "dead"].map(|t| format!("r{i}.{t}"))).collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let broker = EmbeddedBroker::start(&names, 3)?;
    let handlers = throughput_handlers(root)?;

    let admin = sqlx::PgPool::connect(&pg.url("postgres")).await?;
    let mut results: Vec<(&str, Run)> = Vec::new();
    for (i, (mode, invoker)) in modes.into_iter().enumerate() {
        sqlx::query(&format!("CREATE DATABASE throughput_{i}")).execute(&admin).await?;
        let url = pg.url(&format!("throughput_{i}"));
        let (created, status, dead) = (format!("r{i}.created"), format!("r{i}.status"), format!("r{i}.dead"));
        let common = [
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("DATABASE_URL", url.as_str()),
            ("KAFKA_BROKERS", broker.bootstrap_servers()),
            ("KAFKA_TOPIC", created.as_str()),
            ("KAFKA_STATUS_TOPIC", status.as_str()),
            ("ORDER_CREATED_TOPIC", created.as_str()),
            ("STATUS_UPDATED_TOPIC", status.as_str()),
            ("DEAD_LETTER_TOPIC", dead.as_str()),
        ];
        // The backlog: orders created and announced by a host with no handlers.
        let mut vars = common.to_vec();
        vars.extend([("HANDLERS_DIR", "/nonexistent"), ("KAFKA_GROUP_ID", "seed")]);
        let seed = Host::start(&config(&vars)?).await?;
        create_orders(&reqwest::Client::new(), &format!("http://{}", seed.addr), BACKLOG).await?;
        wait_for(&seed.pool, "SELECT count(*) FROM outbox WHERE published_at IS NULL", 0).await?;
        seed.shutdown().await?;

        // A fresh group drains it: every order walks to shipped with no delays.
        let dir = handlers.path().display().to_string();
        let mut vars = common.to_vec();
        vars.extend([("HANDLERS_DIR", dir.as_str()), ("KAFKA_GROUP_ID", "bench")]);
        let host = Host::start_with(&config(&vars)?, invoker).await?;
        // order-processor and notifier each handle order-created and three status updates.
        wait_for(&host.pool, "SELECT count(*) FROM processed_events", 8 * BACKLOG as i64).await?;
        let (applications, events, secs): (i64, i64, f64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT event_id),
                    EXTRACT(EPOCH FROM max(processed_at) - min(processed_at))::float8
             FROM processed_events",
        )
        .fetch_one(&host.pool)
        .await?;
        let (shipped,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders WHERE status = 'shipped'")
            .fetch_one(&host.pool)
            .await?;
        anyhow::ensure!(shipped == BACKLOG as i64, "only {shipped} of {BACKLOG} orders shipped");
        host.shutdown().await?;
        eprintln!("  round {} {mode:<6} {:>7.0} events/s", i / 2 + 1, events as f64 / secs);
        results.push((mode, Run { applications, events, window: Duration::from_secs_f64(secs) }));
    }

    let median = |mode: &str| {
        let mut runs: Vec<&Run> = results.iter().filter(|(m, _)| *m == mode).map(|(_, r)| r).collect();
        runs.sort_by_key(|r| r.window);
        runs[runs.len() / 2]
    };
    println!(
        "pipeline throughput ({BACKLOG} orders backlogged, no stage delays, order-processor + notifier, median of {ROUNDS} interleaved rounds)"
    );
    for mode in ["wasm", "native"] {
        let r = median(mode);
        let secs = r.window.as_secs_f64();
        println!(
            "  {mode:<6}  {:>7.0} events/s  {:>7.0} handler applications/s  {:>6.0} orders/s  ({:.2} s)",
            r.events as f64 / secs,
            r.applications as f64 / secs,
            BACKLOG as f64 / secs,
            secs
        );
    }
    let ratio = median("native").window.as_secs_f64() / median("wasm").window.as_secs_f64();
    println!("  wasm / native throughput  {ratio:.2}×");
    Ok(())
}

/// The shipped components with order-processor's stage delays set to zero.
fn throughput_handlers(root: &std::path::Path) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for name in ["order-processor", "notifier"] {
        let from = root.join(format!("target/handlers/{name}.wasm"));
        std::fs::copy(&from, dir.path().join(format!("{name}.wasm")))
            .map_err(|e| anyhow::anyhow!("{}: {e}; run `cargo xtask bench`", from.display()))?;
    }
    std::fs::write(
        dir.path().join("handlers.toml"),
        r#"[[handler]]
name = "order-processor"
file = "order-processor.wasm"
events = ["order-created", "status-updated"]
config = { STAGE_DELAYS_MS = "0,0,0" }

[[handler]]
name = "notifier"
file = "notifier.wasm"
events = ["order-created", "status-updated"]
"#,
    )?;
    Ok(dir)
}

/// Polls `sql` (a count) until it returns `want`, for up to ten minutes.
async fn wait_for(pool: &sqlx::PgPool, sql: &str, want: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (n,): (i64,) = sqlx::query_as(sql).fetch_one(pool).await?;
        if n == want {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{sql}: {n}, not {want}, after 10 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
