//! Group commit: the actions of many handler applications (one handler's answer to one event),
//! from many key lanes, are written in one transaction, one statement per table.
//!
//! A lane hands its application to the committer and waits for the outcome before it takes its
//! key's next event, so per-key order holds and an event's offset is stored only after the batch
//! holding it commits. A batch closes when it is full (`DISPATCH_BATCH_MAX`) or its window has
//! passed (`DISPATCH_BATCH_WINDOW_MS`); applications arriving while a batch commits wait for the
//! next one, so batches grow with the load and a lone event waits at most the window.
//!
//! Failure isolation, without paying two savepoint round trips per application on the common
//! path: the batch is planned in Rust against the locked orders, so a status change the state
//! machine refuses is found before anything is written and only that application is left out
//! (refused, then dead-lettered by its lane). A database error in the grouped statements rolls the
//! batch back and runs it again one application at a time, each in its own savepoint, so only the
//! failing application fails and follows its own retry or dead-letter path. A delivery that
//! another delivery of the same event settled meanwhile is such an error too (its idempotency
//! row's unique violation); one by one, it comes out as the duplicate it is. An unavailable
//! Postgres fails the whole batch; every lane retries.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Acquire, PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use uuid::Uuid;

use super::Shared;
use super::batching::{self, Batching};
use super::process::{Applying, DbStep, Unapplied, at, delay_of};
use crate::config::Topics;
use crate::db::batch::{self, Addressed, FinalStatus, HistoryRow, Processed, Writes};
use crate::db::effects::{self, LogPosition, NewNotification, NewTimer};
use crate::db::orders::{self, Locked, Order, Settlement, StatusChange, StoreError};
use crate::db::{self, FailureClass};
use crate::metrics::{BatchPath, Metrics};
use crate::orders::Status;
use crate::runtime::LoadedHandler;
use crate::runtime::event_at;
use crate::runtime::wit::Action;
use crate::telemetry;

/// One handler's answer to one event, ready to be applied.
pub(super) struct Application {
    pub handler: Arc<LoadedHandler>,
    pub event_id: String,
    pub position: LogPosition,
    /// The order as the handler saw it.
    pub order: Arc<Order>,
    pub actions: Vec<Action>,
    pub attempt: u32,
    /// The event's `dispatch` span: the records and timers the actions write continue its trace,
    /// and log actions are emitted in it.
    pub span: tracing::Span,
}

/// What became of an application.
#[derive(Debug)]
pub(super) enum Committed {
    Applied,
    /// Another delivery of the same event committed first; nothing was written.
    Duplicate,
    /// The state machine refused a status change; nothing of the answer was written.
    Refused(String),
    Failed(DbFailure),
}

/// A database failure, classified where it happened (a batch failure is reported to every
/// application in it, and `sqlx::Error` cannot be cloned).
#[derive(Debug, Clone)]
pub(super) struct DbFailure {
    /// What was being done.
    pub what: &'static str,
    pub class: FailureClass,
    /// The error with its SQLSTATE.
    pub error: String,
}

impl DbFailure {
    pub(super) fn new(what: &'static str, e: &sqlx::Error) -> DbFailure {
        let error = match db::sqlstate(e) {
            Some(code) => format!("{e} (SQLSTATE {code})"),
            None => e.to_string(),
        };
        DbFailure { what, class: db::classify(e), error }
    }
}

/// Where a lane's applications go.
pub(super) enum Committer {
    /// `DISPATCH_BATCH_MAX = 1`: each application in its own transaction, committed by its lane.
    PerApplication { pool: PgPool, topics: Topics },
    /// To the group-commit task.
    Grouped { queue: mpsc::Sender<Submission> },
}

pub(super) struct Submission {
    app: Application,
    reply: oneshot::Sender<Committed>,
}

impl Committer {
    /// The committer for `shared.config`; the grouped one runs as a supervised task until every
    /// lane (every clone of the queue) is gone.
    pub(super) fn start(shared: &Shared) -> Committer {
        let config = &shared.config;
        if config.batch_max <= 1 {
            return Committer::PerApplication { pool: shared.pool.clone(), topics: shared.topics.clone() };
        }
        // Room for every event in flight, each with a few handlers, so lanes rarely wait to enqueue.
        let (queue, rx) = mpsc::channel(config.max_in_flight.max(config.batch_max) * 2);
        let group = Group {
            pool: shared.pool.clone(),
            topics: shared.topics.clone(),
            metrics: shared.metrics.clone(),
            max: config.batch_max,
            window: config.batch_window,
        };
        shared.supervisor.spawn("dispatch group commit", shared.shutdown.clone(), group.run(rx));
        Committer::Grouped { queue }
    }

    pub(super) async fn apply(&self, app: Application) -> Committed {
        match self {
            Committer::PerApplication { pool, topics } => own_transaction(pool, topics, app).await,
            Committer::Grouped { queue } => {
                let (reply, answer) = oneshot::channel();
                let stopped = || {
                    // Only when the task died, which the supervisor reports and shuts the host
                    // down for; retried (the event stays uncommitted) meanwhile.
                    Committed::Failed(DbFailure {
                        what: "handing the actions to the group commit",
                        class: FailureClass::HostBug,
                        error: "the group-commit task is not running".into(),
                    })
                };
                if queue.send(Submission { app, reply }).await.is_err() {
                    return stopped();
                }
                answer.await.unwrap_or_else(|_| stopped())
            }
        }
    }
}

impl Application {
    /// Its idempotency row, outcome `applied`.
    fn processed(&self) -> Processed<'_> {
        Processed {
            handler: &self.handler.name,
            event_id: &self.event_id,
            handler_version: &self.handler.version,
            attempts: self.attempt,
            position: &self.position,
        }
    }
}

/// The pre-batching path: one transaction for one application.
async fn own_transaction(pool: &PgPool, topics: &Topics, app: Application) -> Committed {
    let result = async {
        let mut tx = pool.begin().await.map_err(|e| Unapplied::Db(("starting the apply transaction", e)))?;
        let fresh = apply_one(&mut tx, topics, &app).await?;
        if fresh {
            tx.commit().await.map_err(|e| Unapplied::Db(("committing the handler's actions", e)))?;
        }
        Ok(fresh)
    }
    .instrument(app.span.clone())
    .await;
    outcome_of(result)
}

fn outcome_of(result: Result<bool, Unapplied>) -> Committed {
    match result {
        Ok(true) => Committed::Applied,
        Ok(false) => Committed::Duplicate,
        Err(Unapplied::Refused(reason)) => Committed::Refused(reason),
        Err(Unapplied::Db((what, e))) => Committed::Failed(DbFailure::new(what, &e)),
    }
}

/// One application inside the caller's transaction (or savepoint): its idempotency row, then its
/// actions, all or nothing. `Ok(false)`: already applied by another delivery, nothing written.
async fn apply_one(conn: &mut PgConnection, topics: &Topics, app: &Application) -> Result<bool, Unapplied> {
    let h = &app.handler;
    let fresh = effects::record_processed(
        conn,
        &h.name,
        &app.event_id,
        &h.version,
        "applied",
        app.attempt,
        &app.position,
    )
    .await
    .map_err(|e| Unapplied::Db(("writing the idempotency record", e)))?;
    if !fresh {
        return Ok(false);
    }
    Applying::new(topics, &app.position, &app.event_id, h, &app.order).all(conn, &app.actions).await?;
    Ok(true)
}

/// Batches committing at once. Two keep Postgres busy while the next batch's lanes are still
/// waiting for answers (one batch's statements are round trips in a row); more only contend for
/// the same two cores. Batches cannot deadlock each other: each locks every order it touches
/// first, in id order.
const COMMITTERS: usize = 2;

/// The group-commit task.
struct Group {
    pool: PgPool,
    topics: Topics,
    metrics: Arc<Metrics>,
    max: usize,
    window: Duration,
}

impl Group {
    async fn run(self, queue: mpsc::Receiver<Submission>) {
        let batching = Batching { workers: COMMITTERS, max: self.max, window: self.window };
        let group = Arc::new(self);
        batching::run(batching, queue, |batch| {
            let group = group.clone();
            async move { group.commit_and_reply(batch).await }
        })
        .await;
    }

    async fn commit_and_reply(&self, batch: Vec<Submission>) {
        let (apps, replies): (Vec<Application>, Vec<_>) = batch.into_iter().map(|s| (s.app, s.reply)).unzip();
        let (path, outcomes) = self.commit(&apps).await;
        self.metrics.dispatch_batch(path, apps.len());
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // A lane that is gone (aborted at shutdown) leaves its event uncommitted.
            let _ = reply.send(outcome);
        }
    }

    /// Commits `apps` grouped, or one by one after a failure there. One outcome per application.
    async fn commit(&self, apps: &[Application]) -> (BatchPath, Vec<Committed>) {
        let mut conn = match self.pool.acquire().await {
            Ok(c) => c,
            Err(e) => {
                return (BatchPath::failed, all_failed(DbFailure::new("acquiring a connection", &e), apps));
            }
        };
        let failure = match grouped(&mut conn, &self.topics, apps).await {
            Ok(outcomes) => return (BatchPath::grouped, outcomes),
            Err((what, e)) => {
                let failure = DbFailure::new(what, &e);
                if failure.class == FailureClass::Unavailable {
                    tracing::warn!(what, error = %failure.error, applications = apps.len(), "batch failed; every application retries");
                    return (BatchPath::failed, all_failed(failure, apps));
                }
                failure.error
            }
        };
        tracing::info!(reason = %failure, applications = apps.len(), "batch rolled back; applying one by one");
        match one_by_one(&mut conn, &self.topics, apps).await {
            Ok(outcomes) => (BatchPath::one_by_one, outcomes),
            Err((what, e)) => {
                let failure = DbFailure::new(what, &e);
                tracing::warn!(what, error = %failure.error, "batch failed one by one as well; every application retries");
                (BatchPath::failed, all_failed(failure, apps))
            }
        }
    }
}

fn all_failed(failure: DbFailure, apps: &[Application]) -> Vec<Committed> {
    apps.iter().map(|_| Committed::Failed(failure.clone())).collect()
}

/// The whole batch in one transaction: lock the orders it touches, record the idempotency rows
/// (a redelivery already settled fails the batch here, and `one_by_one` sorts it out), plan,
/// write, commit.
async fn grouped(
    conn: &mut PgConnection,
    topics: &Topics,
    apps: &[Application],
) -> Result<Vec<Committed>, DbStep> {
    let mut tx = conn.begin().await.map_err(at("starting the batch"))?;
    let ids: Vec<Uuid> = apps.iter().map(|a| a.order.id).collect::<BTreeSet<_>>().into_iter().collect();
    let locked = orders::lock_for_changes(&mut tx, &ids).await.map_err(at("locking the batch's orders"))?;
    let processed: Vec<Processed<'_>> = apps.iter().map(Application::processed).collect();
    batch::record_processed(&mut tx, &processed).await.map_err(at("writing the idempotency records"))?;
    let derived: Vec<Derived> = apps.iter().map(Derived::of).collect();
    let planned = plan(apps, &derived, &locked, topics);
    let refused: Vec<(&str, &str)> = apps
        .iter()
        .zip(&planned.refusals)
        .filter(|(_, r)| r.is_some())
        .map(|(a, _)| (a.handler.name.as_str(), a.event_id.as_str()))
        .collect();
    batch::forget_processed(&mut tx, &refused).await.map_err(at("forgetting refused applications"))?;
    batch::write(&mut tx, &planned.writes).await.map_err(at("writing the batch"))?;
    tx.commit().await.map_err(at("committing the batch"))?;
    Ok(planned
        .refusals
        .into_iter()
        .map(|refusal| match refusal {
            None => Committed::Applied,
            Some(reason) => Committed::Refused(reason),
        })
        .collect())
}

/// After a failed batch: each application in its own savepoint, orders touched in id order (as
/// in the grouped path), so a failing application rolls back only itself. `Err` when the
/// transaction as a whole failed.
async fn one_by_one(
    conn: &mut PgConnection,
    topics: &Topics,
    apps: &[Application],
) -> Result<Vec<Committed>, DbStep> {
    let mut order: Vec<usize> = (0..apps.len()).collect();
    order.sort_by_key(|&i| apps[i].order.id);
    let mut outcomes: Vec<Option<Committed>> = apps.iter().map(|_| None).collect();
    let mut tx = conn.begin().await.map_err(at("starting the batch"))?;
    for i in order {
        let app = &apps[i];
        let mut savepoint = tx.begin().await.map_err(at("starting a savepoint"))?;
        let result = apply_one(&mut savepoint, topics, app).instrument(app.span.clone()).await;
        let outcome = match result {
            Err(Unapplied::Db((what, e))) if db::classify(&e) == FailureClass::Unavailable => {
                return Err((what, e));
            }
            Ok(fresh) => {
                savepoint.commit().await.map_err(at("releasing a savepoint"))?;
                outcome_of(Ok(fresh))
            }
            Err(unapplied) => {
                savepoint.rollback().await.map_err(at("rolling back a savepoint"))?;
                outcome_of(Err(unapplied))
            }
        };
        outcomes[i] = Some(outcome);
    }
    tx.commit().await.map_err(at("committing the batch"))?;
    Ok(outcomes.into_iter().map(|o| o.expect("every application has an outcome")).collect())
}

/// What each application's rows repeat, computed once.
struct Derived {
    /// `handler:<name>@<version>`.
    cause: String,
    /// The application's span as a W3C `traceparent`, carried by its timers.
    traceparent: Option<String>,
}

impl Derived {
    fn of(app: &Application) -> Derived {
        // Only a timer stores it: no span lookup for the common answer without one.
        let delays = app.actions.iter().any(|a| matches!(a, Action::SetStatus(s) if delay_of(s).is_some()));
        let traceparent = if delays { app.span.in_scope(telemetry::current_traceparent) } else { None };
        Derived { cause: app.handler.cause(), traceparent }
    }
}

/// A batch's writes, and for each application (in batch order) why it was refused, if it was.
struct Plan<'a> {
    writes: Writes<'a>,
    refusals: Vec<Option<String>>,
}

/// An order as a plan moves it along.
pub(super) struct Moving<'a> {
    locked: &'a Locked,
    pub(super) status: Status,
    /// The topic of the last event that changed it, once one did.
    changed_by: Option<&'a str>,
}

/// Who asked for a change, as its history row and published record name it.
pub(super) struct Who<'a> {
    /// `handler:<name>@<version>`.
    pub cause: &'a str,
    pub event_id: &'a str,
    pub handler_version: &'a str,
    pub consumed_topic: &'a str,
}

/// The orders a batch locked, as its plan moves them along.
pub(super) struct Moves<'a>(HashMap<Uuid, Moving<'a>>);

impl<'a> Moves<'a> {
    pub(super) fn of(locked: &'a [Locked]) -> Moves<'a> {
        Moves(
            locked
                .iter()
                .filter_map(|l| {
                    Some((l.id, Moving { locked: l, status: l.status.parse().ok()?, changed_by: None }))
                })
                .collect(),
        )
    }

    pub(super) fn get_mut(&mut self, id: &Uuid) -> Option<&mut Moving<'a>> {
        self.0.get_mut(id)
    }

    /// Each changed order's final status.
    pub(super) fn finish(self, writes: &mut Writes<'a>) {
        for (id, moving) in self.0 {
            if let Some(topic) = moving.changed_by {
                writes.statuses.push(FinalStatus {
                    order_id: id,
                    status: moving.status,
                    consumed_topic: topic,
                });
            }
        }
    }
}

impl<'a> Moving<'a> {
    /// Adds the writes of an accepted transition from the current status to `to`: stock
    /// settlement, the history row and the `order.status-updated` record (whose trace parent is
    /// the current span).
    pub(super) fn change(&mut self, writes: &mut Writes<'a>, to: Status, who: &Who<'a>, topics: &Topics) {
        let (locked, from) = (self.locked, self.status);
        if locked.holds_stock {
            match Settlement::of(from, to) {
                Some(Settlement::Sale) => writes.sold.push(locked.id),
                Some(Settlement::Release) => writes.released.push(locked.id),
                None => {}
            }
        }
        writes.history.push(HistoryRow {
            order_id: locked.id,
            from,
            to,
            cause: who.cause,
            event_id: who.event_id,
            handler_version: who.handler_version,
            consumed_topic: who.consumed_topic,
        });
        let change = StatusChange {
            order_id: locked.id,
            order_number: &locked.order_number,
            customer_email: &locked.customer_email,
            from,
            to,
        };
        writes.outbox.push(change.record(topics, locked.now, who.cause));
        self.status = to;
        self.changed_by = Some(who.consumed_topic);
    }
}

/// Plans `apps` in order against the locked orders, as `Applying::all` would apply them one after
/// another: each application's status changes go through the state machine from the status the
/// earlier ones left, and an application with a refused change is left out whole.
fn plan<'a>(
    apps: &'a [Application],
    derived: &'a [Derived],
    locked: &'a [Locked],
    topics: &Topics,
) -> Plan<'a> {
    let mut orders = Moves::of(locked);
    let mut writes = Writes::default();
    let mut refusals = Vec::with_capacity(apps.len());
    for (app, d) in apps.iter().zip(derived) {
        let cause = d.cause.as_str();
        let order = orders.get_mut(&app.order.id);
        let refusal = match transitions(app, order.as_deref()) {
            Ok(changes) => {
                add(&mut writes, app, d, order, &changes, topics);
                None
            }
            Err(reasons) => {
                let _in_span = app.span.enter();
                tracing::warn!(handler = %cause, order_id = %app.order.id, event_id = %app.event_id,
                    error = %reasons.join("; "), "status change refused by the state machine");
                Some(reasons.join("; "))
            }
        };
        refusals.push(refusal);
    }
    orders.finish(&mut writes);
    Plan { writes, refusals }
}

/// The `(from, to)` of each immediate status change of `app`, or every refusal.
fn transitions(app: &Application, order: Option<&Moving<'_>>) -> Result<Vec<(Status, Status)>, Vec<String>> {
    let mut status = order.map(|o| o.status);
    let (mut changes, mut refused) = (Vec::new(), Vec::new());
    for action in &app.actions {
        let Action::SetStatus(s) = action else { continue };
        if delay_of(s).is_some() {
            continue;
        }
        let to: Status = s.status.into();
        match status {
            None => refused.push(StoreError::OrderNotFound(app.order.id.to_string()).to_string()),
            Some(from) if from.can_become(to) => {
                changes.push((from, to));
                status = Some(to);
            }
            Some(from) => refused.push(StoreError::IllegalTransition { from, to }.to_string()),
        }
    }
    if refused.is_empty() { Ok(changes) } else { Err(refused) }
}

/// Adds an accepted application's writes, in its actions' order.
fn add<'a>(
    writes: &mut Writes<'a>,
    app: &'a Application,
    d: &'a Derived,
    mut order: Option<&mut Moving<'a>>,
    changes: &[(Status, Status)],
    topics: &Topics,
) {
    let h = &*app.handler;
    let (topic, cause) = (app.position.topic.as_str(), d.cause.as_str());
    let who = Who { cause, event_id: &app.event_id, handler_version: &h.version, consumed_topic: topic };
    let _in_span = app.span.enter();
    let mut changes = changes.iter();
    for action in &app.actions {
        match action {
            Action::SetStatus(s) => match delay_of(s) {
                Some(delay_ms) => writes.timers.push(NewTimer {
                    order_id: app.order.id,
                    to: s.status.into(),
                    delay_ms,
                    cause,
                    event_id: &app.event_id,
                    handler_version: &h.version,
                    consumed_topic: topic,
                    traceparent: d.traceparent.as_deref(),
                }),
                None => {
                    let (_, to) = *changes.next().expect("one planned change per immediate set-status");
                    if let Some(moving) = order.as_deref_mut() {
                        moving.change(writes, to, &who, topics);
                    }
                }
            },
            // An order the batch could not lock does not exist: like `effects::notify`, no
            // notification for it.
            Action::NotifyCustomer(n) => {
                if let Some(moving) = order.as_deref() {
                    writes.notifications.push(Addressed {
                        note: NewNotification {
                            order_id: app.order.id,
                            channel: n.channel.as_str(),
                            subject: &n.subject,
                            body: &n.body,
                            cause,
                            event_id: &app.event_id,
                        },
                        recipient: &moving.locked.customer_email,
                    })
                }
            }
            Action::Log(l) => {
                let (order_id, event_id) = (app.order.id, &app.event_id);
                event_at!(l.level, handler = %cause, %order_id, event_id, "{}", l.message);
            }
        }
    }
}
