//! The order-handler host as a library: configuration, the WebAssembly runtime, Postgres, Kafka,
//! the HTTP API and the wiring that runs them together. The `order-host` binary and `xtask` are
//! thin users of it.

pub mod config;
pub mod db;
pub mod dispatch;
pub mod events;
pub mod handler_set;
pub mod handler_watch;
pub mod http;
pub mod journal;
pub mod kafka;
pub mod metrics;
pub mod orders;
pub mod relay;
pub mod retention;
pub mod runtime;
pub mod serve;
pub mod shadow;
pub mod supervise;
pub mod telemetry;
