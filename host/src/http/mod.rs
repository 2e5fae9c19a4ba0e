//! The HTTP API: MetalMart-compatible catalogue, checkout and order routes, live order streams,
//! health and the OpenAPI document. Only this module knows axum.
//!
//! Routes are registered through `utoipa-axum`, so a route cannot exist without its OpenAPI entry.

pub mod admin;
mod catalog;
mod console;
mod dead_letters;
mod error;
mod health;
mod metrics;
mod orders;
mod shadow;
mod storefront;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use sqlx::PgPool;
use tokio::sync::watch;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use self::error::{ApiError, ErrorBody};
pub use self::health::Probes;
use crate::config::Topics;
use crate::db::listen::Notices;

/// Request bodies larger than this are refused with 413. An order of 50 lines is a few KiB.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What every request handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub topics: Arc<Topics>,
    pub notices: Notices,
    pub probes: Probes,
    /// Turns true at shutdown; ends live streams so the server can drain.
    pub shutdown: watch::Receiver<bool>,
    /// The admin API's needs; `None` turns it off (`ADMIN_TOKEN` unset).
    pub admin: Option<Arc<admin::Admin>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The dispatcher's in-flight events: `/metrics` counts them, the admin API lists busy keys.
    pub backlog: Arc<crate::dispatch::Backlog>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "order-host",
        description = "MetalMart-compatible order, catalogue and checkout API. No text anywhere in a request may \
            hold a NUL character (U+0000): a `%00` in the path or query, or a `\\u0000` escape anywhere in a \
            JSON body (even in a property the API ignores), is refused with 400. Errors answer an \
            `ErrorBody` (but `/readyz` answers 503 with its `Readiness`)."
    ),
    tags(
        (name = "catalogue", description = "Products and stock"),
        (name = "storefront", description = "The MetalMart web shop served by the host"),
        (name = "orders", description = "Orders, checkout, status and live tracking"),
        (name = "health", description = "Liveness and readiness"),
        (name = "admin", description = "Handler versions: list, upload, roll back, unsubscribe (bearer ADMIN_TOKEN)")
    ),
    modifiers(&AdminToken)
)]
struct ApiDoc;

/// Declares the `admin_token` security scheme the admin API's operations name: `Authorization:
/// Bearer <ADMIN_TOKEN>`.
struct AdminToken;

impl utoipa::Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi.components.get_or_insert_with(utoipa::openapi::Components::new).add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The application's routes and their OpenAPI document, built together.
pub fn router_and_spec(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let admin_routes = OpenApiRouter::new()
        .routes(routes!(admin::list_handlers))
        .routes(routes!(admin::put_handler, admin::delete_handler))
        .routes(routes!(admin::rollback_handler))
        .routes(routes!(shadow::get_shadow, shadow::drop_shadow))
        .routes(routes!(shadow::promote_shadow))
        .routes(routes!(shadow::replay))
        .routes(routes!(shadow::order_invocations))
        .routes(routes!(admin::parked_outbox))
        .routes(routes!(admin::dispatch_backlog))
        .routes(routes!(dead_letters::list))
        .routes(routes!(dead_letters::get))
        .routes(routes!(dead_letters::redrive))
        .routes(routes!(dead_letters::discard))
        .routes(routes!(dead_letters::redrive_bulk))
        .routes(routes!(dead_letters::discard_bulk))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), admin::authorize));
    let (router, spec) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(catalog::list_products))
        .routes(routes!(catalog::search_products))
        .routes(routes!(catalog::products_in_category))
        .routes(routes!(catalog::get_product))
        .routes(routes!(catalog::get_inventory))
        .routes(routes!(orders::create_order, orders::list_orders))
        .routes(routes!(orders::checkout))
        .routes(routes!(orders::get_order))
        .routes(routes!(orders::track_order))
        .routes(routes!(orders::get_status, orders::put_status))
        .routes(routes!(orders::order_history))
        .routes(routes!(orders::order_notifications))
        .routes(routes!(stream::order_events))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(console::index))
        .routes(routes!(console::script))
        .routes(routes!(console::style))
        .routes(routes!(storefront::index))
        .routes(routes!(storefront::script))
        .routes(routes!(storefront::style))
        .routes(routes!(storefront::image))
        .merge(admin_routes)
        .route_layer(axum::middleware::from_fn_with_state(state.metrics.clone(), metrics::track))
        .with_state(state)
        .split_for_parts();
    let doc = spec.clone();
    let router = router
        .route("/api/openapi.json", axum::routing::get(move || async move { axum::Json(doc) }))
        .fallback(|| async { ApiError::not_found("no_route", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(error::reject_nul))
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(TraceLayer::new_for_http().make_span_with(request_span));
    (router, spec)
}

/// One span per request, at INFO so it is exported; a caller's `traceparent` becomes its parent.
fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let span = tracing::info_span!("http.request", method = %req.method(), path = %req.uri().path());
    if let Some(tp) = req.headers().get("traceparent").and_then(|v| v.to_str().ok()) {
        crate::telemetry::set_parent(&span, tp);
    }
    span
}

/// How long a client may take to send a request's headers, and so also how long an idle
/// keep-alive connection stays open (hyper times both from when it starts reading a request).
/// hyper's default; without it a client sending headers a byte at a time held a connection forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves until `shutdown` turns true, then stops accepting and lets in-flight requests finish.
///
/// Hand-written rather than `axum::serve`, which cannot give hyper the timer its header-read
/// timeout needs; this is the loop axum's own `serve` runs, with that one setting added.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (router, _) = router_and_spec(state);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection =
            connections.watch(http.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A client that went away or timed out: nothing to answer, nothing lost.
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
    Ok(())
}

/// Returns once `shutdown` turns true (or its sender is gone). A function of its own so that the
/// receiver's borrow guard ends here, not in the accept loop's `select!`, whose future must be `Send`.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// An accept that failed. Running out of file descriptors is the usual cause, and passes as
/// connections close: wait a little rather than spin, as `axum::serve` does.
async fn accept_failed(error: std::io::Error) {
    tracing::warn!(%error, "accepting an HTTP connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
