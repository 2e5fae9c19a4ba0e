//! Catalogue and inventory routes.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, AppState, ErrorBody};
use crate::db::catalog;
use crate::orders::cents_to_amount;

/// A catalogue product, with MetalMart's field names.
#[derive(Serialize, ToSchema)]
pub struct ProductJson {
    pub id: String,
    pub name: String,
    pub description: String,
    /// In the shop's currency, two decimals.
    pub price: f64,
    pub image_url: String,
    pub category: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<catalog::Product> for ProductJson {
    fn from(p: catalog::Product) -> ProductJson {
        ProductJson {
            id: p.id,
            name: p.name,
            description: p.description,
            price: cents_to_amount(p.price_cents),
            image_url: p.image_url,
            category: p.category,
            created_at: p.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct InventoryJson {
    pub product_id: String,
    pub stock_quantity: i32,
    /// Held by checkouts that have not shipped yet.
    pub reserved_quantity: i32,
    pub available_quantity: i32,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProductFilter {
    /// Case-insensitive text in the name or description.
    q: Option<String>,
    /// Exact category, e.g. `hoodies`.
    category: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Case-insensitive text in the name or description; required (may be empty, which matches
    /// every product).
    q: String,
}

async fn products(
    state: &AppState,
    q: Option<&str>,
    category: Option<&str>,
) -> Result<Json<Vec<ProductJson>>, ApiError> {
    let found = catalog::products(&state.pool, q, category).await?;
    Ok(Json(found.into_iter().map(ProductJson::from).collect()))
}

/// The catalogue, optionally filtered.
#[utoipa::path(get, path = "/api/products", tag = "catalogue", params(ProductFilter),
    responses((status = 200, body = Vec<ProductJson>),
              (status = 400, body = ErrorBody, description = "the query does not parse (e.g. a repeated parameter) or holds a NUL (`%00`)"),
              (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn list_products(
    State(state): State<AppState>,
    Query(f): Query<ProductFilter>,
) -> Result<Json<Vec<ProductJson>>, ApiError> {
    products(&state, f.q.as_deref(), f.category.as_deref()).await
}

/// Products whose name or description contains `q`.
#[utoipa::path(get, path = "/api/products/search", tag = "catalogue", params(SearchQuery),
    responses((status = 200, body = Vec<ProductJson>),
              (status = 400, body = ErrorBody, description = "`invalid_query`: `q` is missing or the query does not parse; or the query holds a NUL (`%00`)"),
              (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn search_products(
    State(state): State<AppState>,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<ProductJson>>, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::new(axum::http::StatusCode::BAD_REQUEST, "invalid_query", format!("q is required: {e}"))
    })?;
    products(&state, Some(&query.q), None).await
}

/// Products in one category.
#[utoipa::path(get, path = "/api/products/category/{category}", tag = "catalogue",
    params(("category" = String, Path, description = "e.g. `t-shirts`, `hoodies`, `accessories`; an unknown one answers an empty list")),
    responses((status = 200, body = Vec<ProductJson>),
              (status = 400, body = ErrorBody, description = "the path holds a NUL (`%00`) or is not UTF-8"),
              (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn products_in_category(
    State(state): State<AppState>,
    Path(category): Path<String>,
) -> Result<Json<Vec<ProductJson>>, ApiError> {
    products(&state, None, Some(&category)).await
}

/// One product.
#[utoipa::path(get, path = "/api/products/{id}", tag = "catalogue",
    params(("id" = String, Path, description = "MetalMart product id, `\"1\"`…`\"10\"`")),
    responses((status = 200, body = ProductJson),
              (status = 400, body = ErrorBody, description = "the path holds a NUL (`%00`) or is not UTF-8; also the id `search`, which is `GET /api/products/search` without `q`"),
              (status = 404, body = ErrorBody, description = "`product_not_found`"),
              (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn get_product(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ProductJson>, ApiError> {
    match catalog::product(&state.pool, &id).await? {
        Some(p) => Ok(Json(p.into())),
        None => Err(ApiError::not_found("product_not_found", format!("no product with id {id:?}"))),
    }
}

/// Stock of one product.
#[utoipa::path(get, path = "/api/inventory/{product_id}", tag = "catalogue",
    params(("product_id" = String, Path)),
    responses((status = 200, body = InventoryJson),
              (status = 400, body = ErrorBody, description = "the path holds a NUL (`%00`) or is not UTF-8"),
              (status = 404, body = ErrorBody, description = "`product_not_found`"),
              (status = 500, body = ErrorBody), (status = 503, body = ErrorBody, description = "database unavailable")))]
pub async fn get_inventory(
    State(state): State<AppState>,
    Path(product_id): Path<String>,
) -> Result<Json<InventoryJson>, ApiError> {
    match catalog::stock(&state.pool, &product_id).await? {
        Some(s) => Ok(Json(InventoryJson {
            available_quantity: s.stock - s.reserved,
            product_id: s.product_id,
            stock_quantity: s.stock,
            reserved_quantity: s.reserved,
        })),
        None => Err(ApiError::not_found("product_not_found", format!("no product with id {product_id:?}"))),
    }
}
