//! `cargo xtask lint`: the gates every change passes before its tests run: `cargo fmt --check`
//! for the three workspaces, and clippy with `-D warnings` (the lints are `[workspace.lints]` in
//! each workspace's `Cargo.toml`) for the host workspace and the handlers. Not for the fixtures:
//! they are hostile on purpose. `cargo xtask test` runs it first when given no test arguments.

use anyhow::Context;
use xshell::{Shell, cmd};

use crate::project_root;

pub fn run(sh: &Shell) -> anyhow::Result<()> {
    ensure_components(sh)?;
    let root = project_root();
    let handlers = root.join("handlers/Cargo.toml");
    let fixtures = root.join("fixtures/Cargo.toml");
    for manifest in [root.join("Cargo.toml"), handlers.clone(), fixtures] {
        cmd!(sh, "cargo fmt --manifest-path {manifest} --all --check").run().with_context(|| {
            format!("{} is not formatted: run `cargo fmt --manifest-path {0} --all`", manifest.display())
        })?;
    }
    cmd!(sh, "cargo clippy --workspace --all-targets --quiet -- -D warnings")
        .run()
        .context("clippy: host workspace")?;
    cmd!(sh, "cargo clippy --manifest-path {handlers} --workspace --all-targets --quiet -- -D warnings")
        .env("CARGO_TARGET_DIR", crate::test::HANDLERS_NATIVE_TARGET_DIR)
        .run()
        .context("clippy: handlers")?;
    Ok(())
}

/// Adds clippy and rustfmt when rustup manages the toolchain and lacks them (a minimal profile).
fn ensure_components(sh: &Shell) -> anyhow::Result<()> {
    let Ok(installed) = cmd!(sh, "rustup component list --installed").quiet().ignore_stderr().read() else {
        return Ok(()); // No rustup: cargo reports a missing clippy or rustfmt itself.
    };
    for component in ["clippy", "rustfmt"] {
        if !installed.lines().any(|l| l.trim().starts_with(component)) {
            cmd!(sh, "rustup component add {component}").run().context("rustup component add")?;
        }
    }
    Ok(())
}
