//! The MetalMart storefront, embedded in the binary (`host/storefront/`: plain HTML, CSS, JS and
//! SVG, no build step): `/`, `/app.js`, `/style.css` and the product images under `/images/`, the
//! paths the catalogue's `image_url`s name.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

macro_rules! asset {
    ($file:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/storefront/", $file))
    };
}

const HTML: &str = "text/html; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// Every image the catalogue refers to, three of them also under the names MetalMart's own
/// frontend ships them as (`…1.svg`), which the catalogue uses since migration 0006.
const IMAGES: [(&str, &[u8]); 13] = [
    ("beanie.svg", asset!("images/beanie.svg")),
    ("cap.svg", asset!("images/cap.svg")),
    ("hoodie-logo.svg", asset!("images/hoodie-logo.svg")),
    ("hoodie-zip.svg", asset!("images/hoodie-zip.svg")),
    ("hoodie-zip1.svg", asset!("images/hoodie-zip.svg")),
    ("mug.svg", asset!("images/mug.svg")),
    ("polo.svg", asset!("images/polo.svg")),
    ("polo1.svg", asset!("images/polo.svg")),
    ("socks.svg", asset!("images/socks.svg")),
    ("stickers.svg", asset!("images/stickers.svg")),
    ("tshirt-classic.svg", asset!("images/tshirt-classic.svg")),
    ("tshirt-classic1.svg", asset!("images/tshirt-classic.svg")),
    ("tshirt-works.svg", asset!("images/tshirt-works.svg")),
];

/// An embedded file, revalidated on every load: the files are tiny and change with the binary.
/// The console's files are served the same way.
pub(super) fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    ([(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")], body).into_response()
}

/// The storefront page.
#[utoipa::path(get, path = "/", tag = "storefront", responses((status = 200, content_type = "text/html")))]
pub async fn index() -> Response {
    asset(HTML, asset!("index.html"))
}

#[utoipa::path(get, path = "/app.js", tag = "storefront", responses((status = 200, content_type = "text/javascript")))]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", asset!("app.js"))
}

#[utoipa::path(get, path = "/style.css", tag = "storefront", responses((status = 200, content_type = "text/css")))]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", asset!("style.css"))
}

/// A product image.
#[utoipa::path(get, path = "/images/{file}", tag = "storefront",
    params(("file" = String, Path, description = "e.g. `mug.svg`")),
    responses((status = 200, content_type = "image/svg+xml"),
              (status = 400, body = super::ErrorBody, description = "the path holds a NUL (`%00`) or is not UTF-8"),
              (status = 404, body = super::ErrorBody, description = "`no_image`")))]
pub async fn image(Path(file): Path<String>) -> Result<Response, ApiError> {
    IMAGES
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, body)| asset(SVG, body))
        .ok_or_else(|| ApiError::not_found("no_image", format!("no image named {file:?}")))
}

#[cfg(test)]
mod tests {
    use super::IMAGES;

    #[test]
    fn every_catalogue_image_is_embedded() {
        let seeded = include_str!("../../migrations/0001_orders.sql");
        let renamed = include_str!("../../migrations/0006_metalmart_images.sql");
        let names = |sql: &'static str| -> Vec<&'static str> {
            sql.split("'/images/").skip(1).map(|rest| rest.split('\'').next().unwrap()).collect()
        };
        assert_eq!(names(seeded).len(), 10);
        let named: Vec<&str> = names(seeded).into_iter().chain(names(renamed)).collect();
        for name in named {
            assert!(IMAGES.iter().any(|(n, _)| *n == name), "{name} is in the catalogue but not embedded");
        }
    }
}
