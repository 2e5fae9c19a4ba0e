//! Compiled components cached by the sha256 of their bytes: in memory for the most recently used
//! versions (a rollback or a rescan of an unchanged file never recompiles) and, when a directory
//! is configured, on disk as wasmtime's serialized form (a restart does not recompile either).
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

/// Compiled versions kept in memory. Each handler keeps its serving version and five earlier
/// ones reachable by rollback; 64 covers ten handlers with room, and an evicted version is still
/// one disk read (well under a millisecond) away. Serving versions are held by their handlers,
/// not by this map, so eviction never affects what runs.
const MEMORY_ENTRIES: usize = 64;

pub struct ComponentCache {
    memory: Mutex<Recent<Component>>,
    dir: Option<PathBuf>,
}

impl ComponentCache {
    pub fn new(engine: &Engine, root: Option<&Path>) -> ComponentCache {
        let dir = root.map(|root| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            root.join(format!("{:016x}", hasher.finish()))
        });
        ComponentCache { memory: Mutex::new(Recent::new(MEMORY_ENTRIES)), dir }
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
            return Ok((c, Origin::Memory));
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

/// A map of at most `capacity` entries that forgets the least recently used one first.
struct Recent<V> {
    entries: HashMap<String, (V, u64)>,
    capacity: usize,
    clock: u64,
}

impl<V: Clone> Recent<V> {
    fn new(capacity: usize) -> Recent<V> {
        Recent { entries: HashMap::new(), capacity: capacity.max(1), clock: 0 }
    }

    fn get(&mut self, key: &str) -> Option<V> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(key).map(|(v, used)| {
            *used = clock;
            v.clone()
        })
    }

    fn insert(&mut self, key: String, value: V) {
        self.clock += 1;
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            // A linear scan: the map is small and inserts follow a compile, which costs far more.
            let oldest = self.entries.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
        self.entries.insert(key, (value, self.clock));
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

#[cfg(test)]
mod tests {
    use super::Recent;

    #[test]
    fn the_least_recently_used_entry_goes_first() {
        let mut r = Recent::new(2);
        r.insert("a".into(), 1);
        r.insert("b".into(), 2);
        assert_eq!(r.get("a"), Some(1), "a is now more recent than b");
        r.insert("c".into(), 3);
        assert_eq!((r.get("a"), r.get("b"), r.get("c")), (Some(1), None, Some(3)));
        r.insert("c".into(), 4);
        assert_eq!((r.get("a"), r.get("c")), (Some(1), Some(4)), "replacing a key evicts nothing");
    }
}
