//! `pipeline-replicas`: one backlog drained by 1, 2 and 3 `order-host` processes in one consumer
//! group on one Postgres (rounds interleaved): events/s for each, CPU per event of the replicas
//! and of Postgres, and each replica's share of what the relay published, which shows the relay
//! publishing from every replica rather than from one at a time.
//!
//! The replicas start with an empty handlers directory, so they join the group and hold the
//! backlog's first events without completing any; the handlers are then dropped in, and every
//! replica starts draining within one rescan (1 s) of the others. In practice the last one starts
//! up to 0.8 s after the first, its load starved by the CPU the others already drain on; so each
//! round also reports its rate from the moment the last replica applied its first event, and
//! where each partition's events were applied in time.

use std::process::{Child, Command, Stdio};

use super::*;

const BACKLOG: usize = 6_000;
/// As many rounds as the throughput drains, for the same reason.
const ROUNDS: usize = THROUGHPUT.rounds;
const REPLICAS: [usize; 3] = [1, 2, 3];

/// A replica process, killed when dropped.
struct Replica {
    child: Child,
    port: u16,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn cpu(&self) -> Duration {
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .map(|s| cpu_of(&s, Reaped::Excluded))
            .unwrap_or_default()
    }

    async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port)).await?.text().await?)
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn series(metrics: &str, name: &str) -> f64 {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0)
}

pub(super) async fn run(pg: &LocalPostgres, root: &std::path::Path) -> anyhow::Result<()> {
    println!("pipeline replicas: {BACKLOG} orders backlogged, drained by 1, 2 and 3 order-host processes");
    let runs: Vec<usize> = (0..ROUNDS).flat_map(|_| REPLICAS).collect();
    let topics = Round::topics("n", runs.len());
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let broker = EmbeddedBroker::start(&names, 3)?;
    let handlers = throughput_handlers(root)?;
    let admin = sqlx::PgPool::connect(&pg.url("postgres")).await?;
    // (replicas, events/s over the whole drain, events/s once every replica had started)
    let mut results: Vec<(usize, f64, f64)> = Vec::new();
    let bar = indicatif::ProgressBar::new(runs.len() as u64);
    for (i, n) in runs.into_iter().enumerate() {
        let round = Round::create(pg, &admin, &broker, "n", i).await?;
        let (common, url, created) = (round.vars(), &round.url, &round.created);
        seed_backlog(&common, BACKLOG).await?;

        let live = tempfile::tempdir()?;
        let group = format!("replicas{i}");
        let replicas = (0..n)
            .map(|_| {
                let port = free_port()?;
                let child = Command::new(env!("CARGO_BIN_EXE_order-host"))
                    .envs(common)
                    .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
                    .env("HANDLERS_DIR", live.path())
                    .env("HANDLERS_RESCAN_SECS", "1")
                    .env("KAFKA_GROUP_ID", &group)
                    .env("RUST_LOG", "error")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?;
                anyhow::Ok(Replica { child, port })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        settle(&replicas, created).await?;

        let pool = sqlx::PgPool::connect(url).await?;
        let (pg_before, replicas_before) =
            (Cpu::now(), replicas.iter().map(Replica::cpu).collect::<Vec<_>>());
        install_handlers(handlers.path(), live.path())?;
        wait_for(&pool, "SELECT count(*) FROM processed_events", 8 * BACKLOG as i64).await?;
        let postgres = Cpu::now().since(&pg_before).postgres;
        let replica_cpu: Duration =
            replicas.iter().zip(&replicas_before).map(|(r, before)| r.cpu().saturating_sub(*before)).sum();
        let (events, secs): (i64, f64) = sqlx::query_as(
            "SELECT count(DISTINCT event_id), EXTRACT(EPOCH FROM max(processed_at) - min(processed_at))::float8
             FROM processed_events",
        )
        .fetch_one(&pool)
        .await?;
        // The same from the moment the last replica applied its first event: every replica's
        // handlers load from the directory within a few hundred ms of each other (the later ones
        // on a CPU the first are already draining on), and that start-up skew is not the drain.
        let (started_events, started_secs): (i64, f64) = sqlx::query_as(
            "WITH s AS (SELECT max(first) AS t0
                        FROM (SELECT min(processed_at) AS first FROM processed_events
                              WHERE topic = $1 GROUP BY kafka_partition) p)
             SELECT count(DISTINCT event_id) FILTER (WHERE processed_at >= (SELECT t0 FROM s)),
                    EXTRACT(EPOCH FROM max(processed_at) - (SELECT t0 FROM s))::float8
             FROM processed_events",
        )
        .bind(created)
        .fetch_one(&pool)
        .await?;
        // When each partition's first and last events were applied, from the window's start: a
        // replica that starts late or runs slow shows in its partitions.
        let spans: Vec<(String, i32, f64, f64)> = sqlx::query_as(
            "WITH w AS (SELECT min(processed_at) AS t0 FROM processed_events)
             SELECT topic, kafka_partition,
                    EXTRACT(EPOCH FROM min(processed_at) - (SELECT t0 FROM w))::float8,
                    EXTRACT(EPOCH FROM max(processed_at) - (SELECT t0 FROM w))::float8
             FROM processed_events GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .fetch_all(&pool)
        .await?;
        let spans: Vec<String> = spans
            .iter()
            .map(|(t, p, a, b)| format!("{}/{p} {a:.2}–{b:.2}", t.rsplit('.').next().unwrap_or(t)))
            .collect();
        let mut published = Vec::new();
        for r in &replicas {
            published.push(series(&r.metrics().await?, "order_host_relay_published_total"));
        }
        let total: f64 = published.iter().sum();
        let shares: Vec<String> =
            published.iter().map(|p| format!("{:.0}%", 100.0 * p / total.max(1.0))).collect();
        bar.suspend(|| {
            println!(
                "  round {} {n} replica(s) {:>7.0} events/s ({:>5.0} once all started)  CPU per event: replicas {:>4.0} µs, Postgres {:>4.0} µs  relay published by replica: {}; partitions applied {} s",
                i / REPLICAS.len() + 1,
                events as f64 / secs,
                started_events as f64 / started_secs,
                replica_cpu.as_secs_f64() * 1e6 / events as f64,
                postgres.as_secs_f64() * 1e6 / events as f64,
                shares.join(" / "),
                spans.join(", "),
            )
        });
        bar.inc(1);
        results.push((n, events as f64 / secs, started_events as f64 / started_secs));
        drop(replicas);
        pool.close().await;
        round.finish(&admin).await?;
    }
    bar.finish_and_clear();
    let median = |n: usize, rate: fn(&(usize, f64, f64)) -> f64| {
        let mut rates: Vec<f64> = results.iter().filter(|r| r.0 == n).map(rate).collect();
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let (whole, started) = (|r: &(usize, f64, f64)| r.1, |r: &(usize, f64, f64)| r.2);
    println!("pipeline replicas (median of {ROUNDS} interleaved rounds)");
    for n in REPLICAS {
        println!(
            "  {n} replica(s)  {:>7.0} events/s  {:.2}× one replica;  once all started: {:>7.0} events/s  {:.2}×",
            median(n, whole),
            median(n, whole) / median(1, whole),
            median(n, started),
            median(n, started) / median(1, started),
        );
    }
    Ok(())
}

/// Waits until every replica holds events of the backlog (waiting for handlers) and together
/// they hold all three partitions of the created topic: the group has settled.
async fn settle(replicas: &[Replica], created: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let prefix = format!("order_host_dispatch_in_flight{{topic=\"{created}\",partition=\"");
    loop {
        let mut held = Vec::new();
        for r in replicas {
            let metrics = r.metrics().await.unwrap_or_default();
            let parts: Vec<String> = metrics
                .lines()
                .filter_map(|l| l.strip_prefix(prefix.as_str()))
                .filter(|rest| rest.rsplit(' ').next().is_some_and(|v| v != "0"))
                .map(|rest| rest.split('"').next().unwrap_or_default().to_string())
                .collect();
            held.push(parts);
        }
        let mut all: Vec<&String> = held.iter().flatten().collect();
        all.sort();
        all.dedup();
        if held.iter().all(|p| !p.is_empty()) && all.len() == 3 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the group did not settle: partitions held {held:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Copies the components in, then the manifest by rename, so a rescan sees all or nothing.
fn install_handlers(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    for name in ["order-processor.wasm", "notifier.wasm"] {
        std::fs::copy(from.join(name), to.join(name))?;
    }
    std::fs::copy(from.join("handlers.toml"), to.join(".staged"))?;
    std::fs::rename(to.join(".staged"), to.join("handlers.toml"))?;
    Ok(())
}
