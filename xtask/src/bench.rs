//! `cargo xtask bench`: builds the components the benchmarks load, then runs `cargo bench`.

use xshell::{Shell, cmd};

use crate::{build_handlers, test};

#[derive(clap::Args)]
pub struct Args {
    /// Passed to `cargo bench -p host` (e.g. a benchmark name filter).
    rest: Vec<String>,
}

pub fn run(sh: &Shell, args: &Args) -> anyhow::Result<()> {
    build_handlers::run(sh, &build_handlers::Args::default())?;
    test::build_fixtures(sh)?;
    let rest = &args.rest;
    cmd!(sh, "cargo bench -p host {rest...}").run()?;
    Ok(())
}
