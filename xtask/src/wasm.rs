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

/// Lists the members of the workspace at `dir` (its `Cargo.toml` `[workspace] members`, less
/// `exclude`), by package name.
pub fn members(dir: &Path) -> anyhow::Result<Vec<Member>> {
    let manifest = read_toml(&dir.join("Cargo.toml"))?;
    let workspace =
        manifest.get("workspace").with_context(|| format!("{} has no [workspace]", dir.display()))?;
    let strings = |key: &str| -> Vec<String> {
        let values = workspace.get(key).and_then(|m| m.as_array()).cloned().unwrap_or_default();
        values.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()
    };
    let exclude = strings("exclude");
    let mut paths = Vec::new();
    for pattern in strings("members") {
        paths.extend(expand(dir, &pattern)?.into_iter().filter(|p| !exclude.contains(p)));
    }
    if paths.is_empty() {
        bail!("{} has no [workspace] members", dir.display());
    }
    paths.iter().map(|p| member(&dir.join(p))).collect()
}

/// A member path, or every directory a trailing `*` matches. Only that one glob form, which is
/// all our workspaces use; `cargo metadata` would do the rest at the cost of resolving the whole
/// dependency graph on every call.
fn expand(dir: &Path, pattern: &str) -> anyhow::Result<Vec<String>> {
    let Some(prefix) = pattern.strip_suffix('*') else { return Ok(vec![pattern.to_string()]) };
    if prefix.contains(['*', '?', '[']) || !(prefix.is_empty() || prefix.ends_with('/')) {
        bail!("workspace member pattern {pattern:?}: only `*` or `dir/*` is supported");
    }
    let parent = dir.join(prefix);
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&parent).with_context(|| format!("listing {}", parent.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() && !entry.file_name().to_string_lossy().starts_with('.') {
            found.push(format!("{prefix}{}", entry.file_name().to_string_lossy()));
        }
    }
    found.sort();
    Ok(found)
}

fn member(dir: &Path) -> anyhow::Result<Member> {
    let package = read_toml(&dir.join("Cargo.toml"))?;
    let package = package.get("package").with_context(|| format!("{} has no [package]", dir.display()))?;
    Ok(Member {
        name: package.get("name").and_then(|n| n.as_str()).context("package has no name")?.to_string(),
        metadata: package.get("metadata").and_then(|m| m.get("handler")).cloned(),
    })
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

/// The cargo profile a workspace of components is built with.
#[derive(Clone, Copy)]
pub enum Profile {
    Debug,
    Release,
    /// A custom profile the workspace defines; its output has a directory of its own.
    Named(&'static str),
}

impl Profile {
    fn args(self) -> Vec<&'static str> {
        match self {
            Profile::Debug => vec![],
            Profile::Release => vec!["--release"],
            Profile::Named(name) => vec!["--profile", name],
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
            Profile::Named(name) => name,
        }
    }
}

/// Builds `packages` of the workspace at `dir` and returns each one's `.wasm` path, in order.
/// Everything shares the repository's one target directory.
pub fn build(sh: &Shell, dir: &Path, packages: &[String], profile: Profile) -> anyhow::Result<Vec<PathBuf>> {
    ensure_target(sh)?;
    let target_dir = crate::project_root().join("target");
    let manifest = dir.join("Cargo.toml");
    let profile_args = profile.args();
    let package_args: Vec<String> = packages.iter().flat_map(|p| ["-p".to_string(), p.clone()]).collect();
    cmd!(
        sh,
        "cargo build --quiet --manifest-path {manifest} --target {TARGET} {profile_args...} {package_args...}"
    )
    .env("CARGO_TARGET_DIR", &target_dir)
    .env("CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS", STACK_FLAGS)
    .run()
    .with_context(|| format!("building {} for {TARGET}", dir.display()))?;
    let out = target_dir.join(TARGET).join(profile.dir());
    Ok(packages.iter().map(|p| out.join(format!("{}.wasm", p.replace('-', "_")))).collect())
}
