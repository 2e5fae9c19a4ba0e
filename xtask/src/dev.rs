//! `cargo xtask dev`: the whole product on one machine with nothing installed but Rust and the
//! PostgreSQL binaries. Builds the handlers, starts a private Postgres under `target/dev-postgres`
//! (unless `DATABASE_URL` is set), runs `order-host` with the embedded Kafka broker (unless
//! `KAFKA_BROKERS` is set) and DEMO_MODE on, and stops it all on Ctrl-C.

use std::process::Command;

use anyhow::Context;
use devpg::LocalPostgres;
use xshell::{Shell, cmd};

use crate::{build_handlers, project_root};

#[derive(clap::Args)]
pub struct Args {
    /// Where the API listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
}

pub fn run(sh: &Shell, args: &Args) -> anyhow::Result<()> {
    build_handlers::run(sh, &build_handlers::Args::default())?;
    cmd!(sh, "cargo build --quiet -p host --bin order-host").run()?;
    let root = project_root();

    let postgres = match std::env::var("DATABASE_URL") {
        Ok(_) => None,
        Err(_) => {
            let dir = root.join("target/dev-postgres");
            println!("starting a private Postgres in {}", dir.display());
            Some(LocalPostgres::start(&dir)?)
        }
    };
    let mut host = Command::new(root.join("target/debug/order-host"));
    host.env("HTTP_ADDR", &args.addr).env("HANDLERS_DIR", root.join("target/handlers"));
    if let Some(pg) = &postgres {
        host.env("DATABASE_URL", pg.url("postgres"));
    }
    for (key, default) in [("KAFKA_BROKERS", "embedded"), ("DEMO_MODE", "true")] {
        if std::env::var_os(key).is_none() {
            host.env(key, default);
        }
    }
    let base = format!("http://{}", args.addr);
    println!("\n  storefront  {base}/");
    println!("  API         {base}/api/products   (OpenAPI: {base}/api/openapi.json)");
    println!("  metrics     {base}/metrics");
    println!("  readiness   {base}/readyz");
    println!("  load        cargo xtask loadgen 20 30 --follow --base-url {base}\n");
    println!("Ctrl-C stops the host, then Postgres.\n");
    let mut child = host.spawn().context("starting order-host")?;
    // Ctrl-C reaches the host through the terminal's process group; xtask itself must outlive it
    // to stop Postgres (which runs in its own group) afterwards.
    // SAFETY: setting a signal disposition to "ignore" has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = child.wait().context("waiting for order-host")?;
    drop(postgres);
    anyhow::ensure!(status.success(), "order-host exited with {status}");
    Ok(())
}
