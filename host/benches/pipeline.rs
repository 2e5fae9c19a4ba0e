//! `cargo xtask bench pipeline`: the whole pipeline against a private Postgres and the embedded
//! broker, through the real handler components. Two parts, selectable by name:
//!
//! - `pipeline-demo`: 1,000 DEMO_MODE orders created as fast as the API takes them; orders/s
//!   accepted and shipped, and created→shipped latency.
//! - `pipeline-throughput`: a backlog of orders with no stage delays, consumed by a fresh host;
//!   events/s through consume → handler → Postgres → produce: one transaction per application
//!   against group commit, WASM components against the same logic compiled natively (rounds
//!   interleaved against drift), on a throwaway and on a durable Postgres.
//! - `pipeline-handlers`: WASM against native handler logic alone, batched, on a backlog four
//!   times the throughput's, so that each drain lasts seconds rather than one or two, in more
//!   rounds: the same ratio as the throughput's, with less of one round's noise in it.
//! - `pipeline-shadow`: the same drain, batched WASM, with and without a shadow candidate (an
//!   identical version) of each handler running on every event: what shadowing costs.
//! - `pipeline-replicas`: a backlog drained by 1, 2 and 3 `order-host` processes in one group
//!   (`pipeline/replicas.rs`).
//! - `pipeline-soak` (only when named, e.g. `cargo xtask bench soak`): 200,000 orders with
//!   retention on; events/s, RSS and table sizes per tenth.
//!
//! Not criterion benchmarks: one run is seconds to minutes of wall-clock behaviour.

#[path = "pipeline/native.rs"]
mod native;
#[path = "pipeline/replicas.rs"]
mod replicas;

use std::sync::Arc;
use std::time::{Duration, Instant};

use devpg::{Durability, LocalPostgres};
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
    let replicas = selected("pipeline-replicas");
    let shadow = selected("pipeline-shadow");
    let handlers = selected("pipeline-handlers");
    // Minutes long: only when asked for by name.
    let soak = args.iter().any(|a| a.contains("soak"));
    if !demo && !throughput && !replicas && !soak && !shadow && !handlers {
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
            run_throughput(&pg, &root, "Postgres without fsync, as in development", &MODES, THROUGHPUT)
                .await?;
            // Where commits are real, one commit per application costs a WAL flush each.
            // `BENCH_DURABLE=0` skips this half (for profiling one configuration).
            if !std::env::var("BENCH_DURABLE").is_ok_and(|v| v == "0") {
                run_durable(&root).await?;
            }
        }
        if shadow {
            let label = "a shadow of each handler on every event, and none";
            run_throughput(&pg, &root, label, &SHADOW_MODES, THROUGHPUT).await?;
        }
        if handlers {
            let label = "WASM against native handlers, long drains, Postgres without fsync";
            run_throughput(&pg, &root, label, &HANDLER_MODES, LONG_DRAINS).await?;
        }
        if replicas {
            replicas::run(&pg, &root).await?;
        }
        if soak {
            run_soak(&pg, &root).await?;
        }
        anyhow::Ok(())
    });
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The throughput drain on a Postgres of its own with fsync and `synchronous_commit` on.
async fn run_durable(root: &std::path::Path) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("order-host-bench-durable-pg-{}", std::process::id()));
    let durable = LocalPostgres::start_with(&dir, Durability::Durable)?;
    let result = run_throughput(
        &durable,
        root,
        "durable Postgres: fsync and synchronous_commit on",
        &MODES,
        THROUGHPUT,
    )
    .await;
    drop(durable);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The dispatcher's fetch wait on the embedded broker. The benches reach it by address, not as
/// `KAFKA_BROKERS=embedded`, so they set what that mode gets (`EMBEDDED_FETCH_WAIT_MS`) unless
/// `BENCH_FETCH_WAIT_MS` says otherwise (500 measures the client's default against it).
fn fetch_wait() -> String {
    std::env::var("BENCH_FETCH_WAIT_MS").unwrap_or_else(|_| host::config::EMBEDDED_FETCH_WAIT_MS.to_string())
}

fn config(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
    Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
}

async fn run_demo(pg: &LocalPostgres, root: &std::path::Path) -> anyhow::Result<()> {
    let broker = EmbeddedBroker::start(&["order.created", "order.status-updated", "order.dead-letter"], 3)?;
    let handlers = root.join("target/handlers").display().to_string();
    let (url, fetch_wait) = (pg.url("postgres"), fetch_wait());
    let vars = [
        ("HTTP_ADDR", "127.0.0.1:0"),
        ("DATABASE_URL", url.as_str()),
        ("KAFKA_BROKERS", broker.bootstrap_servers()),
        ("KAFKA_FETCH_WAIT_MS", fetch_wait.as_str()),
        ("HANDLERS_DIR", handlers.as_str()),
        ("DEMO_MODE", "true"),
    ];
    let host = Host::start(&config(&vars)?).await?;
    let base = format!("http://{}", host.addr);
    let http = reqwest::Client::new();

    // One order shipped before the clock starts: the dispatcher's first group join (about 3 s
    // on the embedded broker) is start-up, not the pipeline, and would otherwise land on the
    // first orders' latency. Orders created from `since` on are the measured ones.
    let join_started = Instant::now();
    create_orders_from(&http, &base, ORDERS, 1, &indicatif::ProgressBar::hidden()).await?;
    wait_for(&host.pool, "SELECT count(*) FROM orders WHERE status = 'shipped'", 1).await?;
    let joined = join_started.elapsed();
    let (since,): (String,) = sqlx::query_as("SELECT now()::text").fetch_one(&host.pool).await?;

    let started = Instant::now();
    create_orders(&http, &base, ORDERS).await?;
    let accepted = started.elapsed();

    wait_for(&host.pool, "SELECT count(*) FROM orders WHERE status = 'shipped'", ORDERS as i64 + 1).await?;
    let shipped = started.elapsed();
    let mut latencies: Vec<f64> = sqlx::query_as::<_, (f64,)>(
        "SELECT EXTRACT(EPOCH FROM (s.at - c.at))::float8 * 1000 FROM order_status_history c
         JOIN order_status_history s ON s.order_id = c.order_id AND s.to_status = 'shipped'
         WHERE c.from_status IS NULL AND c.at >= $1::timestamptz",
    )
    .bind(&since)
    .fetch_all(&host.pool)
    .await?
    .into_iter()
    .map(|(ms,)| ms)
    .collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!("pipeline (DEMO_MODE, 3 × 200 ms stages, {ORDERS} orders, {CONCURRENCY} concurrent clients)");
    println!("  warm-up    1 order shipped {:.2} s after start (the group join)", joined.as_secs_f64());
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
    print_stages(&host.pool, &since).await?;
    host.shutdown().await?;
    Ok(())
}

/// Where an order's time goes, stage by stage (p50 / p99 over the orders): the first stage is the
/// created event's trip (outbox, relay, broker, dispatcher); the other two are a 200 ms timer
/// each, its firing, and the status record's trip to the notifier.
async fn print_stages(pool: &sqlx::PgPool, since: &str) -> anyhow::Result<()> {
    let stages: Vec<(String, f64, f64)> = sqlx::query_as(
        "WITH t AS (
           SELECT order_id,
                  max(at) FILTER (WHERE from_status IS NULL) AS pending,
                  max(at) FILTER (WHERE to_status = 'processing') AS processing,
                  max(at) FILTER (WHERE to_status = 'confirmed') AS confirmed,
                  max(at) FILTER (WHERE to_status = 'shipped') AS shipped
           FROM order_status_history GROUP BY order_id
           HAVING min(at) >= $1::timestamptz)
         SELECT stage,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)
         FROM t, LATERAL (VALUES
                (1, 'pending→processing', EXTRACT(EPOCH FROM processing - pending)::float8 * 1000),
                (2, 'processing→confirmed', EXTRACT(EPOCH FROM confirmed - processing)::float8 * 1000),
                (3, 'confirmed→shipped', EXTRACT(EPOCH FROM shipped - confirmed)::float8 * 1000))
              AS v(n, stage, ms)
         GROUP BY n, stage ORDER BY n",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
    for (stage, p50, p99) in stages {
        println!("    {stage:<22} p50 {p50:>6.0} ms  p99 {p99:>6.0} ms");
    }
    Ok(())
}

/// Creates `n` orders through the API, `CONCURRENCY` at a time.
async fn create_orders(http: &reqwest::Client, base: &str, n: usize) -> anyhow::Result<()> {
    create_orders_from(http, base, 0, n, &indicatif::ProgressBar::hidden()).await
}

/// Creates orders `first..first + n` (numbering their customers), counting them on `bar`.
async fn create_orders_from(
    http: &reqwest::Client,
    base: &str,
    first: usize,
    n: usize,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let bodies: Vec<serde_json::Value> = (first..first + n)
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
        bar.inc(chunk.len() as u64);
    }
    Ok(())
}

/// How big a backlog each round drains, and how many rounds interleave the modes.
#[derive(Clone, Copy)]
struct Drains {
    backlog: usize,
    rounds: usize,
}

/// Five rounds, not three: on this 2-core VM one drain's rate moves by a third from round to round.
const THROUGHPUT: Drains = Drains { backlog: 3_000, rounds: 5 };
/// A batched drain of 3,000 orders lasts 1–2 s, short enough that one stall of the machine moves
/// a round's rate by a third; 12,000 last 5–10 s.
const LONG_DRAINS: Drains = Drains { backlog: 12_000, rounds: 7 };

/// What one throughput run measured.
struct Run {
    /// Handler applications (a processed_events row each): every event × every subscriber.
    applications: i64,
    /// Distinct events consumed.
    events: i64,
    /// From the first application committed to the last.
    window: Duration,
}

impl Run {
    fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.window.as_secs_f64()
    }
}

/// One configuration of the drain: how handler answers commit, and what runs the handler logic.
struct Mode {
    name: &'static str,
    /// `DISPATCH_BATCH_MAX`: `1` is one transaction per handler application (before group commit);
    /// `None` is the host's default, so the bench follows it.
    batch_max: Option<&'static str>,
    /// `DISPATCH_MAX_IN_FLIGHT`, `None` for the default.
    in_flight: Option<&'static str>,
    native: bool,
    /// A shadow candidate (an identical version) of each handler, started before the drain.
    shadow: bool,
}

/// The defaults before 2026-12-07 (half the batch, half the events in flight), run side by side.
const EARLIER_DEFAULTS: &str = "batched wasm, 128 per commit, 256 in flight";

const MODES: [Mode; 4] = [
    Mode {
        name: "per-application wasm",
        batch_max: Some("1"),
        in_flight: None,
        native: false,
        shadow: false,
    },
    Mode { name: "batched wasm", batch_max: None, in_flight: None, native: false, shadow: false },
    Mode { name: "batched native", batch_max: None, in_flight: None, native: true, shadow: false },
    Mode {
        name: EARLIER_DEFAULTS,
        batch_max: Some("128"),
        in_flight: Some("256"),
        native: false,
        shadow: false,
    },
];

const SHADOW_MODES: [Mode; 2] = [
    Mode { name: "batched wasm", batch_max: None, in_flight: None, native: false, shadow: false },
    Mode { name: "batched wasm + shadows", batch_max: None, in_flight: None, native: false, shadow: true },
];

const HANDLER_MODES: [Mode; 2] = [
    Mode { name: "batched wasm", batch_max: None, in_flight: None, native: false, shadow: false },
    Mode { name: "batched native", batch_max: None, in_flight: None, native: true, shadow: false },
];

const ADMIN_TOKEN: &str = "bench-token";

/// Starts an identical candidate of each shipped handler as its shadow, through the admin API.
async fn start_shadows(host: &Host, root: &std::path::Path) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    for name in ["order-processor", "notifier"] {
        let mut bytes = std::fs::read(root.join(format!("target/handlers/{name}.wasm")))?;
        // A custom section: the same behaviour under another sha256.
        bytes.extend_from_slice(&[0, 8, 7, b's', b'h', b'a', b'd', b'o', b'w', b'1']);
        let r = http
            .put(format!("http://{}/admin/handlers/{name}?mode=shadow", host.addr))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/wasm")
            .body(bytes)
            .send()
            .await?;
        anyhow::ensure!(r.status() == 202, "starting the {name} shadow: {}", r.text().await?);
    }
    Ok(())
}

/// Both shadows' compared, different and skipped events, and each side's invocation p50 (ms).
async fn shadow_counts(host: &Host) -> anyhow::Result<(u64, u64, u64, String)> {
    let http = reqwest::Client::new();
    let (mut counts, mut p50s) = ((0, 0, 0), Vec::new());
    for name in ["order-processor", "notifier"] {
        let url = format!("http://{}/admin/handlers/{name}/shadow", host.addr);
        let s: serde_json::Value = http.get(url).bearer_auth(ADMIN_TOKEN).send().await?.json().await?;
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        counts = (counts.0 + n("compared"), counts.1 + n("different"), counts.2 + n("skipped"));
        let p50 = |side: &str| s[side]["p50_ms"].as_f64().unwrap_or(0.0) * 1000.0;
        p50s.push(format!(
            "{name} p50 serving {:.0} µs, candidate {:.0} µs",
            p50("serving"),
            p50("candidate")
        ));
    }
    Ok((counts.0, counts.1, counts.2, p50s.join(", ")))
}

async fn run_throughput(
    pg: &LocalPostgres,
    root: &std::path::Path,
    label: &str,
    modes: &[Mode],
    Drains { backlog, rounds }: Drains,
) -> anyhow::Result<()> {
    println!("pipeline throughput, {label}");
    // `BENCH_MODES=wasm` (a comma-separated list of name fragments) keeps only the matching
    // configurations: for profiling one of them under `perf record`.
    let wanted = std::env::var("BENCH_MODES").ok();
    let modes: Vec<&Mode> = modes
        .iter()
        .filter(|m| wanted.as_deref().is_none_or(|w| w.split(',').any(|f| m.name.contains(f.trim()))))
        .collect();
    // Rounds interleave the modes so drift on a noisy machine hits them alike.
    let runs: Vec<&Mode> = (0..rounds).flat_map(|_| modes.iter().copied()).collect();
    let topics = Round::topics("r", runs.len());
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let broker = EmbeddedBroker::start(&names, 3)?;
    let handlers = throughput_handlers(root)?;

    let admin = sqlx::PgPool::connect(&pg.url("postgres")).await?;
    let profiler = Profiler::from_env()?;
    let mut results: Vec<(&str, Run)> = Vec::new();
    let bar = indicatif::ProgressBar::new(runs.len() as u64);
    for (i, mode) in runs.into_iter().enumerate() {
        let round = Round::create(pg, &admin, &broker, "r", i).await?;
        let common = round.vars();
        let status = &round.status;
        seed_backlog(&common, backlog).await?;

        // A fresh group drains it: every order walks to shipped with no delays.
        let dir = handlers.path().display().to_string();
        let mut vars = common.to_vec();
        // A group of its own: joining the last round's group would wait out its member's session.
        let group = format!("bench{i}");
        vars.extend([
            ("HANDLERS_DIR", dir.as_str()),
            ("KAFKA_GROUP_ID", group.as_str()),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
        ]);
        let limits = [("DISPATCH_BATCH_MAX", mode.batch_max), ("DISPATCH_MAX_IN_FLIGHT", mode.in_flight)];
        vars.extend(limits.into_iter().filter_map(|(name, value)| Some((name, value?))));
        let invoker = mode.native.then(|| Arc::new(native::NativeHandlers) as Arc<dyn Invoke>);
        let cpu_before = Cpu::now();
        profiler.start();
        let host = Host::start_with(&config(&vars)?, invoker).await?;
        // Before the group join completes (hundreds of ms), so before the first event.
        if mode.shadow {
            start_shadows(&host, root).await?;
        }
        // order-processor and notifier each handle order-created and three status updates.
        // Every quarter second: the count reads the whole table, and polled every 20 ms it took
        // about a tenth of Postgres's time in a batched drain, from the pipeline it measures.
        // The window is read from the rows' own timestamps, so the poll's delay is not in it.
        let done = "SELECT count(*) FROM processed_events";
        poll_count(
            &host.pool,
            done,
            8 * backlog as i64,
            Duration::from_millis(250),
            Duration::from_secs(600),
        )
        .await?;
        let cpu = Cpu::now().since(&cpu_before);
        profiler.stop();
        let metrics = reqwest::get(format!("http://{}/metrics", host.addr)).await?.text().await?;
        let series = |name: &str| {
            metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0)
        };
        let batches = series("order_host_dispatch_batch_applications_count{path=\"grouped\"}");
        let batched = series("order_host_dispatch_batch_applications_sum{path=\"grouped\"}");
        let (applications, events, secs): (i64, i64, f64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT event_id),
                    EXTRACT(EPOCH FROM max(processed_at) - min(processed_at))::float8
             FROM processed_events",
        )
        .fetch_one(&host.pool)
        .await?;
        // Where an event's time goes, by Postgres's clock: from the transaction that wrote its
        // outbox row to the relay marking it published, and from there to the transaction that
        // applied it (consumer fetch, snapshot, invocation, waiting for a batch).
        let (relay_hop, consume_hop): (f64, f64) = sqlx::query_as(
            "WITH o AS (SELECT convert_from(header_values[array_position(header_names, 'ce_id')], 'UTF8') AS ce_id,
                               created_at, published_at FROM outbox WHERE topic = $1),
                  p AS (SELECT event_id, min(processed_at) AS applied FROM processed_events GROUP BY event_id)
             SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM o.published_at - o.created_at)) * 1000,
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM p.applied - o.published_at)) * 1000
             FROM o JOIN p ON p.event_id = o.ce_id",
        )
        .bind(status)
        .fetch_one(&host.pool)
        .await?;
        let (shipped,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders WHERE status = 'shipped'")
            .fetch_one(&host.pool)
            .await?;
        anyhow::ensure!(shipped == backlog as i64, "only {shipped} of {backlog} orders shipped");
        let shadowed = match mode.shadow {
            true => {
                let (compared, different, skipped, p50s) = shadow_counts(&host).await?;
                anyhow::ensure!(
                    different == 0,
                    "an identical candidate answered differently {different} times"
                );
                format!(
                    "; shadows compared {compared} of {applications} invocations ({skipped} skipped); {p50s}"
                )
            }
            false => String::new(),
        };
        host.shutdown().await?;
        round.finish(&admin).await?;
        bar.suspend(|| {
            println!(
                "  round {} {:<44} {:>7.0} events/s  CPU per event: host {:>4.0} µs, Postgres {:>4.0} µs  {batches:.0} batches of {:.1}; median hop: relay {relay_hop:.0} ms, consume→apply {consume_hop:.0} ms{shadowed}",
                i / modes.len() + 1,
                mode.name,
                events as f64 / secs,
                cpu.host.as_secs_f64() * 1e6 / events as f64,
                cpu.postgres.as_secs_f64() * 1e6 / events as f64,
                if batches > 0.0 { batched / batches } else { 1.0 },
            )
        });
        bar.inc(1);
        results.push((mode.name, Run { applications, events, window: Duration::from_secs_f64(secs) }));
    }
    bar.finish_and_clear();

    let median = |mode: &str| {
        let mut runs: Vec<&Run> = results.iter().filter(|(m, _)| *m == mode).map(|(_, r)| r).collect();
        runs.sort_by_key(|r| r.window);
        runs[runs.len() / 2]
    };
    println!(
        "pipeline throughput ({label}; {backlog} orders backlogged, no stage delays, order-processor + notifier, median of {rounds} interleaved rounds)"
    );
    for mode in &modes {
        let r = median(mode.name);
        let secs = r.window.as_secs_f64();
        println!(
            "  {:<44}  {:>7.0} events/s  {:>7.0} handler applications/s  {:>6.0} orders/s  ({:.2} s)",
            mode.name,
            r.events as f64 / secs,
            r.applications as f64 / secs,
            backlog as f64 / secs,
            secs
        );
    }
    let rate = |name: &str| median(name).events_per_sec();
    // Each round's own ratio as well: its two drains ran seconds apart, so drift of the machine
    // between rounds cancels out of it, where it does not from a ratio of medians.
    let round_ratio = |a: &str, b: &str| {
        let mut ratios: Vec<f64> = results
            .chunks(modes.len())
            .filter_map(|round| {
                let in_round =
                    |name: &str| round.iter().find(|(m, _)| *m == name).map(|(_, r)| r.events_per_sec());
                Some(in_round(a)? / in_round(b)?)
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        let list: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        format!(
            "{:.2}× (median of medians), {:.2}× (median of rounds: {})",
            rate(a) / rate(b),
            ratios[ratios.len() / 2],
            list.join(", ")
        )
    };
    let has = |name: &str| modes.iter().any(|m| m.name == name);
    if has("batched wasm") && has("per-application wasm") {
        println!(
            "  batched / per-application (wasm)  {}",
            round_ratio("batched wasm", "per-application wasm")
        );
    }
    if has("batched wasm") && has("batched native") {
        println!("  wasm / native (batched)           {}", round_ratio("batched wasm", "batched native"));
    }
    if has("batched wasm") && has(EARLIER_DEFAULTS) {
        println!("  defaults / earlier defaults       {}", round_ratio("batched wasm", EARLIER_DEFAULTS));
    }
    if has("batched wasm") && has("batched wasm + shadows") {
        println!(
            "  with shadows / without (batched wasm)  {}",
            round_ratio("batched wasm + shadows", "batched wasm")
        );
    }
    Ok(())
}

/// One round's own database and topics, so no round sees another's records.
struct Round {
    db: String,
    url: String,
    brokers: String,
    fetch_wait: String,
    /// What `KAFKA_BROKERS=embedded` gets, for the same reason as the fetch wait: a replica
    /// joining a settled group on the mock cluster would otherwise stall it for 44 s.
    session_timeout: String,
    created: String,
    status: String,
    dead: String,
}

impl Round {
    /// Topics `{prefix}{i}.created|status|dead` for `rounds` rounds, for the embedded broker.
    fn topics(prefix: &str, rounds: usize) -> Vec<String> {
        (0..rounds).flat_map(|i| ["created", "status", "dead"].map(|t| format!("{prefix}{i}.{t}"))).collect()
    }

    async fn create(
        pg: &LocalPostgres,
        admin: &sqlx::PgPool,
        broker: &EmbeddedBroker,
        prefix: &str,
        i: usize,
    ) -> anyhow::Result<Round> {
        let db = format!("{prefix}round_{i}");
        sqlx::query(&format!("CREATE DATABASE {db}")).execute(admin).await?;
        Ok(Round {
            url: pg.url(&db),
            db,
            brokers: broker.bootstrap_servers().to_string(),
            fetch_wait: fetch_wait(),
            session_timeout: host::config::EMBEDDED_SESSION_TIMEOUT_MS.to_string(),
            created: format!("{prefix}{i}.created"),
            status: format!("{prefix}{i}.status"),
            dead: format!("{prefix}{i}.dead"),
        })
    }

    /// Drops the round's database once it is measured. Kept, the rounds' tables were vacuumed
    /// and analysed by autovacuum while later rounds ran, on the same two cores.
    async fn finish(self, admin: &sqlx::PgPool) -> anyhow::Result<()> {
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.db)).execute(admin).await?;
        Ok(())
    }

    /// The host's settings every process of the round shares.
    fn vars(&self) -> [(&str, &str); 10] {
        [
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("DATABASE_URL", &self.url),
            ("KAFKA_BROKERS", &self.brokers),
            ("KAFKA_FETCH_WAIT_MS", &self.fetch_wait),
            ("KAFKA_SESSION_TIMEOUT_MS", &self.session_timeout),
            ("KAFKA_TOPIC", &self.created),
            ("KAFKA_STATUS_TOPIC", &self.status),
            ("ORDER_CREATED_TOPIC", &self.created),
            ("STATUS_UPDATED_TOPIC", &self.status),
            ("DEAD_LETTER_TOPIC", &self.dead),
        ]
    }
}

/// The backlog: `orders` orders created and announced by a host with no handlers.
async fn seed_backlog(common: &[(&str, &str)], orders: usize) -> anyhow::Result<()> {
    let mut vars = common.to_vec();
    vars.extend([("HANDLERS_DIR", "/nonexistent"), ("KAFKA_GROUP_ID", "seed")]);
    let seed = Host::start(&config(&vars)?).await?;
    create_orders(&reqwest::Client::new(), &format!("http://{}", seed.addr), orders).await?;
    wait_for(&seed.pool, "SELECT count(*) FROM outbox WHERE published_at IS NULL", 0).await?;
    seed.shutdown().await
}

/// `BENCH_PERF_CTL=<fifo>`: the control fifo of a `perf record --control=fifo:<fifo> -D -1`
/// started around the bench, so that it samples only the drains (not seeding, set-up or the
/// checks after). Postgres is the bench's child, so `perf` follows it too.
struct Profiler(Option<std::fs::File>);

impl Profiler {
    fn from_env() -> anyhow::Result<Profiler> {
        let Ok(fifo) = std::env::var("BENCH_PERF_CTL") else { return Ok(Profiler(None)) };
        let ctl = std::fs::OpenOptions::new().write(true).open(&fifo);
        Ok(Profiler(Some(ctl.map_err(|e| anyhow::anyhow!("opening perf's control fifo {fifo}: {e}"))?)))
    }

    fn start(&self) {
        self.send(b"enable\n");
    }

    fn stop(&self) {
        self.send(b"disable\n");
    }

    /// Best effort: a profiling aid never fails the bench.
    fn send(&self, command: &[u8]) {
        use std::io::Write;
        if let Some(mut ctl) = self.0.as_ref() {
            let _ = ctl.write_all(command);
        }
    }
}

/// CPU time used so far by this process (the host, the embedded broker, the load client) and by
/// every Postgres process, from `/proc` (Linux only: this is a benchmark for the project machine).
struct Cpu {
    host: Duration,
    postgres: Duration,
}

impl Cpu {
    fn now() -> Cpu {
        let mut postgres = Duration::ZERO;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // With its reaped children's time: a backend that exits between the two samples (the
            // seeding host's connections close as the drain starts) would otherwise take its
            // whole lifetime's CPU out of the sum, and the difference read 0.
            if stat.contains("(postgres)") {
                postgres += cpu_of(&stat, Reaped::Included);
            }
        }
        let own = std::fs::read_to_string("/proc/self/stat")
            .map(|s| cpu_of(&s, Reaped::Excluded))
            .unwrap_or_default();
        Cpu { host: own, postgres }
    }

    fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            host: self.host.saturating_sub(earlier.host),
            postgres: self.postgres.saturating_sub(earlier.postgres),
        }
    }
}

/// utime + stime of a `/proc/<pid>/stat` line, at the kernel's usual 100 ticks per second, and
/// with `Reaped::Included` cutime + cstime too: the CPU of its exited children.
fn cpu_of(stat: &str, reaped: Reaped) -> Duration {
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // Fields after the command: state is 0, utime 11, stime 12, cutime 13, cstime 14.
    let children = match reaped {
        Reaped::Included => ticks(13) + ticks(14),
        Reaped::Excluded => 0,
    };
    Duration::from_millis((ticks(11) + ticks(12) + children) * 10)
}

#[derive(Clone, Copy)]
enum Reaped {
    Included,
    Excluded,
}

/// The shipped components with order-processor's stage delays set to zero.
fn throughput_handlers(root: &std::path::Path) -> anyhow::Result<tempfile::TempDir> {
    handlers_with(root, "0,0,0")
}

/// The shipped components, order-processor with `STAGE_DELAYS_MS = delays`.
fn handlers_with(root: &std::path::Path, delays: &str) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for name in ["order-processor", "notifier"] {
        let from = root.join(format!("target/handlers/{name}.wasm"));
        std::fs::copy(&from, dir.path().join(format!("{name}.wasm")))
            .map_err(|e| anyhow::anyhow!("{}: {e}; run `cargo xtask bench`", from.display()))?;
    }
    std::fs::write(
        dir.path().join("handlers.toml"),
        format!(
            r#"[[handler]]
name = "order-processor"
file = "order-processor.wasm"
events = ["order-created", "status-updated"]
config = {{ STAGE_DELAYS_MS = "{delays}" }}

[[handler]]
name = "notifier"
file = "notifier.wasm"
events = ["order-created", "status-updated"]
"#
        ),
    )?;
    Ok(dir)
}

const SOAK_ORDERS: usize = 200_000;
const TENTHS: usize = 10;

/// `pipeline-soak`: 200,000 orders through the real pipeline with retention on, in ten equal
/// parts; each part is posted and then drained to `shipped`. Per tenth: events/s, host RSS, and
/// the sizes of the tables retention bounds. Never part of an unfiltered run (minutes long).
async fn run_soak(pg: &LocalPostgres, root: &std::path::Path) -> anyhow::Result<()> {
    let broker = EmbeddedBroker::start(&["order.created", "order.status-updated", "order.dead-letter"], 3)?;
    let handlers = soak_handlers(root)?;
    let admin = sqlx::PgPool::connect(&pg.url("postgres")).await?;
    sqlx::query("CREATE DATABASE soak").execute(&admin).await?;
    let url = pg.url("soak");
    let dir = handlers.path().display().to_string();
    // Short windows, so the soak shows retention keeping the tables bounded within minutes, and
    // shorter than a part (20-30 s here), so that every part, the first among them, runs on
    // tables at their bounded size: with a 30 s idempotency window the first part alone ran on
    // a table filling from empty and was the fastest for it (BENCHMARKS.md, soak).
    let vars = [
        ("HTTP_ADDR", "127.0.0.1:0"),
        ("DATABASE_URL", url.as_str()),
        ("KAFKA_BROKERS", broker.bootstrap_servers()),
        ("HANDLERS_DIR", dir.as_str()),
        ("RETENTION_IDEMPOTENCY_SECS", "10"),
        ("RETENTION_OUTBOX_SECS", "10"),
        ("RETENTION_INTERVAL_SECS", "5"),
    ];
    let host = Host::start(&config(&vars)?).await?;
    let base = format!("http://{}", host.addr);
    let http = reqwest::Client::new();
    let per_tenth = SOAK_ORDERS / TENTHS;
    let bar = indicatif::ProgressBar::new(SOAK_ORDERS as u64);
    println!("pipeline soak ({SOAK_ORDERS} orders in {TENTHS} parts, stage delays 5 ms, retention on)");
    println!("  part  events/s  host RSS  outbox rows (MiB)  idempotency rows (MiB)  timers rows (MiB)");
    let mut rates = Vec::new();
    for tenth in 0..TENTHS {
        let started = Instant::now();
        // Counted among this part's orders only (the `created_at` index): a count over every
        // order would scan a table ten times larger by the last part, on the same two cores.
        let (since,): (String,) = sqlx::query_as("SELECT now()::text").fetch_one(&host.pool).await?;
        create_orders_from(&http, &base, tenth * per_tenth, per_tenth, &bar).await?;
        let shipped =
            format!("SELECT count(*) FROM orders WHERE created_at >= '{since}' AND status = 'shipped'");
        wait_for_slowly(&host.pool, &shipped, per_tenth as i64).await?;
        let rate = (4 * per_tenth) as f64 / started.elapsed().as_secs_f64();
        rates.push(rate);
        let sizes = host::db::retention::table_sizes(&host.pool).await?;
        let cell = |t: &str| {
            let (_, rows, bytes) = sizes.iter().find(|(n, ..)| n == t).expect("sized");
            format!("{rows} ({:.1})", *bytes as f64 / (1 << 20) as f64)
        };
        bar.suspend(|| {
            println!(
                "  {:>4}  {:>8.0}  {:>5.0} MiB  {:>17}  {:>22}  {:>17}",
                tenth + 1,
                rate,
                rss_mib(),
                cell("outbox"),
                cell("processed_events"),
                cell("timers")
            )
        });
    }
    bar.finish_and_clear();
    let (duplicated,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM (SELECT 1 FROM order_status_history GROUP BY order_id, to_status HAVING count(*) > 1) d",
    )
    .fetch_one(&host.pool)
    .await?;
    println!("  duplicate transitions: {duplicated}");
    println!("  last tenth / first tenth events/s: {:.2}×", rates[TENTHS - 1] / rates[0]);
    host.shutdown().await?;
    anyhow::ensure!(duplicated == 0, "{duplicated} transitions were applied twice");
    Ok(())
}

/// This process's resident set: the host, the embedded broker and the load client together.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// The shipped components with 5 ms stage delays: every order takes the timer path three times.
fn soak_handlers(root: &std::path::Path) -> anyhow::Result<tempfile::TempDir> {
    handlers_with(root, "5,5,5")
}

/// Polls `sql` (a count) every 20 ms until it returns `want`, for up to ten minutes.
async fn wait_for(pool: &sqlx::PgPool, sql: &str, want: i64) -> anyhow::Result<()> {
    poll_count(pool, sql, want, Duration::from_millis(20), Duration::from_secs(600)).await
}

/// As [`wait_for`], every half second for up to 30 minutes: for counts over large tables.
async fn wait_for_slowly(pool: &sqlx::PgPool, sql: &str, want: i64) -> anyhow::Result<()> {
    poll_count(pool, sql, want, Duration::from_millis(500), Duration::from_secs(1800)).await
}

async fn poll_count(
    pool: &sqlx::PgPool,
    sql: &str,
    want: i64,
    every: Duration,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let (n,): (i64,) = sqlx::query_as(sql).fetch_one(pool).await?;
        if n == want {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{sql}: {n}, not {want}, after {limit:?}");
        tokio::time::sleep(every).await;
    }
}
