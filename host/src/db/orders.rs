//! Orders: creation (with optional stock reservation), reads, and status changes through the
//! state machine. Every write also writes its status-history row and outbox record in the same
//! transaction.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use super::outbox;
use crate::config::Topics;
use crate::events::{self, OrderCreated, OrderCreatedItem, Record, StatusUpdated};
use crate::orders::{LineRequest, Status, cents_to_amount};

/// Outcomes a caller branches on; anything else is a database failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("order {0} not found")]
    OrderNotFound(String),
    #[error("unknown product {0:?}")]
    UnknownProduct(String),
    #[error(
        "insufficient stock for product {product_id} ({name}): requested {requested}, available {available}"
    )]
    InsufficientStock { product_id: String, name: String, requested: i64, available: i64 },
    #[error("illegal status transition {from} -> {to}")]
    IllegalTransition { from: Status, to: Status },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

#[derive(Debug, Clone, Default)]
pub struct Address {
    pub street: String,
    pub city: String,
    pub state: String,
    pub zip_code: String,
    pub country: String,
}

/// A validated request for a new order (see `orders::validate_new_order`).
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub customer_name: String,
    pub customer_email: String,
    pub address: Address,
    pub lines: Vec<LineRequest>,
}

#[derive(Debug, Clone)]
pub struct Order {
    pub id: Uuid,
    pub order_number: String,
    pub tracking_token: String,
    pub customer_name: String,
    pub customer_email: String,
    pub address: Address,
    pub total_cents: i64,
    pub status: Status,
    pub holds_stock: bool,
    pub source_topic: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Item {
    pub id: i64,
    pub order_id: Uuid,
    pub product_id: String,
    pub product_name: String,
    pub quantity: i32,
    pub price_cents: i64,
    pub created_at: DateTime<Utc>,
}

impl TryFrom<String> for Status {
    type Error = crate::orders::UnknownStatus;
    fn try_from(s: String) -> Result<Status, Self::Error> {
        s.parse()
    }
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    order_number: String,
    tracking_token: String,
    customer_name: String,
    customer_email: String,
    ship_street: String,
    ship_city: String,
    ship_state: String,
    ship_zip_code: String,
    ship_country: String,
    total_cents: i64,
    #[sqlx(try_from = "String")]
    status: Status,
    holds_stock: bool,
    source_topic: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl OrderRow {
    fn into_order(self, items: Vec<Item>) -> Order {
        Order {
            id: self.id,
            order_number: self.order_number,
            tracking_token: self.tracking_token,
            customer_name: self.customer_name,
            customer_email: self.customer_email,
            address: Address {
                street: self.ship_street,
                city: self.ship_city,
                state: self.ship_state,
                zip_code: self.ship_zip_code,
                country: self.ship_country,
            },
            total_cents: self.total_cents,
            status: self.status,
            holds_stock: self.holds_stock,
            source_topic: self.source_topic,
            created_at: self.created_at,
            updated_at: self.updated_at,
            items,
        }
    }
}

const ORDER_COLUMNS: &str = "id, order_number, tracking_token, customer_name, customer_email, ship_street, \
     ship_city, ship_state, ship_zip_code, ship_country, total_cents, status, holds_stock, source_topic, \
     created_at, updated_at";

/// Creates an order with its items, first history row and `order.created` outbox record in one
/// transaction. With `reserve`, stock for every line is reserved in the same transaction, or
/// nothing is.
pub async fn create(
    pool: &PgPool,
    new: &NewOrder,
    reserve: bool,
    topics: &Topics,
) -> Result<Order, StoreError> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let catalogue = priced_lines(&mut tx, new).await?;
    if reserve {
        reserve_stock(&mut tx, new, &catalogue).await?;
    }
    let order = insert_order(&mut tx, new, &catalogue, reserve).await?;
    outbox::enqueue(&mut tx, &order_created_record(&order, topics)).await?;
    tx.commit().await?;
    Ok(order)
}

/// Name and price in cents by product id.
type Catalogue = HashMap<String, (String, i64)>;

/// Name and price in cents of each product the order names, from the catalogue (never from the
/// client); an unknown product refuses the order.
async fn priced_lines(conn: &mut PgConnection, new: &NewOrder) -> Result<Catalogue, StoreError> {
    let ids: Vec<&str> = new.lines.iter().map(|l| l.product_id.as_str()).collect();
    let catalogue: Catalogue = sqlx::query_as::<_, (String, String, i64)>(
        "SELECT id, name, price_cents FROM products WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|(id, name, price)| (id, (name, price)))
    .collect();
    match ids.iter().find(|id| !catalogue.contains_key(**id)) {
        Some(missing) => Err(StoreError::UnknownProduct(missing.to_string())),
        None => Ok(catalogue),
    }
}

/// Reserves every line's quantity, or refuses the order naming the first product short of stock.
async fn reserve_stock(
    conn: &mut PgConnection,
    new: &NewOrder,
    catalogue: &Catalogue,
) -> Result<(), StoreError> {
    // Locking inventory rows in product-id order means two checkouts never wait on each
    // other in opposite orders, so they cannot deadlock.
    let mut wanted: BTreeMap<&str, i64> = BTreeMap::new();
    for line in &new.lines {
        *wanted.entry(&line.product_id).or_default() += line.quantity;
    }
    for (product_id, quantity) in wanted {
        let reserved = sqlx::query(
            "UPDATE inventory SET reserved = reserved + $2, updated_at = now()
             WHERE product_id = $1 AND stock - reserved >= $2",
        )
        .bind(product_id)
        .bind(quantity)
        .execute(&mut *conn)
        .await?;
        if reserved.rows_affected() == 0 {
            let available: Option<(i64,)> =
                sqlx::query_as("SELECT (stock - reserved)::bigint FROM inventory WHERE product_id = $1")
                    .bind(product_id)
                    .fetch_optional(&mut *conn)
                    .await?;
            return Err(StoreError::InsufficientStock {
                product_id: product_id.to_string(),
                name: catalogue[product_id].0.clone(),
                requested: quantity,
                available: available.map_or(0, |(a,)| a),
            });
        }
    }
    Ok(())
}

/// Writes the order, its items at catalogue prices and its first history row.
async fn insert_order(
    conn: &mut PgConnection,
    new: &NewOrder,
    catalogue: &Catalogue,
    holds_stock: bool,
) -> Result<Order, StoreError> {
    let total_cents: i64 = new.lines.iter().map(|l| catalogue[&l.product_id].1 * l.quantity).sum();
    let id = Uuid::new_v4();
    // 122 random bits from the OS generator: unguessable, and the only key to the tracking page.
    let tracking_token = Uuid::new_v4().simple().to_string();
    let a = &new.address;
    let row: OrderRow = sqlx::query_as(&format!(
        "INSERT INTO orders (id, tracking_token, customer_name, customer_email, ship_street, ship_city,
             ship_state, ship_zip_code, ship_country, total_cents, status, holds_stock)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending', $11)
         RETURNING {ORDER_COLUMNS}"
    ))
    .bind(id)
    .bind(&tracking_token)
    .bind(new.customer_name.trim())
    .bind(new.customer_email.trim())
    .bind(&a.street)
    .bind(&a.city)
    .bind(&a.state)
    .bind(&a.zip_code)
    .bind(&a.country)
    .bind(total_cents)
    .bind(holds_stock)
    .fetch_one(&mut *conn)
    .await?;

    let ids: Vec<&str> = new.lines.iter().map(|l| l.product_id.as_str()).collect();
    let names: Vec<&str> = new.lines.iter().map(|l| catalogue[&l.product_id].0.as_str()).collect();
    let quantities: Vec<i32> = new.lines.iter().map(|l| l.quantity as i32).collect();
    let prices: Vec<i64> = new.lines.iter().map(|l| catalogue[&l.product_id].1).collect();
    let items: Vec<Item> = sqlx::query_as(
        "INSERT INTO order_items (order_id, product_id, product_name, quantity, price_cents)
         SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::int[], $5::bigint[])
         RETURNING id, order_id, product_id, product_name, quantity, price_cents, created_at",
    )
    .bind(id)
    .bind(&ids)
    .bind(&names)
    .bind(&quantities)
    .bind(&prices)
    .fetch_all(&mut *conn)
    .await?;

    sqlx::query(
        "INSERT INTO order_status_history (order_id, from_status, to_status, cause, at)
         VALUES ($1, NULL, 'pending', 'api', $2)",
    )
    .bind(id)
    .bind(row.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(row.into_order(items))
}

/// The `order.created` record announcing `order`, in MetalMart's JSON shape.
fn order_created_record(order: &Order, topics: &Topics) -> Record {
    let payload = OrderCreated {
        order_id: order.id,
        order_number: order.order_number.clone(),
        customer_email: order.customer_email.clone(),
        customer_name: order.customer_name.clone(),
        total_amount: cents_to_amount(order.total_cents),
        status: order.status,
        created_at: order.created_at,
        items: order
            .items
            .iter()
            .map(|i| OrderCreatedItem {
                product_id: i.product_id.clone(),
                product_name: i.product_name.clone(),
                quantity: i.quantity,
                price: cents_to_amount(i.price_cents),
            })
            .collect(),
    };
    events::record(
        &topics.order_created,
        events::TYPE_ORDER_CREATED,
        Uuid::new_v4(),
        order.created_at,
        order.id,
        &order.customer_email,
        &payload,
    )
}

async fn with_items(conn: &mut PgConnection, row: Option<OrderRow>) -> sqlx::Result<Option<Order>> {
    let Some(row) = row else { return Ok(None) };
    let items = sqlx::query_as(
        "SELECT id, order_id, product_id, product_name, quantity, price_cents, created_at
         FROM order_items WHERE order_id = $1 ORDER BY id",
    )
    .bind(row.id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(row.into_order(items)))
}

pub async fn get(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<Order>> {
    let mut conn = pool.acquire().await?;
    let row = sqlx::query_as(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    with_items(&mut conn, row).await
}

/// What an event's handlers start from: the order (if it exists) and which of `handlers`
/// already settled `event_id`, read together. One event's read (a retry's, or any with
/// `DISPATCH_BATCH_MAX = 1`); first tries read many events at once ([`for_events`]).
pub async fn for_event(
    pool: &PgPool,
    id: Uuid,
    event_id: &str,
    handlers: &[&str],
) -> sqlx::Result<(Option<Order>, Vec<String>)> {
    #[derive(sqlx::FromRow)]
    struct WithSettled {
        #[sqlx(flatten)]
        order: OrderRow,
        settled: Vec<String>,
    }
    let mut conn = pool.acquire().await?;
    let row: Option<WithSettled> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS},
                ARRAY(SELECT handler FROM processed_events WHERE event_id = $2 AND handler = ANY($3)) AS settled
         FROM orders WHERE id = $1"
    ))
    .bind(id)
    .bind(event_id)
    .bind(handlers)
    .fetch_optional(&mut *conn)
    .await?;
    // Orders are never deleted, so an event about a missing one was never applied: nothing settled
    // it except a dead letter, which the dead-letter path recognises itself.
    let Some(WithSettled { order, settled }) = row else { return Ok((None, Vec::new())) };
    Ok((with_items(&mut conn, Some(order)).await?, settled))
}

/// One event whose snapshot [`for_events`] reads.
pub struct EventRef<'a> {
    pub order_id: Uuid,
    pub event_id: &'a str,
    /// The handlers it is routed to: which of them settled it is read.
    pub handlers: &'a [String],
}

/// What [`for_events`] read.
#[derive(Debug, Default)]
pub struct EventsRead {
    /// The orders that exist, by id (a missing one: see [`for_event`]).
    pub orders: HashMap<Uuid, Order>,
    /// Event id → the handlers that already have a `processed_events` row for it.
    settled: HashMap<String, Vec<String>>,
}

impl EventsRead {
    /// Whether `handler` already applied or dead-lettered `event_id` (a redelivery).
    pub fn settled(&self, handler: &str, event_id: &str) -> bool {
        self.settled.get(event_id).is_some_and(|hs| hs.iter().any(|h| h == handler))
    }
}

/// The snapshot of many events at once, on one connection in three statements whatever their
/// number: their orders, those orders' items, and which (handler, event) pairs are settled. Read
/// per event, it was a pool acquire and release (each a round trip in sqlx) and two queries:
/// the largest share of the dispatcher's CPU (BENCHMARKS.md, issue 14).
pub async fn for_events(pool: &PgPool, wanted: &[EventRef<'_>]) -> sqlx::Result<EventsRead> {
    let mut conn = pool.acquire().await?;
    let ids: Vec<Uuid> = wanted.iter().map(|w| w.order_id).collect();
    let rows: Vec<OrderRow> =
        sqlx::query_as(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ANY($1)"))
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
    let items = items_of(&mut conn, &ids).await?;
    let orders = assemble(rows, items).map(|o| (o.id, o)).collect();
    let (handlers, events): (Vec<&str>, Vec<&str>) =
        wanted.iter().flat_map(|w| w.handlers.iter().map(|h| (h.as_str(), w.event_id))).unzip();
    let settled: Vec<(String, String)> = sqlx::query_as(
        "SELECT handler, event_id FROM processed_events
         WHERE (handler, event_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
    )
    .bind(&handlers)
    .bind(&events)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_event: HashMap<String, Vec<String>> = HashMap::new();
    for (handler, event_id) in settled {
        by_event.entry(event_id).or_default().push(handler);
    }
    Ok(EventsRead { orders, settled: by_event })
}

/// Orders from their rows and their items, in the rows' order.
fn assemble(rows: Vec<OrderRow>, mut items: HashMap<Uuid, Vec<Item>>) -> impl Iterator<Item = Order> {
    rows.into_iter().map(move |r| {
        let its = items.remove(&r.id).unwrap_or_default();
        r.into_order(its)
    })
}

/// The items of the orders `ids`, each order's in insertion order.
async fn items_of(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<HashMap<Uuid, Vec<Item>>> {
    let all: Vec<Item> = sqlx::query_as(
        "SELECT id, order_id, product_id, product_name, quantity, price_cents, created_at
         FROM order_items WHERE order_id = ANY($1) ORDER BY id",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut items: HashMap<Uuid, Vec<Item>> = HashMap::new();
    for item in all {
        items.entry(item.order_id).or_default().push(item);
    }
    Ok(items)
}

pub async fn by_tracking_token(pool: &PgPool, token: &str) -> sqlx::Result<Option<Order>> {
    let mut conn = pool.acquire().await?;
    let row = sqlx::query_as(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE tracking_token = $1"))
        .bind(token)
        .fetch_optional(&mut *conn)
        .await?;
    with_items(&mut conn, row).await
}

/// The newest orders first, optionally only one customer's (email compared case-insensitively).
pub async fn list(pool: &PgPool, email: Option<&str>, limit: i64) -> sqlx::Result<Vec<Order>> {
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders
         WHERE ($1::text IS NULL OR lower(customer_email) = lower($1))
         ORDER BY created_at DESC, order_number DESC LIMIT $2"
    ))
    .bind(email)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let items = items_of(&mut *pool.acquire().await?, &ids).await?;
    Ok(assemble(rows, items).collect())
}

/// Who or what asked for a status change, recorded in history and in the published event.
#[derive(Debug, Clone)]
pub struct Cause {
    /// `api` or `handler:<name>@<version>`.
    pub cause: String,
    pub event_id: Option<String>,
    pub handler_version: Option<String>,
    pub consumed_topic: Option<String>,
}

impl Cause {
    pub fn api() -> Cause {
        Cause { cause: "api".into(), event_id: None, handler_version: None, consumed_topic: None }
    }

    /// A change a handler asked for while handling `event_id`, consumed from `topic`.
    pub fn handler(cause: &str, event_id: &str, handler_version: &str, topic: &str) -> Cause {
        Cause {
            cause: cause.into(),
            event_id: Some(event_id.into()),
            handler_version: Some(handler_version.into()),
            consumed_topic: Some(topic.into()),
        }
    }
}

/// The result of an applied change.
#[derive(Debug, Clone)]
pub struct Changed {
    pub order_id: Uuid,
    pub previous: Status,
    pub status: Status,
    pub at: DateTime<Utc>,
    pub source_topic: Option<String>,
}

/// Moves an order to `to` inside the caller's transaction: locks the order, checks the state
/// machine, settles reserved stock on shipping or cancellation, and writes the history row and the
/// `order.status-updated` outbox record.
pub async fn change_status(
    conn: &mut PgConnection,
    order_id: Uuid,
    to: Status,
    cause: &Cause,
    topics: &Topics,
) -> Result<Changed, StoreError> {
    let row: Option<(String, String, String, bool)> = sqlx::query_as(
        "SELECT status, order_number, customer_email, holds_stock FROM orders WHERE id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((from, order_number, customer_email, holds_stock)) = row else {
        return Err(StoreError::OrderNotFound(order_id.to_string()));
    };
    let from: Status = from.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    if !from.can_become(to) {
        return Err(StoreError::IllegalTransition { from, to });
    }

    let (at, source_topic): (DateTime<Utc>, Option<String>) = sqlx::query_as(
        "UPDATE orders SET status = $2, updated_at = now(), source_topic = COALESCE($3, source_topic)
         WHERE id = $1 RETURNING updated_at, source_topic",
    )
    .bind(order_id)
    .bind(to.as_str())
    .bind(&cause.consumed_topic)
    .fetch_one(&mut *conn)
    .await?;

    if holds_stock && let Some(settle) = Settlement::of(from, to) {
        settle_stock(conn, settle, &[order_id]).await?;
    }

    sqlx::query(
        "INSERT INTO order_status_history
             (order_id, from_status, to_status, cause, event_id, handler_version, consumed_topic, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(order_id)
    .bind(from.as_str())
    .bind(to.as_str())
    .bind(&cause.cause)
    .bind(&cause.event_id)
    .bind(&cause.handler_version)
    .bind(&cause.consumed_topic)
    .bind(at)
    .execute(&mut *conn)
    .await?;

    let change =
        StatusChange { order_id, order_number: &order_number, customer_email: &customer_email, from, to };
    let record = change.record(topics, at, &cause.cause);
    outbox::enqueue(conn, &record).await?;
    Ok(Changed { order_id, previous: from, status: to, at, source_topic })
}

/// What a transition does to the stock an order holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Shipping turns the reservation into a sale.
    Sale,
    /// Cancelling before shipping releases it.
    Release,
}

impl Settlement {
    pub fn of(from: Status, to: Status) -> Option<Settlement> {
        match (from, to) {
            (_, Status::Shipped) => Some(Settlement::Sale),
            (Status::Pending | Status::Processing | Status::Confirmed, Status::Cancelled) => {
                Some(Settlement::Release)
            }
            _ => None,
        }
    }
}

/// Settles the stock held by `orders` (each listed once) inside the caller's transaction.
pub async fn settle_stock(conn: &mut PgConnection, settle: Settlement, orders: &[Uuid]) -> sqlx::Result<()> {
    let update = match settle {
        Settlement::Sale => {
            "UPDATE inventory i SET stock = i.stock - s.q, reserved = i.reserved - s.q, updated_at = now()"
        }
        Settlement::Release => "UPDATE inventory i SET reserved = i.reserved - s.q, updated_at = now()",
    };
    sqlx::query(&format!(
        "{update} FROM (SELECT product_id, sum(quantity) AS q FROM order_items
                        WHERE order_id = ANY($1) GROUP BY product_id) s
         WHERE i.product_id = s.product_id"
    ))
    .bind(orders)
    .execute(conn)
    .await?;
    Ok(())
}

/// One transition of one order, as announced on the status topic.
pub struct StatusChange<'a> {
    pub order_id: Uuid,
    pub order_number: &'a str,
    pub customer_email: &'a str,
    pub from: Status,
    pub to: Status,
}

impl StatusChange<'_> {
    /// The `order.status-updated` record; its `traceparent` is the current span's.
    pub fn record(&self, topics: &Topics, at: DateTime<Utc>, caused_by: &str) -> Record {
        let payload = StatusUpdated {
            order_id: self.order_id,
            order_number: self.order_number.to_string(),
            customer_email: self.customer_email.to_string(),
            previous_status: self.from,
            status: self.to,
            changed_at: at,
            caused_by: caused_by.to_string(),
        };
        events::record(
            &topics.status_updated,
            events::TYPE_STATUS_UPDATED,
            Uuid::new_v4(),
            at,
            self.order_id,
            self.customer_email,
            &payload,
        )
    }
}

/// An order locked for changes, with what the state machine and the published record need.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Locked {
    pub id: Uuid,
    pub status: String,
    pub order_number: String,
    pub customer_email: String,
    pub holds_stock: bool,
    /// The locking transaction's `now()`: the time its changes are stamped with.
    pub now: DateTime<Utc>,
}

/// Locks `ids` for the caller's transaction in id order (the order every batch locks in, so two
/// batches cannot deadlock).
pub async fn lock_for_changes(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<Locked>> {
    sqlx::query_as(
        "SELECT id, status, order_number, customer_email, holds_stock, now() AS now FROM orders
         WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await
}

/// A status-history row (also the API's history entry).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub id: i64,
    pub from_status: Option<String>,
    pub to_status: String,
    /// `api` or `handler:<name>@<version>`.
    pub cause: String,
    pub event_id: Option<String>,
    pub handler_version: Option<String>,
    pub consumed_topic: Option<String>,
    pub at: DateTime<Utc>,
}

pub async fn history(pool: &PgPool, order_id: Uuid) -> sqlx::Result<Vec<HistoryEntry>> {
    history_after(pool, order_id, 0).await
}

/// History rows newer than `after_id`, oldest first.
pub async fn history_after(pool: &PgPool, order_id: Uuid, after_id: i64) -> sqlx::Result<Vec<HistoryEntry>> {
    sqlx::query_as(
        "SELECT id, from_status, to_status, cause, event_id, handler_version, consumed_topic, at
         FROM order_status_history WHERE order_id = $1 AND id > $2 ORDER BY id",
    )
    .bind(order_id)
    .bind(after_id)
    .fetch_all(pool)
    .await
}

/// The current status and the id of the latest history row, read together so a live stream can
/// skip notifications it has already covered.
pub async fn current_status(
    pool: &PgPool,
    order_id: Uuid,
) -> sqlx::Result<Option<(Status, i64, DateTime<Utc>)>> {
    let row: Option<(String, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT o.status, h.id, o.updated_at FROM orders o
         JOIN LATERAL (SELECT max(id) AS id FROM order_status_history WHERE order_id = o.id) h ON true
         WHERE o.id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    row.map(|(s, id, at)| Ok((s.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))?, id, at))).transpose()
}
