//! `cargo xtask build-handlers [--debug] [NAME…]`: builds the handler components, checks each one
//! against the world with the host's own runtime, and writes them with `handlers.toml` into
//! `target/handlers/`. Unchanged components are not checked again.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use host::config::RuntimeConfig;
use host::runtime::manifest::MANIFEST_FILE;
use host::runtime::{HandlerSpec, Manifest, Runtime, sha256_hex};
use xshell::Shell;

use crate::{project_root, wasm};

#[derive(clap::Args, Default)]
pub struct Args {
    /// Build without optimisations (faster to build, larger and slower components).
    #[arg(long)]
    debug: bool,
    /// Only these handlers (default: every crate in handlers/ with [package.metadata.handler]).
    names: Vec<String>,
}

pub fn run(sh: &Shell, args: &Args) -> anyhow::Result<()> {
    let root = project_root();
    let handlers: Vec<_> =
        wasm::members(&root.join("handlers"))?.into_iter().filter(|m| m.metadata.is_some()).collect();
    for name in &args.names {
        if !handlers.iter().any(|h| &h.name == name) {
            let known: Vec<_> = handlers.iter().map(|h| h.name.as_str()).collect();
            bail!("no handler named `{name}`; handlers/ has: {}", known.join(", "));
        }
    }
    let selected: Vec<_> =
        handlers.into_iter().filter(|h| args.names.is_empty() || args.names.contains(&h.name)).collect();
    let names: Vec<String> = selected.iter().map(|h| h.name.clone()).collect();
    let built = wasm::build(sh, &root.join("handlers"), &names, !args.debug)?;

    let out_dir = root.join("target/handlers");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let manifest_path = out_dir.join(MANIFEST_FILE);
    let mut manifest = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => Manifest::parse(&text).unwrap_or_default(),
        Err(_) => Manifest::default(),
    };

    // Created only if something changed: compiling the checks is the slow part.
    let mut runtime: Option<Runtime> = None;
    for (member, wasm_path) in selected.iter().zip(&built) {
        let spec: HandlerSpec =
            member.metadata.clone().expect("filtered above").try_into().with_context(|| {
                format!("handlers/{}/Cargo.toml: invalid [package.metadata.handler]", member.name)
            })?;
        spec.validate().map_err(|e| anyhow::anyhow!("handler `{}`: {e}", member.name))?;
        let bytes = std::fs::read(wasm_path).with_context(|| format!("reading {}", wasm_path.display()))?;
        let sha = sha256_hex(&bytes);
        let file = format!("{}.wasm", member.name);
        let entry = spec.into_manifest(&member.name, &file, Some(sha.clone()));

        let unchanged = manifest.handlers.iter().any(|h| h == &entry)
            && std::fs::read(out_dir.join(&file)).is_ok_and(|existing| sha256_hex(&existing) == sha);
        if !unchanged {
            let rt = match &mut runtime {
                Some(rt) => rt,
                None => runtime.insert(Runtime::new(&RuntimeConfig::default())?),
            };
            rt.load(entry.clone(), &bytes, &BTreeMap::new())
                .with_context(|| format!("{} does not fit the world", wasm_path.display()))?;
            write_atomically(&out_dir.join(&file), &bytes)?;
        }
        manifest.handlers.retain(|h| h.name != entry.name);
        manifest.handlers.push(entry);
        println!(
            "{:<18} {:>8} bytes  sha256 {}{}",
            member.name,
            bytes.len(),
            sha,
            if unchanged { "  (unchanged)" } else { "" }
        );
    }
    manifest.handlers.sort_by(|a, b| a.name.cmp(&b.name));
    write_atomically(&manifest_path, manifest.to_toml().as_bytes())?;
    println!("wrote {}", manifest_path.strip_prefix(&root).unwrap_or(&manifest_path).display());
    Ok(())
}

/// Write-then-rename, so a watcher of `HANDLERS_DIR` never sees a half-written file. The temporary
/// name starts with a dot, which the registry skips.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path.file_name().context("no file name")?.to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))
}
