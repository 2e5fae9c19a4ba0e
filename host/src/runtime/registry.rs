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
    /// The events it was meant to handle (its manifest entry's, or all for a bare file): the
    /// dispatcher holds these events rather than completing them without it.
    pub events: Vec<EventKind>,
    pub error: anyhow::Error,
}

impl std::fmt::Display for LoadProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {:#}", self.path.display(), self.error)
    }
}

/// Loaded handlers by name, and what to do with an event no loaded handler subscribes to.
#[derive(Debug, Default)]
pub struct Registry {
    handlers: BTreeMap<String, Arc<LoadedHandler>>,
    policy: RoutePolicy,
}

/// What happens to events of a type no loaded handler subscribes to (see [`Route`]).
#[derive(Debug, Default, Clone)]
pub struct RoutePolicy {
    /// Event types some handler was configured or served for: without a subscriber, their events
    /// wait for one.
    pub expected: BTreeSet<EventKind>,
    /// Event types whose last subscriber was unsubscribed through the admin API: a deliberate
    /// skip.
    pub unsubscribed: BTreeSet<EventKind>,
}

/// Where an event of one type goes.
#[derive(Debug)]
pub enum Route<'a> {
    /// To these handlers, by name.
    Handlers(Vec<&'a Arc<LoadedHandler>>),
    /// Nowhere, and that is intended: the event is complete.
    Skip(SkipReason),
    /// Nowhere yet: the event must wait (uncompleted, its offset uncommitted) until a handler for
    /// its type is loaded. Nothing was ever configured (an empty directory at start), or a type
    /// that had a handler lost it without an explicit unsubscribe (the directory emptied, every
    /// file rejected).
    Wait,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Its handlers were unsubscribed through the admin API.
    Unsubscribed,
    /// Other handlers were configured, and none ever for this type.
    NotConfigured,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Unsubscribed => "unsubscribed",
            SkipReason::NotConfigured => "not_configured",
        }
    }
}

impl Registry {
    /// Loads every handler in `dir`. Fails only when the directory or its manifest cannot be read;
    /// per-file failures come back as problems next to the handlers that did load.
    pub fn load_dir(
        runtime: &Runtime,
        dir: &Path,
        config_overlay: &BTreeMap<String, String>,
    ) -> anyhow::Result<(Registry, Vec<LoadProblem>)> {
        let manifest = read_manifest(dir)?;
        let mut loading =
            Loading { runtime, dir, config_overlay, registry: Registry::default(), problems: Vec::new() };
        let mut claimed = BTreeSet::new();
        for entry in manifest.handlers {
            claimed.insert(entry.file.clone());
            loading.load(entry);
        }
        for file in unclaimed_files(dir, &claimed)? {
            match file.strip_suffix(".wasm") {
                Some(name) => loading.load(HandlerSpec::default().into_manifest(name, &file, None)),
                None => loading.problems.push(LoadProblem {
                    path: dir.join(&file),
                    name: None,
                    events: Vec::new(),
                    error: anyhow::anyhow!("ignored: not a .wasm component and not {MANIFEST_FILE}"),
                }),
            }
        }
        Ok((loading.registry, loading.problems))
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

    /// Sets what happens to events of types with no subscriber (see [`Route`]).
    pub fn set_policy(&mut self, policy: RoutePolicy) {
        self.policy = policy;
    }

    /// Where an event of `kind` goes.
    pub fn route(&self, kind: EventKind) -> Route<'_> {
        let handlers: Vec<_> = self.subscribers(kind).collect();
        if !handlers.is_empty() {
            Route::Handlers(handlers)
        } else if self.policy.unsubscribed.contains(&kind) {
            Route::Skip(SkipReason::Unsubscribed)
        } else if self.policy.expected.contains(&kind) || self.never_configured() {
            Route::Wait
        } else {
            Route::Skip(SkipReason::NotConfigured)
        }
    }

    /// No handler has been configured, served or unsubscribed yet (an empty, missing or unreadable
    /// handlers directory at start): every event waits, whatever its type.
    fn never_configured(&self) -> bool {
        self.handlers.is_empty() && self.policy.expected.is_empty() && self.policy.unsubscribed.is_empty()
    }

    /// Event types whose events would wait right now.
    pub fn waiting_kinds(&self) -> Vec<EventKind> {
        EventKind::ALL.into_iter().filter(|k| matches!(self.route(*k), Route::Wait)).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }
}

/// The directory's `handlers.toml`; none at all is an empty manifest.
fn read_manifest(dir: &Path) -> anyhow::Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Manifest::parse(&text).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Files of `dir` no manifest entry names, sorted; not the manifest, directories or dot files.
fn unclaimed_files(dir: &Path, claimed: &BTreeSet<String>) -> anyhow::Result<Vec<String>> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // Dot files include the `..data` and `..<timestamp>` entries of a Kubernetes ConfigMap
        // volume; the files themselves appear as symlinks at the top level.
        .filter(|f| !f.starts_with('.') && f != MANIFEST_FILE && !claimed.contains(f))
        .filter(|f| !dir.join(f).is_dir())
        .collect();
    files.sort();
    Ok(files)
}

/// One directory being loaded: each entry becomes a handler or a problem, never a failure of the
/// others.
struct Loading<'a> {
    runtime: &'a Runtime,
    dir: &'a Path,
    config_overlay: &'a BTreeMap<String, String>,
    registry: Registry,
    problems: Vec<LoadProblem>,
}

impl Loading<'_> {
    /// One path for manifest entries and bare files; a duplicate name is refused before compiling.
    fn load(&mut self, entry: HandlerManifest) {
        let path = self.dir.join(&entry.file);
        let name = Some(entry.name.clone());
        let events = entry.spec.events.clone();
        let loaded = if self.registry.get(&entry.name).is_some() {
            Err(anyhow::anyhow!("handler `{}` is already loaded from the manifest", entry.name))
        } else {
            std::fs::read(&path)
                .with_context(|| format!("reading the component of handler `{}`", entry.name))
                .and_then(|bytes| self.runtime.load(entry, &bytes, self.config_overlay))
        };
        match loaded {
            Ok(h) => self.registry.insert(h),
            Err(error) => self.problems.push(LoadProblem { path, name, events, error }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(expected: &[EventKind], unsubscribed: &[EventKind]) -> Registry {
        let mut r = Registry::default();
        r.set_policy(RoutePolicy {
            expected: expected.iter().copied().collect(),
            unsubscribed: unsubscribed.iter().copied().collect(),
        });
        r
    }

    #[test]
    fn without_a_subscriber_an_event_waits_unless_its_type_was_let_go_on_purpose() {
        use EventKind::{OrderCreated as C, StatusUpdated as S};
        let nothing_yet = policy(&[], &[]);
        assert_eq!(nothing_yet.waiting_kinds(), [C, S], "an empty directory at start holds everything");
        let lost = policy(&[C], &[]);
        assert!(matches!(lost.route(C), Route::Wait), "a type that had a handler waits for it");
        assert!(matches!(lost.route(S), Route::Skip(SkipReason::NotConfigured)));
        let unsubscribed = policy(&[C, S], &[S]);
        assert!(matches!(unsubscribed.route(S), Route::Skip(SkipReason::Unsubscribed)));
        assert_eq!(unsubscribed.waiting_kinds(), [C]);
        let all_let_go = policy(&[], &[C]);
        assert!(all_let_go.waiting_kinds().is_empty(), "after a deliberate unsubscribe nothing waits");
    }
}
