//! Shadow candidates: a new version of a handler that runs on every event its serving version
//! runs on, after it, in its own fresh Store with the same limits, and whose actions are only
//! compared, never applied. Handlers are pure decision functions, so "what would the candidate
//! have done" is a fair question to ask of live traffic before it serves.
//!
//! Each comparison counts as identical, different or a candidate error; a bounded sample of the
//! differences keeps the input and both answers. With a policy, the candidate is promoted after
//! `promote_after` comparisons within bounds, or aborted as soon as a bound breaks. A promotion is
//! an ordinary swap (`HandlerSet::install_shared`), so versions, rollback and drain work as for
//! an upload.
//!
//! A shadow lives in one replica's memory, like an upload: it runs on the events that replica
//! consumes and ends with the process. It is compared against the serving version it was started
//! beside and no other: when that version stops serving (an upload, a rollback, a change in the
//! handlers directory), the shadow is aborted rather than let its counts mix two versions or its
//! policy promote it over a newer one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::handler_set::{HandlerSet, Source};
use crate::journal::Answer;
use crate::metrics::Metrics;
use crate::runtime::{
    DispatchError, Event, InvocationStats, Invoke, LoadedHandler, OrderSource, short_version, wit,
};

/// Shadow invocations running at once across all candidates; beyond it a comparison is skipped
/// (and counted) rather than queued, so a slow candidate never builds a backlog behind the
/// serving path or takes every instance slot.
const CONCURRENT: usize = 8;
/// Differences kept per shadow, newest last.
const DIFFS_KEPT: usize = 20;
/// Below this many comparisons a rate bound tolerates `max_diff_rate × MIN_SAMPLE` differences
/// before it aborts, so one early difference does not abort a 5% bound; a bound of 0 still aborts
/// on the first. A promotion holds the rate itself, with no such allowance.
const MIN_SAMPLE: u64 = 20;

/// When a shadow decides by itself. Without `promote_after` it runs until an operator promotes
/// or drops it (the bounds still abort it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub promote_after: Option<u64>,
    /// Largest fraction of comparisons that may differ, 0 to 1.
    pub max_diff_rate: Option<f64>,
    /// Most candidate traps or limit hits tolerated.
    pub max_errors: Option<u64>,
}

/// Where a shadow stands.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Phase {
    #[default]
    Running,
    Promoted {
        at: DateTime<Utc>,
        by: Decider,
    },
    Aborted {
        at: DateTime<Utc>,
        reason: String,
    },
    Dropped {
        at: DateTime<Utc>,
    },
}

impl Phase {
    /// The API's state and the decision metric's label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Promoted { .. } => "promoted",
            Phase::Aborted { .. } => "aborted",
            Phase::Dropped { .. } => "dropped",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decider {
    Policy,
    Operator,
}

/// One difference between the serving version's answer and the candidate's.
#[derive(Debug, Clone)]
pub struct Diff {
    pub at: DateTime<Utc>,
    pub event_id: String,
    pub order_id: Uuid,
    /// The event both were given.
    pub input: serde_json::Value,
    /// `{"outcome": …, "output": …}` of each side.
    pub serving: serde_json::Value,
    pub candidate: serde_json::Value,
}

/// A shadow's counts and samples.
#[derive(Debug, Clone)]
pub struct Report {
    pub handler: String,
    pub candidate_version: String,
    pub policy: Policy,
    pub started: DateTime<Utc>,
    pub counts: Counts,
    /// p50 and p99 of each side's invocation time, in milliseconds.
    pub serving_ms: (f64, f64),
    pub candidate_ms: (f64, f64),
    pub diffs: Vec<Diff>,
}

/// Where a shadow stands and what it has compared: what the handler listing shows.
#[derive(Debug, Clone)]
pub struct Counts {
    pub phase: Phase,
    pub compared: u64,
    pub identical: u64,
    pub different: u64,
    pub candidate_errors: u64,
    pub skipped: u64,
}

pub struct Shadow {
    pub candidate: Arc<LoadedHandler>,
    /// The serving version (sha256) the candidate is compared against.
    pub against: String,
    pub policy: Policy,
    pub started: DateTime<Utc>,
    /// Each side's invocation times over the compared events, for the percentiles.
    serving_time: InvocationStats,
    candidate_time: InvocationStats,
    tally: Mutex<Tally>,
}

#[derive(Default)]
struct Tally {
    phase: Phase,
    identical: u64,
    different: u64,
    candidate_errors: u64,
    skipped: u64,
    diffs: VecDeque<Diff>,
}

/// How a candidate's answer compared with the serving version's.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Comparison {
    Identical,
    Different,
    /// A trap or a limit hit.
    CandidateError,
}

impl Comparison {
    /// The metric's label.
    fn as_str(self) -> &'static str {
        match self {
            Comparison::Identical => "identical",
            Comparison::Different => "different",
            Comparison::CandidateError => "candidate_error",
        }
    }
}

/// p50 and p99 in milliseconds (0 before any comparison).
fn millis(stats: &InvocationStats) -> (f64, f64) {
    let s = stats.snapshot();
    let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    (ms(s.p50), ms(s.p99))
}

impl Shadow {
    fn lock(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn counts(&self) -> Counts {
        let t = self.lock();
        Counts {
            phase: t.phase.clone(),
            compared: t.compared(),
            identical: t.identical,
            different: t.different,
            candidate_errors: t.candidate_errors,
            skipped: t.skipped,
        }
    }

    /// Counts, both sides' percentiles and the recent differences. The percentiles are taken
    /// outside the tally's lock, which comparisons wait on.
    pub fn report(&self) -> Report {
        let diffs = self.lock().diffs.iter().cloned().collect();
        Report {
            handler: self.candidate.name.clone(),
            candidate_version: self.candidate.version.clone(),
            policy: self.policy.clone(),
            started: self.started,
            counts: self.counts(),
            serving_ms: millis(&self.serving_time),
            candidate_ms: millis(&self.candidate_time),
            diffs,
        }
    }

    pub fn is_running(&self) -> bool {
        self.lock().phase == Phase::Running
    }
}

impl Tally {
    fn compared(&self) -> u64 {
        self.identical + self.different + self.candidate_errors
    }

    /// The policy's verdict after a comparison: `Some(Ok)` promote, `Some(Err(reason))` abort.
    fn verdict(&self, policy: &Policy) -> Option<Result<(), String>> {
        if let Some(max) = policy.max_errors.filter(|max| self.candidate_errors > *max) {
            return Some(Err(format!(
                "the candidate failed {} times, more than max_errors={max}",
                self.candidate_errors
            )));
        }
        let compared = self.compared();
        if let Some(rate) = policy.max_diff_rate
            && self.different as f64 > rate * compared.max(MIN_SAMPLE) as f64
        {
            return Some(Err(format!(
                "{} of {compared} answers differed, more than max_diff_rate={rate}",
                self.different
            )));
        }
        match (policy.promote_after, policy.max_diff_rate) {
            (Some(n), Some(rate)) if compared >= n && self.different as f64 > rate * compared as f64 => {
                Some(Err(format!(
                    "{} of {compared} answers differed when promote_after={n} was reached, more than \
                     max_diff_rate={rate}",
                    self.different
                )))
            }
            (Some(n), _) if compared >= n => Some(Ok(())),
            _ => None,
        }
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, item: T, max: usize) {
    if q.len() == max {
        q.pop_front();
    }
    q.push_back(item);
}

/// Why a shadow request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error("handler {0:?} has no serving version to shadow")]
    NothingServing(String),
    #[error("handler {0:?} has no running shadow")]
    NotRunning(String),
    #[error("handler {0:?} has never had a shadow")]
    Unknown(String),
}

/// Every handler's shadow: the running one, or the last one that ended.
pub struct ShadowSet {
    shadows: Mutex<HashMap<String, Arc<Shadow>>>,
    capacity: Arc<Semaphore>,
    handlers: Arc<HandlerSet>,
    invoker: Arc<dyn Invoke>,
    metrics: Arc<Metrics>,
}

impl ShadowSet {
    pub fn new(handlers: Arc<HandlerSet>, invoker: Arc<dyn Invoke>, metrics: Arc<Metrics>) -> ShadowSet {
        ShadowSet {
            shadows: Mutex::new(HashMap::new()),
            capacity: Arc::new(Semaphore::new(CONCURRENT)),
            handlers,
            invoker,
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Shadow>>> {
        self.shadows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `candidate` as the shadow of its name's serving version, replacing a running one
    /// (which counts as dropped).
    pub fn start(&self, candidate: LoadedHandler, policy: Policy) -> Result<Arc<Shadow>, ShadowError> {
        let name = candidate.name.clone();
        let Some(serving) = self.handlers.current_of(&name) else {
            return Err(ShadowError::NothingServing(name));
        };
        let shadow = Arc::new(Shadow {
            candidate: Arc::new(candidate),
            against: serving.version.clone(),
            policy,
            started: Utc::now(),
            serving_time: InvocationStats::default(),
            candidate_time: InvocationStats::default(),
            tally: Mutex::new(Tally::default()),
        });
        if let Some(old) = self.lock().insert(name.clone(), shadow.clone()) {
            self.end(&old, Phase::Dropped { at: Utc::now() });
        }
        tracing::info!(handler = %name, candidate = %shadow.candidate.short_version(), policy = ?shadow.policy,
            "shadow candidate started");
        Ok(shadow)
    }

    /// The running shadow of `name`, or the last one that ended. A running shadow whose serving
    /// version has been replaced is aborted here, so every reader sees it ended.
    pub fn get(&self, name: &str) -> Option<Arc<Shadow>> {
        let shadow = self.stored(name)?;
        if shadow.is_running() {
            self.abort_if_superseded(&shadow);
        }
        Some(shadow)
    }

    /// As stored, without the superseded check.
    fn stored(&self, name: &str) -> Option<Arc<Shadow>> {
        self.lock().get(name).cloned()
    }

    fn running(&self, name: &str) -> Option<Arc<Shadow>> {
        self.get(name).filter(|s| s.is_running())
    }

    /// Makes the running candidate of `name` serve now.
    pub fn promote(&self, name: &str) -> Result<Arc<LoadedHandler>, ShadowError> {
        let shadow = self.running(name).ok_or_else(|| self.not_running(name))?;
        Ok(self.promote_shadow(&shadow, Decider::Operator).unwrap_or_else(|| shadow.candidate.clone()))
    }

    /// Ends the running shadow of `name` without promoting it.
    pub fn drop_running(&self, name: &str) -> Result<(), ShadowError> {
        let shadow = self.running(name).ok_or_else(|| self.not_running(name))?;
        self.end(&shadow, Phase::Dropped { at: Utc::now() });
        Ok(())
    }

    fn not_running(&self, name: &str) -> ShadowError {
        match self.get(name) {
            Some(_) => ShadowError::NotRunning(name.into()),
            None => ShadowError::Unknown(name.into()),
        }
    }

    /// Moves `shadow` out of `Running`; false if it had already ended (a race between two
    /// deciders: the first one wins).
    fn end(&self, shadow: &Shadow, phase: Phase) -> bool {
        let mut t = shadow.lock();
        if t.phase != Phase::Running {
            return false;
        }
        let decision = phase.as_str();
        t.phase = phase;
        drop(t);
        self.metrics.shadow_decided(&shadow.candidate.name, decision);
        true
    }

    fn promote_shadow(&self, shadow: &Shadow, by: Decider) -> Option<Arc<LoadedHandler>> {
        if self.abort_if_superseded(shadow) {
            return None;
        }
        if !self.end(shadow, Phase::Promoted { at: Utc::now(), by }) {
            return None;
        }
        let serving = self.handlers.install_shared(shadow.candidate.clone(), Source::Upload);
        tracing::info!(handler = %serving.cause(), by = ?by, "shadow candidate promoted: it serves now");
        Some(serving)
    }

    /// Aborts `shadow` when the version it was started beside no longer serves; true if it did.
    fn abort_if_superseded(&self, shadow: &Shadow) -> bool {
        let name = &shadow.candidate.name;
        let now = self.handlers.current_of(name).map(|h| h.version.clone());
        if now.as_deref() == Some(shadow.against.as_str()) {
            return false;
        }
        let reason = format!(
            "the version it was compared against ({}) stopped serving (now {}); start a new shadow \
             against the version that serves",
            short_version(&shadow.against),
            now.as_deref().map_or("none", short_version),
        );
        if self.end(shadow, Phase::Aborted { at: Utc::now(), reason: reason.clone() }) {
            tracing::warn!(handler = %name, candidate = %shadow.candidate.short_version(), %reason,
                "shadow candidate aborted");
        }
        true
    }

    /// After the serving version `serving` answered `event` with `served` in `took`: runs the
    /// running candidate of its name, if any, on the same event in the background, and counts
    /// the comparison. Never waits, never fails the caller.
    pub fn observe(
        self: &Arc<Self>,
        serving: &LoadedHandler,
        event: &Event,
        order_id: Uuid,
        served: &Result<Vec<wit::Action>, DispatchError>,
        took: Duration,
        orders: Arc<dyn OrderSource>,
    ) {
        // The event's serving version says whether the shadow may be superseded, so the common
        // case costs no look-up of what serves now (this runs for every event).
        let Some(shadow) = self.stored(&serving.name).filter(|s| s.is_running()) else { return };
        if serving.version != shadow.against {
            // Either a newer version serves (the shadow ends) or this event was in flight on an
            // older one: not the version this candidate is compared against, either way.
            self.abort_if_superseded(&shadow);
            return;
        }
        // The serving side did not decide (the host failed it): nothing to compare with.
        if matches!(served, Err(DispatchError::Host(_))) {
            return;
        }
        let Ok(permit) = self.capacity.clone().try_acquire_owned() else {
            shadow.lock().skipped += 1;
            self.metrics.shadow_compared(&serving.name, "skipped");
            return;
        };
        let (set, event) = (self.clone(), event.clone());
        let served = (Answer::of(served), took);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = set.invoker.invoke(&shadow.candidate, &event, orders).await;
            let candidate = (result, started.elapsed());
            drop(permit);
            set.compare(&shadow, &event, order_id, served, candidate);
        });
    }

    /// Counts one comparison of the serving answer and the candidate's, each with its time.
    fn compare(
        &self,
        shadow: &Shadow,
        event: &Event,
        order_id: Uuid,
        (served, serving_took): (Answer, Duration),
        (result, candidate_took): (Result<Vec<wit::Action>, DispatchError>, Duration),
    ) {
        let name = &shadow.candidate.name;
        // A host failure says nothing about the candidate.
        if matches!(result, Err(DispatchError::Host(_))) {
            shadow.lock().skipped += 1;
            self.metrics.shadow_compared(name, "skipped");
            return;
        }
        let candidate = Answer::of(&result);
        let kind = match &result {
            Err(DispatchError::Trap { .. }) => Comparison::CandidateError,
            _ if candidate == served => Comparison::Identical,
            _ => Comparison::Different,
        };
        self.metrics.shadow_compared(name, kind.as_str());
        let verdict = {
            let mut t = shadow.lock();
            if t.phase != Phase::Running {
                return;
            }
            shadow.serving_time.record(serving_took, true);
            shadow.candidate_time.record(candidate_took, kind != Comparison::CandidateError);
            match kind {
                Comparison::Identical => t.identical += 1,
                Comparison::Different => t.different += 1,
                Comparison::CandidateError => t.candidate_errors += 1,
            }
            if kind != Comparison::Identical {
                let diff = Diff {
                    at: Utc::now(),
                    event_id: event.meta().event_id.clone(),
                    order_id,
                    input: serde_json::to_value(event).unwrap_or_default(),
                    serving: served.to_json(),
                    candidate: candidate.to_json(),
                };
                push_bounded(&mut t.diffs, diff, DIFFS_KEPT);
            }
            t.verdict(&shadow.policy)
        };
        match verdict {
            Some(Ok(())) => {
                self.promote_shadow(shadow, Decider::Policy);
            }
            Some(Err(reason))
                if self.end(shadow, Phase::Aborted { at: Utc::now(), reason: reason.clone() }) =>
            {
                tracing::warn!(handler = %name, candidate = %shadow.candidate.short_version(), %reason,
                    "shadow candidate aborted");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(identical: u64, different: u64, errors: u64) -> Tally {
        Tally { identical, different, candidate_errors: errors, ..Tally::default() }
    }

    #[test]
    fn a_policy_promotes_after_n_within_bounds_and_aborts_on_the_first_broken_bound() {
        let policy = Policy { promote_after: Some(50), max_diff_rate: Some(0.05), max_errors: Some(2) };
        assert_eq!(tally(49, 0, 0).verdict(&policy), None);
        assert_eq!(tally(49, 1, 0).verdict(&policy), Some(Ok(())));
        // One difference in the first 20 is within 5% of the minimum sample; two are not.
        assert_eq!(tally(3, 1, 0).verdict(&policy), None);
        assert!(tally(3, 2, 0).verdict(&policy).unwrap().unwrap_err().contains("max_diff_rate=0.05"));
        assert!(tally(10, 0, 3).verdict(&policy).unwrap().unwrap_err().contains("max_errors=2"));
        // A zero bound breaks on the first difference.
        let strict = Policy { max_diff_rate: Some(0.0), ..Policy::default() };
        assert!(tally(0, 1, 0).verdict(&strict).unwrap().is_err());
        assert_eq!(tally(1000, 0, 0).verdict(&strict), None, "no promote_after: runs until told");
        // Reaching promote_after, the rate itself must hold: the early allowance never promotes
        // a candidate that differs more often than the bound (2 of 5 is 40%, not 10%).
        let quick = Policy { promote_after: Some(5), max_diff_rate: Some(0.1), max_errors: None };
        assert_eq!(tally(3, 1, 0).verdict(&quick), None, "within the early allowance, not yet promoted");
        let verdict = tally(3, 2, 0).verdict(&quick).expect("a decision at promote_after");
        assert!(verdict.unwrap_err().contains("when promote_after=5 was reached"));
        assert_eq!(tally(10, 1, 0).verdict(&quick), Some(Ok(())), "1 of 11 is within 10%");
    }
}
