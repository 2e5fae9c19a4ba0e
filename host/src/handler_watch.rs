//! Watches `HANDLERS_DIR` and swaps changed handlers in: a filesystem event (or the periodic
//! rescan, for volumes whose events do not arrive) triggers a debounced rescan, compiled off the
//! async worker threads, applied through [`HandlerSet::apply_scan`].
//!
//! Half-written files never load: a manifest's sha256 must match its file, and a component without
//! a manifest entry must compile and pass the world check; either failure leaves the current version
//! serving until the write completes and the next event rescans. A Kubernetes ConfigMap update
//! (kubelet renames a new `..data` symlink into place) is one event in the directory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::handler_set::HandlerSet;
use crate::runtime::{Registry, Runtime};

/// Quiet time after the last filesystem event before rescanning: one editor save or one kubelet
/// update is a burst of events.
const DEBOUNCE: Duration = Duration::from_millis(150);

pub struct WatchConfig {
    pub dir: PathBuf,
    pub overlay: BTreeMap<String, String>,
    /// Rescan this often even without events.
    pub rescan: Duration,
}

/// Scans `dir` once, off the async threads. A missing or unreadable directory is an empty scan
/// with the reason logged, so the API still serves and readiness says why it is not ready.
pub async fn scan(
    runtime: &Arc<Runtime>,
    set: &HandlerSet,
    dir: &std::path::Path,
    overlay: &BTreeMap<String, String>,
) {
    let (runtime, dir_owned, overlay) = (runtime.clone(), dir.to_path_buf(), overlay.clone());
    let result = tokio::task::spawn_blocking(move || {
        if !dir_owned.is_dir() {
            return Ok(None);
        }
        Registry::load_dir(&runtime, &dir_owned, &overlay).map(Some)
    })
    .await;
    let (loaded, problems) = match result {
        Ok(Ok(Some(scan))) => scan,
        Ok(Ok(None)) => {
            tracing::warn!(dir = %dir.display(), "HANDLERS_DIR does not exist; no handlers loaded from it");
            (Registry::default(), Vec::new())
        }
        Ok(Err(e)) => {
            // An unreadable manifest (often mid-write): keep everything as it is.
            tracing::error!(dir = %dir.display(), error = %format!("{e:#}"), "handlers directory not applied");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "the handler loader panicked");
            return;
        }
    };
    for p in &problems {
        tracing::error!(problem = %p, "handler rejected; any current version keeps serving");
    }
    let outcome = set.apply_scan(loaded, &problems);
    for h in &outcome.swapped {
        tracing::info!(handler = %h, "handler swapped in from the directory");
    }
    for name in &outcome.removed {
        tracing::info!(handler = %name, "handler file removed; unsubscribed");
    }
}

/// Runs until shutdown.
pub async fn run(
    runtime: Arc<Runtime>,
    set: Arc<HandlerSet>,
    config: WatchConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tx, mut changed) = mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            // Full means a rescan is already pending, which will see this change too.
            let _ = tx.try_send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch HANDLERS_DIR; relying on the periodic rescan");
            None
        }
    };
    let mut watching = false;
    loop {
        if !watching && let Some(w) = watcher.as_mut() {
            watching = w.watch(&config.dir, RecursiveMode::NonRecursive).is_ok();
        }
        let event = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(config.rescan) => false,
            Some(()) = changed.recv() => true,
        };
        if event {
            // Let the burst settle.
            while tokio::time::timeout(DEBOUNCE, changed.recv()).await.is_ok_and(|m| m.is_some()) {}
        }
        scan(&runtime, &set, &config.dir, &config.overlay).await;
        // The directory itself may have been replaced (or created since the last attempt).
        if watching && !config.dir.is_dir() {
            watching = false;
        }
    }
}
