//! Per-version invocation counters and a window of recent durations, for `GET /admin/handlers`
//! and the metrics. Recording is a few atomics plus one short-held lock; nothing is allocated.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How many recent durations the percentiles are computed over.
const WINDOW: usize = 1024;

#[derive(Debug)]
pub struct InvocationStats {
    invocations: AtomicU64,
    errors: AtomicU64,
    /// Ring of the last `WINDOW` durations in microseconds, and the next slot to write.
    recent: Mutex<(Vec<u32>, usize)>,
}

/// A point-in-time copy of [`InvocationStats`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatsSnapshot {
    pub invocations: u64,
    pub errors: u64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

impl Default for InvocationStats {
    fn default() -> Self {
        InvocationStats {
            invocations: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            recent: Mutex::new((Vec::with_capacity(WINDOW), 0)),
        }
    }
}

impl InvocationStats {
    pub fn record(&self, took: Duration, ok: bool) {
        self.invocations.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let (ring, next) = &mut *recent;
        if ring.len() < WINDOW {
            ring.push(micros);
        } else {
            ring[*next] = micros;
        }
        *next = (*next + 1) % WINDOW;
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let mut sorted = self.recent.lock().unwrap_or_else(|p| p.into_inner()).0.clone();
        sorted.sort_unstable();
        let pct = |p: f64| {
            (!sorted.is_empty()).then(|| {
                Duration::from_micros(u64::from(sorted[((sorted.len() - 1) as f64 * p).round() as usize]))
            })
        };
        StatsSnapshot {
            invocations: self.invocations.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            p50: pct(0.5),
            p99: pct(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_cover_the_recent_window_only() {
        let s = InvocationStats::default();
        assert_eq!(s.snapshot(), StatsSnapshot { invocations: 0, errors: 0, p50: None, p99: None });
        for _ in 0..WINDOW {
            s.record(Duration::from_millis(500), true);
        }
        for i in 1..=WINDOW as u64 {
            s.record(Duration::from_micros(i), i % 2 == 0);
        }
        let snap = s.snapshot();
        assert_eq!((snap.invocations, snap.errors), (2 * WINDOW as u64, WINDOW as u64 / 2));
        assert_eq!(snap.p50, Some(Duration::from_micros(513)), "the slow first window has rolled out");
        assert_eq!(snap.p99, Some(Duration::from_micros(1014)));
    }
}
