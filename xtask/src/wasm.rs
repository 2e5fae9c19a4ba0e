//! Building a Cargo workspace of components for `wasm32-wasip2`, shared by `build-handlers` and
//! the test fixtures.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

pub const TARGET: &str = "wasm32-wasip2";

/// Rust gives a wasm guest a 1 MiB shadow stack at the bottom of linear memory, so every fresh
/// instance dirties pages a megabyte apart and the host pays page faults and an madvise to reset
/// them. Decision functions need a few KiB; 64 KiB keeps stack, data and early heap within the
/// pages the runtime keeps resident (see `Runtime::new`).
const STACK_FLAGS: &str = "-Clink-arg=-zstack-size=65536";

/// A crate of a component workspace.
pub struct Member {
    /// The package name, which is also the handler name.
    pub name: String,
    /// `[package.metadata.handler]`, if the crate has one.
    pub metadata: Option<toml::Value>,
}

/// Lists the members of the workspace at `dir` (its `Cargo.toml` `[workspace] members`).
pub fn members(dir: &Path) -> anyhow::Result<Vec<Member>> {
    let manifest = read_toml(&dir.join("Cargo.toml"))?;
    let paths = manifest
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .with_context(|| format!("{} has no [workspace] members", dir.display()))?;
    paths
        .iter()
        .map(|p| {
            let p = p.as_str().context("workspace member is not a string")?;
            let package = read_toml(&dir.join(p).join("Cargo.toml"))?;
            let package = package.get("package").context("member has no [package]")?;
            Ok(Member {
                name: package
                    .get("name")
                    .and_then(|n| n.as_str())
                    .context("package has no name")?
                    .to_string(),
                metadata: package.get("metadata").and_then(|m| m.get("handler")).cloned(),
            })
        })
        .collect()
}

fn read_toml(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Installs the target when rustup manages the toolchain and lacks it, so set-up stays two
/// commands. Without rustup, a missing target is reported with what to do.
pub fn ensure_target(sh: &Shell) -> anyhow::Result<()> {
    let Ok(installed) = cmd!(sh, "rustup target list --installed").quiet().ignore_stderr().read() else {
        let sysroot = cmd!(sh, "rustc --print sysroot").quiet().read().unwrap_or_default();
        let lib = Path::new(sysroot.trim()).join("lib/rustlib").join(TARGET);
        if !lib.is_dir() {
            bail!(
                "the {TARGET} target is not installed and rustup is not on PATH: install a Rust toolchain \
                 with rustup (then `cargo xtask` adds the target itself), or add {TARGET} to this toolchain"
            );
        }
        return Ok(());
    };
    if !installed.lines().any(|l| l.trim() == TARGET) {
        println!("installing the {TARGET} target (once per toolchain)");
        cmd!(sh, "rustup target add {TARGET}").run().context("rustup target add")?;
    }
    Ok(())
}

/// Builds `packages` of the workspace at `dir` and returns each one's `.wasm` path, in order.
/// Everything shares the repository's one target directory.
pub fn build(sh: &Shell, dir: &Path, packages: &[String], release: bool) -> anyhow::Result<Vec<PathBuf>> {
    ensure_target(sh)?;
    let target_dir = crate::project_root().join("target");
    let manifest = dir.join("Cargo.toml");
    let profile: &[&str] = if release { &["--release"] } else { &[] };
    let package_args: Vec<String> = packages.iter().flat_map(|p| ["-p".to_string(), p.clone()]).collect();
    cmd!(
        sh,
        "cargo build --quiet --manifest-path {manifest} --target {TARGET} {profile...} {package_args...}"
    )
    .env("CARGO_TARGET_DIR", &target_dir)
    .env("CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS", STACK_FLAGS)
    .run()
    .with_context(|| format!("building {} for {TARGET}", dir.display()))?;
    let out = target_dir.join(TARGET).join(if release { "release" } else { "debug" });
    Ok(packages.iter().map(|p| out.join(format!("{}.wasm", p.replace('-', "_")))).collect())
}
