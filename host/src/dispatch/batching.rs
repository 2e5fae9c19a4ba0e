//! The loop both dispatcher batchers run (snapshot reads and group commit): gather what lanes
//! queued into a batch and work on it, with a bounded number of batches at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

/// How batches form and how many are worked on at once.
pub(super) struct Batching {
    /// Batches in progress at once.
    pub workers: usize,
    /// Items in one batch at most.
    pub max: usize,
    /// How long a batch waits for more items after its first, unless full. Zero takes only what
    /// is already queued.
    pub window: Duration,
}

/// Runs until every sender of `queue` is gone and the last batch is done. A batch forms while it
/// waits for a free worker, so under load batches fill up. A panicking batch panics this task,
/// so the supervisor that spawned it sees the death.
pub(super) async fn run<T, F, Fut>(batching: Batching, mut queue: mpsc::Receiver<T>, work: F)
where
    T: Send + 'static,
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(batching.workers));
    let mut running = JoinSet::new();
    loop {
        let slot = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        while let Some(done) = running.try_join_next() {
            rethrow(done);
        }
        let Some(first) = queue.recv().await else { break };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + batching.window;
        // `timeout_at` polls the queue before looking at the clock, so whatever is already
        // queued joins even when the window has passed.
        while batch.len() < batching.max {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(item)) => batch.push(item),
                Ok(None) | Err(_) => break,
            }
        }
        let job = work(batch);
        running.spawn(async move {
            let _slot = slot;
            job.await;
        });
    }
    while let Some(done) = running.join_next().await {
        rethrow(done);
    }
}

fn rethrow(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
}
