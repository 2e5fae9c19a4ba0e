//! `cargo xtask build-handlers [--debug] [--checker BIN] [NAME…]`: builds the handler components,
//! checks the changed ones against the world with the host's own loader (`order-host check` on a
//! staging directory, so a component that does not fit never reaches `target/handlers/`, which a
//! running host may be watching), and writes them with `handlers.toml` into `target/handlers/`.
//! Unchanged components are not checked again. xtask does not link the host: the check runs the
//! `order-host` binary, the very code that will load the components.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use handler_manifest::{HandlerManifest, HandlerSpec, MANIFEST_FILE, Manifest, sha256_hex};
use xshell::{Shell, cmd};

use crate::{project_root, wasm};

#[derive(clap::Args, Default)]
pub struct Args {
    /// Build without optimisations (faster to build, larger and slower components).
    #[arg(long)]
    debug: bool,
    /// The `order-host` binary that checks changed components (default: builds
    /// target/debug/order-host). The Dockerfile passes the release binary it has just built.
    #[arg(long)]
    checker: Option<PathBuf>,
    /// The handlers workspace to build (default: handlers/).
    #[arg(long)]
    workspace: Option<PathBuf>,
    /// Where the components and handlers.toml go (default: target/handlers/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only these handlers (default: every crate in the workspace with [package.metadata.handler]).
    names: Vec<String>,
}

impl Args {
    /// Builds only `name`, of `workspace`, into `out`.
    pub fn one(name: &str, workspace: PathBuf, out: PathBuf) -> Args {
        Args { workspace: Some(workspace), out: Some(out), names: vec![name.to_string()], ..Args::default() }
    }

    pub fn workspace(&self) -> PathBuf {
        self.workspace.clone().unwrap_or_else(|| project_root().join("handlers"))
    }

    pub fn out(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| project_root().join("target/handlers"))
    }
}

pub fn run(sh: &Shell, args: &Args) -> anyhow::Result<()> {
    let root = project_root();
    let workspace = args.workspace();
    let handlers: Vec<_> = wasm::members(&workspace)?.into_iter().filter(|m| m.metadata.is_some()).collect();
    for name in &args.names {
        if !handlers.iter().any(|h| &h.name == name) {
            let known: Vec<_> = handlers.iter().map(|h| h.name.as_str()).collect();
            bail!("no handler named `{name}`; {} has: {}", workspace.display(), known.join(", "));
        }
    }
    let selected: Vec<_> =
        handlers.into_iter().filter(|h| args.names.is_empty() || args.names.contains(&h.name)).collect();
    let names: Vec<String> = selected.iter().map(|h| h.name.clone()).collect();
    let profile = if args.debug { wasm::Profile::Debug } else { wasm::Profile::Release };
    let built = wasm::build(sh, &workspace, &names, profile)?;

    let out_dir = args.out();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let manifest_path = out_dir.join(MANIFEST_FILE);
    let mut manifest = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => Manifest::parse(&text).unwrap_or_default(),
        Err(_) => Manifest::default(),
    };

    let mut changed: Vec<(HandlerManifest, Vec<u8>)> = Vec::new();
    for (member, wasm_path) in selected.iter().zip(&built) {
        let spec: HandlerSpec = member
            .metadata
            .clone()
            .expect("filtered above")
            .try_into()
            .with_context(|| format!("{}/Cargo.toml: invalid [package.metadata.handler]", member.name))?;
        spec.validate().map_err(|e| anyhow::anyhow!("handler `{}`: {e}", member.name))?;
        let bytes = std::fs::read(wasm_path).with_context(|| format!("reading {}", wasm_path.display()))?;
        let sha = sha256_hex(&bytes);
        let file = format!("{}.wasm", member.name);
        let entry = spec.into_manifest(&member.name, &file, Some(sha.clone()));

        let unchanged = manifest.handlers.iter().any(|h| h == &entry)
            && std::fs::read(out_dir.join(&file)).is_ok_and(|existing| sha256_hex(&existing) == sha);
        println!(
            "{:<18} {:>8} bytes  sha256 {}{}",
            member.name,
            bytes.len(),
            sha,
            if unchanged { "  (unchanged)" } else { "" }
        );
        manifest.handlers.retain(|h| h.name != entry.name);
        manifest.handlers.push(entry.clone());
        if !unchanged {
            changed.push((entry, bytes));
        }
    }
    if !changed.is_empty() {
        check_with_host(sh, &changed, args.checker.as_deref(), &out_dir)?;
        for (entry, bytes) in &changed {
            write_atomically(&out_dir.join(&entry.file), bytes)?;
        }
    }
    manifest.handlers.sort_by(|a, b| a.name.cmp(&b.name));
    write_atomically(&manifest_path, manifest.to_toml().as_bytes())?;
    println!("wrote {}", manifest_path.strip_prefix(&root).unwrap_or(&manifest_path).display());
    Ok(())
}

/// Loads `changed` from a staging directory with `order-host check`, which compiles each one and
/// checks it against the world exactly as a serving host would, and fails on any rejection.
fn check_with_host(
    sh: &Shell,
    changed: &[(HandlerManifest, Vec<u8>)],
    checker: Option<&Path>,
    out_dir: &Path,
) -> anyhow::Result<()> {
    let root = project_root();
    let staging = out_dir.with_file_name(".handlers-staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    for (entry, bytes) in changed {
        std::fs::write(staging.join(&entry.file), bytes)?;
    }
    let staged = Manifest { handlers: changed.iter().map(|(entry, _)| entry.clone()).collect() };
    std::fs::write(staging.join(MANIFEST_FILE), staged.to_toml())?;
    let checker = match checker {
        Some(bin) => bin.to_path_buf(),
        None => {
            cmd!(sh, "cargo build --quiet -p host --bin order-host").run().context("building order-host")?;
            root.join("target/debug/order-host")
        }
    };
    cmd!(sh, "{checker} check")
        .env("HANDLERS_DIR", &staging)
        .run()
        .context("`order-host check` refused a component (its reason is above): it does not fit the world")
}

/// Write-then-rename, so a watcher of `HANDLERS_DIR` never sees a half-written file. The temporary
/// name starts with a dot, which the registry skips.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path.file_name().context("no file name")?.to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))
}
