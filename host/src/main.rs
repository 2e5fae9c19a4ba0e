//! `order-host`: the host binary. Today it loads and checks the handlers in `HANDLERS_DIR`; the
//! HTTP API and the dispatcher build on the same configuration and runtime.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use host::config::Config;
use host::runtime::{Registry, Runtime};

#[derive(Parser)]
#[command(name = "order-host", version, about = "Runs order-pipeline handlers as WebAssembly components")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load every handler in HANDLERS_DIR, check it against the world and list it; exits non-zero
    /// if any file was rejected.
    Check,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::from_env().context("reading configuration")?;
    match cli.command {
        Command::Check => {
            let runtime = Runtime::new(&config.runtime)?;
            let overlay = config.handler_config_overlay();
            let (registry, problems) = Registry::load_dir(&runtime, &config.handlers_dir, &overlay)?;
            for h in registry.iter() {
                let events: Vec<String> = h.manifest.spec.events.iter().map(|e| e.to_string()).collect();
                println!("{:<20} {}  events: {}", h.name, h.short_version(), events.join(", "));
            }
            for p in &problems {
                eprintln!("rejected {p}");
            }
            Ok(if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}
