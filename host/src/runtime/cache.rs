//! Compiled components cached by the sha256 of their bytes: in memory for the process's lifetime
//! (a rollback or a rescan of an unchanged file never recompiles) and, when a directory is
//! configured, on disk as wasmtime's serialized form (a restart does not recompile either).
//!
//! Disk entries live under a subdirectory named after the engine's compatibility hash (wasmtime
//! version, target and every setting that changes generated code), so a host with a different
//! engine never reads another's artifacts; it just compiles and writes its own.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use wasmtime::Engine;
use wasmtime::component::Component;

use super::wasm_err;

/// Where a component came from, for the benchmark and the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Compiled,
    Memory,
    Disk,
}

pub struct ComponentCache {
    memory: Mutex<HashMap<String, Component>>,
    dir: Option<PathBuf>,
}

impl ComponentCache {
    pub fn new(engine: &Engine, root: Option<&Path>) -> ComponentCache {
        let dir = root.map(|root| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            root.join(format!("{:016x}", hasher.finish()))
        });
        ComponentCache { memory: Mutex::new(HashMap::new()), dir }
    }

    /// The component for `bytes` (whose sha256 is `sha`): from memory, from disk, or compiled now
    /// (CPU-bound: call it off the async worker threads). A disk entry that cannot be read or
    /// written is logged and skipped; the cache never makes a load fail.
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        sha: &str,
        bytes: &[u8],
    ) -> anyhow::Result<(Component, Origin)> {
        if let Some(c) = self.memory.lock().unwrap_or_else(|p| p.into_inner()).get(sha) {
            return Ok((c.clone(), Origin::Memory));
        }
        let path = self.dir.as_ref().map(|d| d.join(format!("{sha}.cwasm")));
        // Read into memory rather than mapped: a file replaced or truncated under a mapping would
        // fault the process later.
        let from_disk = path.as_ref().and_then(|p| std::fs::read(p).ok().map(|bytes| (p, bytes))).and_then(|(p, bytes)| {
            // SAFETY: the bytes are a file this cache wrote (atomically, by rename) from
            // `Component::serialize`, under a directory keyed by this engine's compatibility hash;
            // wasmtime still checks the header and engine settings before using them.
            match unsafe { Component::deserialize(engine, &bytes) } {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "ignoring an unreadable compile-cache entry");
                    None
                }
            }
        });
        let (component, origin) = match from_disk {
            Some(c) => (c, Origin::Disk),
            None => {
                let c = wasm_err(Component::new(engine, bytes))?;
                if let Some(path) = &path
                    && let Err(e) = write_atomically(path, &c)
                {
                    tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "could not write the compile cache");
                }
                (c, Origin::Compiled)
            }
        };
        self.memory.lock().unwrap_or_else(|p| p.into_inner()).insert(sha.to_string(), component.clone());
        Ok((component, origin))
    }
}

fn write_atomically(path: &Path, component: &Component) -> anyhow::Result<()> {
    let bytes = wasm_err(component.serialize())?;
    let dir = path.parent().expect("cache entries live in a directory");
    std::fs::create_dir_all(dir)?;
    let tmp =
        dir.join(format!(".{}.{}.tmp", path.file_name().unwrap().to_string_lossy(), std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
