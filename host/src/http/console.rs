//! The operator console at `/admin/`, embedded in the binary (`host/console/`: plain HTML, CSS and
//! JS, no build step). The page itself is public and holds nothing; everything it shows comes from
//! the admin API with the bearer token the operator types in.

use axum::response::Response;

use super::storefront::asset;

macro_rules! console_file {
    ($file:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/", $file))
    };
}

/// The console page.
#[utoipa::path(get, path = "/admin/", tag = "admin", responses((status = 200, content_type = "text/html")))]
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", console_file!("index.html"))
}

#[utoipa::path(get, path = "/admin/console.js", tag = "admin", responses((status = 200, content_type = "text/javascript")))]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", console_file!("console.js"))
}

#[utoipa::path(get, path = "/admin/console.css", tag = "admin", responses((status = 200, content_type = "text/css")))]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", console_file!("console.css"))
}
