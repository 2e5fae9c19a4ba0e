//! `cargo xtask handler-test NAME`: one handler's tests in one go: its native unit tests (golden
//! cases included, through `sdk::check_cases!`), then the same golden cases answered by the built
//! component, loaded by the host's own runtime (`order-host golden`). A handler author's loop.

use std::path::PathBuf;

use anyhow::Context;
use xshell::{Shell, cmd};

use crate::{build_handlers, project_root, test};

#[derive(clap::Args)]
pub struct Args {
    /// The handler (a crate of the handlers workspace).
    name: String,
    /// The handlers workspace (default: handlers/).
    #[arg(long)]
    workspace: Option<PathBuf>,
    /// Where its component is built to (default: target/handlers/).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(sh: &Shell, args: &Args) -> anyhow::Result<()> {
    let root = project_root();
    let workspace = args.workspace.clone().unwrap_or_else(|| root.join("handlers"));
    let out = args.out.clone().unwrap_or_else(|| root.join("target/handlers"));
    let name = &args.name;

    println!("== {name}: native tests");
    let manifest = workspace.join("Cargo.toml");
    cmd!(sh, "cargo test --quiet --manifest-path {manifest} -p {name}")
        .env("CARGO_TARGET_DIR", root.join(test::HANDLERS_NATIVE_TARGET_DIR))
        .run()
        .with_context(|| format!("{name}'s native tests failed"))?;

    println!("== {name}: the component");
    build_handlers::run(sh, &build_handlers::Args::one(name, workspace.clone(), out.clone()))?;
    let cases = workspace.join(name).join("cases.json");
    cmd!(sh, "cargo build --quiet -p host --bin order-host").run().context("building order-host")?;
    let order_host = root.join("target/debug/order-host");
    cmd!(sh, "{order_host} golden {name} {cases}")
        .env("HANDLERS_DIR", &out)
        .run()
        .with_context(|| format!("{name}'s component does not answer its golden cases like its native code"))
}
