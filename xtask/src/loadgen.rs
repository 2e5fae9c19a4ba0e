//! `cargo xtask loadgen [RATE] [DURATION]`: MetalMart's load generator, open-loop. Orders are
//! sent on a fixed schedule (RATE per second for DURATION seconds) whether or not earlier ones
//! were answered, so a slow server shows up as latency and errors instead of silently lowering the
//! offered load. Prints sent, accepted, errors by status and HTTP latency percentiles; with
//! `--follow`, waits for every accepted order to ship and reports created→shipped latency from the
//! server's own history timestamps.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::sync::Mutex;

#[derive(clap::Args)]
pub struct Args {
    /// Orders per second.
    #[arg(default_value_t = 20.0)]
    rate: f64,
    /// Seconds to send for.
    #[arg(default_value_t = 120)]
    duration: u64,
    /// The host (or cluster ingress) to load.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base_url: String,
    /// Customer emails are `<name>+<n>@<domain>`; a mirrord session's pattern can match them.
    #[arg(long, default_value = "metalbear.com")]
    email_domain: String,
    /// Local part of the customer emails.
    #[arg(long, default_value = "loadgen")]
    email_user: String,
    /// Also wait for every accepted order to ship and report created→shipped latency.
    #[arg(long)]
    follow: bool,
    /// How long `--follow` waits for the last orders to ship.
    #[arg(long, default_value_t = 120)]
    follow_timeout: u64,
    /// Extra request header, `name: value` (e.g. `baggage: mirrord-session=KEY` to reach a
    /// developer's session); repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
}

/// What one request came to.
enum Sent {
    Accepted { id: String, latency: Duration },
    Refused { status: u16, latency: Duration },
    Failed { error: String },
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if !(args.rate > 0.0 && args.rate <= 10_000.0) {
        bail!("RATE must be between 0 and 10000 orders per second, not {}", args.rate);
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run_async(args))
}

async fn run_async(args: &Args) -> anyhow::Result<()> {
    let base = args.base_url.trim_end_matches('/').to_string();
    let http = client(&args.headers)?;
    let product_ids = product_ids(&http, &base).await?;
    let start = Instant::now();
    let results = send_open_loop(args, &http, &base, &product_ids).await;
    let elapsed = start.elapsed();
    let report = Report::of(&results);
    report.print(results.len(), elapsed);
    if args.follow && !report.accepted.is_empty() {
        follow(&http, &base, &report.accepted, Duration::from_secs(args.follow_timeout)).await?;
    }
    anyhow::ensure!(
        report.errors.is_empty(),
        "{} of {} orders were not accepted",
        results.len() - report.accepted.len(),
        results.len()
    );
    Ok(())
}

/// An HTTP client sending `headers` (`name: value`) with every request.
fn client(headers: &[String]) -> anyhow::Result<reqwest::Client> {
    let mut map = reqwest::header::HeaderMap::new();
    for h in headers {
        let (name, value) =
            h.split_once(':').with_context(|| format!("--header {h:?} is not `name: value`"))?;
        map.insert(
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).context("header name")?,
            value.trim().parse().context("header value")?,
        );
    }
    Ok(reqwest::Client::builder()
        .default_headers(map)
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build()?)
}

async fn product_ids(http: &reqwest::Client, base: &str) -> anyhow::Result<Vec<String>> {
    let products: Vec<Value> = http
        .get(format!("{base}/api/products"))
        .send()
        .await
        .with_context(|| format!("reaching {base}: is the host running (`cargo xtask dev`)?"))?
        .error_for_status()?
        .json()
        .await?;
    let ids: Vec<String> = products.iter().filter_map(|p| p["id"].as_str().map(str::to_string)).collect();
    anyhow::ensure!(!ids.is_empty(), "{base}/api/products is empty");
    Ok(ids)
}

/// Sends `rate × duration` orders on a fixed schedule, each on its own task, and waits for every
/// answer.
async fn send_open_loop(
    args: &Args,
    http: &reqwest::Client,
    base: &str,
    product_ids: &[String],
) -> Vec<Sent> {
    let total = (args.rate * args.duration as f64).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    println!("sending {total} orders to {base} at {}/s for {}s (open loop)", args.rate, args.duration);
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} sent · {msg} · {elapsed_precise}")
            .expect("valid template"),
    );
    let results: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let run_id = &run_id();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..total {
        // The schedule, not the previous answer, decides when the next order leaves.
        tokio::time::sleep_until((start + interval.mul_f64(n as f64)).into()).await;
        let body = order(n, run_id, &args.email_user, &args.email_domain, product_ids);
        let (http, url, results, progress) =
            (http.clone(), format!("{base}/api/orders"), results.clone(), bar.clone());
        tasks.spawn(async move {
            let outcome = place(&http, &url, &body).await;
            let mut all = results.lock().await;
            all.push(outcome);
            let errors = all.iter().filter(|s| !matches!(s, Sent::Accepted { .. })).count();
            progress.set_message(format!("{} answered, {errors} errors", all.len()));
        });
        bar.inc(1);
    }
    while tasks.join_next().await.is_some() {}
    bar.finish();
    std::mem::take(&mut *results.lock().await)
}

/// One order: accepted (with its id), refused (a status), or failed (no answer).
async fn place(http: &reqwest::Client, url: &str, body: &Value) -> Sent {
    let sent = Instant::now();
    match http.post(url).json(body).send().await {
        Ok(r) if r.status().as_u16() == 201 => {
            let latency = sent.elapsed();
            match r.json::<Value>().await {
                Ok(v) => match v["id"].as_str() {
                    Some(id) => Sent::Accepted { id: id.to_string(), latency },
                    None => Sent::Failed { error: "201 without an order id".into() },
                },
                Err(e) => Sent::Failed { error: format!("unreadable 201 body: {e}") },
            }
        }
        Ok(r) => Sent::Refused { status: r.status().as_u16(), latency: sent.elapsed() },
        Err(e) => Sent::Failed { error: if e.is_timeout() { "timeout".into() } else { e.to_string() } },
    }
}

/// What the answers add up to.
struct Report {
    accepted: Vec<String>,
    latencies: Vec<Duration>,
    errors: BTreeMap<String, usize>,
}

impl Report {
    fn of(results: &[Sent]) -> Report {
        let mut report = Report { accepted: Vec::new(), latencies: Vec::new(), errors: BTreeMap::new() };
        for r in results {
            match r {
                Sent::Accepted { id, latency } => {
                    report.accepted.push(id.clone());
                    report.latencies.push(*latency);
                }
                Sent::Refused { status, latency } => {
                    report.latencies.push(*latency);
                    *report.errors.entry(format!("HTTP {status}")).or_default() += 1;
                }
                Sent::Failed { error } => *report.errors.entry(error.clone()).or_default() += 1,
            }
        }
        report
    }

    fn print(&self, sent: usize, elapsed: Duration) {
        println!(
            "\nsent      {sent} in {:.1}s ({:.1}/s achieved)",
            elapsed.as_secs_f64(),
            sent as f64 / elapsed.as_secs_f64()
        );
        println!("accepted  {}", self.accepted.len());
        println!("errors    {}", self.errors.values().sum::<usize>());
        for (what, n) in &self.errors {
            println!("  {n:>6}  {what}");
        }
        println!("HTTP latency  {}", percentiles(&mut self.latencies.clone()));
    }
}

/// Waits for every order to ship, then reports created→shipped from the history's timestamps.
async fn follow(http: &reqwest::Client, base: &str, ids: &[String], within: Duration) -> anyhow::Result<()> {
    println!("\nfollowing {} orders until they ship", ids.len());
    let bar = ProgressBar::new(ids.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} shipped · {elapsed_precise}")
            .expect("valid template"),
    );
    let deadline = Instant::now() + within;
    let mut pending: Vec<String> = ids.to_vec();
    let mut shipped_after = Vec::new();
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        // A bounded number of reads in flight: following must not become the load.
        for chunk in pending.chunks(32) {
            let reads = chunk.iter().map(|id| async move {
                let history: Value = http
                    .get(format!("{base}/api/orders/{id}/history"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let at = |status: &str| {
                    history.as_array()?.iter().find(|h| h["to_status"] == status)?["at"]
                        .as_str()
                        .map(str::to_string)
                };
                Some((at("pending")?, at("shipped")?))
            });
            for (id, times) in chunk.iter().zip(futures_util::future::join_all(reads).await) {
                match times
                    .and_then(|(created, shipped)| Some((parse_time(&created)?, parse_time(&shipped)?)))
                {
                    Some((created, shipped)) => {
                        shipped_after.push(Duration::from_secs_f64((shipped - created).max(0.0)));
                        bar.inc(1);
                    }
                    None => still.push(id.clone()),
                }
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    bar.finish();
    println!("shipped   {} of {}", shipped_after.len(), ids.len());
    println!("created→shipped  {}", percentiles(&mut shipped_after));
    anyhow::ensure!(pending.is_empty(), "{} orders had not shipped after {within:?}", pending.len());
    Ok(())
}

/// Seconds since the epoch of an RFC 3339 timestamp, as the API writes them.
fn parse_time(s: &str) -> Option<f64> {
    let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    Some(t.timestamp_micros() as f64 / 1e6)
}

fn percentiles(samples: &mut [Duration]) -> String {
    if samples.is_empty() {
        return "no samples".into();
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    format!(
        "p50 {}  p90 {}  p99 {}  max {}",
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(0.99)),
        ms(*samples.last().unwrap())
    )
}

/// One order: 1–3 distinct products, 1–3 of each, a unique email. Deterministic per `n`.
fn order(n: u64, run: &str, user: &str, domain: &str, products: &[String]) -> Value {
    let mut seed = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    let lines = 1 + next(3) as usize;
    let mut items: Vec<Value> = Vec::new();
    let mut used = Vec::new();
    while items.len() < lines.min(products.len()) {
        let p = &products[next(products.len() as u64) as usize];
        if !used.contains(p) {
            used.push(p.clone());
            // MetalMart's generator sends a price; the host ignores it and uses the catalogue's.
            items.push(json!({"product_id": p, "quantity": 1 + next(3), "price": 1.0}));
        }
    }
    json!({
        "customer_email": format!("{user}+{run}-{n}@{domain}"),
        "customer_name": format!("Load Gen {n}"),
        "shipping_address": {"street": "1 Bench Way", "city": "Tel Aviv", "state": "", "zip_code": "61000", "country": "IL"},
        "items": items,
    })
}

/// A short id for this run, so its emails are distinguishable from another run's.
fn run_id() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{:x}", nanos & 0xff_ffff)
}
