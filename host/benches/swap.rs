//! `cargo xtask bench swap`: what a handler swap costs. Cold compile per shipped handler, load
//! from the on-disk compile cache (a restart) and from memory (a rollback), and the time from an
//! admin upload to the first event served by the new version, through a running host on a private
//! Postgres and the embedded broker. Figures in BENCHMARKS.md.

use std::time::{Duration, Instant};

use devpg::LocalPostgres;
use host::config::{Config, RuntimeConfig};
use host::runtime::{HandlerSpec, Origin, Runtime};
use host::serve::Host;

#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code, unused_imports)] // the benchmark uses a few of the tests' helpers and re-exports
mod support;

const ROUNDS: usize = 5;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if !args.is_empty() && !args.iter().any(|a| "swap".contains(a.as_str())) {
        return Ok(());
    }
    compile_and_cache()?;
    let dir = std::env::temp_dir().join(format!("order-host-bench-swap-pg-{}", std::process::id()));
    let pg = LocalPostgres::start(&dir)?;
    let result = tokio::runtime::Runtime::new()?.block_on(upload_to_first_event(&pg));
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn compile_and_cache() -> anyhow::Result<()> {
    println!("handler load (median of {ROUNDS})");
    for name in ["order-processor", "notifier"] {
        let bytes = support::component("handlers", name);
        let load = |rt: &Runtime| -> anyhow::Result<(Duration, Origin)> {
            let manifest = HandlerSpec::default().into_manifest(name, &format!("{name}.wasm"), None);
            let started = Instant::now();
            let origin = rt.load(manifest, &bytes, &Default::default())?.origin;
            Ok((started.elapsed(), origin))
        };
        let (mut cold, mut disk, mut memory) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let cache = tempfile::tempdir()?;
            let config = RuntimeConfig {
                pool_size: 4,
                cache_dir: Some(cache.path().to_path_buf()),
                ..RuntimeConfig::default()
            };
            let rt = Runtime::new(&config)?;
            let (t, origin) = load(&rt)?;
            anyhow::ensure!(origin == Origin::Compiled);
            cold.push(t);
            let (t, origin) = load(&rt)?;
            anyhow::ensure!(origin == Origin::Memory);
            memory.push(t);
            let restarted = Runtime::new(&config)?;
            let (t, origin) = load(&restarted)?;
            anyhow::ensure!(origin == Origin::Disk);
            disk.push(t);
        }
        println!(
            "  {name:<16} {:>6} KiB  cold compile {:>7.1} ms  from disk cache {:>6.2} ms  from memory {:>6.2} ms",
            bytes.len() / 1024,
            median(cold).as_secs_f64() * 1e3,
            median(disk).as_secs_f64() * 1e3,
            median(memory).as_secs_f64() * 1e3
        );
    }
    Ok(())
}

async fn upload_to_first_event(pg: &LocalPostgres) -> anyhow::Result<()> {
    let handlers = tempfile::tempdir()?;
    let v1 = support::component("handlers", "notifier");
    std::fs::write(handlers.path().join("notifier.wasm"), &v1)?;
    let url = pg.url("postgres");
    let dir = handlers.path().display().to_string();
    let vars = [
        ("HTTP_ADDR", "127.0.0.1:0"),
        ("DATABASE_URL", url.as_str()),
        ("KAFKA_BROKERS", "embedded"),
        ("HANDLERS_DIR", dir.as_str()),
        ("ADMIN_TOKEN", "bench"),
        ("HANDLER_CACHE_DIR", ""),
    ];
    let config = Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))?;
    let host = Host::start(&config).await?;
    let base = format!("http://{}", host.addr);
    let http = reqwest::Client::new();
    let order = serde_json::json!({"customer_email": "swap@x.io", "customer_name": "Bench",
        "items": [{"product_id": "1", "quantity": 1}]});

    // Place an order and wait for its notification; returns the causing version's short sha.
    let served_by = |id: String| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let n: serde_json::Value =
                    http.get(format!("{base}/api/orders/{id}/notifications")).send().await?.json().await?;
                if let Some(cause) = n.as_array().and_then(|a| a.first()).and_then(|n| n["cause"].as_str()) {
                    return anyhow::Ok(cause.rsplit('@').next().unwrap_or_default().to_string());
                }
                anyhow::ensure!(Instant::now() < deadline, "order {id} was not notified within a minute");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    let place = || async {
        let o: serde_json::Value =
            http.post(format!("{base}/api/orders")).json(&order).send().await?.json().await?;
        anyhow::Ok(o["id"].as_str().unwrap_or_default().to_string())
    };
    // Warm: the consumer has joined its group and is serving.
    served_by(place().await?).await?;

    let (mut uploads, mut firsts) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let bytes = support::versioned(&v1, &format!("bench-{round}"));
        let short = host::runtime::sha256_hex(&bytes)[..12].to_string();
        let started = Instant::now();
        let r = http
            .put(format!("{base}/admin/handlers/notifier"))
            .bearer_auth("bench")
            .body(bytes)
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "upload refused: {}", r.text().await?);
        uploads.push(started.elapsed());
        let by = served_by(place().await?).await?;
        anyhow::ensure!(by == short, "served by {by}, not the new version {short}");
        firsts.push(started.elapsed());
    }
    println!("upload to first event (median of {ROUNDS}; uncached compile, HANDLER_CACHE_DIR off)");
    println!("  PUT /admin/handlers/notifier answered   {:>7.1} ms", median(uploads).as_secs_f64() * 1e3);
    println!("  first event served by the new version   {:>7.1} ms", median(firsts).as_secs_f64() * 1e3);
    host.shutdown().await?;
    Ok(())
}
