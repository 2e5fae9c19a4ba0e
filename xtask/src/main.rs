//! `cargo xtask`: the project's build and test automation, in Rust so it runs wherever cargo does.
//! One module per command; external programs run through `xshell`.

mod admin_api;
mod bench;
mod build_handlers;
mod dead_letters;
mod deploy_handlers;
mod dev;
mod handler_test;
mod lint;
mod loadgen;
mod new_handler;
mod replay;
mod test;
#[cfg(test)]
mod tidy;
mod wasm;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, test and benchmark the order-handler host")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build handlers/* for wasm32-wasip2, check them against the world, and write
    /// target/handlers/<name>.wasm plus handlers.toml.
    BuildHandlers(build_handlers::Args),
    /// Scaffold a handler crate in handlers/: trait impl, manifest table, golden cases. The build
    /// and the tests pick it up with no other edit.
    NewHandler(new_handler::Args),
    /// One handler's native tests, then its golden cases through the built component.
    HandlerTest(handler_test::Args),
    /// Run the whole product locally: handlers, a private Postgres, the host with the embedded
    /// Kafka broker and DEMO_MODE, until Ctrl-C.
    Dev(dev::Args),
    /// Open-loop load: RATE orders/s for DURATION s against --base-url; with --follow, also
    /// created→shipped latency.
    Loadgen(loadgen::Args),
    /// The full test suite: build handlers and test fixtures, then test the workspace and the
    /// handlers natively.
    Test(test::Args),
    /// Formatting and clippy (`-D warnings`) for the host and handler workspaces, as CI runs them.
    Lint,
    /// Dead letters through the admin API: list, show, redrive, discard (one, or in bulk by filter).
    DeadLetters(dead_letters::Args),
    /// Run a candidate component against a handler's recorded invocations (the host's journal)
    /// and print what it would answer differently; non-zero exit on any difference.
    Replay(replay::Args),
    /// Run the benchmarks (criterion) after building what they load.
    Bench(bench::Args),
    /// Build the handlers and render the `order-handlers` ConfigMap into target/k8s/, applying it
    /// when a cluster is reachable.
    DeployHandlers(deploy_handlers::Args),
}

fn main() -> anyhow::Result<()> {
    let sh = xshell::Shell::new()?;
    sh.change_dir(project_root());
    match Cli::parse().command {
        Command::BuildHandlers(args) => build_handlers::run(&sh, &args),
        Command::NewHandler(args) => new_handler::run(&sh, &args),
        Command::HandlerTest(args) => handler_test::run(&sh, &args),
        Command::Dev(args) => dev::run(&sh, &args),
        Command::Test(args) => test::run(&sh, &args),
        Command::Loadgen(args) => loadgen::run(&args),
        Command::Lint => lint::run(&sh),
        Command::DeadLetters(args) => dead_letters::run(&args),
        Command::Replay(args) => replay::run(&args),
        Command::Bench(args) => bench::run(&sh, &args),
        Command::DeployHandlers(args) => deploy_handlers::run(&sh, &args),
    }
}

/// The repository root (the parent of `xtask/`).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the repository").to_path_buf()
}
