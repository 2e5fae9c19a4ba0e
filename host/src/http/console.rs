//! The operator console at `/admin/`, embedded in the binary (`host/console/`: plain HTML, CSS and
//! JS, no build step). The page itself is public and holds nothing; everything it shows comes from
//! the admin API with the bearer token the operator types in.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

macro_rules! asset {
    ($file:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/", $file))
    };
}

/// Revalidated on every load: the files are tiny and change with the binary.
fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    ([(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")], body).into_response()
}

/// The console page.
#[utoipa::path(get, path = "/admin/", tag = "admin", responses((status = 200, content_type = "text/html")))]
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", asset!("index.html"))
}

#[utoipa::path(get, path = "/admin/console.js", tag = "admin", responses((status = 200, content_type = "text/javascript")))]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", asset!("console.js"))
}

#[utoipa::path(get, path = "/admin/console.css", tag = "admin", responses((status = 200, content_type = "text/css")))]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", asset!("console.css"))
}
