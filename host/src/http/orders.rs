//! Order routes: create, checkout, read, track, and status through the state machine.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ApiJson;
use super::{ApiError, AppState, ErrorBody};
use crate::db;
use crate::db::effects::Notification;
use crate::db::orders::{Address, Cause, HistoryEntry, NewOrder, Order};
use crate::orders::{LineRequest, Status, cents_to_amount, validate_address, validate_new_order};

/// Topics with this prefix are mirrord's per-session copies: an order processed from one was
/// handled by a developer's local host.
const MIRRORD_TOPIC_PREFIX: &str = "mirrord-tmp-";

/// Free text without NUL characters, at most 200 characters a field; in a request every field is
/// optional (empty when absent).
#[derive(Serialize, Deserialize, ToSchema, Default, Clone)]
#[serde(default)]
pub struct AddressJson {
    pub street: String,
    pub city: String,
    pub state: String,
    pub zip_code: String,
    pub country: String,
}

/// A line as sent by a client. `product_name` and `price` are accepted for compatibility with
/// MetalMart's clients and ignored: names and prices come from the catalogue.
#[derive(Deserialize, ToSchema)]
pub struct LineJson {
    /// A catalogue product id (`GET /api/products`); any other is refused with 400
    /// `unknown_product`.
    #[schema(value_type = CatalogueId)]
    pub product_id: String,
    /// 1 to 100.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(deserialize_with = "super::error::integral")]
    pub quantity: i64,
}

/// The catalogue's product ids, MetalMart's `"1"`…`"10"`, as the document's enum for an order
/// line's `product_id`. Only for the document: the catalogue table is the truth, and
/// `api::the_openapi_document_matches_the_routes` checks that the two agree.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // never built: it exists for its schema
pub enum CatalogueId {
    #[serde(rename = "1")]
    P1,
    #[serde(rename = "2")]
    P2,
    #[serde(rename = "3")]
    P3,
    #[serde(rename = "4")]
    P4,
    #[serde(rename = "5")]
    P5,
    #[serde(rename = "6")]
    P6,
    #[serde(rename = "7")]
    P7,
    #[serde(rename = "8")]
    P8,
    #[serde(rename = "9")]
    P9,
    #[serde(rename = "10")]
    P10,
}

/// `POST /api/orders` and `POST /api/checkout` body.
#[derive(Deserialize, ToSchema)]
pub struct CreateOrderRequest {
    /// One `@`, a non-empty local part of at most 64 bytes without whitespace or control
    /// characters, and a domain of at least two dot-separated labels of ASCII letters, digits and
    /// `-` (not first or last in a label); at most 254 bytes in all.
    #[schema(format = Email, max_length = 254)]
    pub customer_email: String,
    /// Not blank (not only whitespace); at most 200 characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t-\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]"
    )]
    pub customer_name: String,
    #[serde(default)]
    pub shipping_address: AddressJson,
    /// 1 to 50 lines.
    #[schema(min_items = 1, max_items = 50)]
    pub items: Vec<LineJson>,
}

#[derive(Serialize, ToSchema)]
pub struct OrderItemJson {
    pub id: String,
    pub order_id: Uuid,
    pub product_id: String,
    pub product_name: String,
    pub quantity: i32,
    /// Unit price when the order was placed.
    pub price_at_time: f64,
    pub created_at: DateTime<Utc>,
}

/// An order, with MetalMart's field names.
#[derive(Serialize, ToSchema)]
pub struct OrderJson {
    pub id: Uuid,
    pub order_number: String,
    pub tracking_token: String,
    pub customer_name: String,
    pub customer_email: String,
    pub shipping_address: AddressJson,
    pub total_amount: f64,
    pub status: Status,
    pub items: Vec<OrderItemJson>,
    /// `mirrord` when a developer's mirrord session processed the order, else `cluster`.
    pub source: String,
    /// The consumed topic of the last event that changed the order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_topic: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where the event that last changed an order was processed. mirrord's operator names a session's
/// topic `mirrord-tmp-<id>-<original>` and the deployed pods' share of a split topic
/// `mirrord-tmp-<id>-fallback-<original>`: only the first is a developer's session.
pub fn source_of(topic: Option<&str>) -> &'static str {
    let session = topic
        .and_then(|t| t.strip_prefix(MIRRORD_TOPIC_PREFIX))
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(_id, after)| !after.starts_with("fallback-"));
    if session { "mirrord" } else { "cluster" }
}

impl From<Order> for OrderJson {
    fn from(o: Order) -> OrderJson {
        let a = o.address;
        OrderJson {
            id: o.id,
            order_number: o.order_number,
            tracking_token: o.tracking_token,
            customer_name: o.customer_name,
            customer_email: o.customer_email,
            shipping_address: AddressJson {
                street: a.street,
                city: a.city,
                state: a.state,
                zip_code: a.zip_code,
                country: a.country,
            },
            total_amount: cents_to_amount(o.total_cents),
            status: o.status,
            items: o
                .items
                .into_iter()
                .map(|i| OrderItemJson {
                    id: i.id.to_string(),
                    order_id: i.order_id,
                    product_id: i.product_id,
                    product_name: i.product_name,
                    quantity: i.quantity,
                    price_at_time: cents_to_amount(i.price_cents),
                    created_at: i.created_at,
                })
                .collect(),
            source: source_of(o.source_topic.as_deref()).to_string(),
            source_topic: o.source_topic,
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

/// `POST /api/checkout` answer: MetalMart's checkout fields plus the full order.
#[derive(Serialize, ToSchema)]
pub struct CheckoutJson {
    pub success: bool,
    pub order_id: Uuid,
    pub order_number: String,
    pub tracking_token: String,
    pub total_amount: f64,
    pub status: Status,
    pub order: OrderJson,
}

#[derive(Serialize, ToSchema)]
pub struct StatusJson {
    pub order_id: Uuid,
    pub status: Status,
    /// Set when answering a change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<Status>,
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_topic: Option<String>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Deserialize, ToSchema)]
pub struct StatusUpdateRequest {
    /// One of `pending`, `processing`, `confirmed`, `shipped`, `delivered`, `cancelled`; any other
    /// string is refused with 400 `unknown_status`.
    #[schema(value_type = Status)]
    pub status: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this customer's orders (case-insensitive); empty means every customer's.
    email: Option<String>,
    /// At most this many, newest first: default 100. Any 64-bit integer is accepted and clamped
    /// to 1..=500; only a value that is not a 64-bit integer is refused (400).
    limit: Option<i64>,
}

/// Order ids are UUIDs; anything else cannot name an order.
pub fn parse_order_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::order_not_found(raw))
}

/// The order a path id names, or 404.
async fn load_order(state: &AppState, raw: &str) -> Result<Order, ApiError> {
    db::orders::get(&state.pool, parse_order_id(raw)?).await?.ok_or_else(|| ApiError::order_not_found(raw))
}

async fn create(state: &AppState, req: CreateOrderRequest, reserve: bool) -> Result<Order, ApiError> {
    let lines: Vec<LineRequest> = req
        .items
        .into_iter()
        .map(|l| LineRequest { product_id: l.product_id, quantity: l.quantity })
        .collect();
    validate_new_order(&req.customer_name, &req.customer_email, &lines)?;
    let a = req.shipping_address;
    validate_address(&[
        ("shipping_address.street", &a.street),
        ("shipping_address.city", &a.city),
        ("shipping_address.state", &a.state),
        ("shipping_address.zip_code", &a.zip_code),
        ("shipping_address.country", &a.country),
    ])?;
    let new = NewOrder {
        customer_name: req.customer_name,
        customer_email: req.customer_email,
        address: Address {
            street: a.street,
            city: a.city,
            state: a.state,
            zip_code: a.zip_code,
            country: a.country,
        },
        lines,
    };
    let order = db::orders::create(&state.pool, &new, reserve, &state.topics).await?;
    tracing::info!(order_id = %order.id, order_number = %order.order_number, reserve, "order created");
    Ok(order)
}

/// Places an order. Prices and names come from the catalogue; the `order.created` event is
/// published through the outbox, so this succeeds even while Kafka is down.
#[utoipa::path(post, path = "/api/orders", tag = "orders", request_body = CreateOrderRequest,
    responses((status = 201, body = OrderJson),
              (status = 400, body = ErrorBody, description = "`malformed_json`, `invalid_body` (wrong type, missing field, NUL character), `validation_failed` (name, email, line count, quantity), `unknown_product`, or `invalid_value`"),
              (status = 413, body = ErrorBody, description = "body over 64 KiB"),
              (status = 415, body = ErrorBody, description = "no `application/json` content type"),
              (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn create_order(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateOrderRequest>,
) -> Result<(StatusCode, Json<OrderJson>), ApiError> {
    let order = create(&state, req, false).await?;
    Ok((StatusCode::CREATED, Json(order.into())))
}

/// Reserves stock for every line and places the order, atomically: if any product lacks stock,
/// nothing is reserved and nothing is created.
#[utoipa::path(post, path = "/api/checkout", tag = "orders", request_body = CreateOrderRequest,
    responses((status = 201, body = CheckoutJson),
              (status = 400, body = ErrorBody, description = "`malformed_json`, `invalid_body` (wrong type, missing field, NUL character), `validation_failed` (name, email, line count, quantity), `unknown_product`, or `invalid_value`"),
              (status = 409, body = ErrorBody, description = "insufficient stock; names the product"),
              (status = 413, body = ErrorBody, description = "body over 64 KiB"),
              (status = 415, body = ErrorBody, description = "no `application/json` content type"),
              (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn checkout(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateOrderRequest>,
) -> Result<(StatusCode, Json<CheckoutJson>), ApiError> {
    let order = create(&state, req, true).await?;
    let body = CheckoutJson {
        success: true,
        order_id: order.id,
        order_number: order.order_number.clone(),
        tracking_token: order.tracking_token.clone(),
        total_amount: cents_to_amount(order.total_cents),
        status: order.status,
        order: order.into(),
    };
    Ok((StatusCode::CREATED, Json(body)))
}

/// Orders, newest first.
#[utoipa::path(get, path = "/api/orders", tag = "orders", params(ListQuery),
    responses((status = 200, body = Vec<OrderJson>),
              (status = 400, body = ErrorBody, description = "the query does not parse (`limit` not a 64-bit integer) or holds a NUL (`%00`)"),
              (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn list_orders(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<OrderJson>>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 500);
    let orders = db::orders::list(&state.pool, q.email.as_deref().filter(|e| !e.is_empty()), limit).await?;
    Ok(Json(orders.into_iter().map(OrderJson::from).collect()))
}

/// One order.
#[utoipa::path(get, path = "/api/orders/{id}", tag = "orders", params(("id" = Uuid, Path, description = "The order id (a UUID); any other text answers 404 `order_not_found`")),
    responses((status = 200, body = OrderJson),
              (status = 400, body = ErrorBody, description = "the path holds a NUL (`%00`) or is not UTF-8"),
              (status = 404, body = ErrorBody, description = "`order_not_found`"),
              (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn get_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<OrderJson>, ApiError> {
    Ok(Json(load_order(&state, &id).await?.into()))
}

/// The order a tracking token belongs to.
#[utoipa::path(get, path = "/api/orders/track/{token}", tag = "orders",
    params(("token" = String, Path, description = "The order's `tracking_token`; any other text answers 404")),
    responses((status = 200, body = OrderJson),
              (status = 400, body = ErrorBody, description = "the path holds a NUL (`%00`) or is not UTF-8"),
              (status = 404, body = ErrorBody, description = "`tracking_token_not_found`"),
              (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn track_order(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Json<OrderJson>, ApiError> {
    db::orders::by_tracking_token(&state.pool, &token)
        .await?
        .map(|o| Json(o.into()))
        .ok_or_else(|| ApiError::not_found("tracking_token_not_found", "no order with this tracking token"))
}

/// An order's current status and where it was processed.
#[utoipa::path(get, path = "/api/orders/{id}/status", tag = "orders", params(("id" = Uuid, Path, description = "The order id (a UUID); any other text answers 404 `order_not_found`")),
    responses((status = 200, body = StatusJson),
              (status = 400, body = ErrorBody, description = "the path holds a NUL (`%00`) or is not UTF-8"),
              (status = 404, body = ErrorBody, description = "`order_not_found`"),
              (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn get_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StatusJson>, ApiError> {
    let o = load_order(&state, &id).await?;
    Ok(Json(StatusJson {
        order_id: o.id,
        status: o.status,
        previous_status: None,
        source: source_of(o.source_topic.as_deref()).to_string(),
        source_topic: o.source_topic,
        updated_at: o.updated_at,
    }))
}

/// Changes an order's status through the state machine; the change is recorded in the history
/// and published on the status topic.
#[utoipa::path(put, path = "/api/orders/{id}/status", tag = "orders", params(("id" = Uuid, Path, description = "The order id (a UUID); any other text answers 404 `order_not_found`")),
    request_body = StatusUpdateRequest,
    responses((status = 200, body = StatusJson),
              (status = 400, body = ErrorBody, description = "`unknown_status`, `malformed_json`, `invalid_body` (wrong type, missing field, NUL character), or a NUL (`%00`) in the path"),
              (status = 404, body = ErrorBody, description = "`order_not_found`"),
              (status = 409, body = ErrorBody, description = "`illegal_transition`"),
              (status = 413, body = ErrorBody, description = "body over 64 KiB"),
              (status = 415, body = ErrorBody, description = "no `application/json` content type"),
              (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn put_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<StatusUpdateRequest>,
) -> Result<Json<StatusJson>, ApiError> {
    let uuid = parse_order_id(&id)?;
    let to: Status = req.status.parse().map_err(|e: crate::orders::UnknownStatus| {
        ApiError::new(StatusCode::BAD_REQUEST, "unknown_status", e.to_string())
    })?;
    let mut tx = state.pool.begin().await?;
    let changed = db::orders::change_status(&mut tx, uuid, to, &Cause::api(), &state.topics).await?;
    tx.commit().await?;
    tracing::info!(order_id = %uuid, from = %changed.previous, to = %changed.status, "status changed by api");
    Ok(Json(StatusJson {
        order_id: uuid,
        status: changed.status,
        previous_status: Some(changed.previous),
        source: source_of(changed.source_topic.as_deref()).to_string(),
        source_topic: changed.source_topic,
        updated_at: changed.at,
    }))
}

/// Every status change of an order, oldest first, with its cause.
#[utoipa::path(get, path = "/api/orders/{id}/history", tag = "orders", params(("id" = Uuid, Path, description = "The order id (a UUID); any other text answers 404 `order_not_found`")),
    responses((status = 200, body = Vec<HistoryEntry>),
              (status = 400, body = ErrorBody, description = "the path holds a NUL (`%00`) or is not UTF-8"),
              (status = 404, body = ErrorBody, description = "`order_not_found`"),
              (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn order_history(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    let uuid = parse_order_id(&id)?;
    let rows = db::orders::history(&state.pool, uuid).await?;
    if rows.is_empty() {
        return Err(ApiError::order_not_found(&id));
    }
    Ok(Json(rows))
}

/// Messages the handlers sent the customer about this order, oldest first.
#[utoipa::path(get, path = "/api/orders/{id}/notifications", tag = "orders", params(("id" = Uuid, Path, description = "The order id (a UUID); any other text answers 404 `order_not_found`")),
    responses((status = 200, body = Vec<Notification>),
              (status = 400, body = ErrorBody, description = "the path holds a NUL (`%00`) or is not UTF-8"),
              (status = 404, body = ErrorBody, description = "`order_not_found`"),
              (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn order_notifications(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<Notification>>, ApiError> {
    let uuid = parse_order_id(&id)?;
    if db::orders::current_status(&state.pool, uuid).await?.is_none() {
        return Err(ApiError::order_not_found(&id));
    }
    Ok(Json(crate::db::effects::notifications(&state.pool, uuid).await?))
}

#[cfg(test)]
mod tests {
    use super::source_of;

    #[test]
    fn only_a_session_topic_counts_as_mirrord() {
        assert_eq!(source_of(Some("mirrord-tmp-a1b2-order.created")), "mirrord");
        assert_eq!(source_of(Some("mirrord-tmp-a1b2-fallback-order.created")), "cluster");
        assert_eq!(source_of(Some("order.status-updated")), "cluster");
        assert_eq!(source_of(None), "cluster");
    }
}
