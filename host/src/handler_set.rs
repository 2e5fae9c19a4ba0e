//! The live set of handlers: what the dispatcher routes to, changed at runtime by the directory
//! watcher and the admin API without a restart.
//!
//! Readers take an immutable [`Registry`] snapshot per event, so an event already being handled
//! finishes on the versions it started with, and everything dispatched after a change sees the
//! new set. Writers serialize on one lock, edit per-name slots, and publish a new snapshot.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use crate::runtime::{LoadProblem, LoadedHandler, Registry};

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

#[derive(Debug, Default)]
pub struct HandlerSet {
    published: RwLock<Arc<Registry>>,
    slots: Mutex<BTreeMap<String, Slot>>,
}

impl HandlerSet {
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
        for (name, slot) in slots.iter_mut() {
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
            let slot = slots.entry(h.name.clone()).or_default();
            if slot.dir_fingerprint.as_deref() == Some(fingerprint.as_str()) {
                continue;
            }
            slot.dir_fingerprint = Some(fingerprint);
            slot.replace(Some(Version { handler: h.clone(), source: Source::Dir, since: now }));
            outcome.swapped.push(format!("{}@{}", h.name, h.short_version()));
        }
        outcome.kept = rejected
            .iter()
            .filter(|n| slots.get(**n).is_some_and(|s| s.current.is_some()))
            .map(|n| n.to_string())
            .collect();
        self.publish(&slots);
        outcome
    }

    /// Makes `handler` the serving version of its name (an upload).
    pub fn install(&self, handler: LoadedHandler, source: Source) -> Arc<LoadedHandler> {
        let handler = Arc::new(handler);
        let mut slots = self.lock();
        let slot = slots.entry(handler.name.clone()).or_default();
        slot.replace(Some(Version { handler: handler.clone(), source, since: SystemTime::now() }));
        self.publish(&slots);
        handler
    }

    /// Brings back the version before the current one (or the deleted one).
    pub fn rollback(&self, name: &str) -> Result<Arc<LoadedHandler>, SetError> {
        let mut slots = self.lock();
        let slot = slots.get_mut(name).ok_or_else(|| SetError::Unknown(name.into()))?;
        let mut back = slot.previous.pop_front().ok_or_else(|| SetError::NothingToRollBack(name.into()))?;
        back.since = SystemTime::now();
        let handler = back.handler.clone();
        slot.current = Some(back);
        self.publish(&slots);
        Ok(handler)
    }

    /// Unsubscribes `name`: no new event goes to it. Its version is kept for a rollback.
    pub fn remove(&self, name: &str) -> Result<(), SetError> {
        let mut slots = self.lock();
        let slot = slots
            .get_mut(name)
            .filter(|s| s.current.is_some())
            .ok_or_else(|| SetError::Unknown(name.into()))?;
        slot.replace(None);
        self.publish(&slots);
        Ok(())
    }

    /// The manifest settings of the serving version of `name`, if any: an upload inherits them.
    pub fn current_of(&self, name: &str) -> Option<Arc<LoadedHandler>> {
        self.lock().get(name).and_then(|s| s.current.as_ref()).map(|v| v.handler.clone())
    }

    pub fn list(&self) -> Vec<HandlerInfo> {
        self.lock()
            .iter()
            .map(|(name, s)| HandlerInfo {
                name: name.clone(),
                current: s.current.clone(),
                previous: s.previous.iter().cloned().collect(),
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, slots: &BTreeMap<String, Slot>) {
        let mut registry = Registry::default();
        for v in slots.values().filter_map(|s| s.current.as_ref()) {
            registry.insert_shared(v.handler.clone());
        }
        *self.published.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(registry);
    }
}
