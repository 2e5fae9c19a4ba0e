//! What the dispatcher has in flight: per partition the consumed offsets not yet finished (whose
//! contiguous prefix is the position to commit), per key the events queued behind its running
//! one. Kept behind one handle so `/metrics` and the admin API can show where events wait without
//! reaching into the dispatcher.
//!
//! Why counts and an admin listing rather than per-key labels: keys are order ids, an unbounded
//! set; a label per key would grow the exposition with every order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Job;

/// Per partition: offsets consumed but not finished (with when each was consumed), and the next
/// offset to be consumed; per assignment.
///
/// Why assignments are counted: after an eager rebalance a partition can come back to this
/// consumer while events taken under the previous assignment still run, and the new assignment
/// redelivers from the committed prefix, so one offset can be in flight twice. Were the old
/// event's completion counted against the new bookkeeping, it could remove the new delivery's
/// entry, and the committable prefix would run past an event not yet applied. A completion counts
/// only for the assignment it was consumed under.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    parts: HashMap<(String, i32), Part>,
    /// Bumped at every revocation; a partition's bookkeeping belongs to the value current when
    /// its first record of an assignment was taken.
    assignment: u64,
}

#[derive(Debug)]
struct Part {
    in_flight: BTreeMap<i64, Instant>,
    next: i64,
    assignment: u64,
}

impl Tracker {
    /// Records `offset` as taken; returns the assignment it belongs to, for [`Tracker::complete`].
    pub(super) fn begin(&mut self, topic: &str, partition: i32, offset: i64) -> u64 {
        let assignment = self.assignment;
        let part = self.parts.entry((topic.to_string(), partition)).or_insert_with(|| Part {
            in_flight: BTreeMap::new(),
            next: offset,
            assignment,
        });
        part.in_flight.insert(offset, Instant::now());
        part.next = part.next.max(offset + 1);
        part.assignment
    }

    /// Marks `offset` finished and returns the offset up to which everything is finished (the
    /// position to commit), or `None` when it was taken under an assignment that has since been
    /// revoked. The caller stores it before releasing the tracker, so positions are stored in
    /// increasing order.
    pub(super) fn complete(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        assignment: u64,
    ) -> Option<i64> {
        let part = self.parts.get_mut(&(topic.to_string(), partition))?;
        if part.assignment != assignment {
            return None;
        }
        part.in_flight.remove(&offset);
        Some(part.in_flight.first_key_value().map_or(part.next, |(o, _)| *o))
    }

    /// Ends the bookkeeping of `partitions`, lost in one revocation.
    pub(super) fn revoke(&mut self, partitions: &[(String, i32)]) {
        for key in partitions {
            self.parts.remove(key);
        }
        self.assignment += 1;
    }
}

/// Keys with a running lane, and the events queued behind the running one.
type LaneMap = HashMap<Vec<u8>, VecDeque<Job>>;

/// The dispatcher's in-flight state. Cheap to read: each view takes a lock for one pass over at
/// most `DISPATCH_MAX_IN_FLIGHT` entries.
#[derive(Default)]
pub struct Backlog {
    tracker: Mutex<Tracker>,
    lanes: Mutex<LaneMap>,
}

/// One assigned partition's unfinished events.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionInFlight {
    pub topic: String,
    pub partition: i32,
    /// Consumed, not yet finished (applied, dead-lettered or skipped).
    pub events: usize,
    /// Since the oldest of them was consumed; zero when there are none.
    pub oldest: Duration,
}

/// A key with events queued behind its running one.
#[derive(Debug, Clone, PartialEq)]
pub struct BusyKey {
    pub key: Vec<u8>,
    pub waiting: usize,
    /// Since the first of the waiting events was queued.
    pub oldest_waiting: Duration,
}

/// The key lanes at a glance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lanes {
    /// Keys with an event running.
    pub running: usize,
    /// Events queued behind a running event of their key, over all keys.
    pub waiting: usize,
    /// The keys with the most waiting events, most first, at most the number asked for.
    pub top: Vec<BusyKey>,
}

impl Backlog {
    /// A poisoned lock only means a lane panicked while holding it; the supervisor ends the
    /// process for that, and the data is still consistent enough to read and commit by.
    pub(super) fn tracker(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn lanes(&self) -> MutexGuard<'_, LaneMap> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the bookkeeping of partitions this consumer is losing (called from the rebalance
    /// callback, before any record of the next assignment is taken).
    pub fn revoke(&self, partitions: &[(String, i32)]) {
        self.tracker().revoke(partitions);
    }

    /// Every partition with a position, sorted by topic and partition.
    pub fn partitions(&self) -> Vec<PartitionInFlight> {
        let tracker = self.tracker();
        let mut out: Vec<PartitionInFlight> = tracker
            .parts
            .iter()
            .map(|((topic, partition), part)| PartitionInFlight {
                topic: topic.clone(),
                partition: *partition,
                events: part.in_flight.len(),
                oldest: part.in_flight.values().min().map_or(Duration::ZERO, Instant::elapsed),
            })
            .collect();
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        out
    }

    /// The lanes, with the `top` busiest keys.
    pub fn key_lanes(&self, top: usize) -> Lanes {
        let lanes = self.lanes();
        let mut busy: Vec<BusyKey> = lanes
            .iter()
            .filter(|(_, queue)| !queue.is_empty())
            .map(|(key, queue)| BusyKey {
                key: key.clone(),
                waiting: queue.len(),
                oldest_waiting: queue.front().map_or(Duration::ZERO, |j| j.queued_at.elapsed()),
            })
            .collect();
        let waiting = busy.iter().map(|b| b.waiting).sum();
        busy.sort_by(|a, b| b.waiting.cmp(&a.waiting).then(b.oldest_waiting.cmp(&a.oldest_waiting)));
        busy.truncate(top);
        Lanes { running: lanes.len(), waiting, top: busy }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_contiguous_prefix_is_committable() {
        let mut t = Tracker::default();
        let a = (10..15).map(|o| t.begin("t", 0, o)).last().unwrap();
        assert_eq!(t.complete("t", 0, 12, a), Some(10), "10 and 11 are still running");
        assert_eq!(t.complete("t", 0, 10, a), Some(11));
        assert_eq!(t.complete("t", 0, 11, a), Some(13), "12 finished earlier");
        assert_eq!(t.complete("t", 0, 14, a), Some(13));
        assert_eq!(t.complete("t", 0, 13, a), Some(15), "all done: commit past the last");
        let b = t.begin("t", 1, 3);
        t.revoke(&[("t".into(), 1)]);
        assert_eq!(t.complete("t", 1, 3, b), None, "a revoked partition stores nothing");
    }

    /// The failure this guards against (the three-replica process test once ended with one event
    /// committed past and never applied, across rebalances that gave partitions back to the same
    /// replicas): partition 0 comes back to the same consumer while offset 7 of the old assignment still runs; the new
    /// assignment redelivers 5..=8. The old 7 finishing must not clear the new 7, or the prefix
    /// would be stored past an event not yet applied once 5, 6 and 8 finish.
    #[test]
    fn a_completion_from_a_revoked_assignment_never_moves_the_new_prefix() {
        let mut t = Tracker::default();
        let old = (5..=8).map(|o| t.begin("t", 0, o)).last().unwrap();
        t.complete("t", 0, 5, old);
        t.revoke(&[("t".into(), 0)]);
        let new = (5..=8).map(|o| t.begin("t", 0, o)).last().unwrap();
        assert_ne!(old, new);
        assert_eq!(t.complete("t", 0, 7, old), None, "the old delivery of 7 finishing counts for nothing");
        for o in [5, 6, 8] {
            t.complete("t", 0, o, new);
        }
        assert_eq!(t.complete("t", 0, 6, new), Some(7), "the new 7 still holds the prefix");
        assert_eq!(t.complete("t", 0, 7, new), Some(9));
    }

    #[test]
    fn partitions_report_their_unfinished_events() {
        let backlog = Backlog::default();
        backlog.tracker().begin("b", 2, 7);
        backlog.tracker().begin("a", 0, 1);
        backlog.tracker().begin("a", 0, 2);
        backlog.tracker().complete("a", 0, 1, 0);
        let parts = backlog.partitions();
        assert_eq!(
            parts.iter().map(|p| (p.topic.as_str(), p.partition, p.events)).collect::<Vec<_>>(),
            [("a", 0, 1), ("b", 2, 1)]
        );
        backlog.tracker().complete("a", 0, 2, 0);
        assert_eq!(backlog.partitions()[0].oldest, Duration::ZERO, "none in flight, no age");
    }
}
