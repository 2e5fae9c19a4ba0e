//! `order-host`: the host binary. `order-host` (or `order-host serve`) runs the service;
//! `order-host check` loads and checks the handlers in `HANDLERS_DIR` and exits; `order-host
//! golden NAME CASES` replays a handler's golden cases through its component.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use host::config::Config;
use host::runtime::{Registry, Runtime, golden};
use host::serve::{Host, termination_signal};

#[derive(Parser)]
#[command(name = "order-host", version, about = "Runs order-pipeline handlers as WebAssembly components")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API, relay the outbox and run the handlers until SIGTERM or Ctrl-C (the default).
    Serve,
    /// Run only the embedded development broker (an in-memory mock cluster) in its own process,
    /// print `bootstrap=<host:port>` and serve until killed. For tests that crash the host and
    /// need the broker to outlive it.
    #[command(hide = true)]
    DevBroker {
        /// Topics to create.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "order.created,order.status-updated,order.dead-letter"
        )]
        topics: Vec<String>,
        #[arg(long, default_value_t = 3)]
        partitions: i32,
    },
    /// Load every handler in HANDLERS_DIR, check it against the world and list it; exits non-zero
    /// if any file was rejected.
    Check,
    /// Replay a handler's golden cases (its crate's `cases.json`) through its component in
    /// HANDLERS_DIR and report every case whose answer differs; exits non-zero if any does.
    Golden {
        /// The handler's name in the manifest.
        name: String,
        /// The `cases.json` to replay.
        cases: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env().context("reading configuration") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = match host::telemetry::init(config.log_json, config.otlp_endpoint.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let code = match run(cli, config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

fn run(cli: Cli, config: Config) -> anyhow::Result<ExitCode> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let deaths = rt.block_on(async {
                let host = Host::start(&config).await?;
                tokio::select! {
                    signal = termination_signal() => signal?,
                    _ = host.died() => {}
                }
                let deaths = host.deaths();
                host.shutdown().await?;
                anyhow::Ok(deaths)
            })?;
            if deaths.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                // Kubernetes restarts the pod; what the dead task left unfinished is redelivered.
                eprintln!("error: background task died: {}", deaths.join("; "));
                Ok(ExitCode::FAILURE)
            }
        }
        Command::DevBroker { topics, partitions } => {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            let broker = host::kafka::EmbeddedBroker::start(&names, partitions)?;
            println!("bootstrap={}", broker.bootstrap_servers());
            use std::io::Write as _;
            std::io::stdout().flush()?;
            loop {
                std::thread::park();
            }
        }
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
        Command::Golden { name, cases } => {
            let runtime = Runtime::new(&config.runtime)?;
            let cases = golden::read_cases(&cases)?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let mismatches = rt.block_on(golden::replay(&runtime, &config.handlers_dir, &name, &cases))?;
            for m in &mismatches {
                eprintln!("MISMATCH {:?}\n  want {:?}\n  got  {:?}", m.case, m.case.actions, m.got);
            }
            println!(
                "{name}: {} golden cases through the component, {} differ",
                cases.len(),
                mismatches.len()
            );
            Ok(if mismatches.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}
