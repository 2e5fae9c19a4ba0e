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

/// The allocator of every binary built on this library (`order-host`, the tests, the benches), so
/// what is measured is what ships. Why not glibc's: a batched drain allocates and frees many
/// small, short-lived objects per event across threads (decoded records, the snapshot's rows,
/// component arguments and answers, sqlx's buffers), and in its profile malloc, free and their
/// consolidation were about a quarter of the dispatcher's own CPU (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
