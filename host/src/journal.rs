//! The invocation journal: for the orders `JOURNAL_MODE` selects, what each handler invocation
//! was given (the WIT event, order snapshot included), what it answered (actions or error), its
//! version, attempt and duration. Read per order at `GET /admin/orders/{id}/invocations`, and
//! replayed through a candidate by `POST /admin/handlers/{name}/replay`.
//!
//! Diagnostics, never part of an effect: the dispatcher hands entries to a bounded queue and a
//! writer task inserts them in batches, so journaling costs the serving path a serialisation and
//! a channel send; a full queue drops the entry and counts it rather than slow the pipeline.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::config::JournalMode;
use crate::db::journal::{self, NewInvocation};
use crate::metrics::Metrics;
use crate::runtime::{DispatchError, Event, LoadedHandler, wit};

/// Entries waiting for the writer; beyond it they are dropped (and counted).
const QUEUE: usize = 10_000;
/// Rows per INSERT.
const BATCH: usize = 256;

pub struct Journal {
    mode: JournalMode,
    queue: Option<mpsc::Sender<NewInvocation>>,
    metrics: Arc<Metrics>,
}

impl Journal {
    /// A journal that records nothing (`JOURNAL_MODE=off`).
    fn off(metrics: Arc<Metrics>) -> Journal {
        Journal { mode: JournalMode::Off, queue: None, metrics }
    }

    /// The journal and, unless `mode` is off, its writer, for the caller to run: it inserts what
    /// is queued in batches and, at `shutdown`, what is left, then ends.
    pub fn start(
        pool: PgPool,
        mode: JournalMode,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> (Journal, Option<impl std::future::Future<Output = ()> + Send + 'static>) {
        if mode == JournalMode::Off {
            return (Journal::off(metrics), None);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        (Journal { mode, queue: Some(tx), metrics }, Some(write(pool, rx, shutdown)))
    }

    /// Whether invocations for `order_id` are journaled. A hash of the id, not a coin toss, so
    /// every replica and every handler agree and a sampled order's journal is whole.
    pub fn wants(&self, order_id: Uuid) -> bool {
        match self.mode {
            JournalMode::Off => false,
            JournalMode::All => true,
            JournalMode::Sampled(rate) => {
                // The low 64 bits of a v4 UUID are random but for the two variant bits on top.
                let (_, low) = order_id.as_u64_pair();
                let random = low & ((1 << 62) - 1);
                (random as f64 / (1u64 << 62) as f64) < rate
            }
        }
    }

    /// Queues one invocation of `h` on `event` that ended in `result` after `took`.
    pub fn record(
        &self,
        h: &LoadedHandler,
        event: &Event,
        order_id: Uuid,
        result: &Result<Vec<wit::Action>, DispatchError>,
        took: Duration,
    ) {
        let Some(queue) = &self.queue else { return };
        let answer = Answer::of(result);
        let entry = NewInvocation {
            handler: h.name.clone(),
            version: h.version.clone(),
            event_id: event.meta().event_id.clone(),
            order_id,
            attempt: event.meta().attempt.min(i32::MAX as u32) as i32,
            input: serde_json::to_value(event).unwrap_or(serde_json::Value::Null),
            outcome: answer.outcome(),
            output: answer.output(),
            duration_us: took.as_micros().min(i64::MAX as u128) as i64,
        };
        if queue.try_send(entry).is_err() {
            self.metrics.journal_dropped();
        }
    }
}

/// A handler's answer as the journal records it and shadows and replay compare it: the actions,
/// or the kind of failure (`handler-error`, `trap`, `host`) with its text.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Actions(Vec<wit::Action>),
    Failed(&'static str, String),
}

impl Answer {
    pub fn of(result: &Result<Vec<wit::Action>, DispatchError>) -> Answer {
        match result {
            Ok(actions) => Answer::Actions(actions.clone()),
            Err(e @ DispatchError::Handler(_)) => Answer::Failed("handler-error", e.to_string()),
            Err(e @ DispatchError::Trap { .. }) => Answer::Failed("trap", e.to_string()),
            Err(e @ DispatchError::Host(_)) => Answer::Failed("host", e.to_string()),
        }
    }

    /// `actions`, or the kind of failure.
    pub fn outcome(&self) -> &'static str {
        match self {
            Answer::Actions(_) => "actions",
            Answer::Failed(kind, _) => kind,
        }
    }

    /// The actions as a JSON array, or the error's text.
    pub fn output(&self) -> serde_json::Value {
        match self {
            Answer::Actions(actions) => serde_json::to_value(actions).unwrap_or_default(),
            Answer::Failed(_, text) => text.as_str().into(),
        }
    }

    /// `{"outcome": …, "output": …}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"outcome": self.outcome(), "output": self.output()})
    }
}

/// Inserts queued entries in batches until shutdown, then what is left.
async fn write(pool: PgPool, mut rx: mpsc::Receiver<NewInvocation>, mut shutdown: watch::Receiver<bool>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = tokio::select! {
            // Queued entries first: once closed at shutdown, the queue drains, then ends.
            biased;
            e = rx.recv() => e,
            _ = shutdown.wait_for(|s| *s) => {
                rx.close();
                continue;
            }
        };
        let Some(first) = first else { return };
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        // A failed insert loses these entries (diagnostics); the next batch tries again.
        if let Err(e) = journal::insert(&pool, &batch).await {
            tracing::warn!(error = %e, entries = batch.len(), "writing the invocation journal failed");
        }
        batch.clear();
    }
}
