//! Catalogue and inventory reads.

use sqlx::PgPool;

/// A product as stored; the price is in cents.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub description: String,
    pub price_cents: i64,
    pub image_url: String,
    pub category: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stock {
    pub product_id: String,
    pub stock: i32,
    pub reserved: i32,
}

const PRODUCT_COLUMNS: &str = "id, name, description, price_cents, image_url, category, created_at";

/// Products filtered by an optional case-insensitive search over name and description and an
/// optional exact category, in catalogue order (numeric ids first, as MetalMart lists them).
pub async fn products(
    pool: &PgPool,
    search: Option<&str>,
    category: Option<&str>,
) -> sqlx::Result<Vec<Product>> {
    let pattern = search.map(|q| format!("%{}%", escape_like(q)));
    sqlx::query_as(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM products
         WHERE ($1::text IS NULL OR name ILIKE $1 OR description ILIKE $1)
           AND ($2::text IS NULL OR category = $2)
         ORDER BY length(id), id"
    ))
    .bind(pattern)
    .bind(category)
    .fetch_all(pool)
    .await
}

pub async fn product(pool: &PgPool, id: &str) -> sqlx::Result<Option<Product>> {
    sqlx::query_as(&format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub async fn stock(pool: &PgPool, product_id: &str) -> sqlx::Result<Option<Stock>> {
    sqlx::query_as("SELECT product_id, stock, reserved FROM inventory WHERE product_id = $1")
        .bind(product_id)
        .fetch_optional(pool)
        .await
}

/// A search term is text, not a pattern: `%` and `_` match themselves.
fn escape_like(q: &str) -> String {
    q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}
