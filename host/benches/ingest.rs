//! `cargo xtask bench ingest`: `POST /api/orders` on the real host (validation, tracing, metrics,
//! error mapping, the full order JSON back) against a bare axum endpoint doing the same insert
//! (`db::orders::create`: the order, its items, its history row and its outbox record, one
//! transaction) on the same pool. 32 concurrent clients, closed loop, rounds interleaved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use devpg::LocalPostgres;
use host::config::{Config, Topics};
use host::db::orders::{Address, NewOrder};
use host::kafka::EmbeddedBroker;
use host::orders::LineRequest;
use host::serve::Host;

const CLIENTS: usize = 32;
const REQUESTS: usize = 6_400;
const ROUNDS: usize = 3;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if !(args.is_empty() || args.iter().any(|a| "ingest".contains(a.as_str()))) {
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("order-host-bench-ingest-pg-{}", std::process::id()));
    let pg = LocalPostgres::start(&dir)?;
    let result = tokio::runtime::Runtime::new()?.block_on(run(&pg));
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[derive(serde::Deserialize)]
struct Body {
    customer_name: String,
    customer_email: String,
    items: Vec<Line>,
}

#[derive(serde::Deserialize)]
struct Line {
    product_id: String,
    quantity: i64,
}

/// The floor: parse, insert, answer with the id. No validation, middleware or order JSON.
async fn bare_create(
    State((pool, topics)): State<(sqlx::PgPool, Arc<Topics>)>,
    axum::Json(b): axum::Json<Body>,
) -> Result<(StatusCode, axum::Json<serde_json::Value>), StatusCode> {
    let new = NewOrder {
        customer_name: b.customer_name,
        customer_email: b.customer_email,
        address: Address::default(),
        lines: b
            .items
            .into_iter()
            .map(|l| LineRequest { product_id: l.product_id, quantity: l.quantity })
            .collect(),
    };
    let order = host::db::orders::create(&pool, &new, false, &topics)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok((StatusCode::CREATED, axum::Json(serde_json::json!({ "id": order.id }))))
}

async fn run(pg: &LocalPostgres) -> anyhow::Result<()> {
    let broker = EmbeddedBroker::start(&["order.created", "order.status-updated", "order.dead-letter"], 3)?;
    let url = pg.url("postgres");
    let vars = [
        ("HTTP_ADDR", "127.0.0.1:0"),
        ("DATABASE_URL", url.as_str()),
        ("KAFKA_BROKERS", broker.bootstrap_servers()),
        ("HANDLERS_DIR", "/nonexistent"),
    ];
    let config = Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))?;
    let host = Host::start(&config).await?;
    // The bare endpoint shares the host's API pool: the same connections, the same Postgres.
    let app = axum::Router::new()
        .route("/orders", post(bare_create))
        .with_state((host.pool.clone(), Arc::new(config.topics.clone())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let targets = [
        ("POST /api/orders (host)", format!("http://{}/api/orders", host.addr)),
        ("bare axum insert", format!("http://{bare_addr}/orders")),
    ];
    let http = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build()?;
    let mut results: Vec<(usize, Measured)> = Vec::new();
    let bar = indicatif::ProgressBar::new((ROUNDS * targets.len()) as u64);
    for _ in 0..ROUNDS {
        for (i, (_, url)) in targets.iter().enumerate() {
            results.push((i, measure(&http, url).await?));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    println!(
        "HTTP ingest ({CLIENTS} concurrent clients, {REQUESTS} orders per round, median of {ROUNDS} interleaved rounds)"
    );
    let mut rates = Vec::new();
    for (i, (name, _)) in targets.iter().enumerate() {
        let mut runs: Vec<&Measured> = results.iter().filter(|(t, _)| *t == i).map(|(_, m)| m).collect();
        runs.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
        let m = runs[runs.len() / 2];
        println!(
            "  {name:<24} {:>7.0} orders/s  p50 {:>5.2} ms  p99 {:>5.2} ms",
            m.per_sec,
            m.p50.as_secs_f64() * 1e3,
            m.p99.as_secs_f64() * 1e3
        );
        rates.push(m.per_sec);
    }
    println!("  host / bare throughput  {:.2}×", rates[0] / rates[1]);
    host.shutdown().await?;
    Ok(())
}

struct Measured {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

/// `REQUESTS` orders from `CLIENTS` clients, each sending its next as soon as its last answered.
async fn measure(http: &reqwest::Client, url: &str) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let clients = (0..CLIENTS).map(|c| {
        let (http, url) = (http.clone(), url.to_string());
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(REQUESTS / CLIENTS);
            for i in 0..REQUESTS / CLIENTS {
                let body = serde_json::json!({"customer_email": format!("ingest{c}-{i}@x.io"), "customer_name": "Ingest",
                    "items": [{"product_id": ((i % 10) + 1).to_string(), "quantity": 1}]});
                let sent = Instant::now();
                let r = http.post(&url).json(&body).send().await?;
                anyhow::ensure!(r.status() == 201, "{url} answered {}", r.status());
                r.bytes().await?;
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        })
    });
    let mut latencies = Vec::with_capacity(REQUESTS);
    for c in futures_util::future::join_all(clients).await {
        latencies.extend(c??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    Ok(Measured { per_sec: latencies.len() as f64 / elapsed.as_secs_f64(), p50: pct(0.5), p99: pct(0.99) })
}
