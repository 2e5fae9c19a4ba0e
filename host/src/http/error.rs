//! The API's one error shape, `{"error":{"code":…,"message":…}}`, and the JSON body extractor
//! that turns every malformed request into it.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

use crate::db::orders::StoreError;
use crate::orders::Invalid;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// Error response body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `malformed_json`, `invalid_body`, `validation_failed`,
    /// `unknown_product`, `insufficient_stock`, `order_not_found`, `illegal_transition`, …
    pub code: String,
    /// For people: names the field or value at fault.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn order_not_found(id: &str) -> ApiError {
        ApiError::not_found("order_not_found", format!("no order with id {id:?}"))
    }

    fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_string(), message: self.message } };
        (self.status, Json(body)).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        match e {
            // The pool is exhausted or Postgres is unreachable: a retry may succeed.
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable", "database unavailable")
            }
            e => ApiError::internal(e),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let message = e.to_string();
        match e {
            StoreError::OrderNotFound(id) => ApiError::order_not_found(&id),
            StoreError::UnknownProduct(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "unknown_product", message)
            }
            StoreError::InsufficientStock { .. } => {
                ApiError::new(StatusCode::CONFLICT, "insufficient_stock", message)
            }
            StoreError::IllegalTransition { .. } => {
                ApiError::new(StatusCode::CONFLICT, "illegal_transition", message)
            }
            StoreError::Db(e) => e.into(),
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "validation_failed", e.to_string())
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s: 400 for bad syntax or wrong types and missing
/// fields, 413 over the body limit, 415 without a JSON content type. Unknown fields are ignored.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(match rejection {
                JsonRejection::JsonSyntaxError(e) => {
                    ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.body_text())
                }
                JsonRejection::JsonDataError(e) => {
                    ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.body_text())
                }
                JsonRejection::MissingJsonContentType(e) => {
                    ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", e.body_text())
                }
                r if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", r.body_text())
                }
                r => ApiError::new(r.status(), "bad_body", r.body_text()),
            }),
        }
    }
}
