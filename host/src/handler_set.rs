//! The live set of handlers: what the dispatcher routes to, changed at runtime by the directory
//! watcher and the admin API without a restart.
//!
//! Readers take an immutable [`Registry`] snapshot per event, so an event already being handled
//! finishes on the versions it started with, and everything dispatched after a change sees the
//! new set. Writers serialize on one lock, edit per-name slots, and publish a new snapshot.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::runtime::{LoadProblem, LoadedHandler, Registry, RoutePolicy};

/// Earlier versions kept per handler for rollback.
const KEEP_PREVIOUS: usize = 5;

/// How a version arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Dir,
    Upload,
}

#[derive(Debug, Clone)]
pub struct Version {
    pub handler: Arc<LoadedHandler>,
    pub source: Source,
    pub since: SystemTime,
}

#[derive(Debug, Default)]
struct Slot {
    /// `None` once deleted (unsubscribed); a rollback brings the last version back.
    current: Option<Version>,
    /// Newest first.
    previous: VecDeque<Version>,
    /// What the directory held for this name at the last scan (version and manifest settings):
    /// a scan changes the slot only when this changes, so an upload is not undone by the next
    /// rescan of an unchanged directory.
    dir_fingerprint: Option<String>,
}

impl Slot {
    fn replace(&mut self, next: Option<Version>) {
        if let Some(old) = std::mem::replace(&mut self.current, next) {
            self.previous.push_front(old);
            self.previous.truncate(KEEP_PREVIOUS);
        }
    }
}

/// Why an admin operation on a handler did not happen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SetError {
    #[error("no handler named `{0}`")]
    Unknown(String),
    #[error("handler `{0}` has no earlier version to roll back to")]
    NothingToRollBack(String),
}

/// One handler as the admin API lists it.
#[derive(Debug, Clone)]
pub struct HandlerInfo {
    pub name: String,
    pub current: Option<Version>,
    pub previous: Vec<Version>,
}

/// What a directory scan changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanOutcome {
    /// `name@short-version` now serving from the directory.
    pub swapped: Vec<String>,
    /// Names whose files left the directory.
    pub removed: Vec<String>,
    /// Names whose files were rejected; their current version keeps serving.
    pub kept: Vec<String>,
}

#[derive(Debug)]
pub struct HandlerSet {
    published: RwLock<Arc<Registry>>,
    slots: Mutex<Slots>,
    /// Bumped on every publish, so events waiting for a handler wake up.
    generation: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Slots {
    by_name: BTreeMap<String, Slot>,
    /// Kept across publishes under the `slots` lock: which types must wait for a handler, and
    /// which were let go through the admin API.
    policy: RoutePolicy,
}

impl Default for HandlerSet {
    fn default() -> HandlerSet {
        HandlerSet {
            published: RwLock::default(),
            slots: Mutex::default(),
            generation: watch::Sender::new(0),
        }
    }
}

impl HandlerSet {
    /// Resolves after the next change of the serving set (for events waiting for a handler).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The handlers events are routed to right now.
    pub fn current(&self) -> Arc<Registry> {
        self.published.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies a scan of `HANDLERS_DIR`: new or changed files swap in, files gone from the
    /// directory unsubscribe their handler (unless it was uploaded since), and a rejected file
    /// leaves its handler's current version serving.
    pub fn apply_scan(&self, loaded: Registry, problems: &[LoadProblem]) -> ScanOutcome {
        let mut slots = self.lock();
        let mut outcome = ScanOutcome::default();
        let now = SystemTime::now();
        let rejected: Vec<&str> = problems.iter().filter_map(|p| p.name.as_deref()).collect();
        // A configured handler that failed to load still says which events must wait for it.
        slots.policy.expected.extend(problems.iter().flat_map(|p| p.events.iter().copied()));
        for (name, slot) in slots.by_name.iter_mut() {
            if slot.dir_fingerprint.is_some()
                && loaded.get(name).is_none()
                && !rejected.contains(&name.as_str())
            {
                slot.dir_fingerprint = None;
                if slot.current.as_ref().is_some_and(|v| v.source == Source::Dir) {
                    slot.replace(None);
                    outcome.removed.push(name.clone());
                }
            }
        }
        for h in loaded.iter() {
            let fingerprint = format!("{}:{:?}", h.version, h.manifest.spec);
            let slot = slots.by_name.entry(h.name.clone()).or_default();
            if slot.dir_fingerprint.as_deref() == Some(fingerprint.as_str()) {
                continue;
            }
            slot.dir_fingerprint = Some(fingerprint);
            slot.replace(Some(Version { handler: h.clone(), source: Source::Dir, since: now }));
            outcome.swapped.push(format!("{}@{}", h.name, h.short_version()));
        }
        outcome.kept = rejected
            .iter()
            .filter(|n| slots.by_name.get(**n).is_some_and(|s| s.current.is_some()))
            .map(|n| n.to_string())
            .collect();
        self.publish(&mut slots);
        outcome
    }

    /// Makes `handler` the serving version of its name (an upload).
    pub fn install(&self, handler: LoadedHandler, source: Source) -> Arc<LoadedHandler> {
        self.install_shared(Arc::new(handler), source)
    }

    /// [`HandlerSet::install`] for a handler already shared (a promoted shadow candidate).
    pub fn install_shared(&self, handler: Arc<LoadedHandler>, source: Source) -> Arc<LoadedHandler> {
        let mut slots = self.lock();
        let slot = slots.by_name.entry(handler.name.clone()).or_default();
        slot.replace(Some(Version { handler: handler.clone(), source, since: SystemTime::now() }));
        self.publish(&mut slots);
        handler
    }

    /// Brings back the version before the current one (or the deleted one).
    pub fn rollback(&self, name: &str) -> Result<Arc<LoadedHandler>, SetError> {
        let mut slots = self.lock();
        let slot = slots.by_name.get_mut(name).ok_or_else(|| SetError::Unknown(name.into()))?;
        let mut back = slot.previous.pop_front().ok_or_else(|| SetError::NothingToRollBack(name.into()))?;
        back.since = SystemTime::now();
        let handler = back.handler.clone();
        slot.current = Some(back);
        self.publish(&mut slots);
        Ok(handler)
    }

    /// Unsubscribes `name`: no new event goes to it. Its version is kept for a rollback. Event
    /// types left without any subscriber are skipped from now on, deliberately, rather than held.
    pub fn remove(&self, name: &str) -> Result<(), SetError> {
        let mut slots = self.lock();
        let slot = slots
            .by_name
            .get_mut(name)
            .filter(|s| s.current.is_some())
            .ok_or_else(|| SetError::Unknown(name.into()))?;
        let events =
            slot.current.as_ref().map(|v| v.handler.manifest.spec.events.clone()).unwrap_or_default();
        slot.replace(None);
        // `publish` takes back the types another serving handler still takes.
        slots.policy.unsubscribed.extend(events);
        self.publish(&mut slots);
        Ok(())
    }

    /// The manifest settings of the serving version of `name`, if any: an upload inherits them.
    pub fn current_of(&self, name: &str) -> Option<Arc<LoadedHandler>> {
        self.lock().by_name.get(name).and_then(|s| s.current.as_ref()).map(|v| v.handler.clone())
    }

    pub fn list(&self) -> Vec<HandlerInfo> {
        self.lock()
            .by_name
            .iter()
            .map(|(name, s)| HandlerInfo {
                name: name.clone(),
                current: s.current.clone(),
                previous: s.previous.iter().cloned().collect(),
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a new snapshot: the serving versions, and the policy for event types without
    /// one. Every type a serving version handles becomes expected, and is no longer a deliberate
    /// skip.
    fn publish(&self, slots: &mut Slots) {
        let mut registry = Registry::default();
        for v in slots.by_name.values().filter_map(|s| s.current.as_ref()) {
            for kind in &v.handler.manifest.spec.events {
                slots.policy.expected.insert(*kind);
                slots.policy.unsubscribed.remove(kind);
            }
            registry.insert_shared(v.handler.clone());
        }
        registry.set_policy(slots.policy.clone());
        *self.published.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(registry);
        self.generation.send_modify(|g| *g += 1);
    }
}
