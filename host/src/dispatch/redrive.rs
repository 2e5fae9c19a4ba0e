//! Redrive: a dead letter re-run through its handler's serving version, its effects and the turn of
//! its idempotency record from dead-lettered to applied committed in one transaction with the dead
//! letter's new state. The dead letter's row is locked for the whole redrive (`NOWAIT`: a second
//! redrive of the same one, from two operators, a retried request or two replicas, is refused at
//! once rather than holding a connection while it waits), so it applies once. A redrive that fails
//! again leaves it open with the failure appended, in the same transaction, its effects rolled
//! back to a savepoint. As on a first delivery, an immediate status change the state machine
//! refuses (the order moved on) fails the whole answer. (A delayed change is a timer, refused and
//! logged when it fires, as always.)

use std::sync::Arc;

use sqlx::{Acquire, PgConnection, PgPool};

use super::decode::{Decoded, decode};
use super::process::{Applying, DbOrders, Unapplied, check_actions, failure_class, wit_event};
use crate::config::{KafkaConfig, Topics};
use crate::db::dead_letters::{self, DeadLetter, State};
use crate::db::effects::{self, LogPosition};
use crate::db::{self, FailureClass, orders};
use crate::handler_set::HandlerSet;
use crate::kafka::Incoming;
use crate::metrics::Metrics;
use crate::runtime::{Disposition, Invoke, LoadedHandler, OrderSource};

/// What a redrive needs: the API's pool, the live handlers and the code that runs them.
#[derive(Clone)]
pub struct Redriver {
    pub pool: PgPool,
    pub invoker: Arc<dyn Invoke>,
    pub handlers: Arc<HandlerSet>,
    /// The consumed topics, to decode records without a `ce_type` header as the dispatcher did.
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub metrics: Arc<Metrics>,
}

/// How a redrive that ran ended.
#[derive(Debug)]
pub enum Redriven {
    /// The serving version's effects are committed; the dead letter is `redriven`.
    Applied,
    /// It failed again; the dead letter stays open with this failure appended.
    Failed { class: &'static str, reason: String },
}

/// Why a redrive did not run. Each leaves the dead letter as it was.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("no dead letter {0}")]
    NotFound(i64),
    #[error("dead letter {id} is {state}, not open")]
    NotOpen { id: i64, state: &'static str },
    #[error("dead letter {0} is being redriven or discarded right now")]
    Busy(i64),
    #[error("the serving version of handler `{handler}` does not take {kind} events any more")]
    NotSubscribed { handler: String, kind: String },
    #[error(
        "dead letter {earlier} of the same order and handler was consumed earlier and is still open: redrive or discard it first"
    )]
    EarlierOpen { earlier: i64 },
    #[error("no version of handler `{0}` is serving: upload one or roll back, then redrive")]
    NotServing(String),
    #[error("the record does not decode ({0}), so no handler can take it: discard it")]
    Undecodable(String),
    #[error("the event's idempotency record is no longer dead-lettered")]
    AlreadySettled,
    #[error("the host cannot run it now: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The metric label and bulk outcome of a redrive: `applied`, `failed` (it ran and failed again),
/// `error` (the host could not run it now) or `refused` (it was not run).
pub fn outcome_label(outcome: &Result<Redriven, Refused>) -> &'static str {
    match outcome {
        Ok(Redriven::Applied) => "applied",
        Ok(Redriven::Failed { .. }) => "failed",
        Err(Refused::Db(_) | Refused::Unavailable(_)) => "error",
        Err(_) => "refused",
    }
}

/// What applying a redrive inside its transaction came to.
enum Verdict {
    Applied,
    Failed(&'static str, String),
}

impl Redriver {
    /// Redrives dead letter `id`.
    pub async fn redrive(&self, id: i64) -> Result<Redriven, Refused> {
        let outcome = self.try_redrive(id).await;
        self.metrics.redrive(outcome_label(&outcome));
        outcome
    }

    async fn try_redrive(&self, id: i64) -> Result<Redriven, Refused> {
        let mut tx = self.pool.begin().await?;
        let (letter, record) = match dead_letters::lock(&mut tx, id).await {
            Ok(found) => found.ok_or(Refused::NotFound(id))?,
            Err(e) if db::sqlstate(&e).as_deref() == Some(dead_letters::LOCK_NOT_AVAILABLE) => {
                return Err(Refused::Busy(id));
            }
            Err(e) => return Err(e.into()),
        };
        if letter.state != State::Open {
            return Err(Refused::NotOpen { id, state: letter.state.as_str() });
        }
        if let Some(order_id) = letter.order_id
            && let Some(earlier) = dead_letters::earlier_open(&mut tx, &letter.handler, order_id, id).await?
        {
            return Err(Refused::EarlierOpen { earlier });
        }
        let decoded = decode(&record, &self.kafka.created_topic, &self.kafka.status_topic)
            .map_err(Refused::Undecodable)?;
        let h = self
            .handlers
            .current_of(&letter.handler)
            .ok_or_else(|| Refused::NotServing(letter.handler.clone()))?;
        if !h.subscribes_to(decoded.kind()) {
            return Err(Refused::NotSubscribed { handler: h.name.clone(), kind: decoded.kind().to_string() });
        }
        // The effects go to a savepoint, so a failure rolls back only them and is recorded in the
        // same transaction, under the same lock.
        let mut savepoint = tx.begin().await?;
        let verdict = self.run(&mut savepoint, &letter, &record, &decoded, &h).await?;
        match verdict {
            Verdict::Applied => {
                savepoint.commit().await?;
                dead_letters::resolve(&mut tx, id, State::Redriven, &h.version).await?;
                tx.commit().await?;
                tracing::info!(dead_letter = id, handler = %h.cause(), event_id = %decoded.event_id, "dead letter redriven");
                Ok(Redriven::Applied)
            }
            Verdict::Failed(class, reason) => {
                savepoint.rollback().await?;
                dead_letters::add_failure(&mut tx, id, &h.version, class, &reason).await?;
                tx.commit().await?;
                tracing::warn!(dead_letter = id, handler = %h.cause(), class, %reason, "redrive failed; the dead letter stays open");
                Ok(Redriven::Failed { class, reason })
            }
        }
    }

    /// Invokes the serving version and applies its actions inside `tx`.
    async fn run(
        &self,
        tx: &mut PgConnection,
        letter: &DeadLetter,
        record: &Incoming,
        decoded: &Decoded,
        h: &LoadedHandler,
    ) -> Result<Verdict, Refused> {
        let Some(order) = orders::get(&self.pool, decoded.order_id).await? else {
            return Ok(Verdict::Failed(
                "missing-order",
                format!("order {} does not exist", decoded.order_id),
            ));
        };
        let attempt = letter.attempts.max(0) as u32 + 1;
        let event = wit_event(record, decoded, &order, attempt);
        let source: Arc<dyn OrderSource> = Arc::new(DbOrders(self.pool.clone()));
        let actions = match self.invoker.invoke(h, &event, source).await {
            Ok(actions) => actions,
            Err(e) if e.disposition() == Disposition::RetryUntilRecovered => {
                return Err(Refused::Unavailable(e.to_string()));
            }
            Err(e) => return Ok(Verdict::Failed(failure_class(&e), e.to_string())),
        };
        if let Err(reason) = check_actions(&actions) {
            return Ok(Verdict::Failed("invalid-action", reason));
        }
        if !effects::mark_applied(tx, &h.name, &decoded.event_id, &h.version).await? {
            return Err(Refused::AlreadySettled);
        }
        let position = LogPosition::from(record);
        let mut applying = Applying::new(&self.topics, &position, &decoded.event_id, h, &order);
        match applying.all(tx, &actions).await {
            Ok(()) => Ok(Verdict::Applied),
            Err(Unapplied::Refused(reasons)) => Ok(Verdict::Failed("refused-transition", reasons)),
            Err(Unapplied::Db((what, e))) => match db::classify(&e) {
                FailureClass::BadValues => Ok(Verdict::Failed("rejected-effects", format!("{what}: {e}"))),
                FailureClass::Unavailable | FailureClass::HostBug => Err(Refused::Db(e)),
            },
        }
    }
}
