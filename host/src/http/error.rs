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

use crate::db::FailureClass;
use crate::db::orders::StoreError;
use crate::orders::Invalid;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// Error response body. `message` repeats `error.message` at the top level, where MetalMart's own
/// frontend reads it (it shows "Checkout failed" without one); our clients read `error`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub message: String,
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
        let body = ErrorBody {
            message: self.message.clone(),
            error: ErrorDetail { code: self.code.to_string(), message: self.message },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        match crate::db::classify(&e) {
            // Postgres is unreachable, restarting or out of connections: a retry may succeed.
            FailureClass::Unavailable => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable", "database unavailable")
            }
            // A value Postgres cannot hold (a safety net behind validation): the client's input.
            FailureClass::BadValues => {
                tracing::info!(error = %e, "request refused by a database constraint");
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_value",
                    format!(
                        "a value in the request cannot be stored: {}",
                        e.as_database_error().map_or_else(|| e.to_string(), |d| d.message().to_string())
                    ),
                )
            }
            FailureClass::HostBug => ApiError::internal(e),
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
        let (parts, body) = req.into_parts();
        let bytes = match axum::body::to_bytes(body, super::BODY_LIMIT).await {
            Ok(b) => b,
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("the body is larger than {} bytes or could not be read: {e}", super::BODY_LIMIT),
                ));
            }
        };
        if has_nul_escape(&bytes) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "a string in the body contains a NUL character (\\u0000), which is not allowed",
            ));
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
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

/// An integer field of a JSON body. JSON Schema, and the clients generated from our document,
/// count `26.0` as the integer 26; serde's `i64` refuses it. Anything with a fraction, out of
/// range or not a number is still refused (400 `invalid_body`).
pub fn integral<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    use serde::Deserialize as _;
    let n = serde_json::Number::deserialize(d)?;
    // 2^63 as f64: the first float past i64::MAX.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    n.as_i64()
        .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && (-LIMIT..LIMIT).contains(f)).map(|f| f as i64))
        .ok_or_else(|| serde::de::Error::custom(format!("invalid value: {n}, expected a 64-bit integer")))
}

/// [`integral`] for an optional field (`null` or absent is `None`; pair with `#[serde(default)]`).
pub fn integral_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(serde::Deserialize)]
    struct Wrap(#[serde(deserialize_with = "integral")] i64);
    use serde::Deserialize as _;
    Ok(Option::<Wrap>::deserialize(d)?.map(|Wrap(n)| n))
}

/// Whether JSON text holds a `\u0000` escape (an escaped backslash before `u0000` is not one).
/// Raw NUL bytes cannot appear in valid JSON; the escape is the only way a NUL reaches a string,
/// and no text the API stores may hold one (Postgres text cannot).
fn has_nul_escape(json: &[u8]) -> bool {
    let mut backslashes = 0usize;
    for (i, b) in json.iter().enumerate() {
        if *b == b'\\' {
            backslashes += 1;
            continue;
        }
        if backslashes % 2 == 1 && *b == b'u' && json.get(i + 1..i + 5) == Some(b"0000") {
            return true;
        }
        backslashes = 0;
    }
    false
}

/// Refuses a request whose path or query holds an encoded NUL byte (`%00`) before any route sees
/// it: no identifier, token, email or search text may contain one.
pub async fn reject_nul(req: Request, next: axum::middleware::Next) -> Response {
    let uri = req.uri();
    let raw = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    if raw.as_bytes().windows(3).any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0') {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request path or query contains a NUL byte (%00)",
        )
        .into_response();
    }
    next.run(req).await
}

/// Gives every error response the one JSON shape: axum's and tower's own rejections (a query
/// that does not parse, a path parameter of the wrong type, a method without a route) answer in
/// plain text, which clients cannot read as `{"error":{…}}`.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024).await.unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        s if s.is_server_error() => "internal",
        _ => "error",
    };
    let message = String::from_utf8_lossy(&text).trim().to_string();
    let message =
        if message.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { message };
    let mut fresh = ApiError { status, code, message }.into_response();
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            fresh.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fresh
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_real_nul_escape_counts() {
        assert!(has_nul_escape(br#"{"a":"x\u0000"}"#));
        assert!(has_nul_escape(br#"{"a":"\\\u0000"}"#), "an escaped backslash, then the escape");
        assert!(!has_nul_escape(br#"{"a":"\\u0000"}"#), "a literal backslash and text u0000");
        assert!(!has_nul_escape(br#"{"a":"\u0001 u0000"}"#));
    }

    #[test]
    fn an_integral_number_is_an_integer_whatever_its_spelling() {
        #[derive(serde::Deserialize, Debug)]
        struct Body {
            #[serde(deserialize_with = "integral")]
            n: i64,
            #[serde(default, deserialize_with = "integral_opt")]
            m: Option<i64>,
        }
        let parse = |json: &str| serde_json::from_str::<Body>(json).map(|b| (b.n, b.m));
        assert_eq!(parse(r#"{"n": 26}"#).unwrap(), (26, None));
        assert_eq!(parse(r#"{"n": 26.0, "m": 1e2}"#).unwrap(), (26, Some(100)));
        assert_eq!(parse(r#"{"n": -3, "m": null}"#).unwrap(), (-3, None));
        for bad in [r#"{"n": 2.5}"#, r#"{"n": "2"}"#, r#"{"n": 1e19}"#, r#"{"n": 1, "m": 0.1}"#] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
