//! The set of loaded handlers, read from `HANDLERS_DIR`: the components the manifest names, plus any
//! other `*.wasm` file with default settings. One bad file is reported and skipped; it never stops
//! the others from loading.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use super::manifest::{HandlerManifest, HandlerSpec, MANIFEST_FILE, Manifest};
use super::{EventKind, LoadedHandler, Runtime};

/// A file in `HANDLERS_DIR` that did not become a handler, and why.
#[derive(Debug)]
pub struct LoadProblem {
    pub path: PathBuf,
    /// The handler the file was meant to be, when that is known.
    pub name: Option<String>,
    pub error: anyhow::Error,
}

impl std::fmt::Display for LoadProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {:#}", self.path.display(), self.error)
    }
}

/// Loaded handlers by name.
#[derive(Debug, Default)]
pub struct Registry {
    handlers: BTreeMap<String, Arc<LoadedHandler>>,
}

impl Registry {
    /// Loads every handler in `dir`. Fails only when the directory or its manifest cannot be read;
    /// per-file failures come back as problems next to the handlers that did load.
    pub fn load_dir(
        runtime: &Runtime,
        dir: &Path,
        config_overlay: &BTreeMap<String, String>,
    ) -> anyhow::Result<(Registry, Vec<LoadProblem>)> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest = match std::fs::read_to_string(&manifest_path) {
            Ok(text) => {
                Manifest::parse(&text).with_context(|| format!("reading {}", manifest_path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", manifest_path.display()));
            }
        };

        let mut registry = Registry::default();
        let mut problems = Vec::new();
        let mut claimed = BTreeSet::new();
        // One path for manifest entries and bare files; a duplicate name is refused before compiling.
        let load = |registry: &mut Registry, problems: &mut Vec<LoadProblem>, entry: HandlerManifest| {
            let path = dir.join(&entry.file);
            let name = Some(entry.name.clone());
            let loaded = if registry.get(&entry.name).is_some() {
                Err(anyhow::anyhow!("handler `{}` is already loaded from the manifest", entry.name))
            } else {
                std::fs::read(&path)
                    .with_context(|| format!("reading the component of handler `{}`", entry.name))
                    .and_then(|bytes| runtime.load(entry, &bytes, config_overlay))
            };
            match loaded {
                Ok(h) => registry.insert(h),
                Err(error) => problems.push(LoadProblem { path, name, error }),
            }
        };
        for entry in manifest.handlers {
            claimed.insert(entry.file.clone());
            load(&mut registry, &mut problems, entry);
        }

        let mut files: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        for file in files {
            // Dot files include the `..data` and `..<timestamp>` entries of a Kubernetes ConfigMap
            // volume; the files themselves appear as symlinks at the top level.
            if file.starts_with('.') || file == MANIFEST_FILE || claimed.contains(&file) {
                continue;
            }
            let path = dir.join(&file);
            if path.is_dir() {
                continue;
            }
            match file.strip_suffix(".wasm") {
                Some(name) => load(
                    &mut registry,
                    &mut problems,
                    HandlerSpec::default().into_manifest(name, &file, None),
                ),
                None => problems.push(LoadProblem {
                    path,
                    name: None,
                    error: anyhow::anyhow!("ignored: not a .wasm component and not {MANIFEST_FILE}"),
                }),
            }
        }
        Ok((registry, problems))
    }

    pub fn insert(&mut self, handler: LoadedHandler) {
        self.insert_shared(Arc::new(handler));
    }

    pub fn insert_shared(&mut self, handler: Arc<LoadedHandler>) {
        self.handlers.insert(handler.name.clone(), handler);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<LoadedHandler>> {
        self.handlers.get(name)
    }

    /// All handlers, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<LoadedHandler>> {
        self.handlers.values()
    }

    /// The handlers an event of `kind` goes to, by name.
    pub fn subscribers(&self, kind: EventKind) -> impl Iterator<Item = &Arc<LoadedHandler>> {
        self.iter().filter(move |h| h.subscribes_to(kind))
    }

    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }
}
