//! Supervision of the host's long-running tasks (the dispatcher and its key lanes, the relay, the
//! timer scheduler, the handler watcher, the notification fan-out).
//!
//! A task that panics, or returns while the host is not shutting down, is a death: it is logged,
//! counted (`order_host_background_task_deaths`), fails readiness, and asks the process to shut
//! down. The binary then stops gracefully (the relay drains, the producer flushes) and exits with a
//! failure status, so Kubernetes restarts it; whatever the dead task had not completed is
//! redelivered, because its offsets were never stored.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

pub struct Supervisor {
    deaths: Mutex<Vec<String>>,
    died: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

impl Supervisor {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Supervisor> {
        Arc::new(Supervisor { deaths: Mutex::default(), died: watch::Sender::new(false), metrics })
    }

    /// Spawns `task` named `name`; a panic, or an end before `shutdown` turns true, is a death.
    pub fn spawn(
        self: &Arc<Self>,
        name: &'static str,
        shutdown: watch::Receiver<bool>,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let inner = tokio::spawn(task);
        let me = self.clone();
        tokio::spawn(async move {
            match inner.await {
                Err(e) if e.is_panic() => me.died(name, &panic_message(e.into_panic())),
                Err(e) => me.died(name, &e.to_string()),
                Ok(()) if !*shutdown.borrow() => me.died(name, "ended before shutdown"),
                Ok(()) => {}
            }
        })
    }

    /// Records the death of `task`.
    pub fn died(&self, task: &'static str, why: &str) {
        tracing::error!(task, reason = why, "background task died; shutting down");
        self.metrics.task_died(task);
        self.deaths.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{task}: {why}"));
        self.died.send_replace(true);
    }

    /// Every death so far, as `task: reason`.
    pub fn deaths(&self) -> Vec<String> {
        self.deaths.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Resolves at the first death.
    pub async fn first_death(&self) {
        let mut died = self.died.subscribe();
        let _ = died.wait_for(|d| *d).await;
    }
}

/// The message of a panic payload, when it has one.
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => s.to_string(),
            Err(_) => "panicked".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_or_an_early_end_is_a_death_and_a_clean_end_is_not() {
        let s = Supervisor::new(Arc::new(Metrics::new()));
        let (shutdown, rx) = watch::channel(false);
        s.spawn("panicker", rx.clone(), async { panic!("boom") }).await.unwrap();
        s.spawn("quitter", rx.clone(), async {}).await.unwrap();
        shutdown.send_replace(true);
        s.spawn("clean", rx, async {}).await.unwrap();
        assert_eq!(s.deaths(), ["panicker: boom", "quitter: ended before shutdown"]);
        tokio::time::timeout(std::time::Duration::from_secs(1), s.first_death()).await.unwrap();
    }
}
